using System.Buffers.Binary;
using System.Security.Cryptography;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Snapshots;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>virtio-blk across a snapshot: the flush at quiesce, the device's state, requests left available.</summary>
public sealed class BlockSnapshotTests
{
    private const uint In = 0, Out = 1;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Read_left_available_at_the_save_is_served_from_the_reopened_image_after_the_restore()
    {
        using var dir = new TempDir();
        DiskImage.CreateRaw(dir.File("disk.img"), 1 << 20);
        byte[] data = RandomNumberGenerator.GetBytes(2 * 512);
        byte[] state;
        GuestAddress readAt, statusAt;
        MockSplitQueue queue;
        using var rig = new BlockRig(DiskImage.OpenRaw(dir.File("disk.img")));
        await using (rig.Device.Backend)
        {
            Assert.Equal(0, rig.Request(Out, 9, writeData: data).Status);

            // A read the driver made available but the device has not seen (no notification yet).
            (readAt, statusAt) = AddRead(rig, sector: 9, length: data.Length);
            queue = rig.Queue;
            state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        }

        await using var reopened = DiskImage.OpenRaw(dir.File("disk.img"));
        var device = new VirtioBlockDevice(reopened);
        VirtioSnapshots.Restore(device, rig.Memory, state);

        var used = queue.WaitUsed();
        Assert.Equal((uint)data.Length + 1, used.Length);
        Assert.Equal(2, queue.UsedIndex);
        Assert.Equal(0, rig.Memory.Read<byte>(statusAt));
        var back = new byte[data.Length];
        rig.Memory.Read(readAt, back);
        Assert.Equal(data, back);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task Quiesce_flushes_a_writable_disk_and_not_a_read_only_one()
    {
        var writable = new FlushCountingBackend(new MemoryBlockBackend(1 << 16));
        using (var rig = new BlockRig(writable))
        {
            rig.Request(Out, 0, writeData: new byte[512]);
            await rig.Transport.QuiesceAsync(Ct);
            Assert.Equal(1, writable.Flushes);
            rig.Transport.Resume();
        }

        var readOnly = new FlushCountingBackend(new MemoryBlockBackend(1 << 16, readOnly: true));
        using (var rig = new BlockRig(readOnly))
        {
            await rig.Transport.QuiesceAsync(Ct);
            Assert.Equal(0, readOnly.Flushes);
        }
    }

    [Fact]
    public async Task Write_in_flight_completes_before_quiesce_returns()
    {
        var backend = new FlushCountingBackend(new MemoryBlockBackend(1 << 16)) { WriteDelay = TimeSpan.FromMilliseconds(200) };
        using var rig = new BlockRig(backend);
        var header = rig.Driver.Allocate(16);
        var h = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, Out);
        rig.Memory.Write(header, h);
        var payload = rig.Put(Enumerable.Repeat((byte)0x5A, 512).ToArray());
        var status = rig.Driver.Allocate(1);
        rig.Memory.Write(status, (byte)0xff);
        rig.Queue.AddChain((header, 16, false), (payload, 512, false), (status, 1, true));
        rig.Driver.Notify(0);
        Assert.True(SpinWait.SpinUntil(() => backend.WritesStarted > 0, TimeSpan.FromSeconds(10)));

        await rig.Transport.QuiesceAsync(Ct);

        Assert.Equal(1, rig.Queue.UsedIndex);
        Assert.Equal(0, rig.Memory.Read<byte>(status));
        Assert.Equal(1, backend.Flushes);
        Assert.Equal(0x5A, ((MemoryBlockBackend)backend.Inner).Contents[511]);
    }

    public static TheoryData<string, string> Mismatches => new()
    {
        { "capacity", "capacity" },
        { "read-only", "read-only" },
        { "serial", "serial" },
        { "queue size", "queue size" },
    };

    [Theory]
    [MemberData(nameof(Mismatches))]
    public async Task Restore_with_another_disk_is_refused_naming_the_difference(string difference, string field)
    {
        using var rig = new BlockRig(new MemoryBlockBackend(1 << 16), new VirtioBlockOptions { QueueSize = 64 });
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        var device = difference switch
        {
            "capacity" => new VirtioBlockDevice(new MemoryBlockBackend(1 << 17), new VirtioBlockOptions { QueueSize = 64 }),
            "read-only" => new VirtioBlockDevice(new MemoryBlockBackend(1 << 16), new VirtioBlockOptions { QueueSize = 64, ReadOnly = true }),
            "serial" => new VirtioBlockDevice(new MemoryBlockBackend(1 << 16), new VirtioBlockOptions { QueueSize = 64, Serial = "other" }),
            _ => new VirtioBlockDevice(new MemoryBlockBackend(1 << 16), new VirtioBlockOptions { QueueSize = 128 }),
        };

        var e = Assert.Throws<SnapshotFormatException>(() => VirtioSnapshots.Restore(device, rig.Memory, state));

        // A read-only disk offers other features, which the transport notices first.
        Assert.Equal(difference == "read-only" ? "driver features" : field, e.Field);
        Assert.Equal(difference == "read-only" ? "virtio-mmio" : "virtio-mmio/virtio-blk", e.Section);
    }

    [Fact]
    public async Task Restore_with_another_queue_count_is_refused_and_the_same_count_restores()
    {
        using var rig = new BlockRig(new MemoryBlockBackend(1 << 16), new VirtioBlockOptions { QueueCount = 2 });
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        var other = new VirtioBlockDevice(new MemoryBlockBackend(1 << 16), new VirtioBlockOptions { QueueCount = 4 });
        var e = Assert.Throws<SnapshotFormatException>(() => VirtioSnapshots.Restore(other, rig.Memory, state));
        Assert.Contains("queue", e.Field, StringComparison.Ordinal);
        var same = VirtioSnapshots.Restore(new VirtioBlockDevice(new MemoryBlockBackend(1 << 16), new VirtioBlockOptions { QueueCount = 2 }), rig.Memory, state);
        Assert.True(same.Status.HasFlag(VirtioDeviceStatus.DriverOk));
    }

    [Fact]
    public async Task Same_disk_restores()
    {
        using var rig = new BlockRig(new MemoryBlockBackend(1 << 16));
        var state = await VirtioSnapshots.QuiesceAndSaveAsync(rig.Transport, Ct);
        var restored = VirtioSnapshots.Restore(new VirtioBlockDevice(new MemoryBlockBackend(1 << 16)), rig.Memory, state);
        Assert.Equal(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver | VirtioDeviceStatus.FeaturesOk | VirtioDeviceStatus.DriverOk, restored.Status);
    }

    private static (GuestAddress Data, GuestAddress Status) AddRead(BlockRig rig, ulong sector, int length)
    {
        var header = rig.Driver.Allocate(16);
        var h = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, In);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), sector);
        rig.Memory.Write(header, h);
        var data = rig.Driver.Allocate((uint)length);
        rig.Memory.Write(data, new byte[length]);
        var status = rig.Driver.Allocate(1);
        rig.Memory.Write(status, (byte)0xff);
        rig.Queue.AddChain((header, 16, false), (data, (uint)length, true), (status, 1, true));
        return (data, status);
    }

    /// <summary>Counts flushes and started writes; optionally makes writes slow.</summary>
    private sealed class FlushCountingBackend(IBlockBackend inner) : IBlockBackend
    {
        private int _flushes;
        private int _writes;

        public IBlockBackend Inner => inner;
        public TimeSpan WriteDelay { get; init; }
        public int Flushes => Volatile.Read(ref _flushes);
        public int WritesStarted => Volatile.Read(ref _writes);
        public long Capacity => inner.Capacity;
        public bool IsReadOnly => inner.IsReadOnly;

        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);

        public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _writes);
            await Task.Delay(WriteDelay, cancellationToken);
            await inner.WriteAsync(offset, buffer, cancellationToken);
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _flushes);
            return inner.FlushAsync(cancellationToken);
        }

        public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.DiscardAsync(offset, length, cancellationToken);

        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.WriteZeroesAsync(offset, length, cancellationToken);

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
