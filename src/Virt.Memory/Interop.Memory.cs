using System.Runtime.InteropServices;

namespace Virt.Memory;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int PROT_READ = 0x1;
        internal const int PROT_WRITE = 0x2;
        internal const int MAP_PRIVATE = 0x02;
        internal const int MAP_FIXED = 0x10;
        internal const int MAP_ANONYMOUS = 0x20;
        internal const int MAP_NORESERVE = 0x4000;
        internal const int MADV_DONTNEED = 4;

        [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
        internal static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

        [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
        internal static partial int Munmap(nint addr, nuint length);

        [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
        internal static partial int Madvise(nint addr, nuint length, int advice);

        [LibraryImport("libc", EntryPoint = "mincore", SetLastError = true)]
        internal static unsafe partial int Mincore(nint addr, nuint length, byte* vec);
    }

    internal static partial class Kernel32
    {
        internal const uint MEM_COMMIT = 0x1000;
        internal const uint MEM_RESERVE = 0x2000;
        internal const uint MEM_RELEASE = 0x8000;
        internal const uint PAGE_READWRITE = 0x04;

        [LibraryImport("kernel32", EntryPoint = "VirtualAlloc", SetLastError = true)]
        internal static partial nint VirtualAlloc(nint address, nuint size, uint allocationType, uint protect);

        [LibraryImport("kernel32", EntryPoint = "VirtualFree", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        internal static partial bool VirtualFree(nint address, nuint size, uint freeType);
    }
}
