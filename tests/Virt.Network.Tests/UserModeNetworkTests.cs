using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Virt.Network.UserNet;
using Xunit;

namespace Virt.Network.Tests;

public sealed class UserModeNetworkTests
{
    private static readonly uint Gateway = FakeGuest.Gateway;

    [Fact]
    public async Task Arp_request_for_the_gateway_is_answered_with_the_gateway_mac()
    {
        await using var g = new FakeGuest();
        g.Send(FrameBuilder.Arp(MacAddress.Broadcast, FakeGuest.Mac, 1, FakeGuest.Mac, FakeGuest.Ip, default, Gateway));
        var reply = g.Take(f => BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(12)) == 0x0806);
        Assert.Equal(FakeGuest.Mac, MacAddress.FromBytes(reply.AsSpan(0, 6)));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(20)));                  // reply
        Assert.Equal(g.GatewayMac, MacAddress.FromBytes(reply.AsSpan(22, 6)));                    // sender: the gateway
        Assert.Equal(Gateway, Ip4.Read(reply.AsSpan(28)));
        Assert.Equal(FakeGuest.Ip, Ip4.Read(reply.AsSpan(38)));
    }

    [Fact]
    public async Task Arp_request_for_another_guest_address_is_not_answered()
    {
        await using var g = new FakeGuest();
        g.Send(FrameBuilder.Arp(MacAddress.Broadcast, FakeGuest.Mac, 1, FakeGuest.Mac, FakeGuest.Ip, default, FakeGuest.Ip + 1));
        Assert.False(g.TryTake(_ => true, TimeSpan.FromMilliseconds(200), out _));
    }

    [Fact]
    public async Task Dhcp_discover_and_request_lease_the_first_guest_address_with_router_and_dns()
    {
        await using var g = new FakeGuest();
        g.SendUdp(Ip4.Broadcast, 68, 67, Dhcp(1, 0x1234), source: 0, to: MacAddress.Broadcast);
        var offer = g.TakeUdp(68);
        Assert.Equal(2, DhcpType(offer.Payload));
        Assert.Equal(FakeGuest.Ip, Ip4.Read(offer.Payload.AsSpan(16)));
        Assert.Equal(0x1234u, BinaryPrimitives.ReadUInt32BigEndian(offer.Payload.AsSpan(4)));

        g.SendUdp(Ip4.Broadcast, 68, 67, Dhcp(3, 0x1235, requested: FakeGuest.Ip, server: Gateway), source: 0, to: MacAddress.Broadcast);
        var ack = g.TakeUdp(68);
        Assert.Equal(5, DhcpType(ack.Payload));
        Assert.Equal(FakeGuest.Ip, Ip4.Read(ack.Payload.AsSpan(16)));
        Assert.Equal(Gateway, DhcpOption(ack.Payload, 3));          // router
        Assert.Equal(FakeGuest.Dns, DhcpOption(ack.Payload, 6));    // DNS
        Assert.Equal(0xFFFFFF00u, DhcpOption(ack.Payload, 1));     // mask
        Assert.Equal(IPAddress.Parse("10.0.2.15"), g.Net.Leases[FakeGuest.Mac]);
        Assert.Equal(1, g.Net.Statistics.DhcpAcks);

        // Another MAC gets the next address; a request for someone else's address is refused.
        var other = MacAddress.Parse("02:00:00:00:00:16");
        g.Send(FrameBuilder.Udp(MacAddress.Broadcast, other, 0, 68, Ip4.Broadcast, 67, Dhcp(3, 7, requested: FakeGuest.Ip, mac: other)));
        Assert.Equal(6, DhcpType(g.TakeUdp(68).Payload)); // NAK
        g.Send(FrameBuilder.Udp(MacAddress.Broadcast, other, 0, 68, Ip4.Broadcast, 67, Dhcp(1, 8, mac: other)));
        Assert.Equal(FakeGuest.Ip + 1, Ip4.Read(g.TakeUdp(68).Payload.AsSpan(16)));
    }

    [Fact]
    public async Task Ping_to_the_gateway_is_answered_and_ping_elsewhere_is_dropped()
    {
        await using var g = new FakeGuest();
        g.Announce();
        var icmp = new byte[8 + 32];
        icmp[0] = 8;
        BinaryPrimitives.WriteUInt16BigEndian(icmp.AsSpan(4), 0x77);
        BinaryPrimitives.WriteUInt16BigEndian(icmp.AsSpan(2), Checksum.Fold(Checksum.Add(icmp)));
        var frame = FrameBuilder.Ipv4(g.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, Gateway, 1, icmp.Length);
        icmp.CopyTo(frame, 34);
        g.Send(frame);
        var reply = g.Take(f => f.Length > 34 && f[23] == 1);
        Assert.Equal(0, reply[34]);                                          // echo reply
        Assert.Equal(0x77, BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(38)));
        Assert.Equal(0, Checksum.Fold(Checksum.Add(reply.AsSpan(34))));

        var elsewhere = FrameBuilder.Ipv4(g.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, 0x08080808, 1, icmp.Length);
        icmp.CopyTo(elsewhere, 34);
        long dropped = g.Net.Statistics.FramesDropped;
        g.Send(elsewhere);
        Assert.Equal(dropped + 1, g.Net.Statistics.FramesDropped);
    }

    [Fact]
    public async Task Udp_datagram_to_the_gateway_reaches_a_host_socket_on_loopback_and_the_reply_comes_back()
    {
        using var server = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        server.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int port = ((IPEndPoint)server.LocalEndPoint!).Port;
        await using var g = new FakeGuest();
        g.Announce();

        g.SendUdp(Gateway, 5000, (ushort)port, Encoding.ASCII.GetBytes("ping"));
        var buffer = new byte[100];
        EndPoint from = new IPEndPoint(IPAddress.Any, 0);
        server.ReceiveTimeout = 10_000;
        int n = server.ReceiveFrom(buffer, ref from);
        Assert.Equal("ping", Encoding.ASCII.GetString(buffer, 0, n));
        server.SendTo(Encoding.ASCII.GetBytes("pong"), from);

        var reply = g.TakeUdp(5000);
        Assert.Equal("pong", Encoding.ASCII.GetString(reply.Payload));
        Assert.Equal(Gateway, reply.Source);            // the host's loopback appears as the gateway
        Assert.Equal(port, reply.SourcePort);

        // A datagram from an endpoint the guest never sent to does not come in.
        using var stranger = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        stranger.SendTo(Encoding.ASCII.GetBytes("spam"), from);
        Assert.False(g.TryTake(f => FakeGuest.ParseUdp(f) is not null, TimeSpan.FromMilliseconds(300), out _));
        Assert.Equal(1, g.Net.Statistics.OpenUdpFlows);
    }

    [Fact]
    public async Task Dns_query_is_relayed_to_the_upstream_server_and_the_answer_comes_back()
    {
        using var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        upstream.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        await using var g = new FakeGuest(new UserModeNetworkOptions { DnsUpstream = (IPEndPoint)upstream.LocalEndPoint! });
        g.Announce();
        var query = DnsQuery(0xBEEF, "files.test");
        g.SendUdp(FakeGuest.Dns, 5353, 53, query);

        var buffer = new byte[512];
        EndPoint from = new IPEndPoint(IPAddress.Any, 0);
        upstream.ReceiveTimeout = 10_000;
        int n = upstream.ReceiveFrom(buffer, ref from);
        Assert.Equal(query, buffer[..n]);
        var answer = buffer[..n].ToArray();
        answer[2] |= 0x80;
        upstream.SendTo(answer, from);

        var reply = g.TakeUdp(5353);
        Assert.Equal(FakeGuest.Dns, reply.Source);
        Assert.Equal(53, reply.SourcePort);
        Assert.Equal(answer, reply.Payload);
        g.WaitUntil(s => s.DnsQueries == 1 && s.OpenHostSockets == 0, "the query is answered and its socket closed");
    }

    [Fact]
    public async Task Dns_query_is_answered_from_the_host_resolver_with_loopback_as_the_gateway()
    {
        await using var g = new FakeGuest();
        g.Announce();
        g.SendUdp(FakeGuest.Dns, 5353, 53, DnsQuery(0x4242, "localhost"));
        var reply = g.TakeUdp(5353).Payload;
        Assert.Equal(0x4242, BinaryPrimitives.ReadUInt16BigEndian(reply));
        Assert.Equal(0x80, reply[2] & 0x80);                                // a response
        Assert.Equal(0, reply[3] & 0xF);                                    // NOERROR
        Assert.True(BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(6)) >= 1);
        Assert.Equal(Gateway, Ip4.Read(reply.AsSpan(reply.Length - 4)));   // 127.0.0.1 as the guest reaches it

        g.SendUdp(FakeGuest.Dns, 5354, 53, DnsQuery(0x4343, "no-such-name.invalid"));
        Assert.Equal(3, g.TakeUdp(5354).Payload[3] & 0xF);                  // NXDOMAIN
    }

    [Fact]
    public async Task Tcp_to_the_gateway_reaches_a_host_listener_with_data_both_ways_and_half_close()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var upload = RandomBytes(300_000, 1);
        var download = RandomBytes(500_000, 2);
        var server = Task.Run(async () =>
        {
            using var client = await listener.AcceptTcpClientAsync();
            var stream = client.GetStream();
            var got = new MemoryStream();
            await stream.CopyToAsync(got);            // until the guest's FIN
            await stream.WriteAsync(SHA256.HashData(got.ToArray()));
            await stream.WriteAsync(download);        // the host keeps sending after the guest closed its side
            client.Client.Shutdown(SocketShutdown.Send);
        }, TestContext.Current.CancellationToken);

        await using var g = new FakeGuest();
        g.Announce();
        var tcp = new GuestTcp(g, g.NextPort(), Gateway, (ushort)((IPEndPoint)listener.LocalEndpoint).Port);
        var synAck = tcp.Connect();
        Assert.True(synAck.Has(TcpSegment.Syn) && synAck.Has(TcpSegment.Ack), "SYN-ACK expected");
        Assert.Equal(1460, synAck.Mss);
        tcp.Send(upload);
        tcp.Fin();
        var received = tcp.ReceiveToEnd();
        await server.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        Assert.Equal([.. SHA256.HashData(upload), .. download], received);
        tcp.WaitAcked();
        var stats = g.Net.Statistics;
        Assert.Equal(upload.Length, stats.BytesToHost);
        Assert.Equal(download.Length + 32, stats.BytesToGuest);
        g.WaitUntil(s => s.OpenTcpConnections == 0 && s.OpenHostSockets == 0, "the connection is closed and its socket released");
        Assert.Equal(0, g.Net.Statistics.InternalErrors);
    }

    [Fact]
    public async Task Lost_segments_to_the_guest_are_retransmitted()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var payload = RandomBytes(20_000, 3);
        var server = Task.Run(async () =>
        {
            using var client = await listener.AcceptTcpClientAsync();
            var stream = client.GetStream();
            await stream.WriteAsync(payload);
            client.Client.Shutdown(SocketShutdown.Send);
            await stream.ReadAtLeastAsync(new byte[1], 1, throwOnEndOfStream: false); // until the guest closes
        }, TestContext.Current.CancellationToken);

        await using var g = new FakeGuest();
        g.Announce();
        int lost = 0;
        g.DropIncoming = f => FakeGuest.ParseTcp(f.ToArray()) is { Payload.Length: > 0 } && Interlocked.Increment(ref lost) % 3 == 1; // every third data segment
        var tcp = new GuestTcp(g, g.NextPort(), Gateway, (ushort)((IPEndPoint)listener.LocalEndpoint).Port);
        tcp.Connect();
        var received = tcp.ReceiveToEnd(TimeSpan.FromSeconds(30));
        Assert.Equal(payload, received);
        Assert.True(lost > 0);
        tcp.Fin();
        await server.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task Connection_to_a_closed_host_port_is_reset()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        ushort port = (ushort)((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        await using var g = new FakeGuest();
        g.Announce();
        var tcp = new GuestTcp(g, g.NextPort(), Gateway, port);
        var answer = tcp.Connect();
        Assert.True(answer.Has(TcpSegment.Rst), "RST expected");
        g.WaitUntil(s => s.OpenTcpConnections == 0 && s.OpenHostSockets == 0, "the refused connection is gone");
    }

    [Fact]
    public async Task Denied_destination_is_reset_and_counted_and_the_allowed_one_connects()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var policy = UserNetworkPolicy.DenyAllExcept(UserNetworkRule.Allow("127.0.0.1/32", port, ProtocolType.Tcp));
        await using var g = new FakeGuest(new UserModeNetworkOptions { Policy = policy });
        g.Announce();

        var denied = new GuestTcp(g, g.NextPort(), 0x5DB8D822 /* 93.184.216.34 */, 80).Connect();
        Assert.True(denied.Has(TcpSegment.Rst), "RST expected for a denied destination");
        var deniedPort = new GuestTcp(g, g.NextPort(), Gateway, (ushort)(port == 65535 ? 1 : port + 1)).Connect();
        Assert.True(deniedPort.Has(TcpSegment.Rst));
        g.SendUdp(0x08080808, 5000, 53, [1, 2, 3]);
        Assert.Equal(3, g.Net.Statistics.DeniedAttempts);
        Assert.Equal(0, g.Net.Statistics.OpenHostSockets);

        var allowed = new GuestTcp(g, g.NextPort(), Gateway, (ushort)port).Connect();
        Assert.True(allowed.Has(TcpSegment.Syn) && allowed.Has(TcpSegment.Ack));
        Assert.Equal(3, g.Net.Statistics.DeniedAttempts);
    }

    [Fact]
    public async Task Connections_beyond_the_limit_are_reset_and_counted()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        await using var g = new FakeGuest(new UserModeNetworkOptions { MaxTcpConnections = 2 });
        g.Announce();
        Assert.True(new GuestTcp(g, g.NextPort(), Gateway, port).Connect().Has(TcpSegment.Syn));
        Assert.True(new GuestTcp(g, g.NextPort(), Gateway, port).Connect().Has(TcpSegment.Syn));
        Assert.True(new GuestTcp(g, g.NextPort(), Gateway, port).Connect().Has(TcpSegment.Rst));
        Assert.Equal(1, g.Net.Statistics.LimitRefusals);
        Assert.Equal(2, g.Net.Statistics.OpenTcpConnections);
    }

    [Fact]
    public async Task Connection_passing_its_byte_limit_is_reset()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        await using var g = new FakeGuest(new UserModeNetworkOptions { MaxBytesPerConnection = 10_000 });
        g.Announce();
        var tcp = new GuestTcp(g, g.NextPort(), Gateway, (ushort)((IPEndPoint)listener.LocalEndpoint).Port);
        tcp.Connect();
        tcp.Send(RandomBytes(9_000, 4));
        tcp.Send(RandomBytes(2_000, 5));
        while (!tcp.ResetReceived)
        {
            tcp.Absorb(tcp.Next());
        }

        Assert.Equal(1, g.Net.Statistics.LimitRefusals);
        g.WaitUntil(s => s.OpenTcpConnections == 0 && s.OpenHostSockets == 0, "the connection is reset");
    }

    [Fact]
    public async Task Guest_reset_closes_the_host_socket()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        await using var g = new FakeGuest();
        g.Announce();
        var tcp = new GuestTcp(g, g.NextPort(), Gateway, (ushort)((IPEndPoint)listener.LocalEndpoint).Port);
        tcp.Connect();
        using var accepted = await listener.AcceptTcpClientAsync(TestContext.Current.CancellationToken);
        tcp.Reset();
        g.WaitUntil(s => s.OpenTcpConnections == 0 && s.OpenHostSockets == 0, "the reset connection is gone");
        var read = accepted.GetStream().ReadAsync(new byte[1], TestContext.Current.CancellationToken).AsTask();
        await Assert.ThrowsAnyAsync<IOException>(async () => await read.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task Port_forward_carries_many_connections_at_once()
    {
        await using var g = new FakeGuest();
        g.Announce();
        await using var forward = g.Net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80);
        const int clients = 8;
        var results = new Task<byte[]>[clients];
        for (int i = 0; i < clients; i++)
        {
            int id = i;
            results[i] = Task.Run(async () =>
            {
                using var client = new TcpClient();
                await client.ConnectAsync(forward.HostEndPoint);
                var stream = client.GetStream();
                await stream.WriteAsync(Encoding.ASCII.GetBytes($"GET /{id}\n"));
                client.Client.Shutdown(SocketShutdown.Send);
                var reply = new MemoryStream();
                await stream.CopyToAsync(reply);
                return reply.ToArray();
            });
        }

        // The guest side: accept each connection, read its request to the client's FIN, answer with a body, close.
        var servers = new List<Task>();
        for (int i = 0; i < clients; i++)
        {
            var c = GuestTcp.Accept(g, 80);
            Assert.Equal(Gateway, c.RemoteIp);
            servers.Add(Task.Run(() =>
            {
                string request = Encoding.ASCII.GetString(c.ReceiveToEnd());
                c.Send([.. Encoding.ASCII.GetBytes("reply to " + request), .. RandomBytes(50_000, request.Length)]);
                c.Fin();
                c.WaitAcked();
            }, TestContext.Current.CancellationToken));
        }

        await Task.WhenAll(servers).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        var replies = await Task.WhenAll(results).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        for (int i = 0; i < clients; i++)
        {
            string head = Encoding.ASCII.GetString(replies[i], 0, 18);
            Assert.StartsWith($"reply to GET /{i}", head, StringComparison.Ordinal);
            Assert.Equal(50_000 + $"reply to GET /{i}\n".Length, replies[i].Length);
        }

        Assert.Equal(clients, forward.ConnectionsAccepted);
        g.WaitUntil(s => s.OpenTcpConnections == 0 && s.OpenHostSockets == 0, "every forwarded connection is closed");
    }

    [Fact]
    public async Task Forwarded_connection_the_guest_refuses_closes_the_host_client()
    {
        await using var g = new FakeGuest();
        g.Announce();
        await using var forward = g.Net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 81);
        using var client = new TcpClient();
        await client.ConnectAsync(forward.HostEndPoint, TestContext.Current.CancellationToken);
        var syn = g.TakeTcp(s => s.DestinationPort == 81 && s.Has(TcpSegment.Syn));
        g.SendTcp(syn.SourceIp, 81, syn.SourcePort, 0, syn.Seq + 1, TcpSegment.Rst | TcpSegment.Ack);
        int n = await ReadOrReset(client);
        Assert.Equal(0, n);
        g.WaitUntil(s => s.OpenTcpConnections == 0 && s.OpenHostSockets == 0, "the refused forward is gone");
    }

    [Fact]
    public async Task Dispose_resets_open_connections_and_closes_every_host_socket()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var g = new FakeGuest();
        g.Announce();
        var tcp = new GuestTcp(g, g.NextPort(), Gateway, (ushort)((IPEndPoint)listener.LocalEndpoint).Port);
        tcp.Connect();
        g.SendUdp(Gateway, 6000, 9, [1]);
        using var accepted = await listener.AcceptTcpClientAsync(TestContext.Current.CancellationToken);
        Assert.Equal(2, g.Net.Statistics.OpenHostSockets);
        await g.DisposeAsync();
        Assert.True(tcp.Next().Has(TcpSegment.Rst));
        Assert.Equal(0, g.Net.Statistics.OpenHostSockets);
        Assert.Equal(0, await ReadOrReset(accepted));
    }

    [Fact]
    public void Options_outside_the_subnet_are_refused_with_the_field_named()
    {
        var ex = Assert.Throws<ArgumentException>(() => new UserModeNetwork(new UserModeNetworkOptions { Gateway = IPAddress.Parse("192.168.1.1") }));
        Assert.Contains("Gateway", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Policy_takes_the_first_matching_rule()
    {
        var policy = new UserNetworkPolicy([UserNetworkRule.Deny("10.1.0.0/16"), UserNetworkRule.Allow("10.0.0.0/8", 443)], UserNetworkAction.Deny);
        Assert.Equal(UserNetworkAction.Deny, policy.Decide(IPAddress.Parse("10.1.2.3"), 443, ProtocolType.Tcp));
        Assert.Equal(UserNetworkAction.Allow, policy.Decide(IPAddress.Parse("10.2.2.3"), 443, ProtocolType.Tcp));
        Assert.Equal(UserNetworkAction.Deny, policy.Decide(IPAddress.Parse("10.2.2.3"), 80, ProtocolType.Tcp));
    }

    private static async Task<int> ReadOrReset(TcpClient client)
    {
        try
        {
            return await client.GetStream().ReadAsync(new byte[16]).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (IOException)
        {
            return 0;
        }
    }

    internal static byte[] RandomBytes(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    internal static byte[] Dhcp(byte type, uint xid, uint requested = 0, uint server = 0, MacAddress? mac = null)
    {
        var m = new byte[300];
        m[0] = 1;
        m[1] = 1;
        m[2] = 6;
        BinaryPrimitives.WriteUInt32BigEndian(m.AsSpan(4), xid);
        (mac ?? FakeGuest.Mac).CopyTo(m.AsSpan(28));
        BinaryPrimitives.WriteUInt32BigEndian(m.AsSpan(236), 0x63825363);
        int o = 240;
        m[o++] = 53;
        m[o++] = 1;
        m[o++] = type;
        if (requested != 0)
        {
            m[o++] = 50;
            m[o++] = 4;
            Ip4.Write(m.AsSpan(o), requested);
            o += 4;
        }

        if (server != 0)
        {
            m[o++] = 54;
            m[o++] = 4;
            Ip4.Write(m.AsSpan(o), server);
            o += 4;
        }

        m[o] = 255;
        return m;
    }

    private static byte DhcpType(byte[] m) => (byte)DhcpOptionBytes(m, 53)[0];

    private static uint DhcpOption(byte[] m, byte option) => Ip4.Read(DhcpOptionBytes(m, option));

    private static byte[] DhcpOptionBytes(byte[] m, byte option)
    {
        for (int o = 240; o < m.Length && m[o] != 255;)
        {
            if (m[o] == 0)
            {
                o++;
                continue;
            }

            if (m[o] == option)
            {
                return m.AsSpan(o + 2, m[o + 1]).ToArray();
            }

            o += 2 + m[o + 1];
        }

        throw new InvalidOperationException($"DHCP option {option} is missing");
    }

    internal static byte[] DnsQuery(ushort id, string name)
    {
        var q = new List<byte>();
        q.AddRange([(byte)(id >> 8), (byte)id, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        foreach (string label in name.Split('.'))
        {
            q.Add((byte)label.Length);
            q.AddRange(Encoding.ASCII.GetBytes(label));
        }

        q.AddRange([0, 0, 1, 0, 1]);
        return [.. q];
    }
}
