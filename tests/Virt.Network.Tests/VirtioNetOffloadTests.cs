using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Virt.Network.UserNet;
using Xunit;

namespace Virt.Network.Tests;

/// <summary>
/// virtio-net checksum and segmentation offloads over the user-mode network: what is offered over which backend,
/// a 64 KiB segment from the guest reaching a host socket whole, large segments to the guest with a header that fits
/// them, a guest that took fewer offloads getting wire-size frames, and every bad transmit header dropped and counted.
/// </summary>
public sealed class VirtioNetOffloadTests
{
    private const ulong GuestCsum = 1UL << 1;
    private const ulong GuestTso4 = 1UL << 7;
    private const ulong GuestTso6 = 1UL << 8;
    private const ulong HostTso4 = 1UL << 11;
    private const ulong HostTso6 = 1UL << 12;
    private const uint BigBuffer = 12 + 65550;

    [Fact]
    public async Task Offloads_are_offered_over_the_user_network_only()
    {
        await using var net = new UserModeNetwork();
        using (var rig = new NetRig(net, FakeGuest.Mac))
        {
            ulong offered = rig.Driver.ReadDeviceFeatures();
            Assert.Equal(GuestCsum | GuestTso4 | GuestTso6 | HostTso4 | HostTso6, offered & (GuestCsum | GuestTso4 | GuestTso6 | HostTso4 | HostTso6));
        }

        using (var rig = new NetRig(net, FakeGuest.Mac, new VirtioNetOptions { SegmentationOffload = false }))
        {
            Assert.Equal(0UL, rig.Driver.ReadDeviceFeatures() & (GuestCsum | GuestTso4 | GuestTso6 | HostTso4 | HostTso6));
        }

        using (var rig = new NetRig(net, FakeGuest.Mac, new VirtioNetOptions { TransmitChecksumOffload = false }))
        {
            Assert.Equal(GuestCsum | GuestTso4 | GuestTso6, rig.Driver.ReadDeviceFeatures() & (GuestCsum | GuestTso4 | GuestTso6 | HostTso4 | HostTso6));
        }

        var hub = new VirtualNetworkHost().Create("lan");
        hub.Start();
        await using var port = hub.Attach("vm");
        using (var rig = new NetRig(port, FakeGuest.Mac))
        {
            Assert.Equal(0UL, rig.Driver.ReadDeviceFeatures() & (GuestCsum | GuestTso4 | GuestTso6 | HostTso4 | HostTso6));
        }
    }

    [Fact]
    public async Task A_64_KiB_segment_goes_to_the_host_whole_and_large_segments_come_back_with_a_fitting_header()
    {
        var ct = TestContext.Current.CancellationToken;
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        await using var net = new UserModeNetwork();
        using var rig = new NetRig(net, FakeGuest.Mac, ramSize: 64 << 20);
        Assert.Equal(GuestCsum | GuestTso4 | HostTso4, rig.Features & (GuestCsum | GuestTso4 | HostTso4));
        rig.PostReceiveBuffers(8, BigBuffer);
        var (host, connection) = await ConnectAsync(rig, net, listener, ct);
        using var _ = host;

        // 44 segments' worth in one frame, its checksum left partial as a guest with HOST_TSO4 leaves it.
        var data = new byte[44 * 1460];
        new Random(7).NextBytes(data);
        var frame = FrameBuilder.Tcp(net.Options.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, connection.GuestPort, FakeGuest.Gateway, connection.HostPort,
            connection.Seq, connection.Ack, TcpSegment.Ack | TcpSegment.Psh, 65535, data);
        uint pseudo = Checksum.PseudoHeader(FakeGuest.Ip, FakeGuest.Gateway, Proto.Tcp, 20 + data.Length);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(34 + 16), (ushort)~Checksum.Fold(pseudo));
        rig.Send(frame, Header(FrameOffload.NeedsChecksum, FrameOffload.GsoTcp4, 54, 1460, 34, 16));
        var received = new byte[data.Length];
        await host.GetStream().ReadExactlyAsync(received, ct);
        Assert.Equal(data, received);

        // The host answers with more than one segment: it comes in few frames, each with a header that fits it.
        var reply = new byte[100_000];
        new Random(8).NextBytes(reply);
        await host.GetStream().WriteAsync(reply, ct);
        var got = new List<byte>();
        int frames = 0;
        bool sawGso = false;
        while (got.Count < reply.Length)
        {
            var (header, f) = rig.TryReceive(TimeSpan.FromSeconds(10)) ?? throw new TimeoutException($"{got.Count} of {reply.Length} bytes came");
            rig.PostReceiveBuffers(1, BigBuffer);
            var offload = FrameOffload.Read(header);
            if (!Ipv4Packet.TryParse(f.AsSpan(14), out var ip) || ip.Protocol != Proto.Tcp
                || !TcpSegment.TryParse(ip, out var peek, checksumTrusted: true) || peek.Payload.IsEmpty)
            {
                continue; // an acknowledgment or a window update
            }

            frames++;
            Assert.Equal(FrameOffload.NeedsChecksum, offload.Flags);
            Assert.Equal(34, offload.ChecksumStart);
            Assert.Equal(16, offload.ChecksumOffset);
            Assert.True(Checksum.TryComplete(f, 34, 16));
            Assert.True(Ipv4Packet.TryParse(f.AsSpan(14), out ip));
            Assert.True(TcpSegment.TryParse(ip, out var segment), "the completed checksum is right");
            if (offload.GsoType == FrameOffload.GsoTcp4)
            {
                sawGso = true;
                Assert.Equal(1460, offload.SegmentSize);
                Assert.Equal(54, offload.HeaderLength);
                Assert.True(segment.Payload.Length > 1460);
            }
            else
            {
                Assert.Equal(FrameOffload.GsoNone, offload.GsoType);
                Assert.True(segment.Payload.Length <= 1460);
            }

            got.AddRange(segment.Payload.ToArray());
        }

        Assert.Equal(reply, got.ToArray());
        Assert.True(sawGso && frames < reply.Length / 1460, $"{frames} frames carried {reply.Length} bytes");
        Assert.Equal(0, net.Statistics.InternalErrors);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_guest_without_segmentation_offload_gets_wire_size_frames(bool receiveChecksumOffload)
    {
        var ct = TestContext.Current.CancellationToken;
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        await using var net = new UserModeNetwork();
        ulong features = ~(GuestTso4 | GuestTso6 | HostTso4 | HostTso6 | (receiveChecksumOffload ? 0 : GuestCsum));
        using var rig = new NetRig(net, FakeGuest.Mac, features: features);
        rig.PostReceiveBuffers(40, 2048);
        var (host, _) = await ConnectAsync(rig, net, listener, ct);
        using var __ = host;

        var reply = new byte[20_000];
        new Random(9).NextBytes(reply);
        await host.GetStream().WriteAsync(reply, ct);
        int got = 0;
        while (got < reply.Length)
        {
            var (header, f) = rig.TryReceive(TimeSpan.FromSeconds(10)) ?? throw new TimeoutException($"{got} of {reply.Length} bytes came");
            var offload = FrameOffload.Read(header);
            Assert.True(f.Length <= 1514);
            if (!Ipv4Packet.TryParse(f.AsSpan(14), out var peekIp) || !TcpSegment.TryParse(peekIp, out var peek, checksumTrusted: true) || peek.Payload.IsEmpty)
            {
                continue; // an acknowledgment or a window update
            }

            Assert.Equal(FrameOffload.GsoNone, offload.GsoType);
            Assert.Equal(receiveChecksumOffload ? FrameOffload.NeedsChecksum : 0, offload.Flags);
            if (receiveChecksumOffload)
            {
                Assert.True(Checksum.TryComplete(f, offload.ChecksumStart, offload.ChecksumOffset));
            }

            Assert.True(Ipv4Packet.TryParse(f.AsSpan(14), out var ip));
            Assert.True(TcpSegment.TryParse(ip, out var segment));
            got += segment.Payload.Length;
        }

        Assert.Equal(reply.Length, got);
    }

    [Fact]
    public async Task A_bad_offload_header_drops_the_frame_and_counts_it()
    {
        await using var net = new UserModeNetwork();
        using var rig = new NetRig(net, FakeGuest.Mac);
        var frame = FrameBuilder.Tcp(net.Options.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, 40000, FakeGuest.Gateway, 9, 1, 0, TcpSegment.Syn, 65535, new byte[3000]);
        rig.Send(frame, Header(0, FrameOffload.GsoTcp4, 54, 1460, 0, 0)); // segmentation offload without NEEDS_CSUM
        rig.Send(frame, Header(FrameOffload.NeedsChecksum, FrameOffload.GsoTcp4, 54, 1460, 14, 16)); // checksum not at the TCP header
        Assert.True(SpinWait.SpinUntil(() => rig.Device.FramesDropped == 2, TimeSpan.FromSeconds(5)));
        Assert.Equal(0, net.Statistics.FramesFromGuest);
    }

    public static TheoryData<string, byte, byte, ushort, ushort, ushort, ushort, bool> BadHeaders => new()
    {
        { "DATA_VALID from a driver", 2, 0, 0, 0, 0, 0, false },
        { "an unknown flag", 4, 0, 0, 0, 0, 0, false },
        { "checksum start past the frame", 1, 0, 0, 0, 5000, 16, false },
        { "checksum field past the frame", 1, 0, 0, 0, 34, 3019, false },
        { "segmentation without NEEDS_CSUM", 0, FrameOffload.GsoTcp4, 54, 1460, 0, 0, false },
        { "segment size 0", 1, FrameOffload.GsoTcp4, 54, 0, 34, 16, false },
        { "header length past the frame", 1, FrameOffload.GsoTcp4, 60000, 1460, 34, 16, false },
        { "checksum not at the TCP header", 1, FrameOffload.GsoTcp4, 54, 1460, 34, 6, false },
        { "TCP over IPv6 on an IPv4 frame", 1, FrameOffload.GsoTcp6, 74, 1440, 54, 16, false },
        { "UDP fragmentation offload", 1, FrameOffload.GsoUdp, 42, 1472, 34, 6, false },
        { "ECN", 1, FrameOffload.GsoTcp4 | FrameOffload.GsoEcn, 54, 1460, 34, 16, false },
        { "a good segmentation offload", 1, FrameOffload.GsoTcp4, 54, 1460, 34, 16, true },
        { "a good partial checksum", 1, 0, 0, 0, 34, 16, true },
        { "no offload", 0, 0, 0, 0, 0, 0, true },
    };

    [Theory]
    [MemberData(nameof(BadHeaders))]
    public void Transmit_headers_are_checked_against_the_frame(string why, byte flags, byte gso, ushort hdrLen, ushort gsoSize, ushort start, ushort offset, bool good)
    {
        var frame = FrameBuilder.Tcp(MacAddress.Parse("52:55:0a:00:02:02"), FakeGuest.Mac, FakeGuest.Ip, 40000, FakeGuest.Gateway, 80, 1, 1, TcpSegment.Ack, 65535, new byte[3000]);
        string? refusal = VirtioNetDevice.CheckTransmitHeader(new FrameOffload(flags, gso, hdrLen, gsoSize, start, offset), frame, _ => true);
        Assert.True(good == (refusal is null), $"{why}: {refusal ?? "accepted"}");
        Assert.NotNull(VirtioNetDevice.CheckTransmitHeader(new FrameOffload(1, FrameOffload.GsoTcp4, 54, 1460, 34, 16), frame, bit => bit != (1UL << 11)));
    }

    private static byte[] Header(byte flags, byte gso, ushort hdrLen, ushort gsoSize, ushort start, ushort offset)
    {
        var header = new byte[12];
        new FrameOffload(flags, gso, hdrLen, gsoSize, start, offset).Write(header);
        return header;
    }

    /// <summary>Opens a connection from the guest (port 40000) to <paramref name="listener"/> through the gateway.</summary>
    private static async Task<(TcpClient Host, Conn Connection)> ConnectAsync(NetRig rig, UserModeNetwork net, TcpListener listener, CancellationToken ct)
    {
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        var accept = listener.AcceptTcpClientAsync(ct);
        rig.Send(FrameBuilder.Tcp(net.Options.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, 40000, FakeGuest.Gateway, port, 1000, 0, TcpSegment.Syn, 65535, [], 1460, 7));
        while (true)
        {
            var (header, f) = rig.TryReceive(TimeSpan.FromSeconds(10)) ?? throw new TimeoutException("no SYN-ACK");
            Assert.Equal(0, header[1]);
            if (!Ipv4Packet.TryParse(f.AsSpan(14), out var ip) || ip.Protocol != Proto.Tcp || !TcpSegment.TryParse(ip, out var synAck))
            {
                continue;
            }

            Assert.Equal(TcpSegment.Syn | TcpSegment.Ack, synAck.Flags);
            var c = new Conn(40000, port, 1001, synAck.Sequence + 1);
            rig.Send(FrameBuilder.Tcp(net.Options.GatewayMac, FakeGuest.Mac, FakeGuest.Ip, 40000, FakeGuest.Gateway, port, c.Seq, c.Ack, TcpSegment.Ack, 65535, []));
            return (await accept, c);
        }
    }

    private readonly record struct Conn(ushort GuestPort, ushort HostPort, uint Seq, uint Ack);
}
