using System.Buffers.Binary;
using Virt.Memory;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// <see cref="VirtioBlockInline.Automatic"/> for an image on a disk file system: small reads and writes are tried on the
/// notifying thread with RWF_NOWAIT; one that would wait, and every request after it, goes to the queue's worker in
/// order, and a direction the file refuses RWF_NOWAIT for is not tried again.
/// </summary>
public sealed partial class BlockNoWaitTests
{
    private const uint In = 0, Out = 1;
    private const int Block = 4096;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Directories()
    {
        var data = new TheoryData<string> { "temp" };
        if (OperatingSystem.IsLinux() && Directory.Exists("/dev/shm"))
        {
            data.Add("/dev/shm");
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Directories))]
    public async Task A_no_wait_transfer_moves_the_data_or_is_refused_once_and_never_tried_again(string where)
    {
        using var dir = new TempDir();
        string path = where == "temp" ? dir.File("disk.raw") : Path.Combine(where, $"virt-nowait-{Guid.NewGuid():N}.raw");
        try
        {
            DiskImage.CreateRaw(path, 1 << 20);
            await using var backend = DiskImage.Open(path);
            var data = new byte[Block];
            new Random(5).NextBytes(data);
            await backend.WriteAsync(8 * Block, data, Ct);
            var vectored = (IVectoredBlockBackend)backend;
            Assert.True(vectored.MayTransferWithoutWaiting(write: false));

            // Just written, so in the page cache: the read either moves it all or the file system refuses RWF_NOWAIT
            // for reads (tmpfs does on Linux 6.x), which the backend then remembers.
            var back = GC.AllocateArray<byte>(Block, pinned: true);
            bool moved;
            unsafe
            {
                fixed (byte* p = back)
                {
                    moved = vectored.TryVectorNoWait(8 * Block, [new HostBuffer((nint)p, Block)], write: false);
                }
            }

            if (moved)
            {
                Assert.Equal(data, back);
                Assert.True(vectored.MayTransferWithoutWaiting(write: false));
            }
            else
            {
                Assert.False(vectored.MayTransferWithoutWaiting(write: false));
            }

            // The same for a write; a refused write leaves the file as it was.
            var update = new byte[Block];
            new Random(6).NextBytes(update);
            bool wrote;
            unsafe
            {
                fixed (byte* p = update)
                {
                    wrote = vectored.TryVectorNoWait(8 * Block, [new HostBuffer((nint)p, Block)], write: true);
                }
            }

            await backend.ReadAsync(8 * Block, back, Ct);
            Assert.Equal(wrote ? update : data, back);
            Assert.Equal(wrote, vectored.MayTransferWithoutWaiting(write: true));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Automatic_on_a_disk_file_system_serves_page_cache_hits_inline()
    {
        using var dir = new TempDir();
        string path = dir.File("disk.qcow2");
        DiskImage.Create(path, 1 << 20, DiskFormat.Qcow2);
        await using var backend = DiskImage.Open(path);
        using var rig = new BlockRig(backend);
        bool inMemory = ((IVectoredBlockBackend)backend).IsInMemory;
        Assert.Equal(OperatingSystem.IsLinux() || inMemory, rig.Device.ServesInline);
        Assert.Equal(OperatingSystem.IsLinux() && !inMemory, rig.Device.ServesInlineOnlyFromCache);
        var data = new byte[Block];
        new Random(2).NextBytes(data);
        Assert.Equal(0, rig.Request(Out, 16, writeData: data).Status);

        // The block was just written, so it is in the page cache: with a file system that takes RWF_NOWAIT for reads
        // (ext4, xfs, btrfs) the read is used before the notification returns; otherwise the worker serves it.
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        Submit(rig, In, 16, null, out var readAt, out var status);
        rig.Driver.Notify(0);
        bool inline = rig.Queue.TryTakeUsed(out _);
        if (!inline)
        {
            rig.Queue.WaitUsed();
        }

        Assert.Equal(0, rig.Memory.Read<byte>(status));
        var back = new byte[Block];
        rig.Memory.Read(readAt, back);
        Assert.Equal(data, back);
        Assert.Equal(inline, inMemory || ((IVectoredBlockBackend)backend).MayTransferWithoutWaiting(write: false));
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public async Task A_read_that_misses_the_page_cache_goes_to_the_worker_and_later_hits_are_served_inline_again()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.raw");
        await using var backend = DiskImage.Open(path);
        var vectored = (IVectoredBlockBackend)backend;
        if (!OperatingSystem.IsLinux() || vectored.IsInMemory)
        {
            // Only an image on a disk file system has a page cache to miss.
            return;
        }

        using var rig = new BlockRig(backend);
        var data = Fill(13);
        Assert.Equal(0, rig.Request(Out, 24, writeData: data).Status);
        Assert.Equal(0, rig.Request(4, 0).Status);

        // The block is on disk now and clean: drop it from the page cache, so reading it has to wait for the disk.
        Assert.Equal(0, FileAdvise(((RawFileBlockBackend)backend).Handle, 0, 0, PosixFadvDontNeed));
        if (vectored.MayTransferWithoutWaiting(write: false))
        {
            // With nothing cached, a no-wait read moves nothing (EAGAIN), and that is no refusal of RWF_NOWAIT.
            var probe = GC.AllocateArray<byte>(Block, pinned: true);
            unsafe
            {
                fixed (byte* p = probe)
                {
                    Assert.False(vectored.TryVectorNoWait(24 * 512, [new HostBuffer((nint)p, Block)], write: false));
                }
            }

            Assert.True(vectored.MayTransferWithoutWaiting(write: false));
        }

        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        Submit(rig, In, 24, null, out var first, out var firstStatus);
        rig.Driver.Notify(0);
        rig.Queue.WaitUsed();
        Assert.Equal(0, rig.Memory.Read<byte>(firstStatus));
        Assert.Equal(data, Read(rig, first));

        // A miss is no refusal: reads are still tried without waiting, and the block the worker just read is served
        // inline (used before the notification returns) when the file system takes RWF_NOWAIT for reads.
        bool tried = vectored.MayTransferWithoutWaiting(write: false);
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        Submit(rig, In, 24, null, out var second, out _);
        rig.Driver.Notify(0);
        bool inline = rig.Queue.TryTakeUsed(out _);
        if (!inline)
        {
            rig.Queue.WaitUsed();
        }

        Assert.Equal(data, Read(rig, second));
        Assert.Equal(tried, inline);
        Assert.False(rig.NeedsReset);
    }

    private const int PosixFadvDontNeed = 4;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int FileAdvise(Microsoft.Win32.SafeHandles.SafeFileHandle fd, long offset, long length, int advice);

    [Fact]
    public async Task A_request_that_would_wait_goes_to_the_worker_with_everything_after_it_in_order()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        await using var backend = new ScriptedBackend(1 << 20) { WouldBlockAt = 64 * Block };
        var original = new byte[Block];
        new Random(8).NextBytes(original);
        original.CopyTo(backend.Bytes, 64 * Block);
        using var rig = new BlockRig(backend);
        Assert.True(rig.Device.ServesInlineOnlyFromCache);
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));

        // W0 and R1 (cached) inline; R2 would wait (its attempt scribbles over the guest buffer, as a partial read
        // would), so R2, W3 and R4 go to the worker, which completes them in order and makes no no-wait attempt.
        // (Requests in flight together have no order among themselves, so W3 and R4 touch other blocks.)
        var w0 = Fill(9);
        var w3 = Fill(10);
        var heads = new List<uint>();
        heads.Add(Submit(rig, Out, 8, w0, out _, out var s0));
        heads.Add(Submit(rig, In, 8, null, out var r1, out var s1));
        heads.Add(Submit(rig, In, 64 * Block / 512, null, out var r2, out var s2));
        heads.Add(Submit(rig, Out, 80 * Block / 512, w3, out _, out var s3));
        heads.Add(Submit(rig, In, 8, null, out var r4, out var s4));
        rig.Driver.Notify(0);
        var order = new List<uint>();
        for (int i = 0; i < heads.Count; i++)
        {
            order.Add(rig.Queue.WaitUsed().Id);
        }

        Assert.Equal(heads, order);
        Assert.All(new[] { s0, s1, s2, s3, s4 }, s => Assert.Equal(0, rig.Memory.Read<byte>(s)));
        Assert.Equal(w0, Read(rig, r1));
        Assert.Equal(original, Read(rig, r2));
        Assert.Equal(w0, Read(rig, r4));
        Assert.Equal(w3, backend.Bytes.AsSpan(80 * Block, Block).ToArray());
        Assert.Equal(["write 4096", "read 4096", "read 262144"], backend.NoWaitAttempts);
        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task A_direction_the_file_refuses_goes_to_the_worker_and_stops_the_inline_batch_there()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        // As ext4 does for buffered writes: RWF_NOWAIT writes are refused, reads are not. The image's inline writes are
        // backed off (a slow one was just seen), so the refused write is not served inline as a plain write either.
        await using var backend = new ScriptedBackend(1 << 20) { RefuseWrites = true };
        using var rig = new BlockRig(backend);
        var clock = new ManualClock();
        rig.Device.InlineWrites = new InlineWritePolicy(clock);
        rig.Device.InlineWrites.Record(clock.GetTimestamp() - (2 * rig.Device.InlineWrites.SlowTicks));
        Assert.False(rig.Device.InlineWrites.TryStart(out _));
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        var w1 = Fill(11);
        var stored = Fill(12);
        stored.CopyTo(backend.Bytes, 2 * Block);
        var heads = new List<uint>
        {
            Submit(rig, In, 0, null, out _, out _),
            Submit(rig, Out, 8, w1, out _, out _),
            Submit(rig, In, 16, null, out var r2, out _),
        };
        rig.Driver.Notify(0);
        var order = new List<uint>();
        for (int i = 0; i < heads.Count; i++)
        {
            order.Add(rig.Queue.WaitUsed().Id);
        }

        Assert.Equal(heads, order);
        Assert.Equal(w1, backend.Bytes.AsSpan(Block, Block).ToArray());
        Assert.Equal(stored, Read(rig, r2));

        // The refused write was never tried without waiting, and the read after it went to the worker with it.
        Assert.Equal(["read 0"], backend.NoWaitAttempts);
        Assert.False(rig.NeedsReset);
    }

    /// <summary>A device on a backend whose file refuses no-wait writes, with an inline-write policy on a manual clock, idle.</summary>
    private static (ScriptedBackend Backend, BlockRig Rig, ManualClock Clock, InlineWritePolicy Policy) RigRefusingNoWaitWrites()
    {
        var backend = new ScriptedBackend(1 << 20) { RefuseWrites = true };
        var rig = new BlockRig(backend);
        var clock = new ManualClock();
        var policy = new InlineWritePolicy(clock);
        rig.Device.InlineWrites = policy;
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        return (backend, rig, clock, policy);
    }

    /// <summary>A write to sector 8 that takes no clock time: served on the notifying thread (used before Notify returns), with status OK, and in the file.</summary>
    private static void AssertFastWriteServedInline(BlockRig rig, ScriptedBackend backend, int seed)
    {
        var data = Fill(seed);
        Submit(rig, Out, 8, data, out _, out var status);
        rig.Driver.Notify(0);
        Assert.True(rig.Queue.TryTakeUsed(out _));
        Assert.Equal(0, rig.Memory.Read<byte>(status));
        Assert.Equal(data, backend.Bytes.AsSpan(Block, Block).ToArray());
    }

    /// <summary>A write to sector 16 during which the clock moves past the slow limit: still completed inline, and counted as the policy's first slow write.</summary>
    private static void SlowInlineWrite(BlockRig rig, ScriptedBackend backend, ManualClock clock, InlineWritePolicy policy, int seed)
    {
        backend.DuringInPlaceWrite = () => clock.Advance(policy.SlowTicks + 1);
        Submit(rig, Out, 16, Fill(seed), out _, out _);
        rig.Driver.Notify(0);
        Assert.True(rig.Queue.TryTakeUsed(out _));
        Assert.Equal(1, policy.SlowWrites);
    }

    [Fact]
    public async Task A_write_the_file_refuses_without_waiting_is_served_inline_while_writes_stay_fast()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        var (refusing, idle, clock, policy) = RigRefusingNoWaitWrites();
        await using var backend = refusing;
        using var rig = idle;

        // Fast writes (the clock does not move) are served on the notifying thread: used before Notify returns.
        AssertFastWriteServedInline(rig, backend, 21);

        // A slow one (the clock moves past the limit during the write) is still completed inline, and sends the
        // image's writes to the worker for the back-off: the next write is served there, with no inline attempt.
        SlowInlineWrite(rig, backend, clock, policy, 22);
        backend.DuringInPlaceWrite = null;
        var w2 = Fill(23);
        Submit(rig, Out, 24, w2, out _, out var s2);
        rig.Driver.Notify(0);
        rig.Queue.WaitUsed();
        Assert.Equal(0, rig.Memory.Read<byte>(s2));
        Assert.Equal(w2, backend.Bytes.AsSpan(3 * Block, Block).ToArray());
        Assert.Equal(["in place 4096", "in place 8192"], backend.NoWaitAttempts);

        // After the back-off, writes are tried inline again.
        clock.Advance(policy.FirstBackoffTicks);
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        Submit(rig, Out, 32, Fill(24), out _, out _);
        rig.Driver.Notify(0);
        Assert.True(rig.Queue.TryTakeUsed(out _));
        Assert.Equal(["in place 4096", "in place 8192", "in place 16384"], backend.NoWaitAttempts);
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public async Task A_write_served_inline_reads_the_clock_twice_its_backoff_check_starting_its_timing()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        // A clock read is a sizeable part of a 4 KiB inline write beside its page-cache copy: the read that checks the
        // back-off is also the write's start, and the one after the write its end.
        var (refusing, idle, clock, policy) = RigRefusingNoWaitWrites();
        await using var backend = refusing;
        using var rig = idle;
        long before = clock.Reads;
        AssertFastWriteServedInline(rig, backend, 25);
        Assert.Equal(2, clock.Reads - before);

        // The start is the back-off check's reading: time that passes from there to the end of the write counts.
        SlowInlineWrite(rig, backend, clock, policy, 26);
        Assert.False(policy.TryStart(out long now));
        Assert.Equal(clock.GetTimestamp(), now);
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public void A_slow_write_doubles_the_backoff_up_to_the_limit_and_a_fast_one_resets_it()
    {
        var clock = new ManualClock();
        var policy = new InlineWritePolicy(clock);
        long slow = policy.SlowTicks + 1;
        long expected = policy.FirstBackoffTicks;
        for (int i = 0; i < 10; i++)
        {
            long start = clock.GetTimestamp();
            clock.Advance(slow);
            policy.Record(start);
            Assert.False(policy.TryStart(out _));
            clock.Advance(expected - 1);
            Assert.False(policy.TryStart(out _));
            clock.Advance(1);
            Assert.True(policy.TryStart(out _));
            expected = Math.Min(expected * 2, policy.MaxBackoffTicks);
        }

        Assert.Equal(policy.MaxBackoffTicks, expected);
        policy.Record(clock.GetTimestamp());
        long begin = clock.GetTimestamp();
        clock.Advance(slow);
        policy.Record(begin);
        clock.Advance(policy.FirstBackoffTicks);
        Assert.True(policy.TryStart(out _));
        Assert.Equal(11, policy.SlowWrites);
    }

    [Fact]
    public async Task A_write_served_inline_on_a_disk_file_system_is_in_the_file_after_a_flush()
    {
        using var dir = new TempDir();
        string path = dir.File("disk.raw");
        DiskImage.CreateRaw(path, 1 << 20);
        var data = Fill(31);
        await using (var backend = DiskImage.Open(path))
        {
            using var rig = new BlockRig(backend);
            Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
            Submit(rig, Out, 40, data, out _, out var status);
            rig.Driver.Notify(0);
            rig.Queue.WaitUsed();
            Assert.Equal(0, rig.Memory.Read<byte>(status));
            Assert.Equal((byte)0, rig.Request(4, 0).Status); // FLUSH: fdatasync
            Assert.False(rig.NeedsReset);
        }

        using var file = File.OpenHandle(path);
        var back = new byte[Block];
        RandomAccess.Read(file, back, 40 * 512);
        Assert.Equal(data, back);
    }

    /// <summary>A clock that moves only when told.</summary>
    private sealed class ManualClock : TimeProvider
    {
        private long _now = 1_000_000_000;

        public override long TimestampFrequency => 1_000_000_000;

        private long _reads;

        /// <summary>How often the clock was read.</summary>
        public long Reads => Interlocked.Read(ref _reads);

        public override long GetTimestamp()
        {
            Interlocked.Increment(ref _reads);
            return Volatile.Read(ref _now);
        }

        public void Advance(long ticks) => Interlocked.Add(ref _now, ticks);
    }

    private static byte[] Fill(int seed)
    {
        var data = new byte[Block];
        new Random(seed).NextBytes(data);
        return data;
    }

    private static byte[] Read(BlockRig rig, GuestAddress at) => ReadSized(rig, at, Block);

    private static uint Submit(BlockRig rig, uint type, ulong sector, byte[]? write, out GuestAddress data, out GuestAddress status) =>
        SubmitSized(rig, type, sector, Block, write, out data, out status);

    /// <summary>
    /// A disk in a byte array that plays an image on a disk file system: no-wait transfers succeed except for a read of
    /// the block at <see cref="WouldBlockAt"/> (as if it were not in the page cache) and, with
    /// <see cref="RefuseWrites"/>, writes (as ext4 refuses RWF_NOWAIT for buffered writes).
    /// </summary>
    private sealed class ScriptedBackend(int size) : IBlockBackend, IVectoredBlockBackend
    {
        private readonly Lock _sync = new();

        public byte[] Bytes { get; } = new byte[size];

        public long WouldBlockAt { get; init; } = -1;

        public bool RefuseWrites { get; init; }

        public List<string> NoWaitAttempts { get; } = [];

        public long Capacity => Bytes.Length;

        public bool IsReadOnly => false;

        public bool IsInMemory => false;

        public bool MayTransferWithoutWaiting(bool write) => !(write && RefuseWrites);

        /// <summary>Runs inside every in-place write (a test's clock moves there, as if the write took that long).</summary>
        public Action? DuringInPlaceWrite { get; set; }

        public bool TryWriteInPlace(long offset, ReadOnlySpan<HostBuffer> buffers)
        {
            lock (_sync)
            {
                NoWaitAttempts.Add($"in place {offset}");
            }

            DuringInPlaceWrite?.Invoke();
            WriteVector(offset, buffers);
            return true;
        }

        // No file behind it: a batch never forms, every request takes the single path.
        public bool MayMapToFile(bool write) => false;

        public bool TryEnterFileMapping() => false;

        public void ExitFileMapping()
        {
        }

        public bool TryMapToFile(long offset, long length, bool write, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Microsoft.Win32.SafeHandles.SafeFileHandle? file, out long fileOffset)
        {
            file = null;
            fileOffset = 0;
            return false;
        }

        public bool TryVectorNoWait(long offset, ReadOnlySpan<HostBuffer> buffers, bool write)
        {
            lock (_sync)
            {
                NoWaitAttempts.Add($"{(write ? "write" : "read")} {offset}");
            }

            if (!write && offset == WouldBlockAt)
            {
                foreach (var b in buffers)
                {
                    b.Span[..(b.Length / 2)].Fill(0xee);
                }

                return false;
            }

            if (write)
            {
                WriteVector(offset, buffers);
            }
            else
            {
                ReadVector(offset, buffers);
            }

            return true;
        }

        public void ReadVector(long offset, ReadOnlySpan<HostBuffer> buffers)
        {
            lock (_sync)
            {
                foreach (var b in buffers)
                {
                    Bytes.AsSpan((int)offset, b.Length).CopyTo(b.Span);
                    offset += b.Length;
                }
            }
        }

        public void WriteVector(long offset, ReadOnlySpan<HostBuffer> buffers)
        {
            lock (_sync)
            {
                foreach (var b in buffers)
                {
                    b.Span.CopyTo(Bytes.AsSpan((int)offset));
                    offset += b.Length;
                }
            }
        }

        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            lock (_sync)
            {
                Bytes.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
            }

            return ValueTask.CompletedTask;
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            lock (_sync)
            {
                buffer.Span.CopyTo(Bytes.AsSpan((int)offset));
            }

            return ValueTask.CompletedTask;
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

        public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) => WriteZeroesAsync(offset, length, cancellationToken);

        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            lock (_sync)
            {
                Bytes.AsSpan((int)offset, (int)length).Clear();
            }

            return ValueTask.CompletedTask;
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
