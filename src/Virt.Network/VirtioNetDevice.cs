using System.Buffers;
using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Virt.Snapshots;

namespace Virt.Network;

/// <summary>Settings of a <see cref="VirtioNetDevice"/>.</summary>
public sealed record VirtioNetOptions
{
    /// <summary>Size of the receive and transmit queues (a power of two, 4 to 32768).</summary>
    public ushort QueueSize { get; init; } = 256;

    /// <summary>Offer mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF). On by default.</summary>
    public bool MergeableReceiveBuffers { get; init; } = true;

    /// <summary>
    /// Offer transmit checksum offload (VIRTIO_NET_F_CSUM): the guest may leave a TCP/UDP checksum to the device,
    /// which completes it in software before the frame reaches the backend. On by default.
    /// </summary>
    public bool TransmitChecksumOffload { get; init; } = true;

    /// <summary>
    /// Offer receive checksum offload and TCP segmentation offload both ways (VIRTIO_NET_F_GUEST_CSUM,
    /// HOST_TSO4/6, GUEST_TSO4/6) when the backend ends the traffic itself (a <see cref="UserModeNetwork"/>): the guest
    /// then hands over TCP segments of up to 64 KiB with partial checksums and takes such segments back, which cuts
    /// the frames (and the guest's per-packet work) by up to forty-five times. Never offered over a switch or TAP,
    /// which carry frames of wire size. On by default; host segmentation also needs <see cref="TransmitChecksumOffload"/>.
    /// </summary>
    public bool SegmentationOffload { get; init; } = true;

    /// <summary>Guest-to-network bandwidth limit in bytes per second; null for none (frames wait).</summary>
    public long? TransmitBytesPerSecond { get; init; }

    /// <summary>Network-to-guest bandwidth limit in bytes per second; null for none (excess frames are dropped).</summary>
    public long? ReceiveBytesPerSecond { get; init; }
}

/// <summary>
/// A virtio-net device (virtio 1.2, section 5.1) with one receive/transmit queue pair over an
/// <see cref="INetworkBackend"/>. It offers MAC, STATUS, mergeable receive buffers and transmit checksum
/// offload (completed in software unless the backend takes partial checksums). Over a backend that ends the traffic
/// itself (the user-mode network) it also offers receive checksum offload and TCP segmentation offload both ways;
/// over a switch or TAP, which carry plain Ethernet frames of wire size, it does not.
/// </summary>
/// <remarks>
/// Snapshots: the device holds no frame between requests (a frame arriving without a receive buffer, or while the
/// transport is quiesced, is dropped, as on a wire), so its state is the MAC address the guest read and the link
/// state. A restore needs a device with the same MAC address; the link state comes from the snapshot.
/// </remarks>
public sealed class VirtioNetDevice : VirtioDevice, IPersistentState
{
    internal const ulong FeatureCsum = 1UL << 0;
    internal const ulong FeatureGuestCsum = 1UL << 1;
    internal const ulong FeatureGuestTso4 = 1UL << 7;
    internal const ulong FeatureGuestTso6 = 1UL << 8;
    internal const ulong FeatureHostTso4 = 1UL << 11;
    internal const ulong FeatureHostTso6 = 1UL << 12;
    internal const ulong FeatureMac = 1UL << 5;
    internal const ulong FeatureMergeableRxBuffers = 1UL << 15;
    internal const ulong FeatureStatus = 1UL << 16;

    /// <summary>virtio_net_hdr_v1 size: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.</summary>
    internal const int HeaderSize = 12;
    /// <summary>Header flag: the checksum at csum_start/csum_offset is partial and must be completed.</summary>
    internal const byte HeaderNeedsChecksum = 1;
    /// <summary>Status bit: link up.</summary>
    private const ushort StatusLinkUp = 1;
    /// <summary>Largest frame accepted from the guest (64 KiB payload plus Ethernet and VLAN headers).</summary>
    internal const int MaxFrameSize = 65536 + 18;
    private const int ReceiveQueue = 0;
    private const int TransmitQueue = 1;

    private readonly INetworkBackend _backend;
    private readonly IOffloadNetworkBackend? _offloadBackend;
    private readonly bool _backendTakesPartialChecksums;
    private readonly DescriptorChain?[] _rxChains = new DescriptorChain?[64];
    private readonly byte[] _config = new byte[12];
    private readonly Lock _receiveSync = new();
    private readonly TokenBucket? _txLimit;
    private readonly TokenBucket? _rxLimit;
    private TokenBucket? _sharedTx;
    private TokenBucket? _sharedRx;
    private long _framesSent;
    private long _framesReceived;
    private long _framesDropped;

    /// <summary>
    /// Makes the NIC's frames also pass <paramref name="transmit"/> and <paramref name="receive"/>, byte buckets it shares
    /// with other NICs (a VM's network budget in a resource pool), on top of its own
    /// <see cref="VirtioNetOptions.TransmitBytesPerSecond"/> and <see cref="VirtioNetOptions.ReceiveBytesPerSecond"/>:
    /// transmitted frames wait for tokens, received frames beyond the budget are dropped (as a congested link drops them).
    /// </summary>
    /// <remarks>Call it before the guest starts using the device (a VM does it when it is built).</remarks>
    public void ShareLimits(TokenBucket? transmit, TokenBucket? receive)
    {
        Volatile.Write(ref _sharedTx, transmit);
        Volatile.Write(ref _sharedRx, receive);
    }

    /// <summary>Creates the NIC with address <paramref name="mac"/> and attaches it to <paramref name="backend"/>.</summary>
    public VirtioNetDevice(INetworkBackend backend, MacAddress mac, VirtioNetOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        options ??= new VirtioNetOptions();
        if (options.QueueSize < 4 || (options.QueueSize & (options.QueueSize - 1)) != 0)
        {
            throw new ArgumentException($"QueueSize {options.QueueSize} must be a power of two of at least 4.", nameof(options));
        }

        if (mac.IsMulticast)
        {
            throw new ArgumentException($"{mac} is a multicast address; a NIC needs a unicast one (first byte even).", nameof(mac));
        }

        _backend = backend;
        Mac = mac;
        mac.CopyTo(_config);
        BinaryPrimitives.WriteUInt16LittleEndian(_config.AsSpan(6), StatusLinkUp);
        BinaryPrimitives.WriteUInt16LittleEndian(_config.AsSpan(8), 1);      // max_virtqueue_pairs
        BinaryPrimitives.WriteUInt16LittleEndian(_config.AsSpan(10), 1500);  // mtu (read only with VIRTIO_NET_F_MTU, not offered)
        DeviceFeatures = FeatureMac | FeatureStatus
            | (options.MergeableReceiveBuffers ? FeatureMergeableRxBuffers : 0)
            | (options.TransmitChecksumOffload ? FeatureCsum : 0);
        if (options.SegmentationOffload && backend is IOffloadNetworkBackend offloads)
        {
            _offloadBackend = offloads;
            var takes = offloads.TransmitOffloads;
            _backendTakesPartialChecksums = (takes & NetworkOffloads.Checksum) != 0;
            DeviceFeatures |= FeatureGuestCsum | FeatureGuestTso4 | FeatureGuestTso6;
            if (options.TransmitChecksumOffload && _backendTakesPartialChecksums)
            {
                DeviceFeatures |= ((takes & NetworkOffloads.Tcp4Segmentation) != 0 ? FeatureHostTso4 : 0)
                    | ((takes & NetworkOffloads.Tcp6Segmentation) != 0 ? FeatureHostTso6 : 0);
            }
        }

        QueueMaxSizes = [options.QueueSize, options.QueueSize];
        _txLimit = options.TransmitBytesPerSecond is long tx ? new TokenBucket(tx) : null;
        _rxLimit = options.ReceiveBytesPerSecond is long rx ? new TokenBucket(rx) : null;
        // New receive buffers need no worker: frames arriving without a buffer were dropped, as a real NIC does.
        AddWorker(TransmitAsync, TransmitQueue);
        if (_offloadBackend is not null)
        {
            _offloadBackend.AttachOffload(ReceiveOffloaded, NetworkOffloads.None);
        }
        else
        {
            backend.Attach(Receive);
        }
    }

    /// <summary>The NIC's MAC address.</summary>
    public MacAddress Mac { get; }

    /// <summary>Frames the guest sent to the backend.</summary>
    public long FramesSent => Interlocked.Read(ref _framesSent);

    /// <summary>Frames delivered into the guest.</summary>
    public long FramesReceived => Interlocked.Read(ref _framesReceived);

    /// <summary>Frames dropped (no receive buffer, rate limit, malformed transmit).</summary>
    public long FramesDropped => Interlocked.Read(ref _framesDropped);

    /// <summary>Whether the guest sees the link up. Changing it notifies the guest.</summary>
    public bool LinkUp
    {
        get => (BinaryPrimitives.ReadUInt16LittleEndian(_config.AsSpan(6)) & StatusLinkUp) != 0;
        set
        {
            BinaryPrimitives.WriteUInt16LittleEndian(_config.AsSpan(6), value ? StatusLinkUp : (ushort)0);
            Context?.SignalConfigChanged();
        }
    }

    /// <inheritdoc />
    public override VirtioDeviceType DeviceType => VirtioDeviceType.Network;

    /// <inheritdoc />
    public override ulong DeviceFeatures { get; }

    /// <inheritdoc />
    public override IReadOnlyList<ushort> QueueMaxSizes { get; }

    /// <inheritdoc />
    public override int ConfigSize => _config.Length;

    /// <inheritdoc />
    public override void ReadConfig(int offset, Span<byte> data) => _config.AsSpan(offset, data.Length).CopyTo(data);

    /// <inheritdoc />
    public override void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        // Every field is read-only for a virtio 1.x driver (the MAC is writable only through the control queue).
    }

    /// <summary>The device's part of a snapshot section: <c>virtio-net</c>.</summary>
    public string StateName => "virtio-net";

    /// <summary>The layout <see cref="SaveState"/> writes: 1.</summary>
    public int StateVersion => 1;

    /// <summary>Writes the MAC address and the link state.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="writer"/> is null.</exception>
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        Span<byte> mac = stackalloc byte[6];
        Mac.CopyTo(mac);
        writer.WriteBytes(mac);
        writer.WriteBoolean(LinkUp);
    }

    /// <summary>Checks the MAC address and takes the saved link state (without telling the guest: it saw that state).</summary>
    /// <exception cref="SnapshotFormatException">The data is corrupt, or the snapshot's NIC had another MAC address.</exception>
    public void RestoreState(ref StateReader reader, int version)
    {
        if (version != StateVersion)
        {
            throw reader.UnsupportedVersion(version, StateVersion);
        }

        var macBytes = reader.ReadBytes("mac", 6);
        bool linkUp = reader.ReadBoolean("link up");
        reader.EnsureEnd();
        if (macBytes.Length != 6)
        {
            throw new SnapshotFormatException(reader.Section, "mac", $"has {macBytes.Length} bytes; a MAC address has 6.");
        }

        var mac = MacAddress.FromBytes(macBytes);
        if (mac != Mac)
        {
            throw new SnapshotFormatException(reader.Section, "mac", $"is {mac}, but the NIC given to the restore has {Mac}; restore with the same MAC address.");
        }

        BinaryPrimitives.WriteUInt16LittleEndian(_config.AsSpan(6), linkUp ? StatusLinkUp : (ushort)0);
    }

    /// <summary>Tells an offloading backend what the guest agreed to take.</summary>
    protected override void OnActivated(VirtioDeviceContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        _offloadBackend?.SetGuestOffloads(GuestOffloads(context));
    }

    /// <summary>What the guest takes, from the negotiated features (segmentation needs the receive checksum offload too).</summary>
    internal static NetworkOffloads GuestOffloads(VirtioDeviceContext context)
    {
        if (!context.HasFeature(FeatureGuestCsum))
        {
            return NetworkOffloads.None;
        }

        return NetworkOffloads.Checksum
            | (context.HasFeature(FeatureGuestTso4) ? NetworkOffloads.Tcp4Segmentation : 0)
            | (context.HasFeature(FeatureGuestTso6) ? NetworkOffloads.Tcp6Segmentation : 0);
    }

    /// <summary>Waits for a frame being delivered under the old activation, so none lands in guest buffers after the reset.</summary>
    protected override void OnReset()
    {
        _offloadBackend?.SetGuestOffloads(NetworkOffloads.None);
        lock (_receiveSync)
        {
            // Receive reads Context under this lock; it is already null for every later frame.
        }
    }

    private async Task TransmitAsync(VirtioDeviceContext context)
    {
        var queue = context.Queues[TransmitQueue];
        var token = context.Stopping;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(HeaderSize + MaxFrameSize);
        try
        {
            while (!token.IsCancellationRequested && queue.TryPop(out var chain))
            {
                int length = PrepareFrame(context, chain, buffer, _backendTakesPartialChecksums, out var offload, out string? refusal);
                queue.AddUsed(chain, 0);
                context.SignalUsed(queue);
                if (refusal is not null)
                {
                    context.LogRefusedRequest($"transmit chain {chain.Head}: {refusal}");
                    Interlocked.Increment(ref _framesDropped);
                    continue;
                }

                if (_txLimit is not null)
                {
                    await _txLimit.ConsumeAsync(length, token).ConfigureAwait(false);
                }

                if (Volatile.Read(ref _sharedTx) is { } sharedTx)
                {
                    await sharedTx.ConsumeAsync(length, token).ConfigureAwait(false);
                }

                if (_offloadBackend is not null)
                {
                    _offloadBackend.Send(buffer.AsSpan(HeaderSize, length), offload);
                }
                else
                {
                    await _backend.SendAsync(buffer.AsMemory(HeaderSize, length), token).ConfigureAwait(false);
                }

                Interlocked.Increment(ref _framesSent);
            }

            _offloadBackend?.EndOfBatch();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Copies header and frame out of the chain and checks the header; returns the frame length, or sets
    /// <paramref name="refusal"/> to why it is dropped. A partial checksum is completed here unless
    /// <paramref name="passPartial"/> (the backend takes it as it is); <paramref name="offload"/> is what the backend gets.
    /// </summary>
    internal static int PrepareFrame(VirtioDeviceContext context, DescriptorChain chain, byte[] buffer, bool passPartial, out FrameOffload offload, out string? refusal)
    {
        offload = FrameOffload.None;
        refusal = null;
        long total = chain.ReadableLength;
        if (total < HeaderSize + 14 || total > HeaderSize + MaxFrameSize)
        {
            refusal = $"{total} readable bytes is not a {HeaderSize}-byte header and a frame of 14 to {MaxFrameSize} bytes";
            return 0;
        }

        int n = chain.Read(0, buffer.AsSpan(0, (int)total));
        if (n != total)
        {
            refusal = "a buffer is not readable guest RAM";
            return 0;
        }

        var header = FrameOffload.Read(buffer.AsSpan(0, HeaderSize));
        int length = n - HeaderSize;
        refusal = CheckTransmitHeader(header, buffer.AsSpan(HeaderSize, length), context.HasFeature);
        if (refusal is not null)
        {
            return 0;
        }

        if ((header.Flags & FrameOffload.NeedsChecksum) != 0)
        {
            if (passPartial)
            {
                offload = header;
            }
            else if (!Checksum.TryComplete(buffer.AsSpan(HeaderSize, length), header.ChecksumStart, header.ChecksumOffset))
            {
                refusal = $"checksum at start {header.ChecksumStart} offset {header.ChecksumOffset} lies outside the {length}-byte frame";
                return 0;
            }
        }

        return length;
    }

    /// <summary>
    /// Checks a transmit header from the guest against the negotiated features and the frame (virtio 1.2, 5.1.6.2):
    /// only NEEDS_CSUM among the flags; a partial checksum's two bytes inside the frame; a segmentation offload only
    /// of a negotiated type (no ECN), with NEEDS_CSUM, a segment size, a header length inside the frame, and the
    /// checksum at the TCP header right behind an IPv4 or IPv6 header of the type's version. Null when it is good.
    /// </summary>
    internal static string? CheckTransmitHeader(in FrameOffload header, ReadOnlySpan<byte> frame, Func<ulong, bool> negotiated)
    {
        if ((header.Flags & ~FrameOffload.NeedsChecksum) != 0)
        {
            return $"flags {header.Flags:x} (a driver sets only NEEDS_CSUM)";
        }

        bool partial = (header.Flags & FrameOffload.NeedsChecksum) != 0;
        if (partial)
        {
            if (!negotiated(FeatureCsum))
            {
                return "NEEDS_CSUM without VIRTIO_NET_F_CSUM";
            }

            if (header.ChecksumStart >= frame.Length || header.ChecksumOffset > frame.Length - header.ChecksumStart - 2)
            {
                return $"checksum at start {header.ChecksumStart} offset {header.ChecksumOffset} lies outside the {frame.Length}-byte frame";
            }
        }

        if (header.GsoType == FrameOffload.GsoNone)
        {
            return null;
        }

        bool v4 = header.GsoType == FrameOffload.GsoTcp4 && negotiated(FeatureHostTso4);
        bool v6 = header.GsoType == FrameOffload.GsoTcp6 && negotiated(FeatureHostTso6);
        if (!v4 && !v6)
        {
            return $"segmentation offload gso_type {header.GsoType:x} was not negotiated";
        }

        if (!partial)
        {
            return "a segmentation offload without NEEDS_CSUM";
        }

        if (header.SegmentSize == 0 || header.HeaderLength > frame.Length)
        {
            return $"gso_size {header.SegmentSize} or hdr_len {header.HeaderLength} does not fit the {frame.Length}-byte frame";
        }

        int tcp = TcpHeaderOffset(frame, v6);
        if (tcp < 0 || header.ChecksumStart != tcp || header.ChecksumOffset != 16)
        {
            return $"segmentation offload: checksum at start {header.ChecksumStart} offset {header.ChecksumOffset} is not the checksum of a TCP header behind an IPv{(v6 ? 6 : 4)} header";
        }

        return null;
    }

    /// <summary>Where the TCP header of an untagged Ethernet frame lies behind an IPv4 (or IPv6, without extension headers) header; -1 when it does not.</summary>
    private static int TcpHeaderOffset(ReadOnlySpan<byte> frame, bool v6)
    {
        const int Ethernet = 14;
        if (frame.Length < Ethernet + 40)
        {
            return -1;
        }

        ushort type = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        int tcp;
        if (!v6)
        {
            int ihl = (frame[Ethernet] & 0xF) * 4;
            if (type != 0x0800 || frame[Ethernet] >> 4 != 4 || ihl < 20 || frame[Ethernet + 9] != 6)
            {
                return -1;
            }

            tcp = Ethernet + ihl;
        }
        else
        {
            if (type != 0x86DD || frame[Ethernet] >> 4 != 6 || frame[Ethernet + 6] != 6)
            {
                return -1;
            }

            tcp = Ethernet + 40;
        }

        return frame.Length >= tcp + 20 && frame.Length - tcp >= (frame[tcp + 12] >> 4) * 4 ? tcp : -1;
    }

    /// <summary>Called by the backend with a frame for the guest; false when it was dropped.</summary>
    private bool Receive(ReadOnlyMemory<byte> frame) => ReceiveOffloaded(frame, FrameOffload.None);

    /// <summary>Called by an offloading backend with a frame and its header; false when it was dropped.</summary>
    private bool ReceiveOffloaded(ReadOnlyMemory<byte> frame, in FrameOffload offload)
    {
        try
        {
            return ReceiveCore(frame, offload);
        }
        catch (ObjectDisposedException)
        {
            // Guest memory went away under a backend that had not been detached yet: the VM is gone.
            return Dropped();
        }
    }

    private bool ReceiveCore(ReadOnlyMemory<byte> frame, in FrameOffload offload)
    {
        lock (_receiveSync)
        {
            var context = Context;
            if (context is null || context.Stopping.IsCancellationRequested || !LinkUp || frame.Length > MaxFrameSize)
            {
                return Dropped();
            }

            if ((_rxLimit is not null && !_rxLimit.TryConsume(frame.Length))
                || (Volatile.Read(ref _sharedRx) is { } sharedRx && !sharedRx.TryConsume(frame.Length)))
            {
                return Dropped();
            }

            if (offload != FrameOffload.None && (GuestOffloads(context) & Needs(offload)) != Needs(offload))
            {
                return Dropped(); // made for what the guest took before a reset
            }

            var queue = context.Queues[ReceiveQueue];
            bool mergeable = context.HasFeature(FeatureMergeableRxBuffers);
            long needed = HeaderSize + frame.Length;
            var chains = _rxChains.AsSpan(0, mergeable ? Math.Min((int)queue.Size, _rxChains.Length) : 1);
            int count = 0;
            long room = 0;
            while (room < needed)
            {
                if (count == chains.Length || !queue.TryPop(out var chain))
                {
                    queue.Rewind(count);
                    return Dropped();
                }

                chains[count++] = chain;
                room += chain.WritableLength;
            }

            Span<byte> header = stackalloc byte[HeaderSize];
            header.Clear();
            offload.Write(header);
            BinaryPrimitives.WriteUInt16LittleEndian(header[10..], (ushort)count);
            var payload = frame.Span;
            bool headerDone = false;
            int sent = 0;
            for (int i = 0; i < count; i++)
            {
                var chain = chains[i]!;
                long written = 0;
                if (!headerDone)
                {
                    written = chain.Write(0, header);
                    if (written != HeaderSize)
                    {
                        // The first buffer must hold the whole header (virtio 1.2, section 5.1.6.3.1).
                        queue.Rewind(count);
                        return Dropped();
                    }

                    headerDone = true;
                }

                int take = (int)Math.Min(chain.WritableLength - written, payload.Length - sent);
                written += chain.Write(written, payload.Slice(sent, take));
                sent += take;
                if (i == count - 1)
                {
                    // Counted before the frame's last used entry is published: whoever sees the frame sees it counted.
                    Interlocked.Increment(ref _framesReceived);
                }

                queue.AddUsed(chain, (uint)written);
            }

            context.SignalUsed(queue);
            return true;
        }
    }

    /// <summary>What the guest must have agreed to for a frame with this header.</summary>
    private static NetworkOffloads Needs(in FrameOffload offload) =>
        (offload.Flags != 0 ? NetworkOffloads.Checksum : 0)
        | (offload.GsoType == FrameOffload.GsoTcp4 ? NetworkOffloads.Tcp4Segmentation : 0)
        | (offload.GsoType == FrameOffload.GsoTcp6 ? NetworkOffloads.Tcp6Segmentation : 0);

    private bool Dropped()
    {
        Interlocked.Increment(ref _framesDropped);
        return false;
    }
}
