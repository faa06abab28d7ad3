using System.Runtime.InteropServices;
using System.Text;
using Virt.Devices.Virtio;
using Virt.Storage.SharedFolders;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Storage.Tests.SharedFolders;

/// <summary>The virtio-fs device behind a virtio-mmio transport, driven by the mock driver.</summary>
public sealed class VirtioFsDeviceTests : IDisposable
{
    private readonly ShareTree _tree = new();

    public VirtioFsDeviceTests() => Assert.SkipUnless(OperatingSystem.IsLinux(), "Shared folders need a Linux host.");

    public void Dispose() => _tree.Dispose();

    [Fact]
    public void Configuration_holds_the_tag_and_one_request_queue()
    {
        using var device = new VirtioFsDevice(_tree.Share, "hostshare");
        using var rig = new VirtioTestRig(device);
        Assert.Equal(26u, rig.Driver.ReadRegister(0x008));
        var config = rig.Driver.ReadConfig(0, 40);
        Assert.Equal("hostshare", Encoding.UTF8.GetString(config, 0, 36).TrimEnd('\0'));
        Assert.Equal(1u, BitConverter.ToUInt32(config, 36));
        Assert.Equal(2, device.QueueMaxSizes.Count);
    }

    [Fact]
    public void Requests_travel_through_the_request_queue_and_forgets_through_the_high_priority_queue()
    {
        File.WriteAllText(_tree.InShare("hello.txt"), "hi");
        using var device = new VirtioFsDevice(_tree.Share, "t");
        using var rig = new VirtioTestRig(device, ramSize: 0x100000, dataArea: 0x40000);
        rig.Driver.Initialize(ulong.MaxValue, 16);

        var init = Request(rig, 1, FuseOpcode.Init, 0, FuseClient.Bytes(new FuseInitIn { Major = 7, Minor = 38 }), 16 + Fuse.InitOutSize);
        Assert.Equal(0, init.Error);
        var lookup = Request(rig, 1, FuseOpcode.Lookup, 1, FuseClient.Name("hello.txt"), 16 + Fuse.EntryOutSize);
        Assert.Equal(0, lookup.Error);
        ulong node = MemoryMarshal.Read<FuseEntryOut>(lookup.Payload).NodeId;
        Assert.Equal(2, device.Server.InodeCount);

        // FORGET has no reply: the chain is device-readable only and comes back with length 0.
        var used = Request(rig, 0, FuseOpcode.Forget, node, FuseClient.Bytes(new FuseForgetIn { Nlookup = 1 }), 0);
        Assert.Equal(0u, used.UsedLength);
        Assert.Equal(1, device.Server.InodeCount);
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public void Tags_that_cannot_name_a_share_are_refused()
    {
        Assert.Throws<ArgumentException>(() => new VirtioFsDevice(_tree.Share, ""));
        Assert.Throws<ArgumentException>(() => new VirtioFsDevice(_tree.Share, new string('t', 37)));
        Assert.Throws<ArgumentException>(() => new VirtioFsDevice(_tree.Share, "a b"));
        Assert.Throws<ArgumentException>(() => new VirtioFsDevice(_tree.Share, "a:b"));
        Assert.Throws<DirectoryNotFoundException>(() => new VirtioFsDevice(Path.Combine(_tree.Root, "missing"), "t"));
    }

    private static (int Error, byte[] Payload, uint UsedLength) Request(VirtioTestRig rig, int queue, FuseOpcode opcode, ulong node, byte[] arguments, int replySize)
    {
        rig.Driver.ResetAllocations();
        var message = new byte[Fuse.InHeaderSize + arguments.Length];
        var header = new FuseInHeader { Length = (uint)message.Length, Opcode = (uint)opcode, Unique = 5, NodeId = node };
        MemoryMarshal.Write(message, in header);
        arguments.CopyTo(message, Fuse.InHeaderSize);
        var request = rig.Put(message);
        var buffers = new List<(Virt.GuestAddress, uint, bool)> { (request, (uint)message.Length, false) };
        Virt.GuestAddress reply = default;
        if (replySize > 0)
        {
            reply = rig.Driver.Allocate((uint)replySize);
            buffers.Add((reply, (uint)replySize, true));
        }

        var q = rig.Driver.Queues[queue];
        q.AddChain([.. buffers]);
        rig.Driver.Notify(queue);
        var used = q.WaitUsed();
        if (replySize == 0)
        {
            return (0, [], used.Length);
        }

        var answer = new byte[used.Length];
        rig.Memory.Read(reply, answer);
        var outHeader = MemoryMarshal.Read<FuseOutHeader>(answer);
        Assert.Equal(5ul, outHeader.Unique);
        return (-outHeader.Error, answer[Fuse.OutHeaderSize..], used.Length);
    }
}
