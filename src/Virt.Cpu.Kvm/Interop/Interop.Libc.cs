using System.Runtime.InteropServices;

namespace Virt.Cpu.Kvm;

internal static partial class Interop
{
    /// <summary>The C library calls the backend needs: files, ioctl, mappings, threads and signals.</summary>
    internal static partial class Libc
    {
        /// <summary>open(2) flag: read and write.</summary>
        internal const int O_RDWR = 0x2;
        /// <summary>open(2) flag: close the descriptor on exec so child processes never inherit KVM objects.</summary>
        internal const int O_CLOEXEC = 0x80000;

        /// <summary>mmap(2) protection: readable.</summary>
        internal const int PROT_READ = 0x1;
        /// <summary>mmap(2) protection: writable.</summary>
        internal const int PROT_WRITE = 0x2;
        /// <summary>mmap(2) flag: changes are shared with the kernel object behind the descriptor.</summary>
        internal const int MAP_SHARED = 0x1;
        /// <summary>mmap(2) failure value.</summary>
        internal static readonly nint MAP_FAILED = -1;

        /// <summary>pthread_sigmask(3) operation: add the set to the blocked signals.</summary>
        internal const int SIG_BLOCK = 0;

        internal const int EINTR = 4;
        internal const int ENOENT = 2;
        internal const int ENXIO = 6;
        internal const int E2BIG = 7;
        internal const int EINVAL = 22;
        internal const int EAGAIN = 11;
        internal const int EACCES = 13;
        internal const int EFAULT = 14;
        internal const int EEXIST = 17;
        internal const int ENODEV = 19;
        internal const int EPERM = 1;

        [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int Open(string path, int flags);

        [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
        internal static partial int Close(int fd);

        /// <summary>ioctl(2) with an integer or pointer argument.</summary>
        [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
        internal static partial int Ioctl(SafeHandle fd, nuint request, nint argument);

        [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
        internal static partial nint Mmap(nint address, nuint length, int protection, int flags, SafeHandle fd, long offset);

        [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
        internal static partial int Munmap(nint address, nuint length);

        [LibraryImport("libc", EntryPoint = "gettid")]
        internal static partial int GetTid();

        [LibraryImport("libc", EntryPoint = "getpid")]
        internal static partial int GetPid();

        [LibraryImport("libc", EntryPoint = "pthread_self")]
        internal static partial nuint PthreadSelf();

        /// <summary>Sends <paramref name="signal"/> to thread <paramref name="tid"/> of process <paramref name="tgid"/> only.</summary>
        [LibraryImport("libc", EntryPoint = "tgkill", SetLastError = true)]
        internal static partial int Tgkill(int tgid, int tid, int signal);

        /// <summary>The first real-time signal number glibc leaves to applications.</summary>
        [LibraryImport("libc", EntryPoint = "__libc_current_sigrtmin")]
        internal static partial int CurrentSigRtMin();

        /// <summary>The last real-time signal number.</summary>
        [LibraryImport("libc", EntryPoint = "__libc_current_sigrtmax")]
        internal static partial int CurrentSigRtMax();

        [LibraryImport("libc", EntryPoint = "sigaction", SetLastError = true)]
        internal static unsafe partial int SigAction(int signal, SigActionData* action, SigActionData* oldAction);

        [LibraryImport("libc", EntryPoint = "pthread_sigmask")]
        internal static unsafe partial int PthreadSigmask(int how, SigSet* set, SigSet* oldSet);

        [LibraryImport("libc", EntryPoint = "sigtimedwait", SetLastError = true)]
        internal static unsafe partial int SigTimedWait(SigSet* set, nint info, TimeSpec* timeout);

        /// <summary>glibc's <c>sigset_t</c> (1024 bits); signal <c>n</c> is bit <c>n - 1</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct SigSet
        {
            internal fixed ulong Bits[16];

            internal void Add(int signal) => Bits[(signal - 1) / 64] |= 1UL << ((signal - 1) % 64);

            internal void Remove(int signal) => Bits[(signal - 1) / 64] &= ~(1UL << ((signal - 1) % 64));
        }

        /// <summary>glibc's x86-64 <c>struct sigaction</c> (152 bytes).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct SigActionData
        {
            /// <summary><c>sa_handler</c>: a native function <c>void (int)</c>.</summary>
            internal nint Handler;
            internal SigSet Mask;
            internal int Flags;
            private readonly int _padding;
            internal nint Restorer;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct TimeSpec
        {
            internal long Seconds;
            internal long Nanoseconds;
        }
    }
}
