using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

/// <summary>
/// <see cref="Virtqueue.TryPopMany"/>, <see cref="Virtqueue.AddUsedMany"/> and
/// <see cref="VirtioDeviceContext.CompleteAndSignal"/>: several chains taken and completed in one step each, into
/// chain objects that are refilled instead of allocated.
/// </summary>
public sealed class VirtqueueBatchTests
{
    private const ushort Write = MockSplitQueue.FlagWrite;
    private const ushort Next = MockSplitQueue.FlagNext;

    private static (GuestMemory Ram, MockSplitQueue Driver, Virtqueue Queue, List<string> Errors) Queue(bool eventIdx = true, ushort size = 16)
    {
        var ram = GuestMemory.CreateRam(0x40000);
        var driver = new MockSplitQueue(ram, new GuestAddress(0x1000), size);
        var errors = new List<string>();
        var queue = new Virtqueue(0, size, driver.DescriptorTable, driver.AvailRing, driver.UsedRing, ram, eventIdx, indirect: true, ready: true, errors.Add);
        return (ram, driver, queue, errors);
    }

    [Fact]
    public void A_batch_is_taken_into_reused_chain_objects_and_completed_in_order()
    {
        var (ram, driver, queue, errors) = Queue();
        using var _ = ram;
        var chains = new[] { queue.CreateChain(), queue.CreateChain(), queue.CreateChain(), queue.CreateChain() };
        for (int round = 0; round < 3; round++)
        {
            var heads = new List<ushort>();
            for (int i = 0; i < 3; i++)
            {
                heads.Add(driver.AddChain((new GuestAddress(0x20000 + (0x100UL * (uint)i)), 16, false), (new GuestAddress(0x30000 + (0x100UL * (uint)i)), (uint)(32 + i), true)));
            }

            Assert.Equal(3, queue.TryPopMany(chains));
            for (int i = 0; i < 3; i++)
            {
                Assert.Equal(heads[i], chains[i].Head);
                Assert.Equal(16, chains[i].ReadableLength);
                Assert.Equal(32 + i, chains[i].WritableLength);
                Assert.Equal(2, chains[i].DescriptorCount);
            }

            // Nothing more available: EVENT_IDX asks for the next notification at the device's position.
            Assert.Equal((ushort)((round + 1) * 3), driver.AvailEvent);
            queue.AddUsedMany(chains.AsSpan(0, 3), [1, 2, 3]);
            for (int i = 0; i < 3; i++)
            {
                var used = driver.ReadUsed((round * 3) + i);
                Assert.Equal(heads[i], used.Id);
                Assert.Equal((uint)(i + 1), used.Length);
            }

            Assert.Equal((ushort)((round + 1) * 3), driver.UsedIndex);
        }

        Assert.Equal(0, queue.InFlight);
        Assert.Empty(errors);
    }

    [Fact]
    public void A_chain_object_of_another_queue_is_refused()
    {
        var (ram, _, queue, _) = Queue();
        using var r = ram;
        var (ram2, _, other, _) = Queue();
        using var r2 = ram2;
        Assert.Throws<ArgumentException>(() => queue.TryPopMany([other.CreateChain()]));
    }

    [Fact]
    public void Refilling_chain_objects_allocates_nothing()
    {
        var (ram, driver, queue, errors) = Queue();
        using var _ = ram;
        var chains = new[] { queue.CreateChain(), queue.CreateChain() };
        uint[] written = [4, 4];
        long allocated = 0;
        for (int round = 0; round < 200; round++)
        {
            driver.AddChain((new GuestAddress(0x20000), 16, false), (new GuestAddress(0x30000), 4, true));
            driver.AddChain((new GuestAddress(0x20100), 16, false), (new GuestAddress(0x30100), 4, true));
            long before = GC.GetAllocatedBytesForCurrentThread();
            int taken = queue.TryPopMany(chains);
            queue.AddUsedMany(chains.AsSpan(0, taken), written.AsSpan(0, taken));
            long after = GC.GetAllocatedBytesForCurrentThread();
            Assert.Equal(2, taken);
            if (round >= 20)
            {
                allocated += after - before;
            }
        }

        Assert.Equal(0, allocated);
        Assert.Empty(errors);
    }

    [Fact]
    public void A_chain_refilled_after_a_long_one_holds_only_its_own_buffers()
    {
        var (ram, driver, queue, errors) = Queue();
        using var _ = ram;
        var chain = queue.CreateChain();
        var buffers = Enumerable.Range(0, 7).Select(i => (new GuestAddress(0x20000 + (0x100UL * (uint)i)), 8u, i >= 5)).ToArray();
        driver.AddChain(buffers);
        Assert.Equal(1, queue.TryPopMany([chain]));
        Assert.Equal(7, chain.DescriptorCount);
        Assert.Equal(40, chain.ReadableLength);
        queue.AddUsedMany([chain], [0]);

        driver.AddChain((new GuestAddress(0x21000), 16, false), (new GuestAddress(0x22000), 4, true));
        Assert.Equal(1, queue.TryPopMany([chain]));
        Assert.Equal(2, chain.DescriptorCount);
        Assert.Equal(16, chain.ReadableLength);
        Assert.Equal(4, chain.WritableLength);
        Assert.Equal(new GuestAddress(0x22000), chain.GetBuffer(1).Address);
        Assert.True(chain.GetBuffer(1).Writable);
        Assert.Empty(errors);
    }

    [Fact]
    public void Complete_and_signal_raises_one_interrupt_for_a_batch_and_honours_used_event()
    {
        using var rig = new VirtioTestRig(new BatchDevice());
        rig.Driver.Initialize();
        var q = rig.Driver.Queues[0];

        // used_event 0: the first completion asks for an interrupt; three in one batch raise one.
        q.SetUsedEvent(0);
        for (int i = 0; i < 3; i++)
        {
            q.AddChain((rig.Driver.Allocate(8), 8, false), (rig.Driver.Allocate(8), 8, true));
        }

        int before = rig.Irq.RaiseCount;
        rig.Driver.Notify(0);
        Assert.Equal(3, q.UsedIndex);
        Assert.Equal(before + 1, rig.Irq.RaiseCount);

        // used_event 10: the next batch (used index 3 to 6) does not cross it, so no interrupt.
        q.SetUsedEvent(10);
        for (int i = 0; i < 3; i++)
        {
            q.AddChain((rig.Driver.Allocate(8), 8, false), (rig.Driver.Allocate(8), 8, true));
        }

        rig.Driver.Notify(0);
        Assert.Equal(6, q.UsedIndex);
        Assert.Equal(before + 1, rig.Irq.RaiseCount);
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public void A_guest_rewriting_an_indirect_table_after_the_pop_cannot_change_the_chain()
    {
        var (ram, driver, queue, errors) = Queue();
        using var _ = ram;
        var table = new GuestAddress(0x10000);
        var input = new GuestAddress(0x20000);
        var output = new GuestAddress(0x30000);
        ram.Write(input, new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 });
        driver.AddIndirectChain(table, (input, 8, false), (output, 8, true));
        var chain = queue.CreateChain();
        Assert.Equal(1, queue.TryPopMany([chain]));

        // The guest now points the table's entries outside RAM and at the device's own rings.
        driver.WriteDescriptorAt(table, new GuestAddress(0x8000_0000), 0x1000_0000, Next, 1);
        driver.WriteDescriptorAt(table + 16, driver.UsedRing, 0x1000, Write, 0);

        var back = new byte[8];
        Assert.Equal(8, chain.Read(0, back));
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }, back);
        Assert.Equal(8, chain.Write(0, new byte[] { 9, 9, 9, 9, 9, 9, 9, 9, 9, 9 }));
        Assert.Equal(output, chain.GetBuffer(1).Address);
        Assert.Equal(8, chain.WritableLength);
        queue.AddUsedMany([chain], [8]);
        Assert.Equal(1, driver.UsedIndex);
        Assert.Empty(errors);
    }

    [Fact]
    public void An_indirect_table_across_two_regions_is_read_entry_by_entry()
    {
        using var ram = GuestMemory.Create(GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 0x10000), GuestMemoryRegionSpec.Ram(new GuestAddress(0x10000), 0x30000));
        var driver = new MockSplitQueue(ram, new GuestAddress(0x1000), 16);
        var errors = new List<string>();
        var queue = new Virtqueue(0, 16, driver.DescriptorTable, driver.AvailRing, driver.UsedRing, ram, eventIdx: true, indirect: true, ready: true, errors.Add);
        var table = new GuestAddress(0x10000 - 16);
        driver.AddIndirectChain(table, (new GuestAddress(0x20000), 8, false), (new GuestAddress(0x30000), 8, true));
        var chain = queue.CreateChain();
        Assert.Equal(1, queue.TryPopMany([chain]));
        Assert.Equal(2, chain.DescriptorCount);
        Assert.Equal(new GuestAddress(0x30000), chain.GetBuffer(1).Address);
        Assert.Empty(errors);
    }

    /// <summary>A device that takes every chain in one step and completes them with one call.</summary>
    private sealed class BatchDevice : VirtioDevice
    {
        private DescriptorChain[]? _chains;

        // Notifications reach OnQueueNotified only for a queue with a worker; this device never kicks it.
        public BatchDevice() => AddWorker(_ => Task.CompletedTask, 0);

        public override VirtioDeviceType DeviceType => VirtioDeviceType.Entropy;

        public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [16];

        protected override void OnQueueNotified(int queueIndex, VirtqueueWorker worker)
        {
            if (Context is not { } context)
            {
                return;
            }

            var queue = context.Queues[queueIndex];
            if (_chains is null || !ReferenceEquals(_chains[0].Queue, queue))
            {
                _chains = [.. Enumerable.Range(0, 16).Select(_ => queue.CreateChain())];
            }

            int taken = queue.TryPopMany(_chains);
            var written = new uint[taken];
            Array.Fill(written, 8u);
            context.CompleteAndSignal(queue, _chains.AsSpan(0, taken), written);
        }
    }
}
