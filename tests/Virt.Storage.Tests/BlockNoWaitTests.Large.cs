using System.Buffers.Binary;
using Virt.Memory;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// Large requests on the notifying thread: a read or write of up to the per-notification budget (1 MiB) is served there
/// when the host can do it without waiting; a request that does not fit in what is left of the budget goes to the
/// worker with everything after it, in order.
/// </summary>
public sealed partial class BlockNoWaitTests
{
    private const int MiB = 1 << 20;

    [Fact]
    public async Task A_request_of_the_whole_budget_is_served_inline_and_one_that_does_not_fit_what_is_left_goes_to_the_worker()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        await using var backend = new ScriptedBackend(4 * MiB);
        new Random(31).NextBytes(backend.Bytes);
        using var rig = new BlockRig(backend);
        Assert.True(rig.Device.ServesInlineOnlyFromCache);
        Assert.Equal(VirtioBlockDevice.InlineMaxBytesPerNotification, MiB);
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));

        // A 1 MiB write and a 1 MiB read, each alone in its notification: both used before Notify returns.
        var written = new byte[MiB];
        new Random(32).NextBytes(written);
        SubmitSized(rig, Out, 0, MiB, written, out _, out var ws);
        rig.Driver.Notify(0);
        Assert.True(rig.Queue.TryTakeUsed(out _));
        Assert.Equal(0, rig.Memory.Read<byte>(ws));
        Assert.Equal(written, backend.Bytes.AsSpan(0, MiB).ToArray());
        SubmitSized(rig, In, 2 * MiB / 512, MiB, null, out var r0, out var rs0);
        rig.Driver.Notify(0);
        Assert.True(rig.Queue.TryTakeUsed(out var used));
        Assert.Equal((uint)MiB + 1, used.Length);
        Assert.Equal(0, rig.Memory.Read<byte>(rs0));
        Assert.Equal(backend.Bytes.AsSpan(2 * MiB, MiB).ToArray(), ReadSized(rig, r0, MiB));
        Assert.Equal((2L, 0L), (rig.Device.InlineCounts.Served, rig.Device.InlineCounts.LeftToWorker));

        // A 4 KiB read and a 1 MiB read in one notification: the 1 MiB no longer fits what the first left of the budget,
        // so it goes to the worker (never tried without waiting) and completes after the first.
        rig.Driver.ResetAllocations();
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        var heads = new List<uint>
        {
            SubmitSized(rig, In, 8, Block, null, out var small, out var ss),
            SubmitSized(rig, In, MiB / 512, MiB, null, out var large, out var ls),
        };
        rig.Driver.Notify(0);
        var order = new List<uint> { rig.Queue.WaitUsed().Id, rig.Queue.WaitUsed().Id };
        Assert.Equal(heads, order);
        Assert.Equal(0, rig.Memory.Read<byte>(ss));
        Assert.Equal(0, rig.Memory.Read<byte>(ls));
        Assert.Equal(backend.Bytes.AsSpan(Block, Block).ToArray(), ReadSized(rig, small, Block));
        Assert.Equal(backend.Bytes.AsSpan(MiB, MiB).ToArray(), ReadSized(rig, large, MiB));
        Assert.Equal([$"write 0", $"read {2 * MiB}", $"read {Block}"], backend.NoWaitAttempts);
        Assert.Equal((3L, 1L), (rig.Device.InlineCounts.Served, rig.Device.InlineCounts.LeftToWorker));

        // One past the budget is never served inline, even alone.
        rig.Driver.ResetAllocations();
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        SubmitSized(rig, In, 0, MiB + 512, null, out var over, out var os);
        rig.Driver.Notify(0);
        rig.Queue.WaitUsed();
        Assert.Equal(0, rig.Memory.Read<byte>(os));
        Assert.Equal(backend.Bytes.AsSpan(0, MiB + 512).ToArray(), ReadSized(rig, over, MiB + 512));
        Assert.Equal(3, backend.NoWaitAttempts.Count);
        Assert.Equal(3L, rig.Device.InlineCounts.Served);
        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task A_1_MiB_page_cache_read_of_an_image_on_disk_is_served_inline_where_the_file_system_takes_no_wait_reads()
    {
        using var dir = new TempDir();
        string path = dir.File("large.raw");
        DiskImage.CreateRaw(path, 4 * MiB);
        await using var backend = DiskImage.Open(path);
        var vectored = (IVectoredBlockBackend)backend;
        using var rig = new BlockRig(backend);
        var data = new byte[MiB];
        new Random(33).NextBytes(data);
        Assert.Equal(0, rig.Request(Out, MiB / 512, writeData: data).Status);

        // Just written, so in the page cache (or in host memory on tmpfs): served before the notification returns on
        // Linux when the file system takes RWF_NOWAIT reads (ext4, xfs, btrfs) or the image is in host memory.
        rig.Driver.ResetAllocations();
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        long servedBefore = rig.Device.InlineCounts.Served;
        SubmitSized(rig, In, MiB / 512, MiB, null, out var readAt, out var status);
        rig.Driver.Notify(0);
        bool inline = rig.Queue.TryTakeUsed(out _);
        if (!inline)
        {
            rig.Queue.WaitUsed();
        }

        Assert.Equal(0, rig.Memory.Read<byte>(status));
        Assert.Equal(data, ReadSized(rig, readAt, MiB));
        bool expected = OperatingSystem.IsLinux() && (vectored.IsInMemory || vectored.MayTransferWithoutWaiting(write: false));
        Assert.Equal(expected, inline);
        Assert.Equal(inline ? servedBefore + 1 : servedBefore, rig.Device.InlineCounts.Served);
        Assert.False(rig.NeedsReset);
    }

    private static byte[] ReadSized(BlockRig rig, GuestAddress at, int length)
    {
        var back = new byte[length];
        rig.Memory.Read(at, back);
        return back;
    }

    private static uint SubmitSized(BlockRig rig, uint type, ulong sector, int length, byte[]? write, out GuestAddress data, out GuestAddress status)
    {
        var header = rig.Driver.Allocate(16);
        data = rig.Driver.Allocate((uint)length);
        status = rig.Driver.Allocate(1);
        var h = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), sector);
        rig.Memory.Write(header, h);
        rig.Memory.Write(status, (byte)0xff);
        rig.Memory.Write(data, write ?? new byte[length]);
        return rig.Queue.AddChain((header, 16, false), (data, (uint)length, type == In), (status, 1, true));
    }
}
