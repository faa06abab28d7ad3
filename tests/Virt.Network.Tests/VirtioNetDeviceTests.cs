using System.Buffers.Binary;
using Xunit;

namespace Virt.Network.Tests;

public sealed class VirtioNetDeviceTests
{
    private static readonly MacAddress Guest = MacAddress.Parse("02:00:00:00:00:01");
    private static readonly MacAddress Peer = MacAddress.Parse("02:00:00:00:00:02");

    [Fact]
    public void Config_space_holds_the_mac_and_link_up()
    {
        using var rig = new NetRig(new LoopBackend(), Guest);
        Assert.Equal(Guest.ToArray(), rig.Driver.ReadConfig(0, 6));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(rig.Driver.ReadConfig(6, 2)));
        rig.Device.LinkUp = false;
        Assert.Equal(0, BinaryPrimitives.ReadUInt16LittleEndian(rig.Driver.ReadConfig(6, 2)));
        Assert.Equal(2u, rig.Driver.ReadRegister(0x60) & 2);
    }

    [Fact]
    public void Only_honoured_features_are_offered()
    {
        using var rig = new NetRig(new LoopBackend(), Guest);
        ulong offered = rig.Driver.ReadDeviceFeatures();
        ulong deviceBits = offered & 0xffff_ffffUL & ~((1UL << 28) | (1UL << 29));
        Assert.Equal((1UL << 0) | (1UL << 5) | (1UL << 15) | (1UL << 16), deviceBits);
    }

    [Fact]
    public async Task Transmitted_frame_reaches_the_backend_without_the_header()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest);
        var frame = NetRig.Frame(Peer, Guest, payload: 100);
        rig.Send(frame);
        backend.WaitForSent(1);
        Assert.Single(backend.Sent);
        Assert.Equal(frame, backend.Sent[0]);
        await Task.CompletedTask;
    }

    [Fact]
    public void Received_frame_lands_after_a_12_byte_header_with_num_buffers_1()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest);
        rig.PostReceiveBuffers(2);
        var frame = NetRig.Frame(Guest, Peer, payload: 200);
        Assert.True(backend.Inject(frame));
        var got = rig.TryReceive();
        Assert.NotNull(got);
        Assert.Equal(frame, got.Value.Frame);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(got.Value.Header.AsSpan(10)));
    }

    [Fact]
    public void Large_frame_spans_mergeable_receive_buffers()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest);
        rig.PostReceiveBuffers(8, size: 1024);
        var frame = NetRig.Frame(Guest, Peer, payload: 3000);
        Assert.True(backend.Inject(frame));
        var got = rig.TryReceive();
        Assert.NotNull(got);
        Assert.Equal(3, BinaryPrimitives.ReadUInt16LittleEndian(got.Value.Header.AsSpan(10)));
        Assert.Equal(frame, got.Value.Frame);
    }

    [Fact]
    public void Nics_sharing_a_receive_budget_drop_what_exceeds_it_together_until_it_refills()
    {
        var clock = new ManualTimeProvider();
        var receive = new Virt.Devices.Virtio.TokenBucket(1000, burst: 1000, timeProvider: clock);
        var transmit = new Virt.Devices.Virtio.TokenBucket(1_000_000, timeProvider: clock);
        var first = new LoopBackend();
        var second = new LoopBackend();
        using var a = new NetRig(first, Guest);
        using var b = new NetRig(second, Guest);
        a.Device.ShareLimits(transmit, receive);
        b.Device.ShareLimits(transmit, receive);
        a.PostReceiveBuffers(4);
        b.PostReceiveBuffers(4);

        var frame = NetRig.Frame(Guest, Peer, payload: 586);
        Assert.True(first.Inject(frame));
        Assert.False(second.Inject(frame));
        Assert.Equal(1, receive.ThrottledCount);
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.True(second.Inject(frame));
        Assert.NotNull(b.TryReceive());
        Assert.Equal(2L * frame.Length, receive.TotalConsumed);

        b.Send(NetRig.Frame(Peer, Guest, payload: 100));
        second.WaitForSent(1);
        Assert.Equal(114, transmit.TotalConsumed);
    }

    [Fact]
    public void Frame_without_receive_buffers_is_dropped()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest);
        Assert.False(backend.Inject(NetRig.Frame(Guest, Peer)));
        rig.PostReceiveBuffers(1, size: 512);
        Assert.False(backend.Inject(NetRig.Frame(Guest, Peer, payload: 1000)));
        Assert.True(backend.Inject(NetRig.Frame(Guest, Peer, payload: 100)));
        Assert.Equal(2, rig.Device.FramesDropped);
    }

    [Fact]
    public void Frame_larger_than_one_buffer_is_dropped_without_mergeable_buffers()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest, features: ~(1UL << 15));
        rig.PostReceiveBuffers(4, size: 1024);
        Assert.False(backend.Inject(NetRig.Frame(Guest, Peer, payload: 1500)));
        Assert.True(backend.Inject(NetRig.Frame(Guest, Peer, payload: 500)));
    }

    [Fact]
    public void Partial_checksum_is_completed_before_the_frame_leaves()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest);
        byte[] frame = UdpFrame(out int checksumOffset, out ushort expected);
        var header = new byte[12];
        header[0] = 1; // NEEDS_CSUM
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(6), 34);  // csum_start: UDP header
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(8), 6);   // csum_offset: UDP checksum field
        rig.Send(frame, header);
        backend.WaitForSent(1);
        Assert.Equal(expected, BinaryPrimitives.ReadUInt16BigEndian(backend.Sent[0].AsSpan(checksumOffset)));
    }

    [Fact]
    public void Gso_frame_is_dropped_because_gso_was_not_offered()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest);
        var header = new byte[12];
        header[1] = 1; // GSO_TCPV4
        rig.Send(NetRig.Frame(Peer, Guest), header);
        // The descriptor is returned to the driver before the frame is judged; wait for the verdict.
        Assert.True(SpinWait.SpinUntil(() => rig.Device.FramesDropped == 1, TimeSpan.FromSeconds(5)));
        Assert.Empty(backend.Sent);
    }

    /// <summary>An IPv4/UDP frame whose checksum field holds the pseudo-header sum, as a guest leaves it for offload.</summary>
    private static byte[] UdpFrame(out int checksumOffset, out ushort expected)
    {
        var f = NetRig.Frame(Peer, Guest, payload: 20 + 8 + 11, etherType: 0x0800);
        var ip = f.AsSpan(14, 20);
        ip.Clear();
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], 39);
        ip[8] = 64;
        ip[9] = 17;
        byte[] src = [10, 0, 0, 1], dst = [10, 0, 0, 2];
        src.CopyTo(ip[12..]);
        dst.CopyTo(ip[16..]);
        var udp = f.AsSpan(34);
        BinaryPrimitives.WriteUInt16BigEndian(udp, 1234);
        BinaryPrimitives.WriteUInt16BigEndian(udp[2..], 5678);
        BinaryPrimitives.WriteUInt16BigEndian(udp[4..], 19);
        BinaryPrimitives.WriteUInt16BigEndian(udp[6..], 0);
        "hello world"u8.CopyTo(udp[8..]);

        // Full checksum computed independently: pseudo header + UDP header + data.
        uint sum = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 19;
        for (int i = 0; i < 19; i += 2)
        {
            sum += (uint)((udp[i] << 8) | (i + 1 < 19 ? udp[i + 1] : 0));
        }

        uint folded = sum;
        while ((folded >> 16) != 0)
        {
            folded = (folded & 0xffff) + (folded >> 16);
        }

        expected = (ushort)~folded;

        // The guest stores the folded pseudo-header sum (not complemented) in the checksum field.
        uint pseudo = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 19;
        while ((pseudo >> 16) != 0)
        {
            pseudo = (pseudo & 0xffff) + (pseudo >> 16);
        }

        BinaryPrimitives.WriteUInt16BigEndian(udp[6..], (ushort)pseudo);
        checksumOffset = 34 + 6;
        return f;
    }
}

/// <summary>A backend that records sent frames and lets the test inject received ones.</summary>
internal sealed class LoopBackend : INetworkBackend
{
    private Func<ReadOnlyMemory<byte>, bool>? _receiver;

    public List<byte[]> Sent { get; } = [];

    public ValueTask SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken = default)
    {
        lock (Sent)
        {
            Sent.Add(frame.ToArray());
        }

        return ValueTask.CompletedTask;
    }

    public void Attach(Func<ReadOnlyMemory<byte>, bool> receiver) => _receiver = receiver;

    /// <summary>
    /// Waits until <paramref name="count"/> frames were sent. The device hands a transmit buffer back to the
    /// driver as soon as it has copied the frame, so the send itself may complete a moment later.
    /// </summary>
    public void WaitForSent(int count)
    {
        bool done = SpinWait.SpinUntil(() => { lock (Sent) { return Sent.Count >= count; } }, TimeSpan.FromSeconds(5));
        Xunit.Assert.True(done, $"expected {count} sent frame(s) within 5 s");
    }

    public bool Inject(byte[] frame) => _receiver!(frame);

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
