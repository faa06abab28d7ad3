using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using Microsoft.Win32.SafeHandles;

namespace Virt.Network;

/// <summary>
/// A Linux TAP interface as a network backend: frames the guest sends appear on the host interface, frames the
/// host sends to it reach the guest. Opened with <c>IFF_TAP | IFF_NO_PI | IFF_VNET_HDR</c> and a 12-byte
/// virtio-net header; no offloads are enabled (<c>TUNSETOFFLOAD</c> 0), so the kernel hands over complete,
/// checksummed frames and expects the same.
/// </summary>
/// <remarks>
/// Needs CAP_NET_ADMIN (or a persistent TAP interface owned by the user). The interface is created in the network
/// namespace of the calling thread.
/// </remarks>
[SupportedOSPlatform("linux")]
public sealed class TapBackend : INetworkBackend
{
    private const int VnetHeaderSize = 12;
    private const int MaxFrame = 65536 + 18;
    private const int PollIntervalMs = 100;

    private readonly SafeFileHandle _handle;
    private readonly int _fd;
    private readonly Lock _sync = new();
    private Func<ReadOnlyMemory<byte>, bool>? _receiver;
    private Thread? _reader;
    private volatile bool _disposed;

    private TapBackend(SafeFileHandle handle, int fd, string name)
    {
        _handle = handle;
        _fd = fd;
        InterfaceName = name;
    }

    /// <summary>The host interface name, e.g. <c>tap0</c>.</summary>
    public string InterfaceName { get; }

    /// <summary>
    /// Opens (creating if needed) the TAP interface <paramref name="interfaceName"/>; an empty name or one ending in
    /// <c>%d</c> lets the kernel pick (<c>tap%d</c>).
    /// </summary>
    /// <exception cref="IOException">The TAP device cannot be opened or configured (the message says why).</exception>
    public static unsafe TapBackend Open(string interfaceName = "tap%d")
    {
        ArgumentNullException.ThrowIfNull(interfaceName);
        byte[] name = System.Text.Encoding.ASCII.GetBytes(interfaceName.Length == 0 ? "tap%d" : interfaceName);
        if (name.Length > 15)
        {
            throw new ArgumentException($"Interface name '{interfaceName}' is longer than 15 characters.", nameof(interfaceName));
        }

        int fd = Interop.Libc.Open("/dev/net/tun", Interop.Libc.O_RDWR | Interop.Libc.O_CLOEXEC);
        if (fd < 0)
        {
            throw Error("opening /dev/net/tun", "Load the tun module and make sure /dev/net/tun exists and is accessible.");
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            var req = default(Interop.Libc.IfReq);
            name.AsSpan().CopyTo(new Span<byte>(req.Name, 16));
            req.Flags = Interop.Libc.IFF_TAP | Interop.Libc.IFF_NO_PI | Interop.Libc.IFF_VNET_HDR;
            if (Interop.Libc.IoctlIfReq(handle, Interop.Libc.TUNSETIFF, ref req) < 0)
            {
                throw Error($"TUNSETIFF for '{interfaceName}'", "Run with CAP_NET_ADMIN, or create a persistent TAP owned by this user (ip tuntap add mode tap user ...).");
            }

            int headerSize = VnetHeaderSize;
            if (Interop.Libc.IoctlInt(handle, Interop.Libc.TUNSETVNETHDRSZ, ref headerSize) < 0)
            {
                throw Error("TUNSETVNETHDRSZ", "The kernel's TAP driver is too old for virtio-net headers.");
            }

            // No offloads: the seam carries plain frames, so nothing downstream could honour partial checksums or GSO.
            if (Interop.Libc.IoctlValue(handle, Interop.Libc.TUNSETOFFLOAD, 0) < 0)
            {
                throw Error("TUNSETOFFLOAD", "The kernel refused to disable TAP offloads.");
            }

            var actual = new Span<byte>(req.Name, 16);
            int end = actual.IndexOf((byte)0);
            return new TapBackend(handle, fd, System.Text.Encoding.ASCII.GetString(actual[..(end < 0 ? 16 : end)]));
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public unsafe ValueTask SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (frame.Length > MaxFrame)
        {
            return ValueTask.CompletedTask;
        }

        byte[] buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(VnetHeaderSize + frame.Length);
        try
        {
            buffer.AsSpan(0, VnetHeaderSize).Clear();
            frame.Span.CopyTo(buffer.AsSpan(VnetHeaderSize));
            fixed (byte* p = buffer)
            {
                // SAFETY: p points at a pinned buffer of at least VnetHeaderSize + frame.Length bytes.
                nint n = Interop.Libc.Write(_handle, p, (nuint)(VnetHeaderSize + frame.Length));
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();

                    // A down interface or full queue drops the frame, as a cable would.
                    if (errno is not (Interop.Libc.EAGAIN or 5 /* EIO: interface down */))
                    {
                        throw new IOException($"Writing a frame to TAP '{InterfaceName}' failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
                    }
                }
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }

        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public void Attach(Func<ReadOnlyMemory<byte>, bool> receiver)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        lock (_sync)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Volatile.Write(ref _receiver, receiver);
            if (_reader is null)
            {
                _reader = new Thread(ReadLoop) { IsBackground = true, Name = $"tap {InterfaceName}" };
                _reader.Start();
            }
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        Thread? reader;
        lock (_sync)
        {
            if (_disposed)
            {
                return ValueTask.CompletedTask;
            }

            _disposed = true;
            reader = _reader;
        }

        reader?.Join();
        _handle.Dispose();
        return ValueTask.CompletedTask;
    }

    private unsafe void ReadLoop()
    {
        byte[] buffer = new byte[VnetHeaderSize + MaxFrame];
        while (!_disposed)
        {
            var pfd = new Interop.Libc.PollFd { Fd = _fd, Events = Interop.Libc.POLLIN };

            // Poll with a timeout so the loop notices disposal: closing the fd does not wake a blocked read.
            int ready = Interop.Libc.Poll(ref pfd, 1, PollIntervalMs);
            if (ready <= 0 || (pfd.Revents & Interop.Libc.POLLIN) == 0)
            {
                continue;
            }

            nint n;
            fixed (byte* p = buffer)
            {
                // SAFETY: p points at the pinned buffer; read writes at most buffer.Length bytes.
                n = Interop.Libc.Read(_handle, p, (nuint)buffer.Length);
            }

            if (n <= VnetHeaderSize)
            {
                continue;
            }

            Volatile.Read(ref _receiver)?.Invoke(buffer.AsMemory(VnetHeaderSize, (int)n - VnetHeaderSize));
        }
    }

    private static IOException Error(string what, string advice)
    {
        int errno = Marshal.GetLastPInvokeError();
        return new IOException($"{what} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}). {advice}");
    }
}
