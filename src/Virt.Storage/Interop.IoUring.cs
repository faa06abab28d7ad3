using System.Runtime.InteropServices;

namespace Virt.Storage;

internal static partial class Interop
{
    /// <summary>
    /// io_uring through its raw system calls (linux/io_uring.h; x86-64 numbers). Only what <see cref="IoUring"/> uses:
    /// setup, enter, the mmap offsets of the rings, and READ/READV/WRITE/WRITEV entries.
    /// </summary>
    internal static partial class IoUringSys
    {
        /// <summary>io_uring_setup(entries, params) on x86-64.</summary>
        public const long SYS_io_uring_setup = 425;
        /// <summary>io_uring_enter(fd, to_submit, min_complete, flags, sig, sigsz) on x86-64.</summary>
        public const long SYS_io_uring_enter = 426;

        /// <summary>Setup: keep submitting the batch after an entry fails to prepare (5.18), so every entry gets a completion.</summary>
        public const uint IORING_SETUP_SUBMIT_ALL = 1u << 7;
        /// <summary>Features: the SQ and CQ rings share one mapping (5.4).</summary>
        public const uint IORING_FEAT_SINGLE_MMAP = 1u << 0;
        /// <summary>Features: completions are never dropped when the CQ ring is full (5.5).</summary>
        public const uint IORING_FEAT_NODROP = 1u << 1;
        /// <summary>Enter: wait for min_complete completions.</summary>
        public const uint IORING_ENTER_GETEVENTS = 1u << 0;

        /// <summary>mmap offset of the SQ ring.</summary>
        public const long IORING_OFF_SQ_RING = 0;
        /// <summary>mmap offset of the CQ ring.</summary>
        public const long IORING_OFF_CQ_RING = 0x8000000;
        /// <summary>mmap offset of the submission entries.</summary>
        public const long IORING_OFF_SQES = 0x10000000;

        public const byte IORING_OP_READV = 1;
        public const byte IORING_OP_WRITEV = 2;
        public const byte IORING_OP_READ = 22;
        public const byte IORING_OP_WRITE = 23;

        /// <summary>Size of struct io_uring_sqe (without IORING_SETUP_SQE128).</summary>
        public const int SqeSize = 64;
        /// <summary>Size of struct io_uring_cqe (without IORING_SETUP_CQE32).</summary>
        public const int CqeSize = 16;

        /// <summary>mmap: fault the pages in now.</summary>
        public const int MAP_POPULATE = 0x8000;
        /// <summary>errno: operation not permitted (seccomp, io_uring_disabled = 2, or a group the caller is not in).</summary>
        public const int EPERM = 1;
        /// <summary>errno: device or resource busy (completion ring overflow backlog).</summary>
        public const int EBUSY = 16;
        /// <summary>errno: the request was cancelled.</summary>
        public const int ECANCELED = 125;

        /// <summary>struct io_sqring_offsets.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct SqRingOffsets
        {
            public uint Head;
            public uint Tail;
            public uint RingMask;
            public uint RingEntries;
            public uint Flags;
            public uint Dropped;
            public uint Array;
            public uint Resv1;
            public ulong UserAddr;
        }

        /// <summary>struct io_cqring_offsets.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct CqRingOffsets
        {
            public uint Head;
            public uint Tail;
            public uint RingMask;
            public uint RingEntries;
            public uint Overflow;
            public uint Cqes;
            public uint Flags;
            public uint Resv1;
            public ulong UserAddr;
        }

        /// <summary>struct io_uring_params (120 bytes).</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct Params
        {
            public uint SqEntries;
            public uint CqEntries;
            public uint Flags;
            public uint SqThreadCpu;
            public uint SqThreadIdle;
            public uint Features;
            public uint WqFd;
            public uint Resv0;
            public uint Resv1;
            public uint Resv2;
            public SqRingOffsets SqOff;
            public CqRingOffsets CqOff;
        }

        /// <summary>syscall(2): the C library's entry for a raw system call; returns -1 and sets errno on failure.</summary>
        [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
        public static partial long Syscall(long number, nint a1, nint a2, nint a3, nint a4, nint a5, nint a6);

        [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
        public static partial int Close(int fd);

        [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
        public static partial nint MmapFd(nint address, nuint length, int protection, int flags, int fd, long offset);
    }
}
