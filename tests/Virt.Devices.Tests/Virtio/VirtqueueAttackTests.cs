using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

public sealed class VirtqueueAttackTests
{
    private const ushort Next = MockSplitQueue.FlagNext;
    private const ushort Write = MockSplitQueue.FlagWrite;
    private const ushort Indirect = MockSplitQueue.FlagIndirect;

    [Fact]
    public void Well_formed_chain_is_served_and_completed()
    {
        using var rig = new VirtioRig();
        var input = rig.Driver.Allocate(8);
        var output = rig.Driver.Allocate(32);
        rig.Memory.Write(input, new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 });
        ushort head = rig.Queue.AddChain((input, 8, false), (output, 32, true));
        rig.Driver.Notify(0);

        var used = rig.Queue.WaitUsed();
        Assert.Equal(head, used.Id);
        Assert.Equal(32u, used.Length);
        Assert.Equal(8, rig.Device.Chains[0].ReadableLength);
        var back = new byte[32];
        rig.Memory.Read(output, back);
        Assert.All(back, b => Assert.Equal(0xAB, b));
        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Theory]
    [InlineData(0x1F80UL)] // the descriptor table crosses from one RAM region into the next
    [InlineData(0x1EF0UL)] // the available ring does
    public void Rings_across_two_adjacent_regions_are_served(ulong ringArea)
    {
        // The queue reads rings that lie in one region straight from host memory; rings that cross into an adjacent
        // region (contiguous for the guest, not for the host) are read field by field and work the same.
        using var ram = GuestMemory.Create(GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 0x2000), GuestMemoryRegionSpec.Ram(new GuestAddress(0x2000), 0x3E000));
        var memory = new CheckedGuestMemory(ram);
        var device = new TestDevice();
        var transport = new VirtioMmioTransport(device, memory, new RecordingInterruptLine());
        var driver = new MockVirtioDriver(transport, memory, new GuestAddress(ringArea), new GuestAddress(0x20000));
        driver.Initialize();
        var input = driver.Allocate(8);
        var output = driver.Allocate(32);
        memory.Write(input, new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 });
        for (int round = 0; round < 3; round++)
        {
            ushort head = driver.Queues[0].AddChain((input, 8, false), (output, 32, true));
            driver.Notify(0);
            var used = driver.Queues[0].WaitUsed();
            Assert.Equal(head, used.Id);
            Assert.Equal(32u, used.Length);
        }

        Assert.Equal(8, device.Chains[0].ReadableLength);
        Assert.Equal(0u, driver.Status & (uint)VirtioDeviceStatus.DeviceNeedsReset);
        Assert.Equal(0, memory.Violations);
    }

    [Fact]
    public void Used_ring_in_rom_breaks_the_queue_and_leaves_the_rom_alone()
    {
        using var ram = GuestMemory.Create(GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 0x2000), GuestMemoryRegionSpec.Rom(new GuestAddress(0x2000), 0x1000));
        var errors = new List<string>();
        var queue = new Virtqueue(0, 16, new GuestAddress(0x1000), new GuestAddress(0x1800), new GuestAddress(0x2000), ram,
            eventIdx: false, indirect: false, ready: true, onError: errors.Add);
        ram.Write(new GuestAddress(0x1000), 0x1900UL); // descriptor 0: 16 device-writable bytes at 0x1900
        ram.Write(new GuestAddress(0x1008), 16u);
        ram.Write(new GuestAddress(0x100C), (ushort)MockSplitQueue.FlagWrite);
        ram.Write(new GuestAddress(0x1804), (ushort)0); // available ring entry 0: chain 0
        ram.Write(new GuestAddress(0x1802), (ushort)1); // available index

        Assert.True(queue.TryPop(out var chain));
        queue.AddUsed(chain, 16);

        Assert.True(queue.IsBroken);
        Assert.Contains(errors, e => e.Contains("not writable", StringComparison.Ordinal));
        var rom = new byte[16];
        ram.Read(new GuestAddress(0x2000), rom);
        Assert.All(rom, b => Assert.Equal(0, b));
    }

    [Fact]
    public void Descriptor_loop_is_rejected()
    {
        using var rig = new VirtioRig();
        var buf = rig.Driver.Allocate(16);
        rig.Queue.WriteDescriptor(0, buf, 16, Next, 1);
        rig.Queue.WriteDescriptor(1, buf, 16, Next, 2);
        rig.Queue.WriteDescriptor(2, buf, 16, Next, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("loops");
    }

    [Fact]
    public void Self_referencing_descriptor_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.WriteDescriptor(5, rig.Driver.Allocate(16), 16, Next, 5);
        rig.Queue.Publish(5);
        rig.Driver.Notify(0);
        rig.AssertRejected("loops");
    }

    [Fact]
    public void Loop_inside_indirect_table_is_rejected()
    {
        using var rig = new VirtioRig();
        var table = rig.Driver.Allocate(64);
        var buf = rig.Driver.Allocate(16);
        rig.Queue.WriteDescriptorAt(table, buf, 16, Next, 1);
        rig.Queue.WriteDescriptorAt(table + 16, buf, 16, Next, 0);
        rig.Queue.WriteDescriptor(0, table, 32, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("loops");
    }

    [Fact]
    public void Chain_longer_than_queue_is_rejected()
    {
        using var rig = new VirtioRig(queueSize: 16);
        var buf = rig.Driver.Allocate(16);
        var table = rig.Driver.Allocate(16 * 16);
        for (int i = 0; i < 16; i++)
        {
            rig.Queue.WriteDescriptorAt(table + (16UL * (uint)i), buf, 16, i < 15 ? Next : (ushort)0, (ushort)(i + 1));
        }

        // One direct descriptor plus a full indirect table: 17 buffers in a queue of 16.
        rig.Queue.WriteDescriptor(0, buf, 16, Next, 1);
        rig.Queue.WriteDescriptor(1, table, 16 * 16, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("longer than the queue size");
    }

    [Fact]
    public void Indirect_table_with_more_entries_than_the_queue_is_rejected()
    {
        using var rig = new VirtioRig(queueSize: 16);
        var table = rig.Driver.Allocate(17 * 16);
        rig.Queue.WriteDescriptor(0, table, 17 * 16, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("more than the queue size");
    }

    [Fact]
    public void Descriptor_outside_guest_ram_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((VirtioRig.OutsideRam, 64, true));
        rig.Driver.Notify(0);
        rig.AssertRejected("not inside guest RAM");
    }

    [Fact]
    public void Descriptor_running_off_the_end_of_ram_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((new GuestAddress(VirtioRig.RamSize - 8), 16, false));
        rig.Driver.Notify(0);
        rig.AssertRejected("not inside guest RAM");
    }

    [Fact]
    public void Descriptor_address_plus_length_wrap_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((new GuestAddress(ulong.MaxValue - 0xf), 0x100, true));
        rig.Driver.Notify(0);
        rig.AssertRejected("wraps past 2^64");
    }

    [Theory]
    [InlineData(24u)]
    [InlineData(8u)]
    [InlineData(0u)]
    public void Indirect_table_of_bad_length_is_rejected(uint length)
    {
        using var rig = new VirtioRig();
        rig.Queue.WriteDescriptor(0, rig.Driver.Allocate(64), length, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("not a non-zero multiple of 16");
    }

    [Fact]
    public void Indirect_table_outside_guest_ram_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.WriteDescriptor(0, VirtioRig.OutsideRam, 64, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("is not inside guest RAM");
    }

    [Fact]
    public void Nested_indirect_table_is_rejected()
    {
        using var rig = new VirtioRig();
        var inner = rig.Driver.Allocate(16);
        var outer = rig.Driver.Allocate(16);
        rig.Queue.WriteDescriptorAt(inner, rig.Driver.Allocate(16), 16, 0, 0);
        rig.Queue.WriteDescriptorAt(outer, inner, 16, Indirect, 0);
        rig.Queue.WriteDescriptor(0, outer, 16, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("contains another indirect descriptor");
    }

    [Fact]
    public void Indirect_descriptor_with_next_flag_is_rejected()
    {
        using var rig = new VirtioRig();
        var table = rig.Driver.Allocate(16);
        rig.Queue.WriteDescriptorAt(table, rig.Driver.Allocate(16), 16, 0, 0);
        rig.Queue.WriteDescriptor(0, table, 16, Indirect | Next, 1);
        rig.Queue.WriteDescriptor(1, rig.Driver.Allocate(16), 16, 0, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("both INDIRECT and NEXT");
    }

    [Fact]
    public void Indirect_descriptor_without_negotiated_feature_is_rejected()
    {
        using var rig = new VirtioRig(features: ~MockVirtioDriver.IndirectDesc);
        var table = rig.Driver.Allocate(16);
        rig.Queue.WriteDescriptorAt(table, rig.Driver.Allocate(16), 16, 0, 0);
        rig.Queue.WriteDescriptor(0, table, 16, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("was not negotiated");
    }

    [Fact]
    public void Indirect_next_index_outside_its_table_is_rejected()
    {
        using var rig = new VirtioRig();
        var table = rig.Driver.Allocate(32);
        rig.Queue.WriteDescriptorAt(table, rig.Driver.Allocate(16), 16, Next, 7);
        rig.Queue.WriteDescriptor(0, table, 32, Indirect, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("outside its table");
    }

    [Fact]
    public void Next_index_outside_queue_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.WriteDescriptor(0, rig.Driver.Allocate(16), 16, Next, 99);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("outside the queue");
    }

    [Fact]
    public void Head_index_outside_queue_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.Publish(400);
        rig.Driver.Notify(0);
        rig.AssertRejected("head descriptor index 400");
    }

    [Fact]
    public void Readable_descriptor_after_writable_one_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.WriteDescriptor(0, rig.Driver.Allocate(16), 16, Write | Next, 1);
        rig.Queue.WriteDescriptor(1, rig.Driver.Allocate(16), 16, 0, 0);
        rig.Queue.Publish(0);
        rig.Driver.Notify(0);
        rig.AssertRejected("follows a device-writable one");
    }

    [Fact]
    public void Available_index_jumping_past_queue_size_is_rejected()
    {
        using var rig = new VirtioRig();
        rig.Queue.SetAvailIndex(17);
        rig.Driver.Notify(0);
        rig.AssertRejected("more than the queue size");
    }

    [Fact]
    public void Write_into_read_only_descriptor_never_happens()
    {
        using var rig = new VirtioRig();
        var buf = rig.Driver.Allocate(16);
        rig.Memory.Write(buf, new byte[16]);
        rig.Queue.AddChain((buf, 16, false));
        rig.Driver.Notify(0);
        rig.Queue.WaitUsed();

        Assert.Equal(0, rig.Device.Chains[0].Write(0, new byte[] { 1, 2, 3 }));
        var back = new byte[16];
        rig.Memory.Read(buf, back);
        Assert.All(back, b => Assert.Equal(0, b));
    }

    [Fact]
    public void Rejected_queue_stays_stopped_until_reset()
    {
        using var rig = new VirtioRig();
        rig.Queue.Publish(400);
        rig.Driver.Notify(0);
        Assert.True(rig.NeedsReset);

        rig.Queue.AddChain((rig.Driver.Allocate(16), 16, true));
        rig.Driver.Notify(0);
        Assert.Equal(0, rig.Queue.UsedIndex);

        rig.Driver.Initialize();
        Assert.False(rig.NeedsReset);
        rig.Queue.AddChain((rig.Driver.Allocate(16), 16, true));
        rig.Driver.Notify(0);
        Assert.Equal(16u, rig.Queue.WaitUsed().Length);
    }

    [Fact]
    public void Queue_size_not_a_power_of_two_is_rejected()
    {
        using var rig = new VirtioRig(initialize: false);
        rig.Driver.WriteRegister(0x70, 1 | 2);
        rig.Driver.WriteRegister(0x24, 1);
        rig.Driver.WriteRegister(0x20, 1);
        rig.Driver.WriteRegister(0x70, 1 | 2 | 8);
        rig.Driver.WriteRegister(0x30, 0);
        rig.Driver.WriteRegister(0x38, 12);
        rig.Driver.WriteRegister(0x80, 0x1000);
        rig.Driver.WriteRegister(0x90, 0x2000);
        rig.Driver.WriteRegister(0xa0, 0x3000);
        rig.Driver.WriteRegister(0x44, 1);
        Assert.True(rig.NeedsReset);
        Assert.Equal(0u, rig.Driver.ReadRegister(0x44));
        Assert.Contains(rig.Logger.Messages, m => m.Contains("not a power of two", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(0x80000UL, 0x2000UL, 0x3000UL)]
    [InlineData(0x1000UL, 0x3fffeUL, 0x3000UL)]
    [InlineData(0x1000UL, 0x2000UL, 0x3fff0UL)]
    [InlineData(0x1008UL, 0x2000UL, 0x3000UL)]
    public void Rings_outside_guest_ram_or_misaligned_are_rejected(ulong desc, ulong avail, ulong used)
    {
        using var rig = new VirtioRig(initialize: false);
        rig.Driver.WriteRegister(0x70, 1 | 2);
        rig.Driver.WriteRegister(0x24, 1);
        rig.Driver.WriteRegister(0x20, 1);
        rig.Driver.WriteRegister(0x70, 1 | 2 | 8);
        rig.Driver.WriteRegister(0x30, 0);
        rig.Driver.WriteRegister(0x38, 16);
        rig.Driver.WriteRegister(0x80, (uint)desc);
        rig.Driver.WriteRegister(0x90, (uint)avail);
        rig.Driver.WriteRegister(0xa0, (uint)used);
        rig.Driver.WriteRegister(0x44, 1);
        Assert.True(rig.NeedsReset);
        Assert.Equal(0u, rig.Driver.ReadRegister(0x44));
    }
}
