using Virt.Devices.Virtio;
using Virt.Snapshots;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Network.Tests;

/// <summary>virtio-net across a snapshot: buffers posted before it, the MAC address and the link state.</summary>
public sealed class NetSnapshotTests
{
    private static readonly MacAddress Guest = MacAddress.Parse("02:00:00:00:00:11");
    private static readonly MacAddress Peer = MacAddress.Parse("02:00:00:00:00:22");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Buffers_posted_before_the_save_carry_frames_both_ways_after_the_restore()
    {
        var backend = new LoopBackend();
        using var rig = new NetRig(backend, Guest);
        rig.PostReceiveBuffers(2);
        Assert.True(backend.Inject(NetRig.Frame(Guest, Peer, fill: 1)));
        Assert.NotNull(rig.TryReceive());

        // A frame the guest queued for sending but the device has not seen yet.
        var outgoing = NetRig.Frame(Peer, Guest, payload: 80, fill: 7);
        var h = rig.Driver.Allocate(12);
        rig.Memory.Write(h, new byte[12]);
        var f = rig.Put(outgoing);
        rig.Tx.AddChain((h, 12, false), (f, (uint)outgoing.Length, false));
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        Assert.False(backend.Inject(NetRig.Frame(Guest, Peer, fill: 2)), "a quiesced NIC drops frames, as a wire may");

        var device = new VirtioNetDevice(backend, Guest);
        VirtioSnapshots.Restore(device, rig.Memory, state);

        backend.WaitForSent(1);
        Assert.Equal(outgoing, backend.Sent[0]);
        rig.Tx.WaitUsed();
        Assert.Equal(1, rig.Tx.UsedIndex);
        var incoming = NetRig.Frame(Guest, Peer, payload: 60, fill: 3);
        Assert.True(backend.Inject(incoming));
        var got = rig.TryReceive();
        Assert.NotNull(got);
        Assert.Equal(incoming, got.Value.Frame);
        Assert.Equal(2, rig.Rx.UsedIndex);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task Link_state_comes_from_the_snapshot()
    {
        using var rig = new NetRig(new LoopBackend(), Guest);
        rig.Device.LinkUp = false;
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);

        var device = new VirtioNetDevice(new LoopBackend(), Guest);
        var restored = VirtioSnapshots.Restore(device, rig.Memory, state);
        Assert.False(device.LinkUp);
        Assert.Equal(2u, restored.InterruptStatus & 2); // the configuration-change interrupt the guest had not acknowledged
    }

    [Fact]
    public async Task Restore_with_another_mac_address_is_refused()
    {
        using var rig = new NetRig(new LoopBackend(), Guest);
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        var e = Assert.Throws<SnapshotFormatException>(() => VirtioSnapshots.Restore(new VirtioNetDevice(new LoopBackend(), Peer), rig.Memory, state));
        Assert.Equal("mac", e.Field);
        Assert.Contains(Peer.ToString(), e.Message, StringComparison.Ordinal);
    }
}
