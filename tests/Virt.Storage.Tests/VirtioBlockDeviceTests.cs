using System.Buffers.Binary;
using System.Security.Cryptography;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Storage.Tests;

public sealed class VirtioBlockDeviceTests
{
    private const uint In = 0, Out = 1, Flush = 4, GetId = 8, Discard = 11, WriteZeroes = 13;

    public static TheoryData<string> Backends => ["memory", "raw", "overlay"];

    private static async Task<(IBlockBackend Backend, TempDir Dir)> OpenAsync(string kind, long size = 1 << 20)
    {
        var dir = new TempDir();
        IBlockBackend backend;
        switch (kind)
        {
            case "memory":
                backend = new MemoryBlockBackend(size);
                break;
            case "raw":
                DiskImage.CreateRaw(dir.File("disk.img"), size);
                backend = DiskImage.OpenRaw(dir.File("disk.img"));
                break;
            default:
                DiskImage.CreateRaw(dir.File("base.img"), size);
                await using (var b = DiskImage.OpenRaw(dir.File("base.img")))
                {
                    await b.WriteAsync(0, RandomNumberGenerator.GetBytes(4096), TestContext.Current.CancellationToken);
                }

                DiskImage.CreateOverlay(dir.File("overlay.img"), dir.File("base.img"));
                backend = DiskImage.OpenOverlay(dir.File("overlay.img"));
                break;
        }

        return (backend, dir);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Write_then_read_round_trips_through_the_device(string kind)
    {
        var (backend, dir) = await OpenAsync(kind);
        using var _ = dir;
        await using var __ = backend;
        using var rig = new BlockRig(backend);
        byte[] data = RandomNumberGenerator.GetBytes(3 * 512);

        var (status, _) = rig.Request(Out, 7, writeData: data);
        Assert.Equal(0, status);
        var back = new byte[data.Length];
        var (readStatus, used) = rig.Request(In, 7, readLength: data.Length, readInto: back);

        Assert.Equal(0, readStatus);
        Assert.Equal((uint)data.Length + 1, used);
        Assert.Equal(data, back);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task Read_past_the_last_sector_fails_with_ioerr()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend);
        Assert.Equal(1, rig.Request(In, 127, readLength: 1024).Status);
        Assert.Equal(1, rig.Request(In, ulong.MaxValue, readLength: 512).Status);
        Assert.Equal(0, rig.Request(In, 127, readLength: 512).Status);
    }

    [Fact]
    public async Task Read_of_a_partial_sector_fails_with_ioerr()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend);
        Assert.Equal(1, rig.Request(In, 0, readLength: 100).Status);
    }

    [Fact]
    public async Task Read_only_disk_rejects_writes_with_ioerr_and_advertises_ro()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { ReadOnly = true });

        Assert.NotEqual(0UL, rig.Features & (1UL << 5));
        Assert.Equal(1, rig.Request(Out, 0, writeData: Filled(512, 0x5A)).Status);
        Assert.Equal(0, backend.Contents[0]);
    }

    [Fact]
    public async Task Write_to_a_read_only_backend_fails_with_ioerr()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024, readOnly: true);
        using var rig = new BlockRig(backend);
        Assert.True(rig.Device.IsReadOnly);
        Assert.Equal(1, rig.Request(Out, 0, writeData: Filled(512, 1)).Status);
        Assert.Equal(1, rig.Request(WriteZeroes, 0, writeData: Segment(0, 1, 0)).Status);
    }

    [Fact]
    public async Task Flush_completes_ok()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend);
        Assert.Equal(0, rig.Request(Flush, 0).Status);
    }

    [Fact]
    public async Task Get_id_returns_the_serial()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { Serial = "disk-42" });
        var id = new byte[20];
        var (status, used) = rig.Request(GetId, 0, readLength: 20, readInto: id);
        Assert.Equal(0, status);
        Assert.Equal(21u, used);
        Assert.Equal("disk-42", System.Text.Encoding.ASCII.GetString(id).TrimEnd('\0'));
    }

    [Fact]
    public async Task Unknown_request_type_answers_unsupported()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend);
        Assert.Equal(2, rig.Request(99, 0).Status);
    }

    [Theory]
    [InlineData(Discard)]
    [InlineData(WriteZeroes)]
    public async Task Discard_and_write_zeroes_clear_the_range(uint type)
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        await backend.WriteAsync(0, Filled(4096, 0x77), TestContext.Current.CancellationToken);
        using var rig = new BlockRig(backend);

        Assert.Equal(0, rig.Request(type, 2, writeData: Segment(2, 4, 0)).Status);

        Assert.All(backend.Contents.Slice(1024, 2048).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0x77, backend.Contents[1023]);
        Assert.Equal(0x77, backend.Contents[3072]);
    }

    [Fact]
    public async Task Discard_with_unmap_flag_is_unsupported_and_out_of_range_is_ioerr()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend);
        Assert.Equal(2, rig.Request(Discard, 0, writeData: Segment(0, 1, 1)).Status);
        Assert.Equal(1, rig.Request(WriteZeroes, 0, writeData: Segment(127, 2, 0)).Status);
    }

    [Fact]
    public async Task Request_without_writable_status_byte_is_rejected_without_writing()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        await backend.WriteAsync(0, Filled(512, 0x33), TestContext.Current.CancellationToken);
        using var rig = new BlockRig(backend);
        var header = rig.Driver.Allocate(16);
        var data = rig.Driver.Allocate(512);
        var status = rig.Driver.Allocate(1);
        rig.Memory.Write(header, new byte[16]);
        rig.Memory.Write(data, new byte[512]);
        rig.Memory.Write(status, (byte)0xEE);
        rig.Queue.AddChain((header, 16, false), (data, 512, false), (status, 1, false));
        rig.Driver.Notify(0);

        SpinWait.SpinUntil(() => rig.NeedsReset, TimeSpan.FromSeconds(10));
        Assert.True(rig.NeedsReset);
        Assert.Equal(0xEE, rig.Memory.Read<byte>(status));
        var back = new byte[512];
        rig.Memory.Read(data, back);
        Assert.All(back, b => Assert.Equal(0, b));
        Assert.Equal(0, rig.Queue.UsedIndex);
    }

    [Fact]
    public async Task Config_space_reports_capacity_in_sectors_and_seg_max()
    {
        await using var backend = new MemoryBlockBackend(1 << 20);
        using var rig = new BlockRig(backend);
        Assert.Equal(2048UL, BinaryPrimitives.ReadUInt64LittleEndian(rig.Driver.ReadConfig(0, 8)));
        Assert.Equal(254u, BinaryPrimitives.ReadUInt32LittleEndian(rig.Driver.ReadConfig(12, 4)));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32LittleEndian(rig.Driver.ReadConfig(20, 4)));
    }

    [Fact]
    public async Task Request_spread_over_many_small_descriptors_is_reassembled()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        byte[] data = RandomNumberGenerator.GetBytes(1024);
        await backend.WriteAsync(1024, data, TestContext.Current.CancellationToken);
        using var rig = new BlockRig(backend);
        var h = new byte[16];
        h[8] = 2;
        var parts = new List<(GuestAddress, uint, bool)>();
        for (int i = 0; i < 16; i++)
        {
            var a = rig.Driver.Allocate(1);
            rig.Memory.Write(a, h[i]);
            parts.Add((a, 1, false));
        }

        var buffers = new List<GuestAddress>();
        for (int i = 0; i < 8; i++)
        {
            var a = rig.Driver.Allocate(128);
            buffers.Add(a);
            parts.Add((a, 128, true));
        }

        var st = rig.Driver.Allocate(1);
        parts.Add((st, 1, true));
        rig.Queue.AddChain([.. parts]);
        rig.Driver.Notify(0);
        rig.Queue.WaitUsed();

        Assert.Equal(0, rig.Memory.Read<byte>(st));
        var back = new byte[1024];
        for (int i = 0; i < 8; i++)
        {
            rig.Memory.Read(buffers[i], back.AsSpan(i * 128, 128));
        }

        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Completion_raises_the_used_buffer_interrupt()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend);
        rig.Request(Flush, 0);
        SpinWait.SpinUntil(() => rig.Irq.RaiseCount > 0, TimeSpan.FromSeconds(10));
        Assert.True(rig.Irq.RaiseCount > 0);
        Assert.Equal(1u, rig.Driver.AcknowledgeInterrupts() & 1);
    }

    [Fact]
    public async Task Rate_limiter_lets_requests_through()
    {
        await using var backend = new MemoryBlockBackend(64 * 1024);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { BytesPerSecond = 1 << 20, OperationsPerSecond = 1000 });
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(0, rig.Request(Out, (ulong)i, writeData: Filled(4096, (byte)i)).Status);
        }

        Assert.Equal(4, backend.Contents[4 * 512]);
    }

    [Fact]
    public async Task Disks_sharing_a_budget_draw_from_one_bucket_and_wait_for_it_once_it_is_spent()
    {
        await using var first = new MemoryBlockBackend(256 * 1024);
        await using var second = new MemoryBlockBackend(256 * 1024);
        using var a = new BlockRig(first);
        using var b = new BlockRig(second);
        // 64 KiB of burst, refilled at 1 MiB/s on a clock that moves only when a wait ends: the first request spends the
        // burst, every later one runs into debt and waits exactly its debt, whatever the machine's load.
        var clock = new SteppingClock();
        var bytes = new Virt.Devices.Virtio.TokenBucket(1 << 20, burst: 64 * 1024, timeProvider: clock);
        var operations = new Virt.Devices.Virtio.TokenBucket(100_000, timeProvider: clock);
        a.Device.ShareLimits(bytes, operations);
        b.Device.ShareLimits(bytes, operations);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(0, a.Request(Out, (ulong)(i * 128), writeData: Filled(64 * 1024, (byte)(i + 1))).Status);
            Assert.Equal(0, b.Request(Out, (ulong)(i * 128), writeData: Filled(64 * 1024, (byte)(i + 0x10))).Status);
        }

        byte[] back = new byte[64 * 1024];
        Assert.Equal(0, b.Request(In, 256, readLength: back.Length, readInto: back).Status);
        Assert.Equal(Filled(64 * 1024, 0x12), back);
        Assert.Equal(7L * 64 * 1024, bytes.TotalConsumed);
        Assert.Equal(7, operations.TotalConsumed);
        Assert.Equal(6, bytes.ThrottledCount);
        Assert.Equal(0, operations.ThrottledCount);
        Assert.Equal(TimeSpan.FromSeconds(6.0 * 64 / 1024), clock.Waited);
        Assert.Equal(3, first.Contents[256 * 512]);
    }

    [Fact]
    public async Task Several_queues_are_offered_with_mq_and_each_serves_requests()
    {
        await using var backend = new MemoryBlockBackend(256 * 1024);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { QueueCount = 4 });
        Assert.NotEqual(0UL, rig.Features & (1UL << 12));
        Assert.Equal(4, BinaryPrimitives.ReadUInt16LittleEndian(rig.Driver.ReadConfig(34, 2)));
        Assert.Equal(4, rig.Driver.Queues.Count);
        for (int q = 0; q < 4; q++)
        {
            Assert.Equal(0, rig.Request(Out, (ulong)(q * 8), writeData: Filled(4096, (byte)(q + 1)), queue: q).Status);
        }

        for (int q = 0; q < 4; q++)
        {
            byte[] back = new byte[4096];
            Assert.Equal(0, rig.Request(In, (ulong)(((q + 1) % 4) * 8), readLength: 4096, readInto: back, queue: q).Status);
            Assert.Equal(Filled(4096, (byte)(((q + 1) % 4) + 1)), back);
        }

        Assert.Equal(0, rig.Request(Flush, 0, queue: 3).Status);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(65)]
    public async Task A_queue_count_outside_1_to_64_is_refused(int count)
    {
        await using var backend = new MemoryBlockBackend(4096);
        var e = Assert.Throws<ArgumentException>(() => new VirtioBlockDevice(backend, new VirtioBlockOptions { QueueCount = count }));
        Assert.Contains("QueueCount", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task One_queue_offers_no_mq()
    {
        await using var backend = new MemoryBlockBackend(4096);
        using var rig = new BlockRig(backend);
        Assert.Equal(0UL, rig.Features & (1UL << 12));
        Assert.Single(rig.Driver.Queues);
    }

    internal static byte[] Filled(int length, byte value)
    {
        var b = new byte[length];
        Array.Fill(b, value);
        return b;
    }

    private static byte[] Segment(ulong sector, uint count, uint flags)
    {
        var s = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(s, sector);
        BinaryPrimitives.WriteUInt32LittleEndian(s.AsSpan(8), count);
        BinaryPrimitives.WriteUInt32LittleEndian(s.AsSpan(12), flags);
        return s;
    }
}

/// <summary>A clock that stands still except that each timer moves it by the timer's due time and fires at once.</summary>
internal sealed class SteppingClock : TimeProvider
{
    private long _ticks;

    public TimeSpan Waited => TimeSpan.FromTicks(Interlocked.Read(ref _ticks));

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp() => Interlocked.Read(ref _ticks);

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        if (dueTime != Timeout.InfiniteTimeSpan)
        {
            Interlocked.Add(ref _ticks, dueTime.Ticks);
            ThreadPool.QueueUserWorkItem(_ => callback(state));
        }

        return new Idle();
    }

    private sealed class Idle : ITimer
    {
        public bool Change(TimeSpan dueTime, TimeSpan period) => true;

        public void Dispose()
        {
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
