using System.Runtime.InteropServices;

namespace Virt;

internal static partial class TerminalInterop
{
    internal const int StandardInput = 0;
    internal const int StandardOutput = 1;
    internal const int TCSANOW = 0;
    internal const short POLLIN = 0x1;
    internal const int EINTR = 4;
    internal const int EAGAIN = 11;

    /// <summary>Bytes reserved for a <c>struct termios</c>: more than any libc's (glibc and musl 60, macOS 72).</summary>
    internal const int TermiosBufferSize = 256;

    internal static nuint WindowSizeRequest => OperatingSystem.IsMacOS() ? 0x40087468u : 0x5413u; // TIOCGWINSZ

    [LibraryImport("libc", EntryPoint = "isatty")]
    internal static partial int IsATty(int fd);

    [LibraryImport("libc", EntryPoint = "tcgetattr", SetLastError = true)]
    internal static unsafe partial int TcGetAttr(int fd, byte* termios);

    [LibraryImport("libc", EntryPoint = "tcsetattr", SetLastError = true)]
    internal static unsafe partial int TcSetAttr(int fd, int optionalActions, byte* termios);

    [LibraryImport("libc", EntryPoint = "cfmakeraw")]
    internal static unsafe partial void CfMakeRaw(byte* termios);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    internal static unsafe partial int Ioctl(int fd, nuint request, ushort* winsize);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    internal static unsafe partial int Poll(PollFd* fds, nuint count, int timeoutMilliseconds);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    internal static unsafe partial nint Read(int fd, byte* buffer, nuint count);

    [StructLayout(LayoutKind.Sequential)]
    internal struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    internal static partial class Windows
    {
        internal const int StdInputHandle = -10;
        internal const uint EnableProcessedInput = 0x1;
        internal const uint EnableLineInput = 0x2;
        internal const uint EnableEchoInput = 0x4;
        internal const uint EnableVirtualTerminalInput = 0x200;

        [LibraryImport("kernel32.dll", SetLastError = true)]
        internal static partial nint GetStdHandle(int handle);

        [LibraryImport("kernel32.dll", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        internal static partial bool GetConsoleMode(nint handle, out uint mode);

        [LibraryImport("kernel32.dll", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        internal static partial bool SetConsoleMode(nint handle, uint mode);
    }
}
