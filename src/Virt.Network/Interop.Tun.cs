using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Virt.Network;

internal static partial class Interop
{
    internal static partial class Libc
    {
        /// <summary>open: read and write.</summary>
        public const int O_RDWR = 2;
        /// <summary>open: close on exec.</summary>
        public const int O_CLOEXEC = 0x80000;
        /// <summary>poll: data to read.</summary>
        public const short POLLIN = 1;
        /// <summary>errno: interrupted system call.</summary>
        public const int EINTR = 4;
        /// <summary>errno: no data right now.</summary>
        public const int EAGAIN = 11;

        /// <summary>_IOW('T', 202, int): attach the fd to a TUN/TAP interface.</summary>
        public const uint TUNSETIFF = 0x400454ca;
        /// <summary>_IOW('T', 208, unsigned int): which offloads the fd's reader can take.</summary>
        public const uint TUNSETOFFLOAD = 0x400454d0;
        /// <summary>_IOW('T', 216, int): size of the virtio-net header prepended to each frame.</summary>
        public const uint TUNSETVNETHDRSZ = 0x400454d8;
        /// <summary>ifr_flags: Ethernet frames (TAP, not TUN).</summary>
        public const short IFF_TAP = 0x0002;
        /// <summary>ifr_flags: no packet-information prefix.</summary>
        public const short IFF_NO_PI = 0x1000;
        /// <summary>ifr_flags: each frame is prefixed with a virtio-net header.</summary>
        public const short IFF_VNET_HDR = 0x4000;

        [StructLayout(LayoutKind.Sequential)]
        public unsafe struct IfReq
        {
            public fixed byte Name[16];
            public short Flags;
            public fixed byte Padding[22];
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct PollFd
        {
            public int Fd;
            public short Events;
            public short Revents;
        }

        [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        public static partial int Open(string path, int flags);

        [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
        public static partial int IoctlIfReq(SafeFileHandle fd, nuint request, ref IfReq ifreq);

        [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
        public static partial int IoctlInt(SafeFileHandle fd, nuint request, ref int value);

        [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
        public static partial int IoctlValue(SafeFileHandle fd, nuint request, nuint value);

        [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
        public static unsafe partial nint Read(SafeFileHandle fd, byte* buffer, nuint count);

        [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
        public static unsafe partial nint Write(SafeFileHandle fd, byte* buffer, nuint count);

        [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
        public static partial int Poll(ref PollFd fds, nuint count, int timeoutMs);
    }
}
