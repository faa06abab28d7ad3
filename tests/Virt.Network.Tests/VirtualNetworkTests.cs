using Xunit;

namespace Virt.Network.Tests;

public sealed class VirtualNetworkTests
{
    private static readonly MacAddress A = MacAddress.Parse("02:00:00:00:00:0a");
    private static readonly MacAddress B = MacAddress.Parse("02:00:00:00:00:0b");
    private static readonly MacAddress C = MacAddress.Parse("02:00:00:00:00:0c");

    [Fact]
    public async Task Frames_flow_between_two_vms_nics_over_a_virtual_network()
    {
        var host = new VirtualNetworkHost();
        var net = host.Create("lan");
        net.Start();
        await using var portA = net.Attach("vm-a");
        await using var portB = net.Attach("vm-b");
        using var vmA = new NetRig(portA, A);
        using var vmB = new NetRig(portB, B);
        vmA.PostReceiveBuffers(8);
        vmB.PostReceiveBuffers(8);

        var toB = NetRig.Frame(B, A, fill: 1);
        vmA.Send(toB);
        var atB = vmB.TryReceive();
        Assert.NotNull(atB);
        Assert.Equal(toB, atB.Value.Frame);

        var toA = NetRig.Frame(A, B, payload: 1000, fill: 2);
        vmB.Send(toA);
        var atA = vmA.TryReceive();
        Assert.NotNull(atA);
        Assert.Equal(toA, atA.Value.Frame);
        Assert.Equal(1, vmA.Device.FramesReceived);
        Assert.Equal(0, vmA.Memory.Violations + vmB.Memory.Violations);
    }

    [Fact]
    public async Task No_frames_cross_two_isolated_networks()
    {
        var host = new VirtualNetworkHost();
        var red = host.Create("red");
        var blue = host.Create("blue");
        red.Start();
        blue.Start();
        await using var portA = red.Attach();
        await using var portB = blue.Attach();
        using var vmA = new NetRig(portA, A);
        using var vmB = new NetRig(portB, B);
        vmA.PostReceiveBuffers(4);
        vmB.PostReceiveBuffers(4);

        vmA.Send(NetRig.Frame(MacAddress.Broadcast, A));
        vmA.Send(NetRig.Frame(B, A));
        vmB.Send(NetRig.Frame(A, B));

        Assert.Null(vmB.TryReceive(TimeSpan.FromMilliseconds(200)));
        Assert.Null(vmA.TryReceive(TimeSpan.FromMilliseconds(200)));
        Assert.Equal(0, portB.FramesDelivered);
        Assert.Equal(0, portA.FramesDelivered);
    }

    [Fact]
    public async Task Switch_floods_unknown_then_forwards_to_the_learned_port_only()
    {
        var net = new VirtualNetwork("lan");
        net.Start();
        var got = new Dictionary<string, int> { ["a"] = 0, ["b"] = 0, ["c"] = 0 };
        await using var a = Port(net, "a", got);
        await using var b = Port(net, "b", got);
        await using var c = Port(net, "c", got);

        await a.SendAsync(NetRig.Frame(B, A), TestContext.Current.CancellationToken);
        Assert.Equal((0, 1, 1), (got["a"], got["b"], got["c"]));

        await b.SendAsync(NetRig.Frame(A, B), TestContext.Current.CancellationToken);
        Assert.Equal((1, 1, 1), (got["a"], got["b"], got["c"]));

        await a.SendAsync(NetRig.Frame(B, A), TestContext.Current.CancellationToken);
        Assert.Equal((1, 2, 1), (got["a"], got["b"], got["c"]));
        Assert.Equal(2, net.FramesForwarded);
    }

    [Fact]
    public async Task Broadcast_reaches_every_other_port()
    {
        var net = new VirtualNetwork("lan");
        net.Start();
        var got = new Dictionary<string, int> { ["a"] = 0, ["b"] = 0, ["c"] = 0 };
        await using var a = Port(net, "a", got);
        await using var b = Port(net, "b", got);
        await using var c = Port(net, "c", got);
        await b.SendAsync(NetRig.Frame(A, B), TestContext.Current.CancellationToken);
        got["a"] = got["b"] = got["c"] = 0;

        await a.SendAsync(NetRig.Frame(MacAddress.Broadcast, A), TestContext.Current.CancellationToken);
        Assert.Equal((0, 1, 1), (got["a"], got["b"], got["c"]));
    }

    [Fact]
    public async Task Learned_address_ages_out_and_is_flooded_again()
    {
        var clock = new ManualTimeProvider();
        var net = new VirtualNetwork("lan", new VirtualNetworkOptions { MacAgingTime = TimeSpan.FromSeconds(10) }, clock);
        net.Start();
        var got = new Dictionary<string, int> { ["a"] = 0, ["b"] = 0, ["c"] = 0 };
        await using var a = Port(net, "a", got);
        await using var b = Port(net, "b", got);
        await using var c = Port(net, "c", got);
        await b.SendAsync(NetRig.Frame(A, B), TestContext.Current.CancellationToken);

        await a.SendAsync(NetRig.Frame(B, A), TestContext.Current.CancellationToken);
        Assert.Equal(1, got["c"]);
        clock.Advance(TimeSpan.FromSeconds(11));
        await a.SendAsync(NetRig.Frame(B, A), TestContext.Current.CancellationToken);
        Assert.Equal(2, got["c"]);
    }

    [Fact]
    public async Task Stopped_network_drops_frames_and_start_resumes()
    {
        var net = new VirtualNetwork("lan");
        var got = new Dictionary<string, int> { ["a"] = 0, ["b"] = 0 };
        await using var a = Port(net, "a", got);
        await using var b = Port(net, "b", got);
        await a.SendAsync(NetRig.Frame(B, A), TestContext.Current.CancellationToken);
        Assert.Equal(0, got["b"]);

        net.Start();
        await a.SendAsync(NetRig.Frame(B, A), TestContext.Current.CancellationToken);
        Assert.Equal(1, got["b"]);

        net.Stop();
        Assert.Equal(VirtualNetworkState.Stopped, net.State);
        await a.SendAsync(NetRig.Frame(B, A), TestContext.Current.CancellationToken);
        Assert.Equal(1, got["b"]);
    }

    [Fact]
    public async Task Detached_port_gets_nothing_and_deleted_network_refuses_ports()
    {
        var host = new VirtualNetworkHost();
        var net = host.Create("lan");
        net.Start();
        var got = new Dictionary<string, int> { ["a"] = 0, ["b"] = 0 };
        var a = Port(net, "a", got);
        var b = Port(net, "b", got);
        await b.DisposeAsync();
        Assert.False(b.IsAttached);
        await a.SendAsync(NetRig.Frame(MacAddress.Broadcast, A), TestContext.Current.CancellationToken);
        Assert.Equal(0, got["b"]);

        host.Delete("lan");
        Assert.Equal(VirtualNetworkState.Deleted, net.State);
        Assert.False(host.TryGet("lan", out _));
        Assert.Throws<InvalidOperationException>(() => net.Attach());
        Assert.Throws<InvalidOperationException>(() => net.Start());
        Assert.Throws<InvalidOperationException>(() => host.Delete("lan"));
    }

    [Fact]
    public void Network_names_are_unique_per_host()
    {
        var host = new VirtualNetworkHost();
        host.Create("lan");
        Assert.Throws<InvalidOperationException>(() => host.Create("lan"));
        Assert.Single(host.Networks);
    }

    private static VirtualNetworkPort Port(VirtualNetwork net, string name, Dictionary<string, int> got)
    {
        var port = net.Attach(name);
        port.Attach(_ =>
        {
            got[name]++;
            return true;
        });
        return port;
    }
}
