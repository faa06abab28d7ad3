using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Virt.Network.UserNet;
using Xunit;

namespace Virt.Network.Tests;

/// <summary>IPv6 at the frame level: router and neighbour discovery, echo, and UDP and TCP to the host's <c>::1</c> through the gateway.</summary>
public sealed class UserModeNetworkIpv6Tests
{
    internal static readonly UInt128 Prefix = new(0xFD00_0000_0000_0000, 0);
    internal static readonly UInt128 Gateway6 = Prefix | 2;
    internal static readonly UInt128 Dns6 = Prefix | 3;
    internal static readonly UInt128 GatewayLinkLocal = new(0xFE80_0000_0000_0000, 2);
    internal static readonly UInt128 GuestLinkLocal = new(0xFE80_0000_0000_0000, 0x0000_00FF_FE00_0015);
    internal static readonly UInt128 Guest6 = Prefix | 0x0000_00FF_FE00_0015;

    [Fact]
    public async Task Router_solicitation_is_answered_with_the_prefix_for_slaac_the_mtu_and_the_dns_address()
    {
        await using var g = new FakeGuest();
        g.Send(Icmp(GuestLinkLocal, Ip6.AllRouters, 133, new byte[4], Ip6.MulticastMac(Ip6.AllRouters), sourceLinkLayer: true));
        var ra = TakeIcmp(g, 134);
        Assert.Equal(FakeGuest.Mac, MacAddress.FromBytes(ra.Frame.AsSpan(0, 6)));
        Assert.Equal(GatewayLinkLocal, ra.Source);
        Assert.Equal(GuestLinkLocal, ra.Destination);
        Assert.Equal(255, ra.HopLimit);
        var body = ra.Message.AsSpan(4);
        Assert.Equal(0x40, body[1]);                                                        // other configuration by DHCPv6, addresses by SLAAC
        Assert.Equal(1800, BinaryPrimitives.ReadUInt16BigEndian(body[2..]));              // router lifetime: a default router
        var options = Options(body[12..]);
        Assert.Equal(g.GatewayMac, MacAddress.FromBytes(options[1].AsSpan(2, 6)));
        Assert.Equal(1500u, BinaryPrimitives.ReadUInt32BigEndian(options[5].AsSpan(4)));
        var prefix = options[3];
        Assert.Equal(64, prefix[2]);
        Assert.Equal(0xC0, prefix[3]);                                                      // on-link and autonomous
        Assert.Equal(Prefix, Ip6.Read(prefix.AsSpan(16)));
        Assert.Equal(Dns6, Ip6.Read(options[25].AsSpan(8)));
    }

    [Fact]
    public async Task Neighbour_solicitation_for_the_gateway_is_answered_and_duplicate_address_detection_is_not()
    {
        await using var g = new FakeGuest();
        var ns = new byte[20];
        Ip6.Write(ns.AsSpan(4), Gateway6);
        var group = Ip6.SolicitedNode(Gateway6);
        g.Send(Icmp(Guest6, group, 135, ns, Ip6.MulticastMac(group), sourceLinkLayer: true));
        var na = TakeIcmp(g, 136);
        Assert.Equal(Gateway6, na.Source);
        Assert.Equal(Guest6, na.Destination);
        Assert.Equal(0xE0, na.Message[4]);                                                 // router, solicited, override
        Assert.Equal(Gateway6, Ip6.Read(na.Message.AsSpan(8)));
        Assert.Equal(2, na.Message[24]);                                                   // target link-layer address
        Assert.Equal(g.GatewayMac, MacAddress.FromBytes(na.Message.AsSpan(26, 6)));

        // DAD for the guest's own address (source ::) and a solicitation with a hop limit below 255 get no answer.
        var dad = new byte[20];
        Ip6.Write(dad.AsSpan(4), Guest6);
        var guestGroup = Ip6.SolicitedNode(Guest6);
        g.Send(Icmp(UInt128.Zero, guestGroup, 135, dad, Ip6.MulticastMac(guestGroup), sourceLinkLayer: false));
        g.Send(Icmp(Guest6, group, 135, ns, Ip6.MulticastMac(group), sourceLinkLayer: true, hopLimit: 64));
        Assert.False(g.TryTake(f => ParseIcmp(f) is not null, TimeSpan.FromMilliseconds(300), out _));
    }

    [Fact]
    public async Task Echo_request_to_the_gateway_is_answered()
    {
        await using var g = new FakeGuest();
        var echo = new byte[4 + 32];
        BinaryPrimitives.WriteUInt16BigEndian(echo, 0x77);
        BinaryPrimitives.WriteUInt16BigEndian(echo.AsSpan(2), 3);
        echo[10] = 0xAB;
        g.Send(Icmp(Guest6, Gateway6, 128, echo, g.GatewayMac, sourceLinkLayer: false, hopLimit: 64));
        var reply = TakeIcmp(g, 129);
        Assert.Equal(Gateway6, reply.Source);
        Assert.Equal(Guest6, reply.Destination);
        Assert.Equal(echo, reply.Message.AsSpan(4).ToArray());
    }

    [Fact]
    public async Task Fragmented_udp_over_ipv6_reaches_the_host_whole_and_overlapping_fragments_discard_the_packet()
    {
        using var server = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp);
        server.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        int port = ((IPEndPoint)server.LocalEndPoint!).Port;
        await using var g = new FakeGuest();
        var payload = new byte[3000];
        new Random(3).NextBytes(payload);

        // UDP header and data split at 1232 and 2464 bytes, sent last first; the middle one twice (an exact duplicate).
        var udp = FrameBuilder.Udp6(g.GatewayMac, FakeGuest.Mac, Guest6, 5000, Gateway6, (ushort)port, payload).AsSpan(54).ToArray();
        g.Send(Fragment6(g.GatewayMac, 1, udp, 2464, udp.Length - 2464, more: false));
        g.Send(Fragment6(g.GatewayMac, 1, udp, 0, 1232, more: true));
        g.Send(Fragment6(g.GatewayMac, 1, udp, 1232, 1232, more: true));
        g.Send(Fragment6(g.GatewayMac, 1, udp, 1232, 1232, more: true));
        var buffer = new byte[4000];
        EndPoint from = new IPEndPoint(IPAddress.IPv6Any, 0);
        server.ReceiveTimeout = 10_000;
        int n = server.ReceiveFrom(buffer, ref from);
        Assert.Equal(payload, buffer.AsSpan(0, n).ToArray());
        Assert.Equal(1, g.Net.Statistics.DatagramsReassembled);

        // A piece overlapping the first (RFC 5722): the packet is thrown away, and its later pieces with it.
        g.Send(Fragment6(g.GatewayMac, 2, udp, 0, 1232, more: true));
        g.Send(Fragment6(g.GatewayMac, 2, udp, 1224, 1232, more: true));
        g.Send(Fragment6(g.GatewayMac, 2, udp, 2464, udp.Length - 2464, more: false));
        g.Send(Fragment6(g.GatewayMac, 2, udp, 1232, 1232, more: true));
        var stats = g.Net.Statistics;
        Assert.Equal(1, stats.DatagramsReassembled);
        Assert.Equal(1, stats.FragmentedDatagramsDiscarded);
        Assert.Equal(0, stats.InternalErrors);
    }

    /// <summary>An IPv6 frame from the guest carrying <paramref name="length"/> bytes of <paramref name="data"/> from <paramref name="offset"/> behind a fragment header.</summary>
    private static byte[] Fragment6(MacAddress gatewayMac, uint id, byte[] data, int offset, int length, bool more)
    {
        var f = FrameBuilder.Ipv6(gatewayMac, FakeGuest.Mac, Guest6, Gateway6, 44, 8 + length);
        var fragment = f.AsSpan(54);
        fragment[0] = Proto.Udp;
        BinaryPrimitives.WriteUInt16BigEndian(fragment[2..], (ushort)(offset | (more ? 1 : 0)));
        BinaryPrimitives.WriteUInt32BigEndian(fragment[4..], id);
        data.AsSpan(offset, length).CopyTo(fragment[8..]);
        return f;
    }

    [Fact]
    public async Task Stateless_dhcpv6_answers_an_information_request_with_the_dns_address_and_ignores_a_solicit()
    {
        await using var g = new FakeGuest();
        var allServers = new UInt128(0xFF02_0000_0000_0000, 0x1_0002);
        byte[] clientId = [0, 3, 0, 1, .. FakeGuest.Mac.ToArray()];
        byte[] request = [11, 0xAB, 0xCD, 0xEF, 0, 1, 0, (byte)clientId.Length, .. clientId, 0, 6, 0, 2, 0, 23];
        g.Send(FrameBuilder.Udp6(Ip6.MulticastMac(allServers), FakeGuest.Mac, GuestLinkLocal, 546, allServers, 547, request));
        var reply = g.Take(f => ParseUdp6(f) is { DestinationPort: 546 });
        var udp = ParseUdp6(reply)!.Value;
        Assert.Equal(GatewayLinkLocal, udp.Source);
        Assert.Equal(547, udp.SourcePort);
        Assert.Equal(new byte[] { 7, 0xAB, 0xCD, 0xEF }, udp.Payload.AsSpan(0, 4).ToArray());
        var options = new Dictionary<ushort, byte[]>();
        for (var o = udp.Payload.AsSpan(4); !o.IsEmpty; o = o[(4 + BinaryPrimitives.ReadUInt16BigEndian(o[2..]))..])
        {
            options[BinaryPrimitives.ReadUInt16BigEndian(o)] = o.Slice(4, BinaryPrimitives.ReadUInt16BigEndian(o[2..])).ToArray();
        }

        Assert.Equal(clientId, options[1]);
        Assert.Equal([0, 3, 0, 1, .. g.GatewayMac.ToArray()], options[2]);
        Assert.Equal(Dns6, Ip6.Read(options[23]));

        // A Solicit (stateful: addresses come from SLAAC here) and an Information-request carrying an IA_NA get nothing.
        long before = g.Net.Statistics.FramesDropped;
        request[0] = 1;
        g.Send(FrameBuilder.Udp6(Ip6.MulticastMac(allServers), FakeGuest.Mac, GuestLinkLocal, 546, allServers, 547, request));
        byte[] withAddress = [11, 1, 2, 3, 0, 3, 0, 12, .. new byte[12]];
        g.Send(FrameBuilder.Udp6(Ip6.MulticastMac(allServers), FakeGuest.Mac, GuestLinkLocal, 546, allServers, 547, withAddress));
        Assert.Equal(before + 2, g.Net.Statistics.FramesDropped);
    }

    [Fact]
    public async Task Udp_to_the_gateway_reaches_host_ipv6_loopback_and_the_reply_comes_back()
    {
        using var server = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp);
        server.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        int port = ((IPEndPoint)server.LocalEndPoint!).Port;
        await using var g = new FakeGuest();
        g.Send(FrameBuilder.Udp6(g.GatewayMac, FakeGuest.Mac, Guest6, 5000, Gateway6, (ushort)port, Encoding.ASCII.GetBytes("ping6")));
        var buffer = new byte[100];
        EndPoint from = new IPEndPoint(IPAddress.IPv6Any, 0);
        server.ReceiveTimeout = 10_000;
        int n = server.ReceiveFrom(buffer, ref from);
        Assert.Equal("ping6", Encoding.ASCII.GetString(buffer, 0, n));
        server.SendTo(Encoding.ASCII.GetBytes("pong6"), from);

        var reply = g.Take(f => ParseUdp6(f) is { DestinationPort: 5000 });
        var udp = ParseUdp6(reply)!.Value;
        Assert.Equal(Gateway6, udp.Source);
        Assert.Equal(port, udp.SourcePort);
        Assert.Equal("pong6", Encoding.ASCII.GetString(udp.Payload));
    }

    [Fact]
    public async Task Tcp_to_the_gateway_reaches_a_host_ipv6_loopback_listener_with_data_both_ways()
    {
        using var listener = new TcpListener(IPAddress.IPv6Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        var server = Task.Run(async () =>
        {
            using var client = await listener.AcceptTcpClientAsync();
            var stream = client.GetStream();
            var request = new byte[5];
            await stream.ReadExactlyAsync(request);
            await stream.WriteAsync(Encoding.ASCII.GetBytes("world:" + Encoding.ASCII.GetString(request)));
            client.Client.Shutdown(SocketShutdown.Send);
            await stream.ReadAtLeastAsync(new byte[1], 1, throwOnEndOfStream: false);
        }, TestContext.Current.CancellationToken);

        await using var g = new FakeGuest();
        const ushort local = 42000;
        g.Send(Tcp6(g, local, port, 100, 0, TcpSegment.Syn, [], mss: 1440));
        var synAck = TakeTcp6(g, local);
        Assert.True(synAck.Has(TcpSegment.Syn) && synAck.Has(TcpSegment.Ack));
        Assert.Equal(1440, synAck.Mss);
        Assert.Equal(101u, synAck.Ack);
        uint rcvNxt = synAck.Seq + 1;
        g.Send(Tcp6(g, local, port, 101, rcvNxt, TcpSegment.Ack | TcpSegment.Psh, Encoding.ASCII.GetBytes("hello")));

        var received = new MemoryStream();
        bool fin = false;
        while (!fin)
        {
            var s = TakeTcp6(g, local);
            if (s.Payload.Length > 0 && s.Seq == rcvNxt)
            {
                received.Write(s.Payload);
                rcvNxt += (uint)s.Payload.Length;
            }

            if (s.Has(TcpSegment.Fin) && s.Seq + (uint)s.Payload.Length == rcvNxt)
            {
                rcvNxt++;
                fin = true;
            }

            g.Send(Tcp6(g, local, port, 106, rcvNxt, TcpSegment.Ack, []));
        }

        Assert.Equal("world:hello", Encoding.ASCII.GetString(received.ToArray()));
        g.Send(Tcp6(g, local, port, 106, rcvNxt, TcpSegment.Fin | TcpSegment.Ack, []));
        await server.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        g.WaitUntil(s => s.OpenHostSockets == 0, "the connection's host socket is closed");
        Assert.Equal(0, g.Net.Statistics.InternalErrors);
    }

    [Fact]
    public async Task Policy_applies_to_ipv6_destinations_and_ipv6_can_be_switched_off()
    {
        var policy = UserNetworkPolicy.DenyAllExcept(UserNetworkRule.Allow("127.0.0.1/32"));
        await using (var g = new FakeGuest(new UserModeNetworkOptions { Policy = policy }))
        {
            g.Send(Tcp6(g, 42001, 80, 1, 0, TcpSegment.Syn, []));
            Assert.True(TakeTcp6(g, 42001).Has(TcpSegment.Rst));
            Assert.Equal(1, g.Net.Statistics.DeniedAttempts);
        }

        await using var off = new FakeGuest(new UserModeNetworkOptions { Ipv6Network = null });
        long dropped = off.Net.Statistics.FramesDropped;
        off.Send(Icmp(GuestLinkLocal, Ip6.AllRouters, 133, new byte[4], Ip6.MulticastMac(Ip6.AllRouters), sourceLinkLayer: true));
        Assert.Equal(dropped + 1, off.Net.Statistics.FramesDropped);
    }

    [Fact]
    public void A_prefix_other_than_a_64_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => new UserModeNetwork(new UserModeNetworkOptions { Ipv6Network = new IPNetwork(IPAddress.Parse("fd00::"), 48) }));
        Assert.Contains("Ipv6Network", ex.Message, StringComparison.Ordinal);
    }

    internal static byte[] Icmp(UInt128 source, UInt128 destination, byte type, byte[] body, MacAddress to, bool sourceLinkLayer, byte hopLimit = 255)
    {
        byte[] all = sourceLinkLayer ? [.. body, 1, 1, .. Mac(FakeGuest.Mac)] : body;
        return FrameBuilder.Icmpv6(to, FakeGuest.Mac, source, destination, type, 0, all, hopLimit);
    }

    internal static byte[] Tcp6(FakeGuest g, ushort sourcePort, ushort port, uint seq, uint ack, byte flags, byte[] payload, ushort mss = 0) =>
        FrameBuilder.Tcp6(g.GatewayMac, FakeGuest.Mac, Guest6, sourcePort, Gateway6, port, seq, ack, flags, 65535, payload, mss);

    internal static Seg TakeTcp6(FakeGuest g, ushort port)
    {
        var f = g.Take(f => ParseTcp6(f) is { DestinationPort: var p } && p == port);
        return ParseTcp6(f)!;
    }

    internal static Seg? ParseTcp6(byte[] frame)
    {
        if (frame.Length < 54 || BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) != Proto.EtherTypeIpv6
            || !Ipv6Packet.TryParse(frame.AsSpan(14), out var ip) || ip.Protocol != Proto.Tcp || !TcpSegment.TryParse(ip, out var s))
        {
            return null;
        }

        return new Seg(0, s.SourcePort, 0, s.DestinationPort, s.Sequence, s.Acknowledgment, s.Flags, s.Window, s.Mss, s.Payload.ToArray());
    }

    internal static (UInt128 Source, ushort SourcePort, ushort DestinationPort, byte[] Payload)? ParseUdp6(byte[] frame)
    {
        if (frame.Length < 14 || BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) != Proto.EtherTypeIpv6
            || !Ipv6Packet.TryParse(frame.AsSpan(14), out var ip) || ip.Protocol != Proto.Udp || !UdpDatagram.TryParse(ip, out var u))
        {
            return null;
        }

        return (ip.Source, u.SourcePort, u.DestinationPort, u.Payload.ToArray());
    }

    internal sealed record Icmp6(byte[] Frame, UInt128 Source, UInt128 Destination, byte HopLimit, byte[] Message);

    internal static Icmp6? ParseIcmp(byte[] frame)
    {
        if (frame.Length < 14 || BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) != Proto.EtherTypeIpv6
            || !Ipv6Packet.TryParse(frame.AsSpan(14), out var ip) || ip.Protocol != Proto.Icmpv6
            || Checksum.Fold(Checksum.Add(ip.Payload, ip.PseudoHeader(ip.Payload.Length))) != 0)
        {
            return null;
        }

        return new Icmp6(frame, ip.Source, ip.Destination, ip.HopLimit, ip.Payload.ToArray());
    }

    private static Icmp6 TakeIcmp(FakeGuest g, byte type) => ParseIcmp(g.Take(f => ParseIcmp(f) is { } m && m.Message[0] == type))!;

    private static Dictionary<byte, byte[]> Options(ReadOnlySpan<byte> options)
    {
        var found = new Dictionary<byte, byte[]>();
        while (options.Length >= 8)
        {
            int size = options[1] * 8;
            found[options[0]] = options[..size].ToArray();
            options = options[size..];
        }

        return found;
    }

    private static byte[] Mac(MacAddress mac)
    {
        var b = new byte[6];
        mac.CopyTo(b);
        return b;
    }
}
