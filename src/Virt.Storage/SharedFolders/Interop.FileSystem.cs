using System.Runtime.InteropServices;

namespace Virt.Storage;

internal static partial class Interop
{
    /// <summary>
    /// The *at() family of Linux system calls the shared-folder server resolves every name with: each call is relative
    /// to a directory descriptor the server holds, never to a path string.
    /// </summary>
    /// <remarks>
    /// Descriptors are plain <see cref="int"/>s here, not <c>SafeHandle</c>s: the server's inode and handle tables own
    /// them, create and close them under one lock, and pass thousands per second; the tables are the owners.
    /// </remarks>
    internal static partial class FileSystem
    {
        public const int AT_FDCWD = -100;
        /// <summary>Do not follow a trailing symbolic link.</summary>
        public const int AT_SYMLINK_NOFOLLOW = 0x100;
        /// <summary>unlinkat: remove a directory.</summary>
        public const int AT_REMOVEDIR = 0x200;
        /// <summary>linkat: follow the old path (a /proc/self/fd magic link lands on the inode itself).</summary>
        public const int AT_SYMLINK_FOLLOW = 0x400;
        /// <summary>An empty path names the descriptor itself.</summary>
        public const int AT_EMPTY_PATH = 0x1000;

        public const int O_RDONLY = 0;
        public const int O_WRONLY = 1;
        public const int O_RDWR = 2;
        public const int O_ACCMODE = 3;
        public const int O_CREAT = 0x40;
        public const int O_EXCL = 0x80;
        public const int O_NOCTTY = 0x100;
        public const int O_TRUNC = 0x200;
        public const int O_APPEND = 0x400;
        public const int O_NONBLOCK = 0x800;
        public const int O_DSYNC = 0x1000;
        public const int O_SYNC = 0x101000;
        public const int O_CLOEXEC = 0x80000;
        /// <summary>A descriptor that only names an inode (no read or write), never follows the object it names.</summary>
        public const int O_PATH = 0x200000;

        /// <summary>O_DIRECTORY: 0x10000 on x86-64, 0x4000 on arm64.</summary>
        public static readonly int O_DIRECTORY = RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x4000 : 0x10000;
        /// <summary>O_NOFOLLOW: 0x20000 on x86-64, 0x8000 on arm64.</summary>
        public static readonly int O_NOFOLLOW = RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x8000 : 0x20000;

        public const uint S_IFMT = 0xF000;
        public const uint S_IFDIR = 0x4000;
        public const uint S_IFREG = 0x8000;
        public const uint S_IFLNK = 0xA000;

        public const uint RENAME_NOREPLACE = 1;
        public const uint RENAME_EXCHANGE = 2;

        public const int SEEK_SET = 0;

        /// <summary>statx: type, mode, nlink, uid, gid, times, ino, size, blocks.</summary>
        public const uint STATX_BASIC_STATS = 0x7FF;

        public const long UTIME_NOW = (1L << 30) - 1;
        public const long UTIME_OMIT = (1L << 30) - 2;

        /// <summary>struct statx_timestamp.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct StatxTimestamp
        {
            public long Seconds;
            public uint Nanoseconds;
            public int Reserved;
        }

        /// <summary>struct statx (the same on every Linux architecture).</summary>
        [StructLayout(LayoutKind.Sequential)]
        public unsafe struct Statx
        {
            public uint Mask;
            public uint BlockSize;
            public ulong Attributes;
            public uint Nlink;
            public uint Uid;
            public uint Gid;
            public ushort Mode;
            public ushort Spare0;
            public ulong Ino;
            public ulong Size;
            public ulong Blocks;
            public ulong AttributesMask;
            public StatxTimestamp Atime;
            public StatxTimestamp Btime;
            public StatxTimestamp Ctime;
            public StatxTimestamp Mtime;
            public uint RdevMajor;
            public uint RdevMinor;
            public uint DevMajor;
            public uint DevMinor;
            public fixed ulong Spare2[14];
        }

        /// <summary>struct statvfs (64-bit Linux glibc layout).</summary>
        [StructLayout(LayoutKind.Sequential)]
        public unsafe struct StatVfs
        {
            public ulong BlockSize;
            public ulong FragmentSize;
            public ulong Blocks;
            public ulong BlocksFree;
            public ulong BlocksAvailable;
            public ulong Files;
            public ulong FilesFree;
            public ulong FilesAvailable;
            public ulong FsId;
            public ulong Flags;
            public ulong NameMax;
            public fixed int Spare[6];
        }

        /// <summary>struct timespec.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct Timespec
        {
            public long Seconds;
            public long Nanoseconds;
        }

        [LibraryImport("libc", EntryPoint = "openat", SetLastError = true)]
        public static unsafe partial int OpenAt(int dirFd, byte* path, int flags, uint mode);

        [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
        public static partial int Close(int fd);

        [LibraryImport("libc", EntryPoint = "statx", SetLastError = true)]
        public static unsafe partial int StatxAt(int dirFd, byte* path, int flags, uint mask, Statx* buffer);

        [LibraryImport("libc", EntryPoint = "mkdirat", SetLastError = true)]
        public static unsafe partial int MkdirAt(int dirFd, byte* path, uint mode);

        [LibraryImport("libc", EntryPoint = "unlinkat", SetLastError = true)]
        public static unsafe partial int UnlinkAt(int dirFd, byte* path, int flags);

        [LibraryImport("libc", EntryPoint = "renameat2", SetLastError = true)]
        public static unsafe partial int RenameAt2(int oldDirFd, byte* oldPath, int newDirFd, byte* newPath, uint flags);

        [LibraryImport("libc", EntryPoint = "linkat", SetLastError = true)]
        public static unsafe partial int LinkAt(int oldDirFd, byte* oldPath, int newDirFd, byte* newPath, int flags);

        [LibraryImport("libc", EntryPoint = "symlinkat", SetLastError = true)]
        public static unsafe partial int SymlinkAt(byte* target, int newDirFd, byte* linkPath);

        [LibraryImport("libc", EntryPoint = "readlinkat", SetLastError = true)]
        public static unsafe partial nint ReadlinkAt(int dirFd, byte* path, byte* buffer, nint size);

        [LibraryImport("libc", EntryPoint = "fchmodat", SetLastError = true)]
        public static unsafe partial int FchmodAt(int dirFd, byte* path, uint mode, int flags);

        [LibraryImport("libc", EntryPoint = "utimensat", SetLastError = true)]
        public static unsafe partial int UtimensAt(int dirFd, byte* path, Timespec* times, int flags);

        [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
        public static partial int Ftruncate(int fd, long length);

        [LibraryImport("libc", EntryPoint = "fstatvfs", SetLastError = true)]
        public static unsafe partial int Fstatvfs(int fd, StatVfs* buffer);

        [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
        public static partial int Fsync(int fd);

        [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
        public static partial int Fdatasync(int fd);

        [LibraryImport("libc", EntryPoint = "pread64", SetLastError = true)]
        public static unsafe partial nint Pread(int fd, byte* buffer, nint count, long offset);

        [LibraryImport("libc", EntryPoint = "pwrite64", SetLastError = true)]
        public static unsafe partial nint Pwrite(int fd, byte* buffer, nint count, long offset);

        [LibraryImport("libc", EntryPoint = "lseek64", SetLastError = true)]
        public static partial long Lseek(int fd, long offset, int whence);

        [LibraryImport("libc", EntryPoint = "getdents64", SetLastError = true)]
        public static unsafe partial nint Getdents64(int fd, byte* buffer, nint count);
    }
}
