using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Virt.Network.UserNet;

namespace Virt.Network;

/// <summary>
/// User-mode networking (like QEMU's slirp): a network backend that ends the guest's Ethernet segment in a small
/// TCP/IP stack on the host. It answers ARP and IPv6 neighbour discovery for the gateway, sends router
/// advertisements for SLAAC, answers echo to the gateway and DNS addresses, runs a DHCP server and a DNS forwarder,
/// reassembles fragmented IPv4 datagrams and IPv6 packets, and turns the guest's TCP connections and UDP datagrams (IPv4 and IPv6)
/// into ordinary host sockets; the gateway address stands for the host's loopback. <see cref="ForwardTcp"/> and
/// <see cref="ForwardUdp"/> forward host ports to the guest. Needs no privileges.
/// </summary>
/// <remarks>
/// Every guest frame is parsed with bounds checks and handled under one lock; no guest input throws out of
/// <see cref="SendAsync"/>. Frames for the guest are handed to the receiver outside that lock, in order.
/// See docs/networking.md for the limits and the security model.
/// </remarks>
public sealed partial class UserModeNetwork : INetworkBackend, IOffloadNetworkBackend
{
    private const int TickMs = 100;
    private const int MaxQueuedFrames = 4096;
    private const ushort FirstForwardPort = 49152;

    private readonly Lock _sync = new();
    private readonly Lock _deliverSync = new();
    private readonly Queue<OutboundFrame> _outbound = new();
    private readonly List<OutboundFrame> _delivering = [];
    private readonly List<TcpConnection> _delayedAcks = [];
    private readonly Dictionary<TcpKey, TcpConnection> _tcp = [];
    private readonly Dictionary<(UInt128 Ip, ushort Port), UdpFlow> _udp = [];
    private readonly Dictionary<uint, MacAddress> _arp = [];
    private readonly List<TcpPortForward> _forwards = [];
    private readonly List<UdpPortForward> _udpForwards = [];
    private readonly Dictionary<ushort, UdpForwardPeer> _udpPeersByPort = [];
    private readonly Dictionary<(UdpPortForward Forward, IPEndPoint Client), UdpForwardPeer> _udpPeersByClient = [];
    private readonly Ipv4Reassembler _reassembler = new();
    private readonly DhcpServer _dhcp;
    private readonly DnsForwarder _dns;
    private readonly Timer _timer;
    private readonly uint _network;
    private readonly uint _mask;
    private readonly uint _gateway;
    private readonly uint _dnsAddress;
    private readonly MacAddress _gatewayMac;
    private Func<ReadOnlyMemory<byte>, bool>? _receiver;
    private OffloadReceiver? _offloadReceiver;
    private int _guestOffloads;
    private bool _checksumTrusted; // the frame being handled came with a partial or NIC-checked checksum
    private bool _batched;         // the frame being handled is one of a NIC's batch: acknowledgments may wait for its end
    private ushort _nextForwardPort = FirstForwardPort;
    private ushort _nextUdpForwardPort = FirstForwardPort;
    private bool _disposed;
    private long _framesFromGuest;
    private long _framesToGuest;
    private long _framesDropped;
    private long _denied;
    private long _limitRefusals;
    private long _tcpOpened;
    private long _bytesToHost;
    private long _bytesToGuest;
    private long _totalBytes;
    private long _dhcpAcks;
    private long _dnsQueries;
    private long _internalErrors;
    private int _openSockets;
    private long _framesNotTaken;
    private long _retransmitTimeouts;
    private long _zeroWindowProbes;

    /// <summary>Creates the network; it starts answering when a NIC attaches.</summary>
    /// <exception cref="ArgumentException">An option is out of range (the message names it).</exception>
    public UserModeNetwork(UserModeNetworkOptions? options = null)
    {
        Options = options ?? new UserModeNetworkOptions();
        Options.Validate();
        _mask = Options.Network.PrefixLength == 0 ? 0 : uint.MaxValue << (32 - Options.Network.PrefixLength);
        _network = Ip4.From(Options.Network.BaseAddress, nameof(options)) & _mask;
        _gateway = Ip4.From(Options.Gateway, nameof(options));
        _dnsAddress = Ip4.From(Options.Dns, nameof(options));
        _gatewayMac = Options.GatewayMac;
        _dhcp = new DhcpServer(_network, _mask, _gateway, _dnsAddress, Ip4.From(Options.FirstGuestAddress, nameof(options)),
            (uint)Math.Min(Options.LeaseTime.TotalSeconds, uint.MaxValue));
        _v6 = Options.Ipv6Network is IPNetwork v6 ? new Ipv6Addresses(v6) : null;
        _dns = new DnsForwarder(this, Options.DnsUpstream, _gateway, _v6?.Gateway, Options.GatewayReachesHostLoopback);
        _timer = new Timer(_ => Locked(Tick), null, TickMs, TickMs);
        try
        {
            foreach (var forward in Options.TcpForwards)
            {
                ForwardTcp(forward.HostEndPoint, forward.GuestPort, forward.GuestAddress);
            }

            foreach (var forward in Options.UdpForwards)
            {
                ForwardUdp(forward.HostEndPoint, forward.GuestPort, forward.GuestAddress);
            }
        }
        catch
        {
            DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw;
        }
    }

    /// <summary>The settings the network was created with.</summary>
    public UserModeNetworkOptions Options { get; }

    /// <summary>The counters now.</summary>
    public UserModeNetworkStatistics Statistics
    {
        get
        {
            lock (_sync)
            {
                return new UserModeNetworkStatistics
                {
                    FramesFromGuest = _framesFromGuest,
                    FramesToGuest = Interlocked.Read(ref _framesToGuest),
                    FramesDropped = _framesDropped,
                    DeniedAttempts = _denied,
                    LimitRefusals = _limitRefusals,
                    OpenTcpConnections = _tcp.Count,
                    OpenUdpFlows = _udp.Count,
                    OpenHostSockets = _openSockets,
                    TcpConnectionsOpened = _tcpOpened,
                    BytesToHost = _bytesToHost,
                    BytesToGuest = _bytesToGuest,
                    DhcpAcks = _dhcpAcks,
                    DnsQueries = _dnsQueries,
                    InternalErrors = _internalErrors,
                    DatagramsReassembled = _reassembler.Reassembled,
                    FragmentedDatagramsDiscarded = _reassembler.Discarded,
                    UdpForwardPeers = _udpPeersByPort.Count,
                };
            }
        }
    }

    /// <summary>The forwards open now (from <see cref="UserModeNetworkOptions.TcpForwards"/> and <see cref="ForwardTcp"/>).</summary>
    public IReadOnlyList<TcpPortForward> Forwards
    {
        get
        {
            lock (_sync)
            {
                return [.. _forwards];
            }
        }
    }

    /// <summary>The UDP forwards open now (from <see cref="UserModeNetworkOptions.UdpForwards"/> and <see cref="ForwardUdp"/>).</summary>
    public IReadOnlyList<UdpPortForward> UdpForwards
    {
        get
        {
            lock (_sync)
            {
                return [.. _udpForwards];
            }
        }
    }

    /// <summary>The addresses DHCP handed out, by the guest's MAC address.</summary>
    public IReadOnlyDictionary<MacAddress, IPAddress> Leases
    {
        get
        {
            lock (_sync)
            {
                return _dhcp.Leases.ToDictionary(l => l.Key, l => Ip4.ToAddress(l.Value));
            }
        }
    }

    /// <inheritdoc />
    public ValueTask SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken = default)
    {
        HandleGuestFrame(frame.Span, FrameOffload.None, batched: false);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public void Attach(Func<ReadOnlyMemory<byte>, bool> receiver)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        Volatile.Write(ref _offloadReceiver, null);
        Volatile.Write(ref _guestOffloads, 0);
        Volatile.Write(ref _receiver, receiver);
    }

    /// <summary>The stack ends the guest's traffic in host sockets: partial checksums and TCP segments of up to 64 KiB are taken as they are.</summary>
    NetworkOffloads IOffloadNetworkBackend.TransmitOffloads =>
        NetworkOffloads.Checksum | NetworkOffloads.Tcp4Segmentation | NetworkOffloads.Tcp6Segmentation;

    void IOffloadNetworkBackend.Send(ReadOnlySpan<byte> frame, in FrameOffload offload) => HandleGuestFrame(frame, offload, batched: true);

    void IOffloadNetworkBackend.EndOfBatch()
    {
        lock (_sync)
        {
            try
            {
                FlushDelayedAcks();
            }
#pragma warning disable CA1031 // as in Locked: a bug is counted, never thrown into the NIC
            catch (Exception)
#pragma warning restore CA1031
            {
                _internalErrors++;
            }
        }

        Flush();
    }

    void IOffloadNetworkBackend.AttachOffload(OffloadReceiver receiver, NetworkOffloads guestTakes)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        Volatile.Write(ref _receiver, null);
        Volatile.Write(ref _guestOffloads, (int)guestTakes);
        Volatile.Write(ref _offloadReceiver, receiver);
    }

    void IOffloadNetworkBackend.SetGuestOffloads(NetworkOffloads guestTakes) => Volatile.Write(ref _guestOffloads, (int)guestTakes);

    /// <summary>What the guest takes now: frames for it are built to match.</summary>
    internal NetworkOffloads GuestOffloads => (NetworkOffloads)Volatile.Read(ref _guestOffloads);

    /// <summary>Whether the frame being handled is one of a NIC's batch (under the lock): a connection may hold its ACK until the batch ends.</summary>
    internal bool Batched => _batched;

    /// <summary>Diagnostics for benchmarks: frames the NIC did not take, retransmission timeouts, zero-window probes.</summary>
    internal string TcpDiagnostics => $"not taken {Interlocked.Read(ref _framesNotTaken)}, rto {_retransmitTimeouts}, probes {_zeroWindowProbes}";

    internal void CountRetransmitTimeout(bool probe)
    {
        if (probe)
        {
            _zeroWindowProbes++;
        }
        else
        {
            _retransmitTimeouts++;
        }
    }

    /// <summary>Holds <paramref name="connection"/>'s acknowledgment until the NIC's batch ends (under the lock).</summary>
    internal void DelayAck(TcpConnection connection) => _delayedAcks.Add(connection);

    private void FlushDelayedAcks()
    {
        for (int i = 0; i < _delayedAcks.Count; i++)
        {
            _delayedAcks[i].SendDelayedAck();
        }

        _delayedAcks.Clear();
    }

    /// <summary>One frame from the guest through the stack, under the lock; then queued frames go to the guest.</summary>
    private void HandleGuestFrame(ReadOnlySpan<byte> frame, in FrameOffload offload, bool batched)
    {
        lock (_sync)
        {
            _checksumTrusted = offload.ChecksumTrusted;
            _batched = batched;
            try
            {
                OnGuestFrame(frame);
                if (!batched && _delayedAcks.Count > 0)
                {
                    FlushDelayedAcks();
                }
            }
#pragma warning disable CA1031 // the guest's frames must not take the VMM down; tests require the counter to stay 0
            catch (Exception)
#pragma warning restore CA1031
            {
                _internalErrors++;
            }
            finally
            {
                _checksumTrusted = false;
                _batched = false;
            }
        }

        Flush();
    }

    /// <summary>
    /// Plugs the network into <paramref name="network"/> as its gateway: every VM on that switch can use DHCP, DNS
    /// and outbound connections. Dispose the returned port to unplug.
    /// </summary>
    public VirtualNetworkPort ConnectTo(VirtualNetwork network)
    {
        ArgumentNullException.ThrowIfNull(network);
        var port = network.Attach("user-mode-network");
        port.Attach(frame =>
        {
            HandleGuestFrame(frame.Span, FrameOffload.None, batched: false);
            return true;
        });
        Attach(frame =>
        {
            // A port's send is synchronous (the switch delivers on the caller's thread).
            port.SendAsync(frame).AsTask().GetAwaiter().GetResult();
            return true;
        });
        return port;
    }

    /// <summary>
    /// Forwards TCP connections to <paramref name="hostEndPoint"/> (port 0 picks a free one; see
    /// <see cref="TcpPortForward.HostEndPoint"/>) to <paramref name="guestPort"/> of the guest. Each host client
    /// becomes a connection from the gateway address (10.0.2.2, or the IPv6 gateway over IPv6) to the guest; many may
    /// be open at once. The host end point may be IPv4 or IPv6 (<c>[::1]:8080</c>), whatever the guest is reached over.
    /// </summary>
    /// <param name="hostEndPoint">Where the host listens, e.g. <c>127.0.0.1:8080</c> or <c>[::1]:8080</c>.</param>
    /// <param name="guestPort">The guest's port, e.g. 80.</param>
    /// <param name="guestAddress">
    /// The guest's address. By default the first DHCP address (<see cref="UserModeNetworkOptions.FirstGuestAddress"/>),
    /// or, when the guest has not used that IPv4 address (no lease, no IPv4 frame from it) but has sent from an IPv6
    /// address of <see cref="UserModeNetworkOptions.Ipv6Network"/>, that address (its SLAAC address), chosen for each
    /// connection. An IPv4 address of the subnet or an IPv6 address of the prefix names the address;
    /// <see cref="IPAddress.IPv6Any"/> asks for the guest's IPv6 address as learned from its packets.
    /// </param>
    /// <exception cref="ArgumentException"><paramref name="guestAddress"/> is not a guest address of the subnet or the IPv6 prefix (or IPv6 is off).</exception>
    /// <exception cref="SocketException">The host end point cannot be bound (in use, not a local address).</exception>
    public TcpPortForward ForwardTcp(IPEndPoint hostEndPoint, int guestPort, IPAddress? guestAddress = null)
    {
        var (guest, target) = ForwardArguments(hostEndPoint, guestPort, guestAddress);
        var listener = new Socket(hostEndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(hostEndPoint);
            listener.Listen(64);
        }
        catch
        {
            listener.Dispose();
            throw;
        }

        var forward = new TcpPortForward(this, listener, guest, target, (ushort)guestPort);
        lock (_sync)
        {
            ThrowIfDisposed(listener);
            _forwards.Add(forward);
        }

        forward.Start();
        return forward;
    }

    /// <summary>
    /// Forwards UDP datagrams arriving at <paramref name="hostEndPoint"/> (port 0 picks a free one; see
    /// <see cref="UdpPortForward.HostEndPoint"/>) to <paramref name="guestPort"/> of the guest. Each host sender gets
    /// its own port on the gateway address, so the guest's replies to it go back to that sender; a sender's mapping
    /// is forgotten after <see cref="UserModeNetworkOptions.UdpIdleTimeout"/> without traffic. At most
    /// <see cref="UserModeNetworkOptions.MaxUdpFlows"/> senders are mapped at once; more are refused and counted.
    /// </summary>
    /// <param name="hostEndPoint">Where the host receives, e.g. <c>127.0.0.1:5353</c> or <c>[::1]:5353</c>.</param>
    /// <param name="guestPort">The guest's port, e.g. 53.</param>
    /// <param name="guestAddress">The guest's address, chosen as for <see cref="ForwardTcp"/> (for each datagram when not named).</param>
    /// <exception cref="ArgumentException"><paramref name="guestAddress"/> is not a guest address of the subnet or the IPv6 prefix (or IPv6 is off).</exception>
    /// <exception cref="SocketException">The host end point cannot be bound (in use, not a local address).</exception>
    public UdpPortForward ForwardUdp(IPEndPoint hostEndPoint, int guestPort, IPAddress? guestAddress = null)
    {
        var (guest, target) = ForwardArguments(hostEndPoint, guestPort, guestAddress);
        var socket = new Socket(hostEndPoint.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            socket.Bind(hostEndPoint);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        var forward = new UdpPortForward(this, socket, guest, target, (ushort)guestPort);
        lock (_sync)
        {
            ThrowIfDisposed(socket);
            _udpForwards.Add(forward);
        }

        forward.Start();
        return forward;
    }

    /// <summary>Checks the arguments of <see cref="ForwardTcp"/> and <see cref="ForwardUdp"/>; returns the guest's address and its number.</summary>
    private (IPAddress Guest, ForwardTarget Target) ForwardArguments(IPEndPoint hostEndPoint, int guestPort, IPAddress? guestAddress)
    {
        ArgumentNullException.ThrowIfNull(hostEndPoint);
        ArgumentOutOfRangeException.ThrowIfLessThan(guestPort, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(guestPort, 65535);
        return guestAddress is null
            ? (Options.FirstGuestAddress, new ForwardTarget(ForwardTargetKind.Guest, Ip6.Mapped(ForwardTarget4(Options.FirstGuestAddress))))
            : (guestAddress, ForwardTargetOf(guestAddress));
    }

    /// <summary>Under <see cref="_sync"/>: a forward made while the network was being disposed closes its socket and fails.</summary>
    private void ThrowIfDisposed(Socket socket)
    {
        if (_disposed)
        {
            socket.Dispose();
            throw new ObjectDisposedException(GetType().FullName);
        }
    }

    /// <summary>Closes every connection (the guest gets resets), every host socket and every forward.</summary>
    public async ValueTask DisposeAsync()
    {
        TcpPortForward[] forwards;
        UdpPortForward[] udpForwards;
        Task dns;
        lock (_sync)
        {
            if (_disposed)
            {
                return;
            }

            foreach (var c in _tcp.Values.ToList())
            {
                c.Abort(sendReset: true);
            }

            foreach (var flow in _udp.Values)
            {
                flow.Dispose();
                _openSockets--;
            }

            _udp.Clear();
            dns = _dns.CloseAsync();
            _disposed = true;
            forwards = [.. _forwards];
            udpForwards = [.. _udpForwards];
        }

        Flush();
        await dns.ConfigureAwait(false);
        _dns.Dispose();
        await _timer.DisposeAsync().ConfigureAwait(false);
        foreach (var f in forwards)
        {
            await f.DisposeAsync().ConfigureAwait(false);
        }

        foreach (var f in udpForwards)
        {
            await f.DisposeAsync().ConfigureAwait(false);
        }
    }

    // ---- Entry points from pumps and timers; everything below runs under _sync. ----

    /// <summary>
    /// Runs <paramref name="action"/> under the stack's lock, then hands queued frames to the guest. An exception
    /// inside the stack is a bug: it is counted (<see cref="UserModeNetworkStatistics.InternalErrors"/>) and the
    /// frame dropped, so the guest can never bring down the host through it.
    /// </summary>
    internal void Locked(Action action)
    {
        lock (_sync)
        {
            try
            {
                action();
            }
#pragma warning disable CA1031 // the guest's frames must not take the VMM down; tests require the counter to stay 0
            catch (Exception)
#pragma warning restore CA1031
            {
                _internalErrors++;
            }
        }

        Flush();
    }

    internal void Remove(TcpConnection connection)
    {
        if (_tcp.TryGetValue(connection.Key, out var existing) && ReferenceEquals(existing, connection))
        {
            _tcp.Remove(connection.Key);
        }
    }

    internal void ReleaseSocket(Socket socket, bool reset)
    {
        if (reset)
        {
            try
            {
                socket.LingerState = new LingerOption(true, 0); // close with RST, as the guest's side was reset
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                // Not connected: nothing to reset.
            }
        }

        socket.Dispose();
        _openSockets--;
    }

    internal void CountSocket(int delta) => _openSockets += delta;

    internal void CountLimitRefusal() => _limitRefusals++;

    internal void CountDnsQuery() => _dnsQueries++;

    internal void CountBytesToGuest(int n) => _bytesToGuest += n;

    internal void CountBytesToHost(int n) => _bytesToHost += n;

    /// <summary>Adds <paramref name="bytes"/> to the network's total; false when that passes <see cref="UserModeNetworkOptions.MaxTotalBytes"/>.</summary>
    internal bool AccountBytes(int bytes)
    {
        _totalBytes += bytes;
        return Options.MaxTotalBytes is not long max || _totalBytes <= max;
    }

    /// <summary>A TCP segment from the connection's remote end to the guest.</summary>
    internal void Emit(TcpKey key, uint sequence, uint acknowledgment, byte flags, ushort window, ReadOnlySpan<byte> payload, ushort mss, int windowScale = -1)
    {
        if (key.IsIpv6)
        {
            if (GuestMac6(key.GuestIp) is MacAddress mac6)
            {
                Queue(FrameBuilder.Tcp6(mac6, _gatewayMac, key.RemoteIp, key.RemotePort, key.GuestIp, key.GuestPort, sequence, acknowledgment, flags, window, payload, mss, windowScale));
            }
        }
        else if (GuestMac(Ip6.V4(key.GuestIp)) is MacAddress mac)
        {
            Queue(FrameBuilder.Tcp(mac, _gatewayMac, Ip6.V4(key.RemoteIp), key.RemotePort, Ip6.V4(key.GuestIp), key.GuestPort, sequence, acknowledgment, flags, window, payload, mss, windowScale));
        }
    }

    /// <summary>
    /// A TCP segment carrying <paramref name="length"/> bytes of <paramref name="source"/> from <paramref name="offset"/>
    /// to the guest, built in a pooled buffer. When the guest takes checksum offload the checksum is left partial
    /// (the pseudo-header sum, NEEDS_CSUM), and a segment longer than <paramref name="mss"/> goes as one segmentation
    /// offload of that segment size (the caller sends such segments only when the guest takes them).
    /// </summary>
    internal void EmitData(TcpKey key, uint sequence, uint acknowledgment, byte flags, ushort window, ByteQueue source, int offset, int length, int mss)
    {
        bool v6 = key.IsIpv6;
        if ((v6 ? GuestMac6(key.GuestIp) : GuestMac(Ip6.V4(key.GuestIp))) is not MacAddress mac)
        {
            return;
        }

        int tcpAt = Proto.EthernetHeader + (v6 ? Proto.Ipv6Header : Proto.Ipv4Header);
        int tcpLength = Proto.TcpHeader + length;
        int frameLength = tcpAt + tcpLength;
        var buffer = ArrayPool<byte>.Shared.Rent(frameLength);
        var f = buffer.AsSpan(0, frameLength);
        uint pseudo;
        if (v6)
        {
            FrameBuilder.WriteIpv6(f, mac, _gatewayMac, key.RemoteIp, key.GuestIp, Proto.Tcp, tcpLength, 64);
            pseudo = Checksum.PseudoHeader6(key.RemoteIp, key.GuestIp, Proto.Tcp, tcpLength);
        }
        else
        {
            FrameBuilder.WriteIpv4(f, mac, _gatewayMac, Ip6.V4(key.RemoteIp), Ip6.V4(key.GuestIp), Proto.Tcp, tcpLength);
            pseudo = Checksum.PseudoHeader(Ip6.V4(key.RemoteIp), Ip6.V4(key.GuestIp), Proto.Tcp, tcpLength);
        }

        var tcp = f[tcpAt..];
        FrameBuilder.WriteTcpHeader(tcp, key.RemotePort, key.GuestPort, sequence, acknowledgment, flags, window);
        source.Peek(offset, tcp.Slice(Proto.TcpHeader, length));
        var offload = FrameOffload.None;
        if ((GuestOffloads & NetworkOffloads.Checksum) != 0)
        {
            BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], (ushort)~Checksum.Fold(pseudo));
            byte gso = length <= mss ? FrameOffload.GsoNone : v6 ? FrameOffload.GsoTcp6 : FrameOffload.GsoTcp4;
            offload = new FrameOffload(FrameOffload.NeedsChecksum, gso, (ushort)(tcpAt + Proto.TcpHeader),
                gso == FrameOffload.GsoNone ? (ushort)0 : (ushort)mss, (ushort)tcpAt, 16);
        }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], Checksum.Fold(Checksum.Add(tcp, pseudo)));
        }

        Enqueue(new OutboundFrame(buffer, frameLength, offload, Pooled: true));
    }

    /// <summary>
    /// The largest TCP payload of one frame to the guest on <paramref name="key"/>'s IP version: a whole number of
    /// <paramref name="mss"/> segments up to 64 KiB when the guest takes segmentation offload, else <paramref name="mss"/>.
    /// </summary>
    internal int SegmentLimit(TcpKey key, int mss)
    {
        var needed = key.IsIpv6 ? NetworkOffloads.Tcp6Segmentation : NetworkOffloads.Tcp4Segmentation;
        if ((GuestOffloads & needed) == 0)
        {
            return mss;
        }

        int most = ushort.MaxValue - Proto.TcpHeader - (key.IsIpv6 ? 0 : Proto.Ipv4Header);
        return most / mss * mss;
    }

    internal void SendReset(TcpKey key, uint sequence, uint acknowledgment, bool withAck) =>
        Emit(key, sequence, acknowledgment, (byte)(TcpSegment.Rst | (withAck ? TcpSegment.Ack : 0)), 0, [], 0);

    internal void SendUdpToGuest(uint source, ushort sourcePort, uint guestIp, ushort guestPort, ReadOnlySpan<byte> payload)
    {
        if (payload.Length <= Proto.MaxDatagram && GuestMac(guestIp) is MacAddress mac)
        {
            Queue(FrameBuilder.Udp(mac, _gatewayMac, source, sourcePort, guestIp, guestPort, payload));
        }
    }

    /// <summary>A datagram to the guest over the IP version of <paramref name="guestIp"/> (IPv4 as IPv4-mapped).</summary>
    internal void SendUdpToGuest(UInt128 source, ushort sourcePort, UInt128 guestIp, ushort guestPort, ReadOnlySpan<byte> payload)
    {
        if (Ip6.IsMapped(guestIp))
        {
            SendUdpToGuest(Ip6.V4(source), sourcePort, Ip6.V4(guestIp), guestPort, payload);
        }
        else if (payload.Length <= Proto.MaxDatagram6 && GuestMac6(guestIp) is MacAddress mac)
        {
            Queue(FrameBuilder.Udp6(mac, _gatewayMac, source, sourcePort, guestIp, guestPort, payload));
        }
    }

    internal void DeliverUdpFromHost(UdpFlow flow, IPEndPoint from, ReadOnlySpan<byte> payload)
    {
        var address = from.Address.IsIPv4MappedToIPv6 ? from.Address.MapToIPv4() : from.Address;
        UInt128 source = Ip6.From(address);
        if (IPAddress.IsLoopback(address))
        {
            source = Ip6.IsMapped(flow.GuestIp) ? Ip6.Mapped(_gateway) : _v6?.Gateway ?? source;
        }

        if (!AccountBytes(payload.Length))
        {
            _limitRefusals++;
            return;
        }

        _bytesToGuest += payload.Length;
        if (Ip6.IsMapped(source) == Ip6.IsMapped(flow.GuestIp))
        {
            SendUdpToGuest(source, (ushort)from.Port, flow.GuestIp, flow.GuestPort, payload);
        }
    }

    /// <summary>A host client connected to <paramref name="forward"/>: a new connection to the guest, or a refusal at the limit.</summary>
    internal void OnForwardAccepted(TcpPortForward forward, Socket client)
    {
        if (_disposed || _tcp.Count >= Options.MaxTcpConnections)
        {
            _limitRefusals += _disposed ? 0 : 1;
            client.LingerState = new LingerOption(true, 0);
            client.Dispose();
            return;
        }

        if (ResolveForward(forward.Target) is not UInt128 guestIp)
        {
            client.LingerState = new LingerOption(true, 0);
            client.Dispose(); // asked for the guest's IPv6 address, and it has sent from none yet
            return;
        }

        var gateway = Ip6.IsMapped(guestIp) ? Ip6.Mapped(_gateway) : _v6!.Gateway;
        TcpKey key = default;
        for (int i = 0; i < 65536 - FirstForwardPort; i++)
        {
            ushort port = _nextForwardPort;
            _nextForwardPort = _nextForwardPort == ushort.MaxValue ? FirstForwardPort : (ushort)(_nextForwardPort + 1);
            key = new TcpKey(guestIp, (ushort)forward.GuestPort, gateway, port);
            if (!_tcp.ContainsKey(key))
            {
                break;
            }
        }

        _openSockets++;
        _tcpOpened++;
        RequestGuestMacIfUnknown(guestIp); // the SYN is sent again by the retransmission timer once the guest answers

        _tcp[key] = TcpConnection.Inbound(this, key, client);
    }

    /// <summary>A datagram from a host sender to a UDP forward (under the lock): maps the sender to a gateway port and sends it on to the guest.</summary>
    internal void OnForwardDatagram(UdpPortForward forward, IPEndPoint client, ReadOnlySpan<byte> payload)
    {
        if (_disposed || !_udpForwards.Contains(forward) || ResolveForward(forward.Target) is not UInt128 guestIp
            || payload.Length > (Ip6.IsMapped(guestIp) ? Proto.MaxDatagram : Proto.MaxDatagram6))
        {
            return; // the network or the forward is closing, the guest has no IPv6 address yet, or the datagram does not fit the guest's MTU unfragmented
        }

        if (!_udpPeersByClient.TryGetValue((forward, client), out var peer))
        {
            if (_udpPeersByPort.Count >= Math.Min(Options.MaxUdpFlows, 65536 - FirstForwardPort))
            {
                _limitRefusals++;
                return;
            }

            ushort port = _nextUdpForwardPort;
            while (_udpPeersByPort.ContainsKey(port))
            {
                port = port == ushort.MaxValue ? FirstForwardPort : (ushort)(port + 1);
            }

            _nextUdpForwardPort = port == ushort.MaxValue ? FirstForwardPort : (ushort)(port + 1);
            peer = new UdpForwardPeer(forward, client, port);
            _udpPeersByPort[port] = peer;
            _udpPeersByClient[(forward, client)] = peer;
        }

        peer.LastUsed = Environment.TickCount64;
        peer.GuestIp = guestIp;
        if (!AccountBytes(payload.Length))
        {
            _limitRefusals++;
            return;
        }

        if (RequestGuestMacIfUnknown(guestIp))
        {
            return; // this datagram is lost, as on a first ARP or neighbour discovery miss; the next one goes through
        }

        _bytesToGuest += payload.Length;
        forward.CountForwarded();
        SendUdpToGuest(Ip6.IsMapped(guestIp) ? Ip6.Mapped(_gateway) : _v6!.Gateway, peer.GatewayPort, guestIp, (ushort)forward.GuestPort, payload);
    }

    /// <summary>A UDP forward closed (under the lock): its sender mappings go.</summary>
    internal void RemoveUdpForward(UdpPortForward forward)
    {
        _udpForwards.Remove(forward);
        foreach (var peer in _udpPeersByPort.Values.Where(p => p.Forward == forward).ToList())
        {
            RemovePeer(peer);
        }
    }

    private void RemovePeer(UdpForwardPeer peer)
    {
        _udpPeersByPort.Remove(peer.GatewayPort);
        _udpPeersByClient.Remove((peer.Forward, peer.Client));
    }

    /// <summary>Checks a forward's guest address: an IPv4 or IPv6 guest address, or <see cref="IPAddress.IPv6Any"/> for the guest's IPv6 address.</summary>
    private ForwardTarget ForwardTargetOf(IPAddress guestAddress)
    {
        if (guestAddress.AddressFamily != AddressFamily.InterNetworkV6 || guestAddress.IsIPv4MappedToIPv6)
        {
            return new ForwardTarget(ForwardTargetKind.Address, Ip6.Mapped(ForwardTarget4(guestAddress.IsIPv4MappedToIPv6 ? guestAddress.MapToIPv4() : guestAddress)));
        }

        if (_v6 is null)
        {
            throw new ArgumentException($"{guestAddress} is an IPv6 address, and IPv6 is off (Ipv6Network is null).", nameof(guestAddress));
        }

        if (guestAddress.Equals(IPAddress.IPv6Any))
        {
            return new ForwardTarget(ForwardTargetKind.GuestIpv6, 0);
        }

        var ip = Ip6.From(guestAddress);
        if (!_v6.IsGuestAddress(ip))
        {
            throw new ArgumentException($"{guestAddress} is not a guest address of {Options.Ipv6Network}; forward to the guest's SLAAC address, or to :: for whichever it has.", nameof(guestAddress));
        }

        return new ForwardTarget(ForwardTargetKind.Address, ip);
    }

    /// <summary>Checks a forward's IPv4 guest address: inside the subnet and not one of the stack's own.</summary>
    private uint ForwardTarget4(IPAddress guestAddress)
    {
        uint guestIp = Ip4.From(guestAddress, nameof(guestAddress));
        if ((guestIp & _mask) != _network || guestIp == _gateway || guestIp == _dnsAddress)
        {
            throw new ArgumentException($"{guestAddress} is not a guest address of {Options.Network}; forward to an address DHCP hands out.", nameof(guestAddress));
        }

        return guestIp;
    }

    private MacAddress? GuestMac(uint ip) => _arp.TryGetValue(ip, out var mac) ? mac : null;

    /// <summary>
    /// Where a forward's connection or datagram goes now (IPv4 addresses as IPv4-mapped); null when it asks for the
    /// guest's IPv6 address and the guest has sent from none. A forward that names no address goes to the first
    /// guest address while the guest uses IPv4 (it holds that lease, or an IPv4 frame came from it), else to the
    /// IPv6 address the guest sends from, else to the IPv4 address (an ARP request finds the guest).
    /// </summary>
    private UInt128? ResolveForward(in ForwardTarget target)
    {
        switch (target.Kind)
        {
            case ForwardTargetKind.Address:
                return target.Address;
            case ForwardTargetKind.GuestIpv6:
                return GuestAddress6(Ip4.From(Options.FirstGuestAddress, "FirstGuestAddress"));
        }

        uint ip = Ip6.V4(target.Address);
        if (_v6 is null || _arp.ContainsKey(ip) || _dhcp.Leases.Values.Contains(ip))
        {
            return target.Address;
        }

        return GuestAddress6(ip) ?? target.Address;
    }

    /// <summary>Asks for the guest's MAC address (ARP, or neighbour solicitation over IPv6) when it is not known; true when it was not.</summary>
    private bool RequestGuestMacIfUnknown(UInt128 guestIp)
    {
        if (Ip6.IsMapped(guestIp))
        {
            if (GuestMac(Ip6.V4(guestIp)) is not null)
            {
                return false;
            }

            RequestGuestMac(Ip6.V4(guestIp));
            return true;
        }

        if (GuestMac6(guestIp) is not null)
        {
            return false;
        }

        RequestGuestMac6(guestIp);
        return true;
    }

    private void RequestGuestMac(uint ip) =>
        Queue(FrameBuilder.Arp(MacAddress.Broadcast, _gatewayMac, 1, _gatewayMac, _gateway, default, ip));

    private void Queue(byte[] frame) => Enqueue(new OutboundFrame(frame, frame.Length, FrameOffload.None, Pooled: false));

    private void Enqueue(in OutboundFrame frame)
    {
        if ((_disposed && _tcp.Count == 0 && _outbound.Count > 0) || _outbound.Count >= MaxQueuedFrames)
        {
            _framesDropped += _disposed ? 0 : 1;
            frame.Release();
            return;
        }

        _outbound.Enqueue(frame);
    }

    /// <summary>Hands queued frames to the guest in order, outside the stack's lock (a receiver may send back at once).</summary>
    private void Flush()
    {
        if (_sync.IsHeldByCurrentThread)
        {
            return; // a nested entry (a pump that started inline): the outermost one delivers after releasing the lock
        }

        lock (_deliverSync)
        {
            while (true)
            {
                lock (_sync)
                {
                    while (_delivering.Count < 64 && _outbound.TryDequeue(out var next))
                    {
                        _delivering.Add(next);
                    }
                }

                if (_delivering.Count == 0)
                {
                    return;
                }

                try
                {
                    foreach (var frame in _delivering)
                    {
                        var memory = frame.Buffer.AsMemory(0, frame.Length);
                        bool taken = Volatile.Read(ref _offloadReceiver) is { } offloadReceiver
                            ? offloadReceiver(memory, frame.Offload)
                            : frame.Offload == FrameOffload.None && Volatile.Read(ref _receiver) is { } receiver && receiver(memory);
                        if (taken)
                        {
                            Interlocked.Increment(ref _framesToGuest);
                        }
                        else
                        {
                            Interlocked.Increment(ref _framesNotTaken);
                        }
                    }
                }
                finally
                {
                    foreach (var frame in _delivering)
                    {
                        frame.Release();
                    }

                    _delivering.Clear();
                }
            }
        }
    }

    private void Tick()
    {
        FlushDelayedAcks();
        long now = Environment.TickCount64;
        foreach (var c in _tcp.Values.ToList())
        {
            c.OnTick(now);
        }

        long idle = (long)Options.UdpIdleTimeout.TotalMilliseconds;
        foreach (var flow in _udp.Values.Where(f => now - f.LastUsed > idle).ToList())
        {
            flow.Dispose();
            _openSockets--;
            _udp.Remove((flow.GuestIp, flow.GuestPort));
        }

        foreach (var peer in _udpPeersByPort.Values.Where(p => now - p.LastUsed > idle).ToList())
        {
            RemovePeer(peer);
        }

        _reassembler.Expire(now);
    }

    // ---- Guest frames ----

    private void OnGuestFrame(ReadOnlySpan<byte> frame)
    {
        _framesFromGuest++;
        if (_disposed || !Handle(frame))
        {
            _framesDropped++;
        }
    }

    /// <summary>Handles one frame; false when it is dropped.</summary>
    private bool Handle(ReadOnlySpan<byte> frame)
    {
        if (frame.Length < Proto.EthernetHeader)
        {
            return false;
        }

        var destination = MacAddress.FromBytes(frame[..6]);
        var source = MacAddress.FromBytes(frame.Slice(6, 6));
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        bool ipv6Multicast = type == Proto.EtherTypeIpv6 && destination.IsMulticast && frame[0] == 0x33 && frame[1] == 0x33;
        if (source.IsMulticast || (!destination.IsBroadcast && destination != _gatewayMac && !ipv6Multicast))
        {
            return false; // not for us (on a switch, frames between guests are flooded here too)
        }

        return type switch
        {
            Proto.EtherTypeArp => HandleArp(frame[Proto.EthernetHeader..], source),
            Proto.EtherTypeIpv4 => HandleIpv4(frame[Proto.EthernetHeader..], source, destination.IsBroadcast),
            Proto.EtherTypeIpv6 when _v6 is not null && !destination.IsBroadcast => HandleIpv6(frame[Proto.EthernetHeader..], source, ipv6Multicast),
            _ => false,
        };
    }

    private bool IsGuestAddress(uint ip) => (ip & _mask) == _network && ip != _gateway && ip != _dnsAddress && ip != _network && ip != (_network | ~_mask);

    private bool HandleArp(ReadOnlySpan<byte> a, MacAddress source)
    {
        if (a.Length < Proto.ArpPacket || BinaryPrimitives.ReadUInt16BigEndian(a) != 1 || BinaryPrimitives.ReadUInt16BigEndian(a[2..]) != Proto.EtherTypeIpv4
            || a[4] != 6 || a[5] != 4)
        {
            return false;
        }

        ushort op = BinaryPrimitives.ReadUInt16BigEndian(a[6..]);
        var senderMac = MacAddress.FromBytes(a.Slice(8, 6));
        uint senderIp = Ip4.Read(a[14..]);
        uint targetIp = Ip4.Read(a[24..]);
        if (senderMac != source || senderMac.IsMulticast)
        {
            return false;
        }

        if (IsGuestAddress(senderIp))
        {
            Learn(senderIp, senderMac);
        }

        if (op == 1 && (targetIp == _gateway || targetIp == _dnsAddress) && senderIp != targetIp)
        {
            Queue(FrameBuilder.Arp(senderMac, _gatewayMac, 2, _gatewayMac, targetIp, senderMac, senderIp));
            return true;
        }

        return op == 2;
    }

    private void Learn(uint ip, MacAddress mac)
    {
        if (_arp.Count < 1024 || _arp.ContainsKey(ip))
        {
            bool wasUnknown = !_arp.ContainsKey(ip);
            _arp[ip] = mac;
            if (wasUnknown)
            {
                // Forwarded connections waiting for this guest send their SYN now instead of at the next retransmission.
                foreach (var c in _tcp.Values.Where(c => c.Key.GuestIp == Ip6.Mapped(ip) && c.Phase == TcpPhase.SynSent).ToList())
                {
                    c.OnTick(long.MaxValue);
                }
            }
        }
    }

    private bool HandleIpv4(ReadOnlySpan<byte> ip, MacAddress source, bool broadcast)
    {
        if (!Ipv4Packet.TryParse(ip, out var packet, allowFragments: true))
        {
            return false;
        }

        if (!packet.IsFragment)
        {
            return HandleIpv4Packet(packet, source, broadcast);
        }

        if (broadcast || !IsGuestAddress(packet.Source))
        {
            return false; // only a guest with an address fragments (DHCP never does)
        }

        var result = _reassembler.Add(packet, Environment.TickCount64, out var whole);
        return result switch
        {
            FragmentResult.Held => true,
            FragmentResult.Complete => Ipv4Packet.TryParse(whole, out var complete) && HandleIpv4Packet(complete, source, broadcast: false),
            _ => false,
        };
    }

    private bool HandleIpv4Packet(in Ipv4Packet packet, MacAddress source, bool broadcast)
    {
        if (packet.Protocol == Proto.Udp && UdpDatagram.TryParse(packet, out var dhcp, _checksumTrusted) && dhcp.DestinationPort == DhcpServer.ServerPort
            && (packet.Destination == Ip4.Broadcast || packet.Destination == _gateway))
        {
            return HandleDhcp(dhcp, source);
        }

        if (broadcast || !IsGuestAddress(packet.Source))
        {
            return false;
        }

        Learn(packet.Source, source);
        return packet.Protocol switch
        {
            Proto.Icmp => HandleIcmp(packet),
            Proto.Udp => UdpDatagram.TryParse(packet, out var udp, _checksumTrusted) && HandleUdp(packet, udp),
            Proto.Tcp => TcpSegment.TryParse(packet, out var tcp, _checksumTrusted) && HandleTcp(packet, tcp),
            _ => false,
        };
    }

    private bool HandleDhcp(in UdpDatagram udp, MacAddress source)
    {
        var reply = _dhcp.Handle(udp.Payload, out bool acked);
        if (reply is null)
        {
            return false;
        }

        if (acked)
        {
            _dhcpAcks++;
        }

        Queue(FrameBuilder.Udp(source, _gatewayMac, _gateway, DhcpServer.ServerPort, Ip4.Broadcast, DhcpServer.ClientPort, reply));
        return true;
    }

    private bool HandleIcmp(in Ipv4Packet packet)
    {
        var icmp = packet.Payload;
        if ((packet.Destination != _gateway && packet.Destination != _dnsAddress) || icmp.Length < 8 || icmp[0] != 8 || icmp[1] != 0
            || Checksum.Fold(Checksum.Add(icmp)) != 0 || GuestMac(packet.Source) is not MacAddress mac)
        {
            return false; // only echo requests to the stack's own addresses are answered
        }

        if (icmp.Length > Proto.Mtu - Proto.Ipv4Header)
        {
            return false; // a reassembled echo larger than the guest's MTU: the stack does not fragment its replies
        }

        var f = FrameBuilder.Ipv4(mac, _gatewayMac, packet.Destination, packet.Source, Proto.Icmp, icmp.Length);
        var reply = f.AsSpan(Proto.EthernetHeader + Proto.Ipv4Header);
        icmp.CopyTo(reply);
        reply[0] = 0; // echo reply; identifier, sequence and data stay
        reply[2] = reply[3] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(reply[2..], Checksum.Fold(Checksum.Add(reply)));
        Queue(f);
        return true;
    }

    /// <summary>The host-side address for a guest destination: the gateway is the host's loopback; the subnet, broadcast and multicast go nowhere.</summary>
    private IPAddress? HostDestination(uint destination)
    {
        if (destination == _gateway)
        {
            return Options.GatewayReachesHostLoopback ? IPAddress.Loopback : null;
        }

        byte first = (byte)(destination >> 24);
        if ((destination & _mask) == _network || first == 0 || first == 127 || first >= 224)
        {
            return null;
        }

        return Ip4.ToAddress(destination);
    }

    private bool Allowed(IPAddress host, int port, ProtocolType protocol)
    {
        if (Options.Policy.Decide(host, port, protocol) == UserNetworkAction.Allow)
        {
            return true;
        }

        _denied++;
        return false;
    }

    private bool HandleUdp(in Ipv4Packet packet, in UdpDatagram udp)
    {
        if (packet.Destination == _gateway && ReplyToForwardPeer(Ip6.Mapped(packet.Source), udp))
        {
            return true;
        }

        if (packet.Destination == _dnsAddress)
        {
            if (udp.DestinationPort != DnsForwarder.Port)
            {
                return false;
            }

            if (!_dns.Handle(udp.Payload, Ip6.Mapped(packet.Source), udp.SourcePort, Ip6.Mapped(_dnsAddress)))
            {
                _limitRefusals++;
            }

            return true;
        }

        if (HostDestination(packet.Destination) is not IPAddress host || udp.DestinationPort == 0)
        {
            return false;
        }

        if (!Allowed(host, udp.DestinationPort, ProtocolType.Udp))
        {
            return true;
        }

        SendUdpToHost(Ip6.Mapped(packet.Source), udp.SourcePort, new IPEndPoint(host, udp.DestinationPort), udp.Payload);
        return true;
    }

    /// <summary>
    /// A guest datagram to a gateway port that stands for a host sender of a UDP forward, from the address and port
    /// that sender's datagrams went to: it goes back to that sender. False when it is not such a reply.
    /// </summary>
    private bool ReplyToForwardPeer(UInt128 source, in UdpDatagram udp)
    {
        if (!_udpPeersByPort.TryGetValue(udp.DestinationPort, out var peer) || peer.GuestIp != source || peer.Forward.GuestPort != udp.SourcePort)
        {
            return false;
        }

        peer.LastUsed = Environment.TickCount64;
        if (!AccountBytes(udp.Payload.Length))
        {
            _limitRefusals++;
            return true;
        }

        _bytesToHost += udp.Payload.Length;
        peer.Forward.SendToClient(peer.Client, udp.Payload);
        return true;
    }

    /// <summary>A guest datagram out through the host socket of its source port (one is opened, within the limit).</summary>
    private void SendUdpToHost(UInt128 guestIp, ushort guestPort, IPEndPoint to, ReadOnlySpan<byte> payload)
    {
        if (!_udp.TryGetValue((guestIp, guestPort), out var flow))
        {
            if (_udp.Count >= Options.MaxUdpFlows)
            {
                _limitRefusals++;
                return;
            }

            flow = new UdpFlow(this, guestIp, guestPort);
            _openSockets++;
            _udp[(guestIp, guestPort)] = flow;
        }

        if (!AccountBytes(payload.Length))
        {
            _limitRefusals++;
            return;
        }

        _bytesToHost += payload.Length;
        flow.Send(to, payload);
    }

    private bool HandleTcp(in Ipv4Packet packet, in TcpSegment segment)
    {
        var key = new TcpKey(Ip6.Mapped(packet.Source), segment.SourcePort, Ip6.Mapped(packet.Destination), segment.DestinationPort);
        return HandleTcp(key, segment, packet.Destination == _dnsAddress, HostDestination(packet.Destination));
    }

    /// <summary>A guest TCP segment of either IP version: to its connection, or a new outbound connection for a SYN.</summary>
    private bool HandleTcp(TcpKey key, in TcpSegment segment, bool toDnsAddress, IPAddress? hostDestination)
    {
        if (_tcp.TryGetValue(key, out var existing))
        {
            existing.OnSegment(segment);
            return true;
        }

        if (segment.Has(TcpSegment.Rst))
        {
            return true;
        }

        bool isSyn = segment.Has(TcpSegment.Syn) && !segment.Has(TcpSegment.Ack) && !segment.Has(TcpSegment.Fin);
        if (!isSyn)
        {
            RefuseSegment(key, segment); // no such connection (RFC 793: reset)
            return true;
        }

        IPEndPoint target;
        if (toDnsAddress)
        {
            // DNS over TCP (RFC 7766) goes to the upstream server as it is; the host resolver has no TCP form.
            if (segment.DestinationPort != DnsForwarder.Port || Options.DnsUpstream is not IPEndPoint upstream)
            {
                RefuseSegment(key, segment);
                return true;
            }

            target = upstream;
        }
        else
        {
            if (hostDestination is not IPAddress host || segment.DestinationPort == 0)
            {
                RefuseSegment(key, segment);
                return true;
            }

            if (!Allowed(host, segment.DestinationPort, ProtocolType.Tcp))
            {
                RefuseSegment(key, segment);
                return true;
            }

            target = new IPEndPoint(host, segment.DestinationPort);
        }

        if (_tcp.Count >= Options.MaxTcpConnections || (Options.MaxTotalBytes is long max && _totalBytes >= max))
        {
            _limitRefusals++;
            RefuseSegment(key, segment);
            return true;
        }

        _openSockets++;
        _tcpOpened++;
        var connection = TcpConnection.Outbound(this, key, segment, target.AddressFamily);
        _tcp[key] = connection;
        connection.Connect(target);
        return true;
    }

    private void RefuseSegment(TcpKey key, in TcpSegment segment)
    {
        if (segment.Has(TcpSegment.Ack))
        {
            SendReset(key, segment.Acknowledgment, 0, withAck: false);
        }
        else
        {
            SendReset(key, 0, segment.Sequence + (uint)segment.Length, withAck: true);
        }
    }
}

/// <summary>A host port forwarded to a guest port by <see cref="UserModeNetwork.ForwardTcp"/>. Disposing it stops listening; open connections stay.</summary>
public sealed class TcpPortForward : IAsyncDisposable
{
    private readonly UserModeNetwork _network;
    private readonly Socket _listener;
    private Task? _accepting;
    private long _accepted;

    internal TcpPortForward(UserModeNetwork network, Socket listener, IPAddress guestAddress, ForwardTarget target, ushort guestPort)
    {
        _network = network;
        _listener = listener;
        GuestAddress = guestAddress;
        Target = target;
        GuestPort = guestPort;
        HostEndPoint = (IPEndPoint)listener.LocalEndPoint!;
    }

    /// <summary>Where the host listens (with the port the system chose when 0 was asked for).</summary>
    public IPEndPoint HostEndPoint { get; }

    /// <summary>
    /// The guest's address connections go to, as the forward was made: the address named, <see cref="IPAddress.IPv6Any"/>
    /// for the guest's IPv6 address, or (none named) <see cref="UserModeNetworkOptions.FirstGuestAddress"/>, which
    /// gives way to the guest's IPv6 address while the guest does not use IPv4 (see <see cref="UserModeNetwork.ForwardTcp"/>).
    /// </summary>
    public IPAddress GuestAddress { get; }

    /// <summary>The guest's port connections go to.</summary>
    public int GuestPort { get; }

    /// <summary>Host clients accepted so far.</summary>
    public long ConnectionsAccepted => Interlocked.Read(ref _accepted);

    internal ForwardTarget Target { get; }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _listener.Dispose();
        if (_accepting is not null)
        {
            await _accepting.ConfigureAwait(false);
        }
    }

    internal void Start() => _accepting = AcceptLoopAsync();

    private async Task AcceptLoopAsync()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }

            Interlocked.Increment(ref _accepted);
            _network.Locked(() => _network.OnForwardAccepted(this, client));
        }
    }
}

/// <summary>How a forward picks the guest's address.</summary>
internal enum ForwardTargetKind
{
    /// <summary>No address named: the first guest address, or the guest's IPv6 address while it does not use IPv4.</summary>
    Guest,

    /// <summary>The address named (IPv4 as IPv4-mapped, or IPv6).</summary>
    Address,

    /// <summary>The guest's IPv6 address as learned from its packets.</summary>
    GuestIpv6,
}

/// <summary>A forward's guest address: its kind and the address (IPv4-mapped for IPv4; unused for <see cref="ForwardTargetKind.GuestIpv6"/>).</summary>
internal readonly record struct ForwardTarget(ForwardTargetKind Kind, UInt128 Address);

/// <summary>A frame waiting for the guest: its bytes (from the pool when <paramref name="Pooled"/>) and its offload header.</summary>
internal readonly record struct OutboundFrame(byte[] Buffer, int Length, FrameOffload Offload, bool Pooled)
{
    public void Release()
    {
        if (Pooled)
        {
            ArrayPool<byte>.Shared.Return(Buffer);
        }
    }
}
