namespace Virt.Sandbox.Linux;

/// <summary>Linux error numbers (asm-generic/errno-base.h, errno.h) the ABI layer returns, negated, in RAX.</summary>
internal static class Errno
{
    /// <summary>Operation not permitted.</summary>
    public const long EPERM = 1;
    /// <summary>No such file or directory.</summary>
    public const long ENOENT = 2;
    /// <summary>No such process.</summary>
    public const long ESRCH = 3;
    /// <summary>Interrupted system call.</summary>
    public const long EINTR = 4;
    /// <summary>I/O error.</summary>
    public const long EIO = 5;
    /// <summary>Bad file descriptor.</summary>
    public const long EBADF = 9;
    /// <summary>No child processes.</summary>
    public const long ECHILD = 10;
    /// <summary>Try again.</summary>
    public const long EAGAIN = 11;
    /// <summary>Out of memory.</summary>
    public const long ENOMEM = 12;
    /// <summary>Permission denied.</summary>
    public const long EACCES = 13;
    /// <summary>Bad address.</summary>
    public const long EFAULT = 14;
    /// <summary>File exists.</summary>
    public const long EEXIST = 17;
    /// <summary>Not a directory.</summary>
    public const long ENOTDIR = 20;
    /// <summary>Is a directory.</summary>
    public const long EISDIR = 21;
    /// <summary>Invalid argument.</summary>
    public const long EINVAL = 22;
    /// <summary>Too many open files.</summary>
    public const long EMFILE = 24;
    /// <summary>Not a terminal.</summary>
    public const long ENOTTY = 25;
    /// <summary>File too large.</summary>
    public const long EFBIG = 27;
    /// <summary>Illegal seek.</summary>
    public const long ESPIPE = 29;
    /// <summary>Read-only file system.</summary>
    public const long EROFS = 30;
    /// <summary>Result out of range.</summary>
    public const long ERANGE = 34;
    /// <summary>File name too long.</summary>
    public const long ENAMETOOLONG = 36;
    /// <summary>Function not implemented.</summary>
    public const long ENOSYS = 38;
    /// <summary>Resource deadlock would occur.</summary>
    public const long EDEADLK = 35;
    /// <summary>No such device.</summary>
    public const long ENODEV = 19;
    /// <summary>Value too large.</summary>
    public const long EOVERFLOW = 75;
    /// <summary>No such device or address.</summary>
    public const long ENXIO = 6;
    /// <summary>Argument list too long.</summary>
    public const long E2BIG = 7;
    /// <summary>Device or resource busy.</summary>
    public const long EBUSY = 16;
    /// <summary>Cross-device link.</summary>
    public const long EXDEV = 18;
    /// <summary>No space left on device.</summary>
    public const long ENOSPC = 28;
    /// <summary>Broken pipe.</summary>
    public const long EPIPE = 32;
    /// <summary>Directory not empty.</summary>
    public const long ENOTEMPTY = 39;
    /// <summary>Too many symbolic links.</summary>
    public const long ELOOP = 40;
    /// <summary>Operation not supported.</summary>
    public const long EOPNOTSUPP = 95;
    /// <summary>Disk quota exceeded.</summary>
    public const long EDQUOT = 122;
    /// <summary>Executable format error.</summary>
    public const long ENOEXEC = 8;
    /// <summary>Timer expired / timed out.</summary>
    public const long ETIMEDOUT = 110;
    /// <summary>Not a socket.</summary>
    public const long ENOTSOCK = 88;
}
