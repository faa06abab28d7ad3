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
        /// <summary>errno: the operation is not supported by the file system.</summary>
        public const int EOPNOTSUPP = 95;
        /// <summary>fallocate: keep the file size when punching.</summary>
        public const int FALLOC_FL_KEEP_SIZE = 1;
        /// <summary>fallocate: deallocate the range (it reads as zeroes afterwards).</summary>
        public const int FALLOC_FL_PUNCH_HOLE = 2;

        [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
        public static partial int Flock(SafeFileHandle fd, int operation);

        [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
        public static partial int Fallocate(SafeFileHandle fd, int mode, long offset, long length);
    }
}
