using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Virt.Network.UserNet;
using Xunit;

namespace Virt.Network.Tests;

/// <summary>IPv4 fragments from the guest: reassembly, overlapping-fragment attacks, bounded memory and timeouts.</summary>
public sealed class UserModeNetworkFragmentTests
{
    [Fact]
    public async Task Fragmented_udp_datagram_arriving_out_of_order_reaches_the_host_whole()
    {
        using var server = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        server.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int port = ((IPEndPoint)server.LocalEndPoint!).Port;
        await using var g = new FakeGuest();
        g.Announce();

        var payload = UserModeNetworkTests.RandomBytes(4000, 11);
        var frame = FrameBuilder.Udp(g.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, 5000, FakeGuest.Gateway, (ushort)port, payload);
        var fragments = Fragment(frame, 1480, id: 0x1234);
        Assert.Equal(3, fragments.Count);
        g.Send(fragments[2]);
        g.Send(fragments[0]);
        g.Send(fragments[0]); // an exact duplicate changes nothing
        g.Send(fragments[1]);

        var buffer = new byte[8000];
        server.ReceiveTimeout = 10_000;
        int n = server.Receive(buffer);
        Assert.Equal(payload, buffer[..n]);
        var stats = g.Net.Statistics;
        Assert.Equal(1, stats.DatagramsReassembled);
        Assert.Equal(0, stats.FragmentedDatagramsDiscarded);
        Assert.Equal(0, stats.InternalErrors);
    }

    [Fact]
    public async Task Fragmented_ping_to_the_gateway_is_answered()
    {
        await using var g = new FakeGuest();
        g.Announce();
        var icmp = UserModeNetworkTests.RandomBytes(1200, 12);
        icmp[0] = 8;
        icmp[1] = 0;
        icmp[2] = icmp[3] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(icmp.AsSpan(2), Checksum.Fold(Checksum.Add(icmp)));
        var frame = FrameBuilder.Ipv4(g.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, FakeGuest.Gateway, Proto.Icmp, icmp.Length);
        icmp.CopyTo(frame, 34);
        foreach (var f in Fragment(frame, 400, id: 7))
        {
            g.Send(f);
        }

        var reply = g.Take(f => f.Length > 34 && f[23] == Proto.Icmp);
        Assert.Equal(0, reply[34]);
        Assert.Equal(icmp.AsSpan(4).ToArray(), reply.AsSpan(38).ToArray());
    }

    [Fact]
    public async Task Overlapping_fragments_discard_the_datagram_and_its_later_fragments()
    {
        using var server = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        server.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int port = ((IPEndPoint)server.LocalEndPoint!).Port;
        await using var g = new FakeGuest();
        g.Announce();

        var payload = UserModeNetworkTests.RandomBytes(2000, 13);
        var frame = FrameBuilder.Udp(g.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, 5000, FakeGuest.Gateway, (ushort)port, payload);
        var fragments = Fragment(frame, 1000, id: 99);
        // The attacker's second fragment starts inside the first (offset 8, rewriting the UDP header's length and checksum).
        var overlapping = Fragment(frame, 1000, id: 99, firstOffset: 8, count: 1)[0];
        g.Send(fragments[0]);
        g.Send(overlapping);
        foreach (var f in fragments.Skip(1))
        {
            g.Send(f);
        }

        // A datagram sent whole afterwards arrives first: nothing from the attacked one went out before it.
        g.SendUdp(FakeGuest.Gateway, 5000, (ushort)port, [42]);
        var buffer = new byte[4000];
        server.ReceiveTimeout = 10_000;
        Assert.Equal(1, server.Receive(buffer));
        Assert.Equal(42, buffer[0]);
        var stats = g.Net.Statistics;
        Assert.Equal(0, stats.DatagramsReassembled);
        Assert.Equal(1, stats.FragmentedDatagramsDiscarded);
    }

    [Fact]
    public void Reassembler_bounds_its_memory_and_forgets_datagrams_after_the_timeout()
    {
        var r = new Ipv4Reassembler();
        var chunk = new byte[1480];
        for (int id = 0; id < 1000; id++)
        {
            var result = r.Add(new Ipv4Packet(FakeGuest.Ip, FakeGuest.Gateway, Proto.Udp, chunk) { Identification = (ushort)id, MoreFragments = true }, now: 0, out _);
            Assert.NotEqual(FragmentResult.Complete, result);
            Assert.True(r.PendingDatagrams <= Ipv4Reassembler.MaxDatagrams);
            Assert.True(r.BufferedBytes <= Ipv4Reassembler.MaxBufferedBytes);
        }

        Assert.Equal(Ipv4Reassembler.MaxDatagrams * chunk.Length, r.BufferedBytes);
        Assert.Equal(1000 - Ipv4Reassembler.MaxDatagrams, r.Discarded);

        // After the timeout a new datagram finds room (the old ones are expired on the way).
        var last = new Ipv4Packet(FakeGuest.Ip, FakeGuest.Gateway, Proto.Udp, new byte[8]) { Identification = 5000, FragmentOffset = 1480 };
        Assert.Equal(FragmentResult.Held, r.Add(last, Ipv4Reassembler.TimeoutMs, out _));
        r.Expire(2 * Ipv4Reassembler.TimeoutMs);
        Assert.Equal(0, r.PendingDatagrams);
        Assert.Equal(0, r.BufferedBytes);
    }

    [Theory]
    [InlineData(0, 100, true, "a fragment that is not a multiple of 8 bytes but not the last")]
    [InlineData(65520, 100, false, "a fragment reaching past 65535 bytes")]
    [InlineData(0, 0, true, "an empty fragment")]
    public void Reassembler_refuses_malformed_fragments(int offset, int length, bool more, string what)
    {
        var r = new Ipv4Reassembler();
        var result = r.Add(new Ipv4Packet(FakeGuest.Ip, FakeGuest.Gateway, Proto.Udp, new byte[length]) { FragmentOffset = offset, MoreFragments = more }, 0, out _);
        Assert.True(result == FragmentResult.Dropped, what);
        Assert.Equal(0, r.BufferedBytes);
    }

    [Fact]
    public void Reassembler_refuses_a_last_fragment_that_contradicts_the_datagram_length()
    {
        var r = new Ipv4Reassembler();
        Assert.Equal(FragmentResult.Held, r.Add(new Ipv4Packet(1, 2, Proto.Udp, new byte[800]) { FragmentOffset = 800, MoreFragments = true }, 0, out _));
        // Claims the datagram ends at 1000, inside data already held.
        Assert.Equal(FragmentResult.Dropped, r.Add(new Ipv4Packet(1, 2, Proto.Udp, new byte[200]) { FragmentOffset = 200, MoreFragments = false }, 0, out _));
        Assert.Equal(1, r.Discarded);
        Assert.Equal(0, r.BufferedBytes);
        // Its later fragments are refused too.
        Assert.Equal(FragmentResult.Dropped, r.Add(new Ipv4Packet(1, 2, Proto.Udp, new byte[800]) { MoreFragments = true }, 0, out _));
    }

    /// <summary>Splits the IPv4 packet of <paramref name="frame"/> into fragments of at most <paramref name="size"/> payload bytes (a multiple of 8).</summary>
    internal static List<byte[]> Fragment(byte[] frame, int size, ushort id, int firstOffset = 0, int? count = null)
    {
        var payload = frame.AsSpan(34);
        var list = new List<byte[]>();
        for (int o = firstOffset; o < payload.Length && list.Count < (count ?? int.MaxValue); o += size)
        {
            int n = Math.Min(size, payload.Length - o);
            bool more = o + n < payload.Length;
            var f = new byte[34 + n];
            frame.AsSpan(0, 34).CopyTo(f);
            payload.Slice(o, n).CopyTo(f.AsSpan(34));
            var ip = f.AsSpan(14, 20);
            BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(20 + n));
            BinaryPrimitives.WriteUInt16BigEndian(ip[4..], id);
            BinaryPrimitives.WriteUInt16BigEndian(ip[6..], (ushort)((more ? 0x2000 : 0) | (o / 8)));
            ip[10] = ip[11] = 0;
            BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum.Fold(Checksum.Add(ip)));
            list.Add(f);
        }

        return list;
    }
}
