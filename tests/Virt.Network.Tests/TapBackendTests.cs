using System.Buffers.Binary;
using System.Collections.Concurrent;
using Xunit;
using Virt.Testing;

namespace Virt.Network.Tests;

[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class TapBackendTests
{
    private static readonly MacAddress GuestMac = MacAddress.Parse("02:00:00:00:77:02");
    private static readonly byte[] HostIp = [10, 77, 0, 1];
    private static readonly byte[] GuestIp = [10, 77, 0, 2];

    [Fact]
    public async Task Frames_flow_both_ways_through_a_tap_inside_its_own_namespace()
    {
        using var ns = NetworkNamespace.CreateOrSkip();
        await using var tap = ns.Enter(() => TapBackend.Open("vtap0"));
        ns.Ip($"addr add 10.77.0.1/24 dev {tap.InterfaceName}");
        ns.Ip($"link set {tap.InterfaceName} up");

        var received = new BlockingCollection<byte[]>();
        tap.Attach(frame =>
        {
            received.Add(frame.ToArray());
            return true;
        });

        // Guest -> host: an ARP request for the host's address. Host -> guest: the kernel's ARP reply.
        byte[]? reply = null;
        for (int attempt = 0; attempt < 5 && reply is null; attempt++)
        {
            await tap.SendAsync(ArpRequest(), TestContext.Current.CancellationToken);
            var deadline = DateTime.UtcNow.AddSeconds(2);
            while (reply is null && received.TryTake(out var frame, deadline - DateTime.UtcNow > TimeSpan.Zero ? deadline - DateTime.UtcNow : TimeSpan.Zero))
            {
                if (IsArpReplyFromHost(frame))
                {
                    reply = frame;
                }
            }
        }

        Assert.NotNull(reply);
        Assert.Equal(GuestMac, MacAddress.FromBytes(reply.AsSpan(0, 6)));
    }

    [Fact]
    public async Task Virtio_net_guest_reaches_the_host_through_a_tap()
    {
        using var ns = NetworkNamespace.CreateOrSkip();
        var tap = ns.Enter(() => TapBackend.Open("vtap1"));
        ns.Ip($"addr add 10.77.0.1/24 dev {tap.InterfaceName}");
        ns.Ip($"link set {tap.InterfaceName} up");
        using var rig = new NetRig(tap, GuestMac);
        await using var closeTapFirst = tap;
        rig.PostReceiveBuffers(32);

        byte[]? reply = null;
        for (int attempt = 0; attempt < 5 && reply is null; attempt++)
        {
            rig.Send(ArpRequest());
            var deadline = DateTime.UtcNow.AddSeconds(2);
            while (reply is null && DateTime.UtcNow < deadline && rig.TryReceive(TimeSpan.FromMilliseconds(500)) is { } packet)
            {
                if (IsArpReplyFromHost(packet.Frame))
                {
                    reply = packet.Frame;
                }
            }

            rig.PostReceiveBuffers(8);
        }

        Assert.NotNull(reply);
        Assert.True(SpinWait.SpinUntil(() => rig.Device.FramesSent >= 1, TimeSpan.FromSeconds(5)));
    }

    private static byte[] ArpRequest()
    {
        var f = NetRig.Frame(MacAddress.Broadcast, GuestMac, payload: 28, fill: 0, etherType: 0x0806);
        var arp = f.AsSpan(14);
        BinaryPrimitives.WriteUInt16BigEndian(arp, 1);          // Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(arp[2..], 0x0800); // IPv4
        arp[4] = 6;
        arp[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(arp[6..], 1);      // request
        GuestMac.CopyTo(arp[8..]);
        GuestIp.CopyTo(arp[14..]);
        HostIp.CopyTo(arp[24..]);
        return f;
    }

    private static bool IsArpReplyFromHost(byte[] frame) =>
        frame.Length >= 42
        && BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) == 0x0806
        && BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(20)) == 2
        && frame.AsSpan(28, 4).SequenceEqual(HostIp);
}
