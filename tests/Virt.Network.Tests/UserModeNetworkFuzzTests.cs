using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Virt.Network.UserNet;
using Xunit;

namespace Virt.Network.Tests;

/// <summary>
/// Hostile guest frames: a million random, mutated and state-attacking frames go into a <see cref="UserModeNetwork"/>
/// that has a live host listener to connect to. Nothing may throw, memory and host sockets stay bounded, every
/// frame the stack sends back is well formed, and disposal closes every host socket. The frames come as from a
/// virtio-net device whose guest negotiated every offload: half with a random or a plausible offload header (partial
/// checksums, segmentation offloads, bad fields), checked as the device checks them, and in batches of random length;
/// the stack's replies may be offloaded too and must carry a header that fits them.
/// </summary>
public sealed class UserModeNetworkFuzzTests
{
    private const int Frames = 1_000_000;
    private const int GuestPorts = 12;

    [Fact]
    public async Task A_million_random_and_mutated_frames_throw_nothing_and_leave_no_sockets_behind()
    {
        var ct = TestContext.Current.CancellationToken;
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start(64);
        int tcpPort = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var udpSink = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udpSink.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int udpPort = ((IPEndPoint)udpSink.LocalEndPoint!).Port;
        using var listener6 = new TcpListener(IPAddress.IPv6Loopback, 0);
        listener6.Start(64);
        int tcpPort6 = ((IPEndPoint)listener6.LocalEndpoint).Port;
        var accepted = new List<TcpClient>();
        var accepted6 = new List<TcpClient>();
        using var stopServer = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var server = ServeAsync(listener, accepted, stopServer.Token);
        var server6 = ServeAsync(listener6, accepted6, stopServer.Token);

        var options = new UserModeNetworkOptions
        {
            // Only the test's own loopback sockets are reachable: random SYNs elsewhere are denied, not sent to the internet.
            Policy = UserNetworkPolicy.DenyAllExcept(
                UserNetworkRule.Allow("127.0.0.1/32", tcpPort, ProtocolType.Tcp),
                UserNetworkRule.Allow("127.0.0.1/32", udpPort, ProtocolType.Udp),
                UserNetworkRule.Allow("::1/128", tcpPort6, ProtocolType.Tcp)),
            DnsUpstream = (IPEndPoint)udpSink.LocalEndPoint!, // queries go to a sink that never answers
            MaxTcpConnections = 16,
            MaxUdpFlows = 8,
            TcpBufferSize = 16 * 1024,
        };
        var net = new UserModeNetwork(options);
        var fuzz = new FrameFuzzer(net.Options.GatewayMac, (ushort)tcpPort, (ushort)udpPort, (ushort)tcpPort6, seed: 20260101);
        long malformedReplies = 0;
        IOffloadNetworkBackend nic = net;
        nic.AttachOffload((frame, in offload) =>
        {
            var copy = frame.ToArray();
            if (!FrameFuzzer.OffloadFits(copy, offload) || !FrameFuzzer.IsWellFormed(copy))
            {
                Interlocked.Increment(ref malformedReplies);
            }

            fuzz.Observe(copy);
            return true;
        }, NetworkOffloads.Checksum | NetworkOffloads.Tcp4Segmentation | NetworkOffloads.Tcp6Segmentation);
        var headers = new Random(20260102);
        long headersRefused = 0;
        long offloaded = 0;

        GC.Collect();
        long memoryBefore = GC.GetTotalMemory(forceFullCollection: true);
        int maxSockets = 0;
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < Frames; i++)
        {
            var frame = fuzz.Next();
            var header = FrameFuzzer.OffloadHeader(frame, headers);
            if (header == FrameOffload.None)
            {
                await net.SendAsync(frame, ct);
            }
            else if (VirtioNetDevice.CheckTransmitHeader(header, frame, _ => true) is null)
            {
                offloaded++;
                nic.Send(frame, header);
            }
            else
            {
                headersRefused++; // the device drops it; the stack never sees it
            }

            if (headers.Next(8) == 0)
            {
                nic.EndOfBatch();
            }

            if ((i & 0xFFFF) == 0)
            {
                maxSockets = Math.Max(maxSockets, net.Statistics.OpenHostSockets);
            }
        }

        clock.Stop();
        var stats = net.Statistics;
        long memoryAfter = GC.GetTotalMemory(forceFullCollection: true);
        await net.DisposeAsync();
        var final = net.Statistics;
        await stopServer.CancelAsync();
        await server;
        await server6;

        string summary = $"{Frames} frames in {clock.Elapsed.TotalSeconds:F1} s ({offloaded} with an offload header, {headersRefused} refused for theirs); {stats}; memory {memoryBefore / 1024} KiB -> {memoryAfter / 1024} KiB";
        TestContext.Current.SendDiagnosticMessage(summary);
        Assert.Equal(Frames - headersRefused, stats.FramesFromGuest);
        Assert.True(offloaded > Frames / 10 && headersRefused > Frames / 20, "offload headers were taken and refused: " + summary);
        Assert.Equal(0, stats.InternalErrors);
        Assert.Equal(0, Interlocked.Read(ref malformedReplies));
        Assert.True(stats.FramesDropped > Frames / 4, "most mutated frames are dropped: " + summary);
        Assert.True(stats.TcpConnectionsOpened > 0 && stats.DhcpAcks > 0 && stats.DeniedAttempts > 0, "the fuzzer reached TCP, DHCP and the policy: " + summary);
        Assert.True(stats.DatagramsReassembled > 0 && stats.FragmentedDatagramsDiscarded > 0, "the fuzzer reached reassembly and its refusals: " + summary);
        Assert.True(fuzz.Ipv6Replies > 0 && fuzz.Ipv6TcpReplies > 0, "the stack answered IPv6 neighbour discovery and TCP: " + summary);
        Assert.True(maxSockets <= options.MaxTcpConnections + options.MaxUdpFlows + DnsForwarder.MaxPending, summary);
        Assert.True(memoryAfter - memoryBefore < 64L * 1024 * 1024, "memory stays bounded: " + summary);
        Assert.True(accepted6.Count > 0, "IPv6 connections reached the host listener: " + summary);
        Assert.Equal(0, final.OpenHostSockets);
        Assert.Equal(0, final.OpenTcpConnections);
        Assert.Equal(0, final.OpenUdpFlows);
    }

    private static async Task ServeAsync(TcpListener listener, List<TcpClient> accepted, CancellationToken ct)
    {
        var readers = new List<Task>();
        try
        {
            while (true)
            {
                var client = await listener.AcceptTcpClientAsync(ct);
                accepted.Add(client);
                readers.Add(DrainAsync(client));
            }
        }
        catch (OperationCanceledException)
        {
        }

        // Every connection the stack opened is closed by its disposal: each reader sees the end or a reset.
        await Task.WhenAll(readers).WaitAsync(TimeSpan.FromSeconds(30), CancellationToken.None);
        foreach (var c in accepted)
        {
            c.Dispose();
        }
    }

    private static async Task DrainAsync(TcpClient client)
    {
        var buffer = new byte[4096];
        try
        {
            var stream = client.GetStream();
            await stream.WriteAsync(new byte[3000]); // something for the guest side to receive, acknowledge or not
            while (await stream.ReadAsync(buffer) > 0)
            {
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
        }
    }
}

/// <summary>Makes guest frames: well-formed ones of every kind the stack handles, then mutates many of them.</summary>
internal sealed class FrameFuzzer(MacAddress gatewayMac, ushort tcpPort, ushort udpPort, ushort tcpPort6, int seed)
{
    private static readonly MacAddress Mac = FakeGuest.Mac;
    private const ushort FirstGuestPort6 = 31000;
    private readonly Random _random = new(seed);
    private readonly Queue<byte[]> _queued = new();
    private long _ipv6Replies;
    private long _ipv6TcpReplies;

    /// <summary>IPv6 frames the stack sent (neighbour discovery, echo, TCP, UDP).</summary>
    public long Ipv6Replies => Interlocked.Read(ref _ipv6Replies);

    /// <summary>IPv6 TCP segments the stack sent.</summary>
    public long Ipv6TcpReplies => Interlocked.Read(ref _ipv6TcpReplies);
    private readonly uint[] _stackSeq = new uint[GuestPortCount];
    private readonly uint[] _stackAck = new uint[GuestPortCount];
    private readonly uint[] _stackSeq6 = new uint[GuestPortCount];
    private readonly uint[] _stackAck6 = new uint[GuestPortCount];
    private const int GuestPortCount = 12;
    private const ushort FirstGuestPort = 30000;

    /// <summary>Remembers the sequence numbers the stack uses, so forged segments land inside its windows.</summary>
    public void Observe(ReadOnlySpan<byte> frame)
    {
        if (frame.Length >= 54 && BinaryPrimitives.ReadUInt16BigEndian(frame[12..]) == Proto.EtherTypeIpv6)
        {
            Interlocked.Increment(ref _ipv6Replies);
            if (frame[20] == Proto.Tcp && frame.Length >= 74)
            {
                Interlocked.Increment(ref _ipv6TcpReplies);
                int port6 = BinaryPrimitives.ReadUInt16BigEndian(frame[56..]) - FirstGuestPort6;
                if (port6 is >= 0 and < GuestPortCount)
                {
                    lock (_stackSeq)
                    {
                        _stackSeq6[port6] = BinaryPrimitives.ReadUInt32BigEndian(frame[58..]);
                        _stackAck6[port6] = BinaryPrimitives.ReadUInt32BigEndian(frame[62..]);
                    }
                }
            }

            return;
        }

        if (frame.Length >= 54 && frame[23] == Proto.Tcp)
        {
            int port = BinaryPrimitives.ReadUInt16BigEndian(frame[36..]) - FirstGuestPort;
            if (port is >= 0 and < GuestPortCount)
            {
                lock (_stackSeq)
                {
                    _stackSeq[port] = BinaryPrimitives.ReadUInt32BigEndian(frame[38..]);
                    _stackAck[port] = BinaryPrimitives.ReadUInt32BigEndian(frame[42..]);
                }
            }
        }
    }

    public byte[] Next()
    {
        if (_queued.TryDequeue(out var queued))
        {
            return queued;
        }

        int pick = _random.Next(100);
        byte[] frame = pick switch
        {
            < 32 => Tcp(),
            < 40 => Udp(),
            < 45 => Dhcp(),
            < 50 => Arp(),
            < 54 => Icmp(),
            < 58 => Ipv4Oddity(),
            < 64 => Fragments(),
            < 70 => Tcp6(),
            < 76 => Ipv6(),
            _ => Raw(),
        };
        return _random.Next(100) < 45 ? Mutate(frame) : frame;
    }

    /// <summary>Whether a frame from the stack is a sound Ethernet frame: ARP of 42 bytes, or IPv4 with valid header and transport checksums.</summary>
    /// <summary>
    /// A virtio-net header for <paramref name="frame"/> as a guest with every offload could send it: none (half the
    /// frames), a partial checksum at the transport header with or without a segmentation offload, or random fields.
    /// </summary>
    public static FrameOffload OffloadHeader(byte[] frame, Random random)
    {
        int pick = random.Next(8);
        if (pick < 4 || frame.Length < 34)
        {
            return FrameOffload.None;
        }

        if (pick == 7)
        {
            return new FrameOffload((byte)random.Next(4), random.Next(4) switch { 0 => 0, 1 => 1, 2 => 4, _ => (byte)random.Next(256) },
                (ushort)random.Next(65536), (ushort)random.Next(3), (ushort)random.Next(80), (ushort)random.Next(20));
        }

        ushort type = BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12));
        bool v6 = type == Proto.EtherTypeIpv6;
        int transport = v6 ? 54 : 14 + ((frame[14] & 0xF) * 4);
        byte protocol = v6 ? (frame.Length > 20 ? frame[20] : (byte)0) : frame[23];
        ushort offset = protocol == Proto.Udp ? (ushort)6 : (ushort)16;
        byte gso = protocol == Proto.Tcp && random.Next(2) == 0 ? (v6 ? FrameOffload.GsoTcp6 : FrameOffload.GsoTcp4) : FrameOffload.GsoNone;
        return new FrameOffload(FrameOffload.NeedsChecksum, gso, (ushort)Math.Min(frame.Length, transport + 20),
            gso == 0 ? (ushort)0 : (ushort)random.Next(1, 1461), (ushort)transport, offset);
    }

    /// <summary>
    /// Whether the stack's offload header fits its frame: a partial checksum only for TCP, at the TCP header, with a
    /// segmentation offload of the frame's IP version whose segments are smaller than the payload; the checksum is then
    /// completed in <paramref name="frame"/> so the frame can be checked like any other. Frames without offload stay
    /// within the MTU.
    /// </summary>
    public static bool OffloadFits(byte[] frame, in FrameOffload offload)
    {
        if (offload == FrameOffload.None)
        {
            return frame.Length <= 1514;
        }

        if (offload.Flags != FrameOffload.NeedsChecksum || frame.Length < 54)
        {
            return false;
        }

        bool v6 = BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) == Proto.EtherTypeIpv6;
        int tcp = v6 ? 54 : 34;
        if (offload.ChecksumStart != tcp || offload.ChecksumOffset != 16 || frame[v6 ? 20 : 23] != Proto.Tcp)
        {
            return false;
        }

        int payload = frame.Length - tcp - ((frame[tcp + 12] >> 4) * 4);
        bool fits = offload.GsoType switch
        {
            FrameOffload.GsoNone => frame.Length <= 1514,
            FrameOffload.GsoTcp4 => !v6 && offload.SegmentSize > 0 && payload > offload.SegmentSize && offload.HeaderLength == tcp + 20,
            FrameOffload.GsoTcp6 => v6 && offload.SegmentSize > 0 && payload > offload.SegmentSize && offload.HeaderLength == tcp + 20,
            _ => false,
        };
        return fits && Checksum.TryComplete(frame, offload.ChecksumStart, offload.ChecksumOffset);
    }

    public static bool IsWellFormed(ReadOnlySpan<byte> f)
    {
        if (f.Length < 14)
        {
            return false;
        }

        ushort type = BinaryPrimitives.ReadUInt16BigEndian(f[12..]);
        if (type == Proto.EtherTypeArp)
        {
            return f.Length == 42;
        }

        if (type == Proto.EtherTypeIpv6)
        {
            if (!Ipv6Packet.TryParse(f[14..], out var ip6) || f.Length != 14 + 40 + ip6.Payload.Length)
            {
                return false;
            }

            return ip6.Protocol switch
            {
                Proto.Tcp => TcpSegment.TryParse(ip6, out _),
                Proto.Udp => UdpDatagram.TryParse(ip6, out _),
                Proto.Icmpv6 => Checksum.Fold(Checksum.Add(ip6.Payload, ip6.PseudoHeader(ip6.Payload.Length))) == 0,
                _ => false,
            };
        }

        if (type != Proto.EtherTypeIpv4 || !Ipv4Packet.TryParse(f[14..], out var ip) || f.Length != 14 + 20 + ip.Payload.Length)
        {
            return false;
        }

        return ip.Protocol switch
        {
            Proto.Tcp => TcpSegment.TryParse(ip, out _),
            Proto.Udp => UdpDatagram.TryParse(ip, out _),
            Proto.Icmp => Checksum.Fold(Checksum.Add(ip.Payload)) == 0,
            _ => false,
        };
    }

    private byte[] Tcp()
    {
        int slot = _random.Next(GuestPortCount);
        ushort guestPort = (ushort)(FirstGuestPort + slot);
        uint destination = _random.Next(10) switch
        {
            < 7 => FakeGuest.Gateway,
            7 => FakeGuest.Dns,
            8 => (uint)_random.Next(),
            _ => FakeGuest.Ip + 1,
        };
        ushort port = _random.Next(4) == 0 ? (ushort)_random.Next(65536) : tcpPort;
        uint seq;
        uint ack;
        lock (_stackSeq)
        {
            // Near what the stack expects (its ACK is our next sequence number), or anywhere.
            seq = _random.Next(3) switch { 0 => (uint)_random.Next(), 1 => _stackAck[slot], _ => _stackAck[slot] + (uint)_random.Next(-3000, 3000) };
            ack = _random.Next(3) switch { 0 => (uint)_random.Next(), 1 => _stackSeq[slot] + 1, _ => _stackSeq[slot] + (uint)_random.Next(-3000, 6000) };
        }

        byte flags = _random.Next(4) switch
        {
            0 => TcpSegment.Syn,
            1 => TcpSegment.Ack,
            2 => (byte)(TcpSegment.Ack | (_random.Next(2) == 0 ? TcpSegment.Fin : TcpSegment.Psh)),
            _ => (byte)_random.Next(64),
        };
        var payload = new byte[_random.Next(4) == 0 ? _random.Next(1400) : _random.Next(64)];
        _random.NextBytes(payload);
        var frame = FrameBuilder.Tcp(gatewayMac, Mac, FakeGuest.Ip, guestPort, destination, port, seq, ack, flags, (ushort)_random.Next(65536), payload,
            mss: _random.Next(3) == 0 ? (ushort)_random.Next(65536) : (ushort)0);
        if (_random.Next(6) == 0)
        {
            RandomTcpOptions(frame);
        }

        return frame;
    }

    /// <summary>Rewrites the TCP header's option area (growing the data offset into the payload) with random bytes and a valid checksum.</summary>
    private void RandomTcpOptions(byte[] frame)
    {
        var tcp = frame.AsSpan(34);
        int room = Math.Min(40, tcp.Length - 20) & ~3;
        if (room <= 0)
        {
            return;
        }

        int options = 4 * _random.Next(1, (room / 4) + 1);
        tcp[12] = (byte)(((20 + options) / 4) << 4);
        _random.NextBytes(tcp.Slice(20, options));
        FixChecksums(frame);
    }

    private byte[] Udp()
    {
        var payload = new byte[_random.Next(200)];
        _random.NextBytes(payload);
        return _random.Next(4) switch
        {
            0 => FrameBuilder.Udp(gatewayMac, Mac, FakeGuest.Ip, (ushort)(40000 + _random.Next(20)), FakeGuest.Dns, 53, UserModeNetworkTests.DnsQuery((ushort)_random.Next(), "x.test")),
            1 => FrameBuilder.Udp(gatewayMac, Mac, FakeGuest.Ip, (ushort)(40000 + _random.Next(20)), FakeGuest.Gateway, udpPort, payload),
            2 => FrameBuilder.Udp(gatewayMac, Mac, FakeGuest.Ip, (ushort)_random.Next(65536), (uint)_random.Next(), (ushort)_random.Next(65536), payload),
            _ => FrameBuilder.Udp(gatewayMac, Mac, FakeGuest.Ip, 5353, FakeGuest.Dns, 53, payload),
        };
    }

    private byte[] Dhcp()
    {
        var mac = _random.Next(4) == 0 ? MacAddress.FromBytes([2, 0, 0, 0, (byte)_random.Next(256), (byte)_random.Next(256)]) : Mac;
        var message = UserModeNetworkTests.Dhcp((byte)_random.Next(1, 9), (uint)_random.Next(), requested: _random.Next(2) == 0 ? FakeGuest.Ip : (uint)_random.Next(), server: FakeGuest.Gateway, mac: mac);
        if (_random.Next(3) == 0)
        {
            _random.NextBytes(message.AsSpan(240 + _random.Next(message.Length - 240)));
        }

        return FrameBuilder.Udp(MacAddress.Broadcast, mac, 0, 68, Ip4.Broadcast, 67, message.AsSpan(0, _random.Next(200, message.Length + 1)));
    }

    private byte[] Arp()
    {
        uint target = _random.Next(3) == 0 ? (uint)_random.Next() : (_random.Next(2) == 0 ? FakeGuest.Gateway : FakeGuest.Dns);
        return FrameBuilder.Arp(MacAddress.Broadcast, Mac, (ushort)_random.Next(0, 4), Mac, _random.Next(4) == 0 ? (uint)_random.Next() : FakeGuest.Ip, default, target);
    }

    private byte[] Icmp()
    {
        var icmp = new byte[8 + _random.Next(1400)];
        _random.NextBytes(icmp);
        icmp[0] = _random.Next(4) == 0 ? (byte)_random.Next(256) : (byte)8;
        icmp[1] = 0;
        icmp[2] = icmp[3] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(icmp.AsSpan(2), Checksum.Fold(Checksum.Add(icmp)));
        var f = FrameBuilder.Ipv4(gatewayMac, Mac, FakeGuest.Ip, _random.Next(2) == 0 ? FakeGuest.Gateway : FakeGuest.Dns, Proto.Icmp, icmp.Length);
        icmp.CopyTo(f, 34);
        return f;
    }

    /// <summary>Valid checksums around wrong structure: fragments, IP options, lengths that disagree, other protocols.</summary>
    private byte[] Ipv4Oddity()
    {
        var f = Tcp();
        var ip = f.AsSpan(14, 20);
        switch (_random.Next(5))
        {
            case 0:
                BinaryPrimitives.WriteUInt16BigEndian(ip[6..], (ushort)(_random.Next(2) == 0 ? 0x2000 : _random.Next(1, 0x2000))); // MF or an offset
                break;
            case 1:
                ip[0] = (byte)(0x40 | _random.Next(16)); // header length, 0 to 60 bytes
                break;
            case 2:
                BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)_random.Next(65536)); // total length
                break;
            case 3:
                ip[9] = (byte)_random.Next(256);
                break;
            default:
                ip[0] = (byte)((_random.Next(16) << 4) | 5);
                break;
        }

        ip[10] = ip[11] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum.Fold(Checksum.Add(ip)));
        return f;
    }

    /// <summary>
    /// A UDP or ICMP datagram cut into fragments sent in random order, some duplicated, some overlapping with other
    /// bytes, some lost, with identifications from a small set so that datagrams mix; returns the first and queues the rest.
    /// </summary>
    private byte[] Fragments()
    {
        var whole = _random.Next(2) == 0 ? Udp() : Icmp();
        if (_random.Next(3) == 0)
        {
            var big = new byte[_random.Next(1, 4000)];
            _random.NextBytes(big);
            whole = FrameBuilder.Udp(gatewayMac, Mac, FakeGuest.Ip, 5000, FakeGuest.Gateway, udpPort, big);
        }

        ushort id = (ushort)_random.Next(8);
        int size = 8 * _random.Next(1, 190);
        var pieces = UserModeNetworkFragmentTests.Fragment(whole, size, id);
        if (_random.Next(4) == 0 && pieces.Count > 0)
        {
            // An overlapping piece with other bytes, at an offset inside the datagram.
            int at = 8 * _random.Next(0, Math.Max(1, (whole.Length - 34) / 8));
            var attacker = UserModeNetworkFragmentTests.Fragment(whole, size, id, firstOffset: at, count: 1);
            if (attacker.Count > 0)
            {
                _random.NextBytes(attacker[0].AsSpan(34));
                pieces.Insert(_random.Next(pieces.Count + 1), attacker[0]);
            }
        }

        if (_random.Next(5) == 0 && pieces.Count > 1)
        {
            pieces.RemoveAt(_random.Next(pieces.Count)); // lost: the datagram waits for its timeout
        }

        if (_random.Next(5) == 0 && pieces.Count > 0)
        {
            pieces.Add(pieces[_random.Next(pieces.Count)]); // a duplicate
        }

        var order = pieces.OrderBy(_ => _random.Next(3)).ToList();
        foreach (var p in order.Skip(1))
        {
            _queued.Enqueue(_random.Next(10) == 0 ? Mutate(p) : p);
        }

        return order.Count > 0 ? order[0] : whole;
    }

    private static readonly UInt128 Guest6 = UserModeNetworkIpv6Tests.Guest6;
    private static readonly UInt128 Gateway6 = UserModeNetworkIpv6Tests.Gateway6;

    /// <summary>A TCP segment over IPv6 to the allowed host listener on ::1 (or elsewhere), near the stack's sequence numbers.</summary>
    private byte[] Tcp6()
    {
        int slot = _random.Next(GuestPortCount);
        uint seq;
        uint ack;
        lock (_stackSeq)
        {
            seq = _random.Next(3) switch { 0 => (uint)_random.Next(), 1 => _stackAck6[slot], _ => _stackAck6[slot] + (uint)_random.Next(-3000, 3000) };
            ack = _random.Next(3) switch { 0 => (uint)_random.Next(), 1 => _stackSeq6[slot] + 1, _ => _stackSeq6[slot] + (uint)_random.Next(-3000, 6000) };
        }

        byte flags = _random.Next(4) switch
        {
            0 => TcpSegment.Syn,
            1 => TcpSegment.Ack,
            2 => (byte)(TcpSegment.Ack | (_random.Next(2) == 0 ? TcpSegment.Fin : TcpSegment.Psh)),
            _ => (byte)_random.Next(64),
        };
        UInt128 destination = _random.Next(8) switch
        {
            0 => new UInt128((ulong)_random.NextInt64(), (ulong)_random.NextInt64()),
            1 => UserModeNetworkIpv6Tests.Dns6,
            _ => Gateway6,
        };
        var payload = new byte[_random.Next(4) == 0 ? _random.Next(1400) : _random.Next(64)];
        _random.NextBytes(payload);
        return FrameBuilder.Tcp6(gatewayMac, Mac, Guest6, (ushort)(FirstGuestPort6 + slot), destination, _random.Next(4) == 0 ? (ushort)_random.Next(65536) : tcpPort6,
            seq, ack, flags, (ushort)_random.Next(65536), payload, mss: _random.Next(3) == 0 ? (ushort)_random.Next(65536) : (ushort)0,
            windowScale: _random.Next(3) == 0 ? _random.Next(20) : -1);
    }

    /// <summary>IPv6 beyond TCP: neighbour and router discovery with random options and hop limits, echo, UDP, DNS, extension headers.</summary>
    private byte[] Ipv6()
    {
        UInt128 source = _random.Next(6) switch
        {
            0 => UserModeNetworkIpv6Tests.GuestLinkLocal,
            1 => UInt128.Zero,
            2 => new UInt128((ulong)_random.NextInt64(), (ulong)_random.NextInt64()),
            _ => Guest6,
        };
        byte hop = _random.Next(4) == 0 ? (byte)_random.Next(256) : (byte)255;
        switch (_random.Next(6))
        {
            case 0:
            case 1:
            {
                byte type = (byte)(_random.Next(5) == 0 ? _random.Next(256) : _random.Next(133, 137));
                var body = new byte[_random.Next(0, 64)];
                _random.NextBytes(body);
                if (body.Length >= 20 && _random.Next(2) == 0)
                {
                    Ip6.Write(body.AsSpan(4), _random.Next(2) == 0 ? Gateway6 : UserModeNetworkIpv6Tests.GatewayLinkLocal); // a target that is ours
                }

                UInt128 destination = _random.Next(3) switch
                {
                    0 => Ip6.AllRouters,
                    1 => Ip6.SolicitedNode(Gateway6),
                    _ => Gateway6,
                };
                var to = Ip6.IsMulticast(destination) ? Ip6.MulticastMac(destination) : gatewayMac;
                return FrameBuilder.Icmpv6(to, Mac, source, destination, type, (byte)(_random.Next(8) == 0 ? 1 : 0), body, hop);
            }

            case 2:
            {
                var echo = new byte[_random.Next(4, 1500)];
                _random.NextBytes(echo);
                return FrameBuilder.Icmpv6(gatewayMac, Mac, source, _random.Next(2) == 0 ? Gateway6 : UserModeNetworkIpv6Tests.Dns6, 128, 0, echo, hop);
            }

            case 3:
            {
                var payload = new byte[_random.Next(200)];
                _random.NextBytes(payload);
                return _random.Next(2) == 0
                    ? FrameBuilder.Udp6(gatewayMac, Mac, Guest6, (ushort)(40000 + _random.Next(20)), UserModeNetworkIpv6Tests.Dns6, 53, UserModeNetworkTests.DnsQuery((ushort)_random.Next(), "x.test"))
                    : FrameBuilder.Udp6(gatewayMac, Mac, Guest6, (ushort)_random.Next(65536), _random.Next(2) == 0 ? Gateway6 : new UInt128((ulong)_random.NextInt64(), (ulong)_random.NextInt64()), (ushort)_random.Next(65536), payload);
            }

            default:
            {
                // A chain of extension headers (hop-by-hop, destination options, routing, fragment) of random lengths before UDP.
                var inner = FrameBuilder.Udp6(gatewayMac, Mac, Guest6, 5000, Gateway6, udpPort, [1, 2, 3]);
                var chain = new List<byte>();
                byte[] kinds = [0, 60, 43, 44];
                int count = _random.Next(1, 4);
                byte first = kinds[_random.Next(kinds.Length)];
                for (int i = 0; i < count; i++)
                {
                    byte next = i == count - 1 ? Proto.Udp : kinds[_random.Next(kinds.Length)];
                    int length = _random.Next(3);
                    var header = new byte[(length + 1) * 8];
                    _random.NextBytes(header);
                    header[0] = next;
                    header[1] = (byte)(_random.Next(10) == 0 ? _random.Next(256) : length);
                    chain.AddRange(header);
                }

                var f = new byte[inner.Length + chain.Count];
                inner.AsSpan(0, 54).CopyTo(f);
                chain.CopyTo(f, 54);
                inner.AsSpan(54).CopyTo(f.AsSpan(54 + chain.Count));
                f[20] = first;
                BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(18), (ushort)(f.Length - 54));
                return f;
            }
        }
    }

    private byte[] Raw()
    {
        var f = new byte[_random.Next(0, 1600)];
        _random.NextBytes(f);
        if (f.Length >= 14)
        {
            (_random.Next(2) == 0 ? gatewayMac : MacAddress.Broadcast).CopyTo(f);
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), _random.Next(3) switch { 0 => Proto.EtherTypeIpv4, 1 => Proto.EtherTypeArp, _ => Proto.EtherTypeIpv6 });
            if (f.Length >= 20 && BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(12)) == Proto.EtherTypeIpv6)
            {
                f[14] = (byte)(0x60 | (f[14] & 0xF));
            }
        }

        return f;
    }

    private byte[] Mutate(byte[] f)
    {
        switch (_random.Next(4))
        {
            case 0:
                return f[.._random.Next(f.Length + 1)]; // truncated
            case 1:
            {
                var longer = new byte[f.Length + _random.Next(1, 64)];
                f.CopyTo(longer, 0);
                _random.NextBytes(longer.AsSpan(f.Length));
                return longer;
            }

            default:
            {
                int flips = _random.Next(1, 5);
                for (int i = 0; i < flips && f.Length > 0; i++)
                {
                    // Mostly the headers, where the parser makes its decisions.
                    int at = _random.Next(2) == 0 ? _random.Next(Math.Min(f.Length, 60)) : _random.Next(f.Length);
                    f[at] ^= (byte)(1 << _random.Next(8));
                }

                if (_random.Next(2) == 0)
                {
                    FixChecksums(f); // so the mutation reaches past the checksum checks
                }

                return f;
            }
        }
    }

    /// <summary>Recomputes the IPv4 header and TCP/UDP checksums where the (possibly mutated) lengths allow.</summary>
    private static void FixChecksums(byte[] f)
    {
        if (f.Length >= 54 && BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(12)) == Proto.EtherTypeIpv6)
        {
            var ip6 = f.AsSpan(14);
            int length = Math.Min(BinaryPrimitives.ReadUInt16BigEndian(ip6[4..]), ip6.Length - 40);
            var upper = ip6.Slice(40, length);
            int at6 = ip6[6] switch { Proto.Tcp => 16, Proto.Udp => 6, Proto.Icmpv6 => 2, _ => -1 };
            if (at6 >= 0 && upper.Length >= at6 + 2)
            {
                upper[at6] = upper[at6 + 1] = 0;
                uint pseudo6 = Checksum.PseudoHeader6(Ip6.Read(ip6[8..]), Ip6.Read(ip6[24..]), ip6[6], upper.Length);
                BinaryPrimitives.WriteUInt16BigEndian(upper[at6..], Checksum.Fold(Checksum.Add(upper, pseudo6)));
            }

            return;
        }

        if (f.Length < 34 || BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(12)) != Proto.EtherTypeIpv4)
        {
            return;
        }

        var ip = f.AsSpan(14);
        int header = (ip[0] & 0xF) * 4;
        if (header < 20 || header > ip.Length)
        {
            return;
        }

        ip[10] = ip[11] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum.Fold(Checksum.Add(ip[..header])));
        int total = Math.Min(BinaryPrimitives.ReadUInt16BigEndian(ip[2..]), ip.Length);
        if (total <= header)
        {
            return;
        }

        var transport = ip[header..total];
        int at = ip[9] switch { Proto.Tcp => 16, Proto.Udp => 6, _ => -1 };
        if (at < 0 || transport.Length < at + 2)
        {
            return;
        }

        transport[at] = transport[at + 1] = 0;
        uint pseudo = Checksum.PseudoHeader(Ip4.Read(ip[12..]), Ip4.Read(ip[16..]), ip[9], transport.Length);
        BinaryPrimitives.WriteUInt16BigEndian(transport[at..], Checksum.Fold(Checksum.Add(transport, pseudo)));
    }
}
