using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

internal static partial class Interop
{
    internal static partial class Libc
    {
        /// <summary>flock: take an exclusive lock.</summary>
        public const int LOCK_EX = 2;
        /// <summary>flock: take a shared lock.</summary>
        public const int LOCK_SH = 1;
        /// <summary>flock: fail with EWOULDBLOCK instead of waiting.</summary>
        public const int LOCK_NB = 4;
        /// <summary>errno: the lock is held by another open file description.</summary>
        public const int EWOULDBLOCK = 11;
        /// <summary>errno: interrupted system call.</summary>
        public const int EINTR = 4;
        /// <summary>errno: the operation is not supported by the file system.</summary>
        public const int EOPNOTSUPP = 95;
        /// <summary>fallocate: keep the file size when punching.</summary>
        public const int FALLOC_FL_KEEP_SIZE = 1;
        /// <summary>fallocate: deallocate the range (it reads as zeroes afterwards).</summary>
        public const int FALLOC_FL_PUNCH_HOLE = 2;
        /// <summary>fcntl: get an open-file-description lock's conflict.</summary>
        public const int F_OFD_GETLK = 36;
        /// <summary>fcntl: set an open-file-description lock without waiting.</summary>
        public const int F_OFD_SETLK = 37;
        /// <summary>flock.l_type: shared (read) lock.</summary>
        public const short F_RDLCK = 0;
        /// <summary>flock.l_type: exclusive (write) lock.</summary>
        public const short F_WRLCK = 1;
        /// <summary>flock.l_type: unlocked.</summary>
        public const short F_UNLCK = 2;

        /// <summary>struct iovec.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct IoVec
        {
            public nint Base;
            public nint Length;
        }

        /// <summary>struct flock (x86-64 / arm64 Linux layout).</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct FileLock
        {
            public short Type;
            public short Whence;
            public long Start;
            public long Length;
            public int Pid;
        }

        [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
        public static partial int Flock(SafeFileHandle fd, int operation);

        [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
        public static partial int Fallocate(SafeFileHandle fd, int mode, long offset, long length);

        [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
        public static partial int Fdatasync(SafeFileHandle fd);

        /// <summary>errno: the operation would block (RWF_NOWAIT: the data is not in the page cache).</summary>
        public const int EAGAIN = 11;
        /// <summary>errno: invalid argument (an old kernel refusing a flag of preadv2/pwritev2).</summary>
        public const int EINVAL = 22;
        /// <summary>errno: no such system call.</summary>
        public const int ENOSYS = 38;
        /// <summary>preadv2/pwritev2 flag: fail with EAGAIN instead of waiting for the storage device (page cache hits only).</summary>
        public const int RWF_NOWAIT = 8;

        [LibraryImport("libc", EntryPoint = "pread", SetLastError = true)]
        public static unsafe partial nint Pread(SafeFileHandle fd, byte* buffer, nint count, long offset);

        [LibraryImport("libc", EntryPoint = "pwrite", SetLastError = true)]
        public static unsafe partial nint Pwrite(SafeFileHandle fd, byte* buffer, nint count, long offset);

        [LibraryImport("libc", EntryPoint = "preadv2", SetLastError = true)]
        public static unsafe partial nint Preadv2(SafeFileHandle fd, IoVec* iov, int count, long offset, int flags);

        [LibraryImport("libc", EntryPoint = "pwritev2", SetLastError = true)]
        public static unsafe partial nint Pwritev2(SafeFileHandle fd, IoVec* iov, int count, long offset, int flags);

        [LibraryImport("libc", EntryPoint = "preadv", SetLastError = true)]
        public static unsafe partial nint Preadv(SafeFileHandle fd, IoVec* iov, int count, long offset);

        [LibraryImport("libc", EntryPoint = "pwritev", SetLastError = true)]
        public static unsafe partial nint Pwritev(SafeFileHandle fd, IoVec* iov, int count, long offset);

        /// <summary>statfs.f_type of tmpfs (and of /dev/shm).</summary>
        public const long TMPFS_MAGIC = 0x01021994;
        /// <summary>statfs.f_type of ramfs.</summary>
        public const long RAMFS_MAGIC = 0x858458f6;
        /// <summary>statfs.f_type of hugetlbfs.</summary>
        public const long HUGETLBFS_MAGIC = 0x958458f6;

        /// <summary>fstatfs into a buffer of at least 120 bytes (struct statfs; f_type is its first field, a long, on 64-bit Linux).</summary>
        [LibraryImport("libc", EntryPoint = "fstatfs", SetLastError = true)]
        public static unsafe partial int Fstatfs(SafeFileHandle fd, byte* buffer);

        /// <summary>fcntl: the process that receives SIGIO for the file (0: none).</summary>
        public const int F_SETOWN = 8;
        /// <summary>fcntl: take (F_RDLCK, F_WRLCK) or release (F_UNLCK) a lease.</summary>
        public const int F_SETLEASE = 1024;
        /// <summary>fcntl: the lease held, or the type it is being broken to.</summary>
        public const int F_GETLEASE = 1025;
        /// <summary>mmap: pages may be read.</summary>
        public const int PROT_READ = 1;
        /// <summary>mmap: pages may be written.</summary>
        public const int PROT_WRITE = 2;
        /// <summary>mmap: changes reach the file, and others' changes are seen.</summary>
        public const int MAP_SHARED = 1;
        /// <summary>mmap: reserve no swap for the range.</summary>
        public const int MAP_NORESERVE = 0x4000;
        /// <summary>lseek: the next offset holding data.</summary>
        public const int SEEK_DATA = 3;
        /// <summary>lseek: the next offset in a hole (or the end of the file).</summary>
        public const int SEEK_HOLE = 4;

        [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
        public static partial int FcntlInt(SafeFileHandle fd, int command, int argument);

        [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
        public static partial nint Mmap(nint address, nuint length, int protection, int flags, SafeFileHandle fd, long offset);

        [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
        public static partial int Munmap(nint address, nuint length);

        [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
        public static partial long Lseek(SafeFileHandle fd, long offset, int whence);

        [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
        public static unsafe partial int FcntlLock(SafeFileHandle fd, int command, FileLock* fileLock);
    }
}
