using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Virt.Network.UserNet;
using Xunit;

namespace Virt.Network.Tests;

/// <summary>TCP window scaling and SACK-permitted, UDP port forwards and DNS over TCP.</summary>
public sealed class UserModeNetworkTcpOptionTests
{
    private static readonly uint Gateway = FakeGuest.Gateway;

    [Fact]
    public async Task Window_scaling_is_agreed_when_the_guest_offers_it_and_sack_is_not_offered_back()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        var download = UserModeNetworkTests.RandomBytes(200_000, 21);
        var server = Task.Run(async () =>
        {
            using var client = await listener.AcceptTcpClientAsync();
            await client.GetStream().WriteAsync(download);
            await client.GetStream().ReadAtLeastAsync(new byte[1], 1, throwOnEndOfStream: false);
        }, TestContext.Current.CancellationToken);

        await using var g = new FakeGuest();
        g.Announce();
        // SYN with MSS, SACK-permitted, timestamps and window scale 7: a window field of 1024 means 128 KiB.
        g.Send(SynWithOptions(g, 41000, port, 5000, windowScale: 7, sack: true, timestamps: true));
        var synAck = g.Take(f => FakeGuest.ParseTcp(f) is { DestinationPort: 41000 });
        Assert.True(Parse(synAck, out var s));
        Assert.True(s.Has(TcpSegment.Syn) && s.Has(TcpSegment.Ack));
        Assert.Equal(3, s.WindowScale);                 // 256 KiB of buffer needs a shift of 3
        Assert.False(s.SackPermitted);
        Assert.Equal(20 + 4 + 4, (synAck[34 + 12] >> 4) * 4); // MSS and window scale only: no timestamps echoed
        uint rcvNxt = s.Sequence + 1;
        g.SendTcp(Gateway, 41000, port, 5001, rcvNxt, TcpSegment.Ack, window: 1024);

        // Without acknowledging anything, the stack may send up to 1024 << 7 = 131072 bytes: more than an unscaled window allows.
        long inFlight = 0;
        ushort ourWindow = 0;
        while (inFlight < 100_000)
        {
            var seg = g.TakeTcp(x => x.DestinationPort == 41000 && x.Payload.Length > 0);
            inFlight += seg.Payload.Length;
            ourWindow = seg.Window;
        }

        Assert.True(inFlight <= 131072, $"{inFlight} bytes in flight exceed the guest's window");
        Assert.True(ourWindow > 8192, $"the stack's window field {ourWindow} is scaled (256 KiB >> 3)");
        g.SendTcp(Gateway, 41000, port, 5001, 0, TcpSegment.Rst);
        listener.Stop();
        await server.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken).ContinueWith(_ => { }, TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task Without_the_guests_window_scale_option_none_is_sent_and_windows_are_unscaled()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        await using var g = new FakeGuest();
        g.Announce();
        g.Send(SynWithOptions(g, 41001, port, 5000, windowScale: -1, sack: true, timestamps: false));
        var synAck = g.Take(f => FakeGuest.ParseTcp(f) is { DestinationPort: 41001 });
        Assert.True(Parse(synAck, out var s));
        Assert.Equal(-1, s.WindowScale);
        Assert.Equal(65535, s.Window);
        g.SendTcp(Gateway, 41001, port, 5001, s.Sequence + 1, TcpSegment.Ack | TcpSegment.Psh, [1, 2, 3]);
        var ack = g.TakeTcp(x => x.DestinationPort == 41001 && x.Ack == 5004 && !x.Has(TcpSegment.Syn));
        Assert.Equal(65535, ack.Window); // the free buffer (256 KiB) capped at what 16 bits say
    }

    [Fact]
    public async Task Forward_syn_offers_window_scaling_and_the_guests_scale_applies_to_its_windows()
    {
        await using var g = new FakeGuest();
        g.Announce();
        await using var forward = g.Net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 82);
        using var client = new TcpClient();
        await client.ConnectAsync(forward.HostEndPoint, TestContext.Current.CancellationToken);
        var synFrame = g.Take(f => FakeGuest.ParseTcp(f) is { DestinationPort: 82 } t && t.Has(TcpSegment.Syn));
        Assert.True(Parse(synFrame, out var syn));
        Assert.Equal(3, syn.WindowScale);
        ushort remotePort = syn.SourcePort;

        // SYN-ACK with window scale 4 and a window field of 8192: 128 KiB.
        var synAck = FrameBuilder.Tcp(g.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, 82, Gateway, remotePort, 7000, syn.Sequence + 1,
            TcpSegment.Syn | TcpSegment.Ack, 8192, [], mss: 1460, windowScale: 4);
        g.Send(synAck);
        g.TakeTcp(x => x.DestinationPort == 82 && x.Has(TcpSegment.Ack) && !x.Has(TcpSegment.Syn));
        g.SendTcp(Gateway, 82, remotePort, 7001, syn.Sequence + 1, TcpSegment.Ack, window: 8192);
        await client.GetStream().WriteAsync(new byte[120_000], TestContext.Current.CancellationToken);
        long received = 0;
        while (received < 120_000)
        {
            received += g.TakeTcp(x => x.DestinationPort == 82 && x.Payload.Length > 0).Payload.Length;
        }

        Assert.Equal(120_000, received); // more than 65535 without an acknowledgment: the scaled window was used
    }

    [Fact]
    public async Task Udp_forward_carries_datagrams_both_ways_with_one_gateway_port_per_host_sender()
    {
        await using var g = new FakeGuest();
        g.Announce();
        await using var forward = g.Net.ForwardUdp(new IPEndPoint(IPAddress.Loopback, 0), 5353);
        using var a = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        using var b = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        a.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        b.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        a.SendTo(Encoding.ASCII.GetBytes("from a"), forward.HostEndPoint);
        var first = g.TakeUdp(5353);
        b.SendTo(Encoding.ASCII.GetBytes("from b"), forward.HostEndPoint);
        var second = g.TakeUdp(5353);
        Assert.Equal("from a", Encoding.ASCII.GetString(first.Payload));
        Assert.Equal("from b", Encoding.ASCII.GetString(second.Payload));
        Assert.Equal(Gateway, first.Source);
        Assert.NotEqual(first.SourcePort, second.SourcePort);
        Assert.Equal(2, g.Net.Statistics.UdpForwardPeers);

        // The guest answers each sender at its gateway port; the answers reach the right host socket.
        g.SendUdp(Gateway, 5353, second.SourcePort, Encoding.ASCII.GetBytes("to b"));
        g.SendUdp(Gateway, 5353, first.SourcePort, Encoding.ASCII.GetBytes("to a"));
        var buffer = new byte[100];
        a.ReceiveTimeout = b.ReceiveTimeout = 10_000;
        EndPoint from = new IPEndPoint(IPAddress.Any, 0);
        int n = a.ReceiveFrom(buffer, ref from);
        Assert.Equal("to a", Encoding.ASCII.GetString(buffer, 0, n));
        Assert.Equal(forward.HostEndPoint, from);
        n = b.Receive(buffer);
        Assert.Equal("to b", Encoding.ASCII.GetString(buffer, 0, n));
        Assert.Equal(2, forward.DatagramsForwarded);

        await forward.DisposeAsync();
        Assert.Equal(0, g.Net.Statistics.UdpForwardPeers);
        Assert.Empty(g.Net.UdpForwards);
        Assert.Equal(0, g.Net.Statistics.InternalErrors);
    }

    [Fact]
    public async Task Udp_forward_senders_beyond_the_limit_are_refused_and_counted()
    {
        await using var g = new FakeGuest(new UserModeNetworkOptions { MaxUdpFlows = 1, UdpForwards = [UserNetworkUdpForward.Parse("127.0.0.1:0:53")] });
        g.Announce();
        var forward = Assert.Single(g.Net.UdpForwards);
        using var a = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        using var b = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        a.SendTo([1], forward.HostEndPoint);
        g.TakeUdp(53);
        b.SendTo([2], forward.HostEndPoint);
        g.WaitUntil(s => s.LimitRefusals == 1, "the second sender is refused");
        Assert.Equal(1, g.Net.Statistics.UdpForwardPeers);
    }

    [Fact]
    public async Task Dns_over_tcp_goes_to_the_upstream_server()
    {
        using var upstream = new TcpListener(IPAddress.Loopback, 0);
        upstream.Start();
        var upstreamEndPoint = (IPEndPoint)upstream.LocalEndpoint;
        var server = Task.Run(async () =>
        {
            using var client = await upstream.AcceptTcpClientAsync();
            var stream = client.GetStream();
            var length = new byte[2];
            await stream.ReadExactlyAsync(length);
            var query = new byte[BinaryPrimitives.ReadUInt16BigEndian(length)];
            await stream.ReadExactlyAsync(query);
            query[2] |= 0x80; // the answer: the query marked as a response
            await stream.WriteAsync(length);
            await stream.WriteAsync(query);
            client.Client.Shutdown(SocketShutdown.Send);
        }, TestContext.Current.CancellationToken);

        await using var g = new FakeGuest(new UserModeNetworkOptions { DnsUpstream = upstreamEndPoint });
        g.Announce();
        var tcp = new GuestTcp(g, g.NextPort(), FakeGuest.Dns, 53);
        Assert.True(tcp.Connect().Has(TcpSegment.Syn));
        var query = UserModeNetworkTests.DnsQuery(0x5151, "tcp.test");
        tcp.Send([(byte)(query.Length >> 8), (byte)query.Length, .. query]);
        var answer = tcp.ReceiveToEnd();
        await server.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(query.Length + 2, answer.Length);
        Assert.Equal(0x80, answer[4] & 0x80);
        tcp.Fin();
    }

    [Fact]
    public async Task Dns_over_tcp_without_an_upstream_server_is_reset()
    {
        await using var g = new FakeGuest();
        g.Announce();
        Assert.True(new GuestTcp(g, g.NextPort(), FakeGuest.Dns, 53).Connect().Has(TcpSegment.Rst));
        Assert.Equal(0, g.Net.Statistics.OpenHostSockets);
    }

    private static bool Parse(byte[] frame, out Options segment)
    {
        segment = default;
        if (!Ipv4Packet.TryParse(frame.AsSpan(14), out var ip) || !TcpSegment.TryParse(ip, out var t))
        {
            return false;
        }

        segment = new Options(t.SourcePort, t.Sequence, t.Flags, t.Window, t.WindowScale, t.SackPermitted);
        return true;
    }

    private readonly record struct Options(ushort SourcePort, uint Sequence, byte Flags, ushort Window, int WindowScale, bool SackPermitted)
    {
        public bool Has(byte flag) => (Flags & flag) != 0;
    }

    /// <summary>A SYN with MSS 1460 and, as asked, window scale, SACK-permitted and timestamps (as Linux sends them).</summary>
    private static byte[] SynWithOptions(FakeGuest g, ushort sourcePort, ushort port, uint seq, int windowScale, bool sack, bool timestamps)
    {
        var options = new List<byte> { 2, 4, 0x05, 0xB4 };
        if (sack)
        {
            options.AddRange([4, 2]);
        }

        if (timestamps)
        {
            options.AddRange([8, 10, 0, 0, 0, 1, 0, 0, 0, 0]);
        }

        if (windowScale >= 0)
        {
            options.AddRange([1, 3, 3, (byte)windowScale]);
        }

        while (options.Count % 4 != 0)
        {
            options.Add(1);
        }

        // Build a plain SYN, then widen its header with the options and redo the checksums.
        var plain = FrameBuilder.Tcp(g.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, sourcePort, Gateway, port, seq, 0, TcpSegment.Syn, 65535, []);
        var f = new byte[plain.Length + options.Count];
        plain.CopyTo(f, 0);
        options.CopyTo(f, plain.Length);
        var ip = f.AsSpan(14, 20);
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(f.Length - 14));
        ip[10] = ip[11] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum.Fold(Checksum.Add(ip)));
        var tcp = f.AsSpan(34);
        tcp[12] = (byte)(((20 + options.Count) / 4) << 4);
        tcp[16] = tcp[17] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], Checksum.Fold(Checksum.Add(tcp, Checksum.PseudoHeader(FakeGuest.Ip, Gateway, Proto.Tcp, tcp.Length))));
        return f;
    }
}
