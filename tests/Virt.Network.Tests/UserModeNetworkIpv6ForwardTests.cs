using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Virt.Network.UserNet;
using Xunit;
using static Virt.Network.Tests.UserModeNetworkIpv6Tests;

namespace Virt.Network.Tests;

/// <summary>Port forwards that reach the guest over IPv6 (its SLAAC address) and forwards listening on host IPv6 end points.</summary>
public sealed class UserModeNetworkIpv6ForwardTests
{
    [Fact]
    public async Task Tcp_forward_on_host_ipv6_loopback_reaches_a_guest_that_has_only_ipv6()
    {
        await using var g = new FakeGuest();
        ClaimAddress(g, Guest6); // duplicate address detection for its SLAAC address: the stack learns it
        await using var forward = g.Net.ForwardTcp(new IPEndPoint(IPAddress.IPv6Loopback, 0), 80);
        Assert.Equal(IPAddress.IPv6Loopback, forward.HostEndPoint.Address);

        using var client = new TcpClient(AddressFamily.InterNetworkV6);
        await client.ConnectAsync(forward.HostEndPoint, TestContext.Current.CancellationToken);
        var synFrame = g.Take(f => ParseTcp6(f) is { DestinationPort: 80 } s && s.Has(TcpSegment.Syn));
        var (source, destination) = Addresses6(synFrame);
        Assert.Equal(Gateway6, source);
        Assert.Equal(Guest6, destination);
        var syn = ParseTcp6(synFrame)!;
        Assert.Equal(1440, syn.Mss);
        Assert.True(syn.SourcePort >= 49152);
        ushort gatewayPort = syn.SourcePort;

        g.Send(Tcp6(g, 80, gatewayPort, 5000, syn.Seq + 1, TcpSegment.Syn | TcpSegment.Ack, [], mss: 1440));
        Assert.True(TakeTcp6(g, 80).Has(TcpSegment.Ack)); // the stack's ACK of our SYN-ACK

        var stream = client.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes("GET /6"), TestContext.Current.CancellationToken);
        client.Client.Shutdown(SocketShutdown.Send);
        var request = new MemoryStream();
        uint rcvNxt = syn.Seq + 1;
        while (true)
        {
            var s = TakeTcp6(g, 80);
            if (s.Payload.Length > 0 && s.Seq == rcvNxt)
            {
                request.Write(s.Payload);
                rcvNxt += (uint)s.Payload.Length;
            }

            if (s.Has(TcpSegment.Fin) && s.Seq + (uint)s.Payload.Length == rcvNxt)
            {
                rcvNxt++;
                break;
            }

            g.Send(Tcp6(g, 80, gatewayPort, 5001, rcvNxt, TcpSegment.Ack, []));
        }

        Assert.Equal("GET /6", Encoding.ASCII.GetString(request.ToArray()));
        var reply = Encoding.ASCII.GetBytes("reply over IPv6");
        g.Send(Tcp6(g, 80, gatewayPort, 5001, rcvNxt, TcpSegment.Ack | TcpSegment.Psh | TcpSegment.Fin, reply));
        var received = new MemoryStream();
        await stream.CopyToAsync(received, TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(reply, received.ToArray());
        Assert.Equal(1, forward.ConnectionsAccepted);
        Assert.Equal(0, g.Net.Statistics.InternalErrors);
    }

    [Fact]
    public async Task Default_forward_uses_ipv4_when_the_guest_has_it_and_ipv6_any_asks_for_the_ipv6_address()
    {
        await using var g = new FakeGuest();
        g.Announce();
        ClaimAddress(g, Guest6);
        await using var byDefault = g.Net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80);
        await using var overIpv6 = g.Net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 81, IPAddress.IPv6Any);
        Assert.Equal(IPAddress.Parse("10.0.2.15"), byDefault.GuestAddress);
        Assert.Equal(IPAddress.IPv6Any, overIpv6.GuestAddress);

        using var first = new TcpClient();
        await first.ConnectAsync(byDefault.HostEndPoint, TestContext.Current.CancellationToken);
        var syn4 = g.TakeTcp(s => s.DestinationPort == 80 && s.Has(TcpSegment.Syn));
        Assert.Equal(FakeGuest.Gateway, syn4.SourceIp);

        using var second = new TcpClient();
        await second.ConnectAsync(overIpv6.HostEndPoint, TestContext.Current.CancellationToken);
        var syn6 = g.Take(f => ParseTcp6(f) is { DestinationPort: 81 } s && s.Has(TcpSegment.Syn));
        Assert.Equal((Gateway6, Guest6), Addresses6(syn6));
    }

    [Fact]
    public async Task Forward_to_the_guests_ipv6_address_refuses_clients_until_the_guest_has_one()
    {
        await using var g = new FakeGuest();
        g.Announce();
        await using var forward = g.Net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80, IPAddress.IPv6Any);
        using var client = new TcpClient();
        int read;
        try
        {
            await client.ConnectAsync(forward.HostEndPoint, TestContext.Current.CancellationToken);
            read = await ReadOrReset(client);
        }
        catch (SocketException)
        {
            read = 0; // the reset came before the connect completed
        }

        Assert.Equal(0, read);
        Assert.Equal(1, forward.ConnectionsAccepted);
        Assert.False(g.TryTake(f => ParseTcp6(f) is not null || FakeGuest.ParseTcp(f) is not null, TimeSpan.FromMilliseconds(300), out _));
        g.WaitUntil(s => s.OpenTcpConnections == 0 && s.OpenHostSockets == 0, "the refused client holds nothing");
    }

    [Fact]
    public async Task Udp_forward_on_host_ipv6_loopback_finds_a_named_guest_address_by_neighbour_solicitation_and_replies_go_back()
    {
        await using var g = new FakeGuest();
        var guestAddress = Ip6.ToAddress(Guest6);
        await using var forward = g.Net.ForwardUdp(new IPEndPoint(IPAddress.IPv6Loopback, 0), 53, guestAddress);
        Assert.Equal(guestAddress, forward.GuestAddress);
        using var sender = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp);
        sender.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));

        // The guest's MAC for that address is not known: the first datagram becomes a solicitation (and is lost).
        sender.SendTo(Encoding.ASCII.GetBytes("query 1"), forward.HostEndPoint);
        var ns = ParseIcmp(g.Take(f => ParseIcmp(f) is { } m && m.Message[0] == 135))!;
        Assert.Equal(Ip6.SolicitedNode(Guest6), ns.Destination);
        Assert.Equal(255, ns.HopLimit);
        Assert.Equal(Guest6, Ip6.Read(ns.Message.AsSpan(8)));
        Assert.Equal(Ip6.MulticastMac(ns.Destination), MacAddress.FromBytes(ns.Frame.AsSpan(0, 6)));

        var na = new byte[28];
        na[0] = 0x60; // solicited, override
        Ip6.Write(na.AsSpan(4), Guest6);
        na[20] = 2;   // target link-layer address
        na[21] = 1;
        FakeGuest.Mac.CopyTo(na.AsSpan(22));
        g.Send(FrameBuilder.Icmpv6(g.GatewayMac, FakeGuest.Mac, Guest6, ns.Source, 136, 0, na));

        sender.SendTo(Encoding.ASCII.GetBytes("query 2"), forward.HostEndPoint);
        var frame = g.Take(f => ParseUdp6(f) is { DestinationPort: 53 });
        var udp = ParseUdp6(frame)!.Value;
        Assert.Equal(Gateway6, udp.Source);
        Assert.Equal((Gateway6, Guest6), Addresses6(frame));
        Assert.Equal("query 2", Encoding.ASCII.GetString(udp.Payload));
        Assert.True(udp.SourcePort >= 49152);

        g.Send(FrameBuilder.Udp6(g.GatewayMac, FakeGuest.Mac, Guest6, 53, Gateway6, udp.SourcePort, Encoding.ASCII.GetBytes("answer")));
        var buffer = new byte[64];
        EndPoint from = new IPEndPoint(IPAddress.IPv6Any, 0);
        var received = await sender.ReceiveFromAsync(buffer, SocketFlags.None, from, TestContext.Current.CancellationToken).AsTask()
            .WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Equal("answer", Encoding.ASCII.GetString(buffer, 0, received.ReceivedBytes));
        Assert.Equal(forward.HostEndPoint, received.RemoteEndPoint);

        // A datagram to that gateway port from another guest port is not a reply: it does not reach the sender.
        g.Send(FrameBuilder.Udp6(g.GatewayMac, FakeGuest.Mac, Guest6, 54, Gateway6, udp.SourcePort, Encoding.ASCII.GetBytes("stray")));
        sender.ReceiveTimeout = 300;
        Assert.Throws<SocketException>(() => sender.ReceiveFrom(buffer, ref from));
        Assert.Equal(1, forward.DatagramsForwarded);
    }

    [Fact]
    public async Task Forward_arguments_over_ipv6_are_checked_and_options_carry_a_guest_address()
    {
        await using (var g = new FakeGuest())
        {
            var loopback = new IPEndPoint(IPAddress.IPv6Loopback, 0);
            Assert.Throws<ArgumentException>(() => g.Net.ForwardTcp(loopback, 80, IPAddress.Parse("fd01::15")));  // outside the prefix
            Assert.Throws<ArgumentException>(() => g.Net.ForwardTcp(loopback, 80, IPAddress.Parse("fd00::2")));   // the gateway
            Assert.Throws<ArgumentException>(() => g.Net.ForwardUdp(loopback, 80, IPAddress.Parse("fe80::15")));  // link-local
            Assert.Empty(g.Net.Forwards);
        }

        await using (var off = new FakeGuest(new UserModeNetworkOptions { Ipv6Network = null }))
        {
            Assert.Throws<ArgumentException>(() => off.Net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80, IPAddress.IPv6Any));
        }

        var parsed = UserNetworkTcpForward.Parse("[::1]:0:80");
        Assert.Equal(new IPEndPoint(IPAddress.IPv6Loopback, 0), parsed.HostEndPoint);
        Assert.Equal(80, parsed.GuestPort);
        await using var net = new UserModeNetwork(new UserModeNetworkOptions
        {
            TcpForwards = [parsed with { GuestAddress = IPAddress.IPv6Any }],
            UdpForwards = [UserNetworkUdpForward.Parse("::1:0:53") with { GuestAddress = Ip6.ToAddress(Guest6) }],
        });
        Assert.Equal(IPAddress.IPv6Any, Assert.Single(net.Forwards).GuestAddress);
        Assert.Equal(IPAddress.IPv6Loopback, Assert.Single(net.UdpForwards).HostEndPoint.Address);
        Assert.Equal(Ip6.ToAddress(Guest6), net.UdpForwards[0].GuestAddress);
    }

    /// <summary>The guest's duplicate address detection for <paramref name="address"/> (from ::, to its solicited-node group).</summary>
    private static void ClaimAddress(FakeGuest g, UInt128 address)
    {
        var dad = new byte[20];
        Ip6.Write(dad.AsSpan(4), address);
        var group = Ip6.SolicitedNode(address);
        g.Send(Icmp(UInt128.Zero, group, 135, dad, Ip6.MulticastMac(group), sourceLinkLayer: false));
    }

    private static (UInt128 Source, UInt128 Destination) Addresses6(byte[] frame)
    {
        Assert.Equal(Proto.EtherTypeIpv6, BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)));
        Assert.True(Ipv6Packet.TryParse(frame.AsSpan(14), out var ip));
        return (ip.Source, ip.Destination);
    }

    private static async Task<int> ReadOrReset(TcpClient client)
    {
        try
        {
            return await client.GetStream().ReadAsync(new byte[1], TestContext.Current.CancellationToken).AsTask()
                .WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        }
        catch (IOException)
        {
            return 0;
        }
    }
}
