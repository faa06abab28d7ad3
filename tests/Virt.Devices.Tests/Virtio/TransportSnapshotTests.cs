using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Snapshots;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

/// <summary>Quiescing, saving and restoring the virtio-mmio transport with its queues and device.</summary>
public sealed class TransportSnapshotTests
{
    // Offsets in the transport's state (version 1).
    private const int StatusOffset = 4;
    private const int DriverFeaturesOffset = 16;
    private const int InterruptStatusOffset = 28;
    private const int QueueCountOffset = 36;
    private const int FirstQueueOffset = 40;
    private const int QueueStride = 4 + 1 + 8 + 8 + 8 + 6;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Restored_transport_completes_the_requests_left_available_at_the_save()
    {
        using var rig = new VirtioRig(features: MockVirtioDriver.Version1 | MockVirtioDriver.EventIdx);
        var queue = rig.Queue;
        var buffers = Enumerable.Range(0, 5).Select(_ => rig.Driver.Allocate(32)).ToArray();
        for (int i = 0; i < 3; i++)
        {
            queue.AddChain((buffers[i], 32, true));
        }

        queue.SetUsedEvent(2);
        rig.Driver.Notify(0);
        Assert.Equal(3, queue.UsedIndex);

        // Two more requests made available, not yet seen by the device.
        queue.AddChain((buffers[3], 32, true));
        queue.AddChain((buffers[4], 32, true));
        Assert.Equal(1u, rig.Driver.AcknowledgeInterrupts());
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);

        var irq = new RecordingInterruptLine();
        var device = new TestDevice();
        var restored = VirtioSnapshots.Restore(device, rig.Memory, state, irq);
        Assert.Equal(rig.Transport.Status, restored.Status);
        Assert.NotNull(device.Context);
        Assert.True(device.Context.HasFeature(MockVirtioDriver.EventIdx));
        Assert.Equal(3, queue.UsedIndex);
        Assert.False(irq.IsHigh, "the interrupt was acknowledged before the save");

        queue.SetUsedEvent(3);
        var driver = new MockVirtioDriver(restored, rig.Memory, rig.Driver.RingArea, rig.Driver.DataArea);
        driver.Notify(0);

        Assert.Equal(5, queue.UsedIndex);
        Assert.Equal(2, device.Chains.Count);
        Assert.Equal((3u, 32u), queue.ReadUsed(3));
        Assert.Equal((4u, 32u), queue.ReadUsed(4));
        var data = new byte[32];
        rig.Memory.Read(buffers[4], data);
        Assert.All(data, b => Assert.Equal(0xAB, b));
        Assert.True(irq.IsHigh, "used_event asked for an interrupt after the fourth completion");
        Assert.Equal(1u, driver.AcknowledgeInterrupts());
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task Restored_device_serves_buffers_made_available_before_the_save_without_a_notification()
    {
        using var rig = new VirtioTestRig(new VirtioRngDevice());
        rig.Driver.Initialize();
        var queue = rig.Driver.Queues[0];
        var first = rig.Driver.Allocate(64);
        queue.AddChain((first, 64, true));
        rig.Driver.Notify(0);
        queue.WaitUsed();

        await rig.Transport.QuiesceAsync(Ct);
        var pending = rig.Driver.Allocate(64);
        queue.AddChain((pending, 64, true));
        rig.Driver.Notify(0); // held: the transport is quiesced
        await Task.Delay(50, Ct);
        Assert.Equal(1, queue.UsedIndex);
        var state = VirtioSnapshots.Save(rig.Transport);

        var device = new VirtioRngDevice();
        VirtioSnapshots.Restore(device, rig.Memory, state);

        var used = queue.WaitUsed();
        Assert.Equal((1u, 64u), used);
        Assert.Equal(2, queue.UsedIndex);
        Assert.Equal(64, device.BytesServed);
    }

    [Fact]
    public async Task Quiesce_waits_for_the_request_in_flight_and_takes_no_new_one()
    {
        var device = new GatedDevice();
        using var rig = new VirtioTestRig(device);
        rig.Driver.Initialize();
        var queue = rig.Driver.Queues[0];
        queue.AddChain((rig.Driver.Allocate(16), 16, true));
        rig.Driver.Notify(0);
        Assert.True(await device.Taken.WaitAsync(TimeSpan.FromSeconds(10), Ct), "the device should take the request");

        var quiesce = rig.Transport.QuiesceAsync(Ct);
        queue.AddChain((rig.Driver.Allocate(16), 16, true));
        rig.Driver.Notify(0);
        await Task.Delay(100, Ct);
        Assert.False(quiesce.IsCompleted, "quiesce must wait for the request the device holds");
        Assert.Throws<InvalidOperationException>(() => VirtioSnapshots.Save(rig.Transport));

        device.Release();
        await quiesce.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Equal(1, queue.UsedIndex);
        Assert.Equal(1, device.TakenCount);
        Assert.Equal(1, device.QuiescedCalls);
        Assert.True(rig.Irq.IsHigh, "the completion's interrupt is raised before quiesce returns");
        Assert.True(rig.Transport.IsQuiesced);
        VirtioSnapshots.Save(rig.Transport);

        rig.Transport.Resume();
        Assert.True(await device.Taken.WaitAsync(TimeSpan.FromSeconds(10), Ct), "after resume the held request is taken");
        Assert.Equal(0u, queue.WaitUsed().Id);
        Assert.Equal(1u, queue.WaitUsed().Id);
        Assert.False(rig.Transport.IsQuiesced);
    }

    [Fact]
    public async Task Quiesce_can_be_cancelled_and_the_transport_resumed()
    {
        var device = new GatedDevice();
        using var rig = new VirtioTestRig(device);
        rig.Driver.Initialize();
        rig.Driver.Queues[0].AddChain((rig.Driver.Allocate(16), 16, true));
        rig.Driver.Notify(0);
        Assert.True(await device.Taken.WaitAsync(TimeSpan.FromSeconds(10), Ct));

        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(50));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => rig.Transport.QuiesceAsync(cts.Token));
        rig.Transport.Resume();
        device.Release();
        rig.Driver.Queues[0].WaitUsed();
    }

    [Fact]
    public async Task Quiesce_does_not_wait_for_a_device_that_failed()
    {
        var device = new GatedDevice();
        using var rig = new VirtioTestRig(device);
        rig.Driver.Initialize();
        rig.Driver.Queues[0].AddChain((rig.Driver.Allocate(16), 16, true));
        rig.Driver.Notify(0);
        Assert.True(await device.Taken.WaitAsync(TimeSpan.FromSeconds(10), Ct));

        device.FailNow();
        await rig.Transport.QuiesceAsync(Ct).WaitAsync(TimeSpan.FromSeconds(10), Ct);
        var state = VirtioSnapshots.Save(rig.Transport);

        // A failed device comes back failed: the driver must reset it.
        var restored = VirtioSnapshots.Restore(new GatedDevice(), rig.Memory, state);
        Assert.True((restored.Status & VirtioDeviceStatus.DeviceNeedsReset) != 0);
    }

    [Fact]
    public void Running_device_cannot_be_saved_without_quiescing()
    {
        using var rig = new VirtioRig();
        var e = Assert.Throws<InvalidOperationException>(() => VirtioSnapshots.Save(rig.Transport));
        Assert.Contains("QuiesceAsync", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Transport_the_driver_never_started_round_trips_without_quiescing()
    {
        using var rig = new VirtioRig(initialize: false);
        rig.Driver.WriteRegister(0x70, 1);
        rig.Driver.WriteRegister(0x30, 7);
        var state = VirtioSnapshots.Save(rig.Transport);

        var restored = VirtioSnapshots.Restore(new TestDevice(), rig.Memory, state);
        var driver = new MockVirtioDriver(restored, rig.Memory, rig.Driver.RingArea, rig.Driver.DataArea);
        Assert.Equal(1u, driver.Status);
        Assert.Equal(0u, driver.ReadRegister(0x34)); // queue 7 selected: does not exist
        driver.Initialize();
        Assert.Equal(0xFu, driver.Status);
    }

    [Fact]
    public async Task Pending_interrupt_and_configuration_generation_survive()
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);
        Assert.True(rig.Irq.IsHigh);
        uint generation = rig.Driver.ReadRegister(0xfc);
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);

        var irq = new RecordingInterruptLine();
        var restored = VirtioSnapshots.Restore(new TestDevice(), rig.Memory, state, irq);
        Assert.True(irq.IsHigh);
        Assert.Equal(1u, restored.InterruptStatus);
        var driver = new MockVirtioDriver(restored, rig.Memory, rig.Driver.RingArea, rig.Driver.DataArea);
        Assert.Equal(generation, driver.ReadRegister(0xfc));
        driver.AcknowledgeInterrupts();
        Assert.False(irq.IsHigh);
    }

    [Fact]
    public async Task Console_input_held_for_the_guest_is_delivered_after_a_restore()
    {
        using var rig = new VirtioTestRig(new VirtioConsoleDevice(new MemoryStream("held input"u8.ToArray())));
        rig.Driver.Initialize();
        byte[] state = await SaveWhenAsync(rig.Transport, s => s.Length > 0 && s[^1] == (byte)'t');
        await ((VirtioConsoleDevice)rig.Transport.Device).DisposeAsync();

        await using var device = new VirtioConsoleDevice(Stream.Null);
        var restored = VirtioSnapshots.Restore(device, rig.Memory, state);
        var driver = new MockVirtioDriver(restored, rig.Memory, rig.Driver.RingArea, rig.Driver.DataArea);
        var rx = rig.Driver.Allocate(64);
        rig.Driver.Queues[0].AddChain((rx, 64, true));
        driver.Notify(0);
        var used = rig.Driver.Queues[0].WaitUsed();
        var got = new byte[used.Length];
        rig.Memory.Read(rx, got);
        Assert.Equal("held input"u8.ToArray(), got);
    }

    [Fact]
    public async Task Snapshot_of_another_device_is_refused()
    {
        using var rig = new VirtioRig();
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);

        // The same device type, but the driver accepted a feature this device does not offer.
        var e = Assert.Throws<SnapshotFormatException>(() => VirtioSnapshots.Restore(new VirtioRngDevice(), rig.Memory, state));
        Assert.Equal("driver features", e.Field);

        await using var console = new VirtioConsoleDevice(Stream.Null);
        e = Assert.Throws<SnapshotFormatException>(() => VirtioSnapshots.Restore(console, rig.Memory, state));
        Assert.Equal("device type", e.Field);
    }

    public static TheoryData<string, int, byte[], string> HostileFields => new()
    {
        { "unknown status bit", StatusOffset, U32(0x10F), "status" },
        { "DRIVER_OK without FEATURES_OK", StatusOffset, U32(0x7), "status" },
        { "feature not offered", DriverFeaturesOffset, U64(MockVirtioDriver.Version1 | (1UL << 5)), "driver features" },
        { "VERSION_1 missing", DriverFeaturesOffset, U64(1UL << 3), "driver features" },
        { "unknown interrupt bit", InterruptStatusOffset, U32(4), "interrupt status" },
        { "queue count", QueueCountOffset, U32(2), "queue count" },
        { "queue larger than the maximum", FirstQueueOffset, U32(32), "queue 0" },
        { "queue size not a power of two", FirstQueueOffset, U32(12), "queue 0" },
        { "queue size beyond 16 bits", FirstQueueOffset, U32(0x10000), "queue 0" },
        { "descriptor table outside RAM", FirstQueueOffset + 5, U64(0x80000), "queue 0" },
        { "descriptor table misaligned", FirstQueueOffset + 5, U64(0x1008), "queue 0" },
        { "used ring wrapping past 2^64", FirstQueueOffset + 21, U64(ulong.MaxValue - 3), "queue 0" },
        { "ready flag not a Boolean", FirstQueueOffset + 4, [2], "queue 0 ready" },
        { "device state flag", FirstQueueOffset + QueueStride, [1], "device state present" },
    };

    [Theory]
    [MemberData(nameof(HostileFields))]
    public async Task Hostile_field_is_refused_naming_it_and_leaves_the_transport_untouched(string attack, int offset, byte[] value, string field)
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        value.CopyTo(state.AsSpan(offset));

        var device = new TestDevice();
        var irq = new RecordingInterruptLine();
        var transport = new VirtioMmioTransport(device, rig.Memory, irq);
        var e = Assert.Throws<SnapshotFormatException>(() =>
        {
            var reader = new StateReader(state, "virtio-mmio@test");
            transport.RestoreState(ref reader, 1);
        });

        Assert.True(e.Field == field, $"{attack}: expected field '{field}', got '{e.Field}' ({e.Message})");
        Assert.Equal(VirtioDeviceStatus.None, transport.Status);
        Assert.Equal(0u, transport.InterruptStatus);
        Assert.Null(device.Context);
        Assert.Equal(0, irq.RaiseCount);

        // Still a fresh transport: a driver can start it.
        var driver = new MockVirtioDriver(transport, rig.Memory, new GuestAddress(0x10000), rig.Driver.DataArea);
        driver.Initialize();
        Assert.Equal(0xFu, driver.Status);
    }

    [Fact]
    public async Task Unknown_version_and_trailing_bytes_are_refused()
    {
        using var rig = new VirtioRig();
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        var transport = new VirtioMmioTransport(new TestDevice(), rig.Memory, new RecordingInterruptLine());
        var e = Assert.Throws<SnapshotFormatException>(() =>
        {
            var reader = new StateReader(state, "s");
            transport.RestoreState(ref reader, 2);
        });
        Assert.Equal("version", e.Field);

        e = Assert.Throws<SnapshotFormatException>(() => VirtioSnapshots.Restore(new TestDevice(), rig.Memory, [.. state, 0]));
        Assert.Equal("end", e.Field);
    }

    [Fact]
    public async Task Restore_into_a_started_transport_is_refused()
    {
        using var rig = new VirtioRig();
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        using var other = new VirtioRig();
        Assert.Throws<InvalidOperationException>(() =>
        {
            var reader = new StateReader(state, "s");
            other.Transport.RestoreState(ref reader, 1);
        });
    }

    [Fact]
    public async Task Truncated_and_corrupted_transport_sections_give_only_snapshot_format_exceptions()
    {
        using var rig = new VirtioRig(queueSize: 8);
        var queue = rig.Queue;
        for (int i = 0; i < 5; i++)
        {
            queue.AddChain((rig.Driver.Allocate(8), 8, true));
        }

        rig.Driver.Notify(0);
        queue.AddChain((rig.Driver.Allocate(8), 8, true));
        var plain = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);

        using var consoleRig = new VirtioTestRig(new VirtioConsoleDevice(new MemoryStream("abc"u8.ToArray())));
        consoleRig.Driver.Initialize();
        var withDevice = await SaveWhenAsync(consoleRig.Transport, s => s.Length > 0 && s[^1] == (byte)'c');
        await ((VirtioConsoleDevice)consoleRig.Transport.Device).DisposeAsync();

        var random = new Random(20260501);
        int refused = 0, accepted = 0;
        foreach (var (state, memory, console) in new[] { (plain, rig.Memory, false), (withDevice, consoleRig.Memory, true) })
        {
            for (int length = 0; length < state.Length; length++)
            {
                Attempt(state.AsSpan(0, length).ToArray(), memory, console);
            }

            for (int i = 0; i < 1500; i++)
            {
                var corrupt = (byte[])state.Clone();
                int flips = random.Next(1, 5);
                for (int f = 0; f < flips; f++)
                {
                    int at = random.Next(corrupt.Length);
                    corrupt[at] = random.Next(3) switch
                    {
                        0 => (byte)(corrupt[at] ^ (1 << random.Next(8))),
                        1 => (byte)random.Next(256),
                        _ => random.Next(2) == 0 ? (byte)0 : (byte)0xff,
                    };
                }

                Attempt(corrupt, memory, console);
            }
        }

        Assert.True(refused > 1000, $"{refused} refused, {accepted} accepted");
        Assert.True(accepted > 0, "some corruptions are valid states");
        Assert.Equal(0, rig.Memory.Violations);
        Assert.Equal(0, consoleRig.Memory.Violations);

        void Attempt(byte[] data, IGuestMemory memory, bool console)
        {
            IVirtioDevice device = console ? new VirtioConsoleDevice(Stream.Null) : new TestDevice(queues: 1);
            try
            {
                var transport = VirtioSnapshots.Restore(device, memory, data);
                accepted++;

                // A restored state must behave like one a guest made: a notification must not throw.
                var driver = new MockVirtioDriver(transport, memory, new GuestAddress(0x1000), new GuestAddress(0x30000));
                driver.Notify(0);
                driver.AcknowledgeInterrupts();
            }
            catch (SnapshotFormatException)
            {
                refused++;
            }
            finally
            {
                if (device is VirtioConsoleDevice c)
                {
                    c.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
        }
    }

    /// <summary>Saves (quiescing and resuming) until the state passes <paramref name="ready"/>: input arrives from a stream asynchronously.</summary>
    private static async Task<byte[]> SaveWhenAsync(VirtioMmioTransport transport, Func<byte[], bool> ready)
    {
        var limit = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            await transport.QuiesceAsync(Ct);
            var state = VirtioSnapshots.Save(transport);
            if (ready(state))
            {
                return state;
            }

            transport.Resume();
            Assert.True(DateTime.UtcNow < limit, "the device never held the input");
            await Task.Delay(10, Ct);
        }
    }

    private static byte[] U32(uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return b;
    }

    private static byte[] U64(ulong value)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return b;
    }

    /// <summary>A device whose requests wait for the test: it takes a chain, then completes it only after <see cref="Release"/>.</summary>
    private sealed class GatedDevice : VirtioDevice
    {
        private readonly TaskCompletionSource _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _taken;
        private int _quiesced;

        public GatedDevice() => AddWorker(DrainAsync, 0);

        public SemaphoreSlim Taken { get; } = new(0);
        public int TakenCount => Volatile.Read(ref _taken);
        public int QuiescedCalls => Volatile.Read(ref _quiesced);
        public override VirtioDeviceType DeviceType => (VirtioDeviceType)0x7e;
        public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [16];

        public void Release() => _gate.TrySetResult();

        public void FailNow() => Context?.Fail("the test failed the device");

        public override ValueTask QuiescedAsync(CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _quiesced);
            return ValueTask.CompletedTask;
        }

        private async Task DrainAsync(VirtioDeviceContext context)
        {
            var queue = context.Queues[0];
            while (!context.Stopping.IsCancellationRequested && queue.TryPop(out var chain))
            {
                Interlocked.Increment(ref _taken);
                Taken.Release();
                await _gate.Task.WaitAsync(context.Stopping).ConfigureAwait(false);
                int written = chain.Write(0, new byte[chain.WritableLength]);
                queue.AddUsed(chain, (uint)written);
                context.SignalUsed(queue);
            }
        }
    }
}
