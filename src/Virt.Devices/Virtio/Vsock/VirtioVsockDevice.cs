using System.Buffers;
using System.Buffers.Binary;

namespace Virt.Devices.Virtio;

/// <summary>
/// A virtio-vsock device (virtio 1.2, section 5.10): stream sockets between the host (CID 2) and programs in the
/// guest (its own CID), which Linux reaches with <c>AF_VSOCK</c> through <c>vmw_vsock_virtio_transport</c>. The host
/// side is .NET streams: <see cref="ConnectAsync"/> opens a connection to a guest port, <see cref="Listen"/> accepts
/// connections guest programs open to a host port.
/// </summary>
/// <remarks>
/// <para>
/// Queues: receive (0, packets for the guest), transmit (1, packets from the guest) and event (2, unused: the device
/// never sends TRANSPORT_RESET). Only stream sockets (no SEQPACKET feature). Configuration space: the guest's CID.
/// </para>
/// <para>
/// Flow control follows the spec's credit scheme per connection (buf_alloc and fwd_cnt in every packet): the guest
/// may send at most 256 KiB the host has not read yet, the host sends only within the credit the guest's socket
/// advertises, and host writes wait while 256 KiB are queued. Many connections run at once (up to 4096); packets
/// for the guest are served connection by connection in turn.
/// </para>
/// <para>
/// The guest is hostile: a malformed packet (short header, a length past the buffer, a foreign CID, an unknown op or
/// socket type, a credit overrun, data on a closed connection) is refused and logged at debug level (event 4005)
/// and, where it names a connection, answered with RST; it never fails the device. A driver reset ends every
/// connection (host streams throw <see cref="IOException"/>); listeners stay. Connections do not survive a snapshot.
/// </para>
/// <para>Threading: the host API is thread-safe; queues are served on the thread pool.</para>
/// </remarks>
public sealed class VirtioVsockDevice : VirtioDevice
{
    /// <summary>The virtio device id of a socket device (virtio 1.2, section 5).</summary>
    public const VirtioDeviceType SocketDeviceType = (VirtioDeviceType)19;

    /// <summary>The guest CID used when none is given: the first CID that is not reserved.</summary>
    public const uint DefaultGuestCid = 3;

    /// <summary>Index of the receive queue (packets for the guest).</summary>
    public const int ReceiveQueue = 0;

    /// <summary>Index of the transmit queue (packets from the guest).</summary>
    public const int TransmitQueue = 1;

    /// <summary>Index of the event queue.</summary>
    public const int EventQueue = 2;

    private readonly VsockMultiplexer _mux;

    /// <summary>Creates the device for a guest whose CID is <paramref name="guestCid"/>.</summary>
    /// <param name="guestCid">The guest's context id: 3 or more, below 0xFFFFFFFF (0-2 name the hypervisor, loopback and host).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="guestCid"/> is reserved.</exception>
    public VirtioVsockDevice(uint guestCid = DefaultGuestCid)
    {
        if (guestCid < 3 || guestCid == uint.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(guestCid), guestCid, "CIDs 0, 1 and 2 are reserved (hypervisor, loopback, host) and 0xFFFFFFFF means any; give the guest 3 or more.");
        }

        _mux = new VsockMultiplexer(guestCid, reason => Context?.LogRefusedRequest(reason));
        var receiver = AddWorker(ReceiveAsync, ReceiveQueue);
        AddWorker(TransmitAsync, TransmitQueue);
        _mux.SetWake(receiver.Kick);
    }

    /// <summary>The guest's context id (what <c>connect()</c> in another VM or the host would address).</summary>
    public ulong GuestCid => _mux.GuestCid;

    /// <summary>Connections open now (including ones being opened or closed).</summary>
    public int ConnectionCount => _mux.ConnectionCount;

    /// <inheritdoc />
    public override VirtioDeviceType DeviceType => SocketDeviceType;

    /// <inheritdoc />
    public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [256, 256, 16];

    /// <summary>8 bytes: <c>guest_cid</c> (le64).</summary>
    public override int ConfigSize => 8;

    /// <inheritdoc />
    public override void ReadConfig(int offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(config, _mux.GuestCid);
        config.Slice(offset, data.Length).CopyTo(data);
    }

    /// <summary>
    /// Opens a connection to the program listening on guest port <paramref name="port"/> and completes once the guest
    /// accepted it. Waits while the guest has not loaded its driver yet.
    /// </summary>
    /// <param name="port">The guest port.</param>
    /// <param name="cancellationToken">Cancels the attempt (the guest then sees RST).</param>
    /// <exception cref="IOException">The guest refused the connection (nothing listens on the port), or the device was reset.</exception>
    public Task<VsockStream> ConnectAsync(uint port, CancellationToken cancellationToken = default) => _mux.ConnectAsync(port, cancellationToken);

    /// <summary>Listens on host port <paramref name="port"/> for connections guest programs open to CID 2.</summary>
    /// <exception cref="InvalidOperationException">The port already has a listener.</exception>
    public VsockListener Listen(uint port) => _mux.Listen(port);

    /// <inheritdoc />
    protected override void OnReset() => _mux.ResetAll();

    private Task ReceiveAsync(VirtioDeviceContext context)
    {
        var queue = context.Queues[ReceiveQueue];
        byte[] buffer = ArrayPool<byte>.Shared.Rent(VsockHeader.Size + VsockProtocol.MaxPayload);
        bool used = false;
        try
        {
            while (!context.Stopping.IsCancellationRequested && _mux.HasPacketForGuest && queue.TryPop(out var chain))
            {
                int room = (int)Math.Min(chain.WritableLength, VsockHeader.Size + VsockProtocol.MaxPayload);
                if (room < VsockHeader.Size)
                {
                    context.LogRefusedRequest($"a receive buffer of {chain.WritableLength} writable byte(s) cannot hold the {VsockHeader.Size}-byte header; returned unused");
                    queue.AddUsed(chain, 0);
                    used = true;
                    continue;
                }

                if (!_mux.TryTakePacketForGuest(buffer.AsSpan(0, room), out int length))
                {
                    queue.Rewind(1);
                    break;
                }

                int written = chain.Write(0, buffer.AsSpan(0, length));
                queue.AddUsed(chain, (uint)written);
                used = true;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }

        if (used)
        {
            context.SignalUsed(queue);
        }

        return Task.CompletedTask;
    }

    private Task TransmitAsync(VirtioDeviceContext context)
    {
        var queue = context.Queues[TransmitQueue];
        byte[] buffer = ArrayPool<byte>.Shared.Rent(VsockHeader.Size + VsockProtocol.MaxPayload);
        bool used = false;
        try
        {
            while (!context.Stopping.IsCancellationRequested && queue.TryPop(out var chain))
            {
                int headerBytes = chain.Read(0, buffer.AsSpan(0, VsockHeader.Size));
                var parsed = VsockPacketParser.Parse(buffer.AsSpan(0, headerBytes), chain.ReadableLength, _mux.GuestCid);
                int payloadLength = parsed.Verdict == VsockVerdict.Accept ? (int)parsed.Header.Length : 0;
                int got = payloadLength == 0 ? 0 : chain.Read(VsockHeader.Size, buffer.AsSpan(VsockHeader.Size, payloadLength));
                queue.AddUsed(chain, 0);
                used = true;
                if (got != payloadLength)
                {
                    parsed = new VsockParseResult(VsockVerdict.Drop, parsed.Header, "the payload is not readable guest RAM");
                }

                _mux.HandleFromGuest(parsed, buffer.AsSpan(VsockHeader.Size, got));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }

        if (used)
        {
            context.SignalUsed(queue);
        }

        return Task.CompletedTask;
    }
}
