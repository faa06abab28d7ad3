using Microsoft.Win32.SafeHandles;
using Virt.Memory;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// Several page-cache hits of one notification go to the kernel as one io_uring batch; a miss in the batch (EAGAIN)
/// sends it and everything after it to the worker as a failed preadv2(RWF_NOWAIT) does, and a host without io_uring
/// serves each request with its own call.
/// </summary>
public sealed partial class BlockNoWaitTests
{
    private const int BatchDepth = 8;
    private const int PosixFadvRandom = 1;

    /// <summary>Blocks of the batch tests: 2 MiB apart, so the host's read-ahead around one never reaches another.</summary>
    private static long BlockAt(int i) => (i * 2L * MiB) + (i * Block);

    public static TheoryData<string, string> FormatsAndDirectories()
    {
        var data = new TheoryData<string, string>();
        foreach (string where in Directories())
        {
            data.Add("raw", where);
            data.Add("qcow2", where);
        }

        return data;
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "open", StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int OpenReadOnly(string path, int flags = 0);

    /// <summary>Whether this host lets the process create an io_uring (seccomp and io_uring_disabled may forbid it).</summary>
    private static bool RingAvailable()
    {
        using var ring = IoUring.TryCreate(4, out _);
        return ring is not null;
    }

    /// <summary>Skips the test, saying why, where the device cannot batch: not Linux, an in-memory image, or no io_uring on this host.</summary>
    private static void SkipUnlessBatching(IBlockBackend backend)
    {
        if (!OperatingSystem.IsLinux() || ((IVectoredBlockBackend)backend).IsInMemory)
        {
            Assert.Skip("Batches through io_uring need Linux and an image in a file.");
        }

        if (!RingAvailable())
        {
            Assert.Skip("This host offers no io_uring (io_uring_setup failed: seccomp, io_uring_disabled or a kernel before 5.18).");
        }
    }

    /// <summary>A raw or qcow2 image of 32 MiB in <paramref name="dir"/> whose <see cref="BatchDepth"/> test blocks hold <see cref="Fill"/>(100 + i), written through the backend (qcow2: allocated data clusters).</summary>
    private static async Task<(IBlockBackend Backend, byte[][] Blocks)> BatchImageAsync(TempDir dir, string format)
    {
        string path = dir.File("disk." + format);
        if (format == "raw")
        {
            DiskImage.CreateRaw(path, 32 * MiB);
        }
        else
        {
            DiskImage.Create(path, 32 * MiB, DiskFormat.Qcow2);
        }

        var backend = DiskImage.Open(path);
        var blocks = new byte[BatchDepth][];
        for (int i = 0; i < BatchDepth; i++)
        {
            blocks[i] = Fill(100 + i);
            await backend.WriteAsync(BlockAt(i), blocks[i], Ct);
        }

        return (backend, blocks);
    }

    /// <summary>Notifies the queue once and waits for a used entry per chain: they come back in <paramref name="heads"/>' order.</summary>
    private static void NotifyAndExpectUsedInOrder(BlockRig rig, List<uint> heads)
    {
        rig.Driver.Notify(0);
        var order = new List<uint>();
        for (int i = 0; i < heads.Count; i++)
        {
            order.Add(rig.Queue.WaitUsed().Id);
        }

        Assert.Equal(heads, order);
    }

    /// <summary>Makes the batch's reads available in one notification, waits for every used entry and checks order, status and data.</summary>
    private static void ReadBatch(BlockRig rig, byte[][] blocks, byte[]? expectedStatuses = null)
    {
        rig.Driver.ResetAllocations();
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        var heads = new List<uint>();
        var data = new GuestAddress[BatchDepth];
        var statuses = new GuestAddress[BatchDepth];
        for (int i = 0; i < BatchDepth; i++)
        {
            heads.Add(Submit(rig, In, (ulong)(BlockAt(i) / 512), null, out data[i], out statuses[i]));
        }

        NotifyAndExpectUsedInOrder(rig, heads);
        for (int i = 0; i < BatchDepth; i++)
        {
            Assert.Equal(expectedStatuses?[i] ?? 0, rig.Memory.Read<byte>(statuses[i]));
            if ((expectedStatuses?[i] ?? 0) == 0)
            {
                Assert.Equal(blocks[i], Read(rig, data[i]));
            }
        }
    }

    /// <summary>One read of block 0 alone, served inline with preadv2(RWF_NOWAIT) (the worker idle first), which confirms RWF_NOWAIT reads on the file.</summary>
    private static void ConfirmNoWaitReads(BlockRig rig)
    {
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        Assert.Equal(0, rig.Request(In, (ulong)(BlockAt(0) / 512), readLength: Block).Status);
        Assert.Equal((1L, 0L), (rig.Device.InlineCounts.Served, rig.Device.InlineCounts.LeftToWorker));
    }

    [Theory]
    [MemberData(nameof(FormatsAndDirectories))]
    public async Task A_depth_8_notification_of_page_cache_reads_is_served_in_one_batch_byte_for_byte(string format, string where)
    {
        using var dir = new TempDir(where == "temp" ? null : where);
        var (backend, blocks) = await BatchImageAsync(dir, format);
        await using var _ = backend;
        var vectored = (IVectoredBlockBackend)backend;
        using var rig = new BlockRig(backend);
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        // On tmpfs too, as if the image were on a disk file system (Automatic copies through a mapping there).
        rig.Device.ServeInlineOnlyFromCache();

        // The first notification's first read is tried alone with preadv2(RWF_NOWAIT): where the file takes it, the
        // seven after it are one ring batch, and the whole second notification is one more.
        ReadBatch(rig, blocks);
        ReadBatch(rig, blocks);
        var (batches, batched) = rig.Device.RingCounts;
        if (RingAvailable() && vectored.MayTransferWithoutWaiting(write: false))
        {
            Assert.StartsWith("io_uring", rig.Device.InlineBatchPath, StringComparison.Ordinal);
            Assert.Equal((2L, 15L), (batches, batched));
            Assert.Equal((16L, 0L), (rig.Device.InlineCounts.Served, rig.Device.InlineCounts.LeftToWorker));
        }
        else
        {
            // tmpfs refuses RWF_NOWAIT for reads (Linux 6.x): the first read finds out, the worker serves everything and
            // the ring never gets an entry for this file.
            Assert.Equal(0L, batched);
        }

        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Theory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    public async Task A_batch_entry_that_would_wait_goes_to_the_worker_with_every_entry_after_it_in_order(string format)
    {
        using var dir = new TempDir();
        var (backend, blocks) = await BatchImageAsync(dir, format);
        await using var _ = backend;
        SkipUnlessBatching(backend);

        using var rig = new BlockRig(backend);
        Assert.True(rig.Device.ServesInlineOnlyFromCache);

        // One read alone confirms RWF_NOWAIT on the file; then the ring reports EAGAIN for the fifth read of the batch,
        // as for data not in the page cache.
        ConfirmNoWaitReads(rig);
        rig.Device.RingReportsWouldBlock = offset => offset == BlockAt(4);
        ReadBatch(rig, blocks);
        Assert.Equal((1L, 4L), rig.Device.RingCounts);
        Assert.Equal((5L, 1L), (rig.Device.InlineCounts.Served, rig.Device.InlineCounts.LeftToWorker));
        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task A_batch_read_of_data_not_in_the_page_cache_gets_EAGAIN_and_the_worker_reads_it()
    {
        using var dir = new TempDir();
        var (backend, blocks) = await BatchImageAsync(dir, "raw");
        await using var _ = backend;
        var raw = (RawFileBlockBackend)backend;
        SkipUnlessBatching(backend);

        using var rig = new BlockRig(backend);
        await backend.FlushAsync(Ct);

        // Clean on disk: drop the whole image from the page cache, then bring back every block but the fifth through a
        // handle without read-ahead, so only that one must wait for the disk.
        Assert.Equal(0, FileAdvise(raw.Handle, 0, 0, PosixFadvDontNeed));
        // (open(2) directly: .NET's own open would take a shared flock, which the image's exclusive lock refuses.)
        using (var warm = new SafeFileHandle(OpenReadOnly(raw.Path), ownsHandle: true))
        {
            Assert.False(warm.IsInvalid);
            Assert.Equal(0, FileAdvise(warm, 0, 0, PosixFadvRandom));
            var scratch = new byte[Block];
            for (int i = 0; i < BatchDepth; i++)
            {
                if (i != 4)
                {
                    RandomAccess.Read(warm, scratch, BlockAt(i));
                }
            }
        }

        // The first read alone confirms RWF_NOWAIT (block 0 is cached); then blocks 0 to 3 come from the ring, block 4
        // gets EAGAIN, and the worker serves it and the three after it.
        ConfirmNoWaitReads(rig);
        ReadBatch(rig, blocks);
        Assert.Equal((1L, 4L), rig.Device.RingCounts);
        Assert.Equal((5L, 1L), (rig.Device.InlineCounts.Served, rig.Device.InlineCounts.LeftToWorker));
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public async Task Without_io_uring_every_request_of_a_batch_is_served_with_its_own_call()
    {
        using var dir = new TempDir();
        var (backend, blocks) = await BatchImageAsync(dir, "raw");
        await using var _ = backend;
        if (!OperatingSystem.IsLinux() || ((IVectoredBlockBackend)backend).IsInMemory)
        {
            Assert.Skip("The single-call fallback of batches needs Linux and an image in a file.");
        }

        using var rig = new BlockRig(backend);
        int setups = 0;
        rig.Device.RingSetup = _ =>
        {
            Interlocked.Increment(ref setups);
            return (null, "io_uring_setup failed: Operation not permitted (errno 1)");
        };

        ReadBatch(rig, blocks);
        ReadBatch(rig, blocks);
        Assert.Equal("preadv2 per request (io_uring_setup failed: Operation not permitted (errno 1))", rig.Device.InlineBatchPath);
        Assert.Equal(1, setups);
        Assert.Equal((0L, 0L), rig.Device.RingCounts);
        bool noWaitReads = ((IVectoredBlockBackend)backend).MayTransferWithoutWaiting(write: false);
        Assert.Equal(noWaitReads ? (16L, 0L) : (0L, 2L), (rig.Device.InlineCounts.Served, rig.Device.InlineCounts.LeftToWorker));
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public async Task A_batch_reads_only_into_buffers_the_driver_made_device_writable()
    {
        using var dir = new TempDir();
        var (backend, blocks) = await BatchImageAsync(dir, "raw");
        await using var _ = backend;
        SkipUnlessBatching(backend);

        using var rig = new BlockRig(backend);
        ConfirmNoWaitReads(rig);
        rig.Driver.ResetAllocations();

        // The fourth read's chain carries a device-readable buffer before its writable one: the data goes into the
        // writable one only, as on the single path, and the readable one (guest memory the device must not write)
        // keeps its bytes.
        var heads = new List<uint>();
        var data = new GuestAddress[BatchDepth];
        var statuses = new GuestAddress[BatchDepth];
        var readOnly = rig.Driver.Allocate(Block);
        var guard = new byte[Block];
        guard.AsSpan().Fill(0x5a);
        rig.Memory.Write(readOnly, guard);
        for (int i = 0; i < BatchDepth; i++)
        {
            if (i == 3)
            {
                var header = rig.Driver.Allocate(16);
                data[i] = rig.Driver.Allocate(Block);
                statuses[i] = rig.Driver.Allocate(1);
                var h = new byte[16];
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), (ulong)(BlockAt(i) / 512));
                rig.Memory.Write(header, h);
                rig.Memory.Write(statuses[i], (byte)0xff);
                heads.Add(rig.Queue.AddChain((header, 16, false), (readOnly, Block, false), (data[i], Block, true), (statuses[i], 1, true)));
                continue;
            }

            heads.Add(Submit(rig, In, (ulong)(BlockAt(i) / 512), null, out data[i], out statuses[i]));
        }

        NotifyAndExpectUsedInOrder(rig, heads);
        for (int i = 0; i < BatchDepth; i++)
        {
            Assert.Equal(0, rig.Memory.Read<byte>(statuses[i]));
            Assert.Equal(blocks[i], Read(rig, data[i]));
        }

        Assert.Equal(guard, Read(rig, readOnly));
        Assert.Equal((1L, 8L), rig.Device.RingCounts);
        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task After_a_reset_the_next_activation_batches_through_a_new_ring()
    {
        using var dir = new TempDir();
        var (backend, blocks) = await BatchImageAsync(dir, "raw");
        await using var _ = backend;
        SkipUnlessBatching(backend);

        using var rig = new BlockRig(backend);
        ConfirmNoWaitReads(rig);
        ReadBatch(rig, blocks);
        Assert.Equal((1L, 8L), rig.Device.RingCounts);

        // The driver resets the device and sets it up again: the first notification of the new activation drops the
        // old queue's ring and the batch goes through a new one.
        rig.Driver.WriteRegister(0x70, 0);
        rig.Driver.Initialize(ulong.MaxValue, 64);
        ReadBatch(rig, blocks);
        Assert.Equal((2L, 16L), rig.Device.RingCounts);
        Assert.False(rig.NeedsReset);
    }
}
