using System.Buffers.Binary;
using Virt.Memory;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// Requests served on the notifying thread are taken from the queue in one step and completed in one step: every used
/// entry in order, one interrupt, and no allocation per request.
/// </summary>
public sealed class BlockInlineBatchTests
{
    private const int Block = 4096;

    /// <summary>A device that serves every request inline, once its start-up is over (the worker idle).</summary>
    private static BlockRig IdleInlineRig(IBlockBackend backend, ushort queueSize = 64)
    {
        var rig = new BlockRig(backend, new VirtioBlockOptions { Inline = VirtioBlockInline.Always }, queueSize: queueSize);
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        return rig;
    }

    [Fact]
    public async Task A_batch_served_inline_gives_every_used_entry_in_order_and_one_interrupt()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.raw");
        await using var backend = DiskImage.Open(path);
        using var rig = IdleInlineRig(backend);

        var heads = new List<uint>();
        var statuses = new List<GuestAddress>();
        for (int i = 0; i < 8; i++)
        {
            var data = new byte[Block];
            data.AsSpan().Fill((byte)(i + 1));
            heads.Add(Submit(rig, 1, (ulong)(i * 8), data, out var status));
            statuses.Add(status);
        }

        int interrupts = rig.Irq.RaiseCount;
        rig.Driver.Notify(0);

        // Served before the notification returned: all eight used entries are there, in the order made available.
        for (int i = 0; i < heads.Count; i++)
        {
            Assert.True(rig.Queue.TryTakeUsed(out var used), $"request {i} was not completed inline");
            Assert.Equal(heads[i], used.Id);
            Assert.Equal(1u, used.Length);
            Assert.Equal(0, rig.Memory.Read<byte>(statuses[i]));
        }

        Assert.Equal(interrupts + 1, rig.Irq.RaiseCount);
        var back = new byte[Block];
        for (int i = 0; i < 8; i++)
        {
            await backend.ReadAsync(i * Block, back, TestContext.Current.CancellationToken);
            Assert.All(back, b => Assert.Equal((byte)(i + 1), b));
        }

        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);
    }

    [Fact]
    public async Task A_full_batch_of_the_inline_limit_is_served_without_waking_the_worker()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.raw");
        await using var backend = DiskImage.Open(path);
        using var rig = IdleInlineRig(backend, queueSize: 256);
        var heads = new List<uint>();
        for (int i = 0; i < VirtioBlockDevice.InlineMaxRequests; i++)
        {
            heads.Add(Submit(rig, 0, (ulong)(i * 8), new byte[Block], out _));
        }

        rig.Driver.Notify(0);

        // Exactly the limit: every request served inline, and the worker, with nothing left for it, not scheduled.
        Assert.False(rig.Device.IsBusy);
        for (int i = 0; i < heads.Count; i++)
        {
            Assert.True(rig.Queue.TryTakeUsed(out var used), $"request {i} was not completed inline");
            Assert.Equal(heads[i], used.Id);
        }

        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public async Task Requests_served_inline_allocate_nothing_per_request()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.raw");
        await using var backend = DiskImage.Open(path);
        using var rig = IdleInlineRig(backend);
        var data = new byte[Block];
        rig.Driver.ResetAllocations();
        var header = rig.Driver.Allocate(16);
        var buffer = rig.Driver.Allocate(Block);
        var status = rig.Driver.Allocate(1);
        rig.Memory.Write(buffer, data);

        long allocated = 0;
        const int Requests = 400;
        for (int i = 0; i < Requests + 100; i++)
        {
            uint type = (uint)(i & 1);
            var h = new byte[16];
            BinaryPrimitives.WriteUInt32LittleEndian(h, type);
            BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), (ulong)(i % 64) * 8);
            rig.Memory.Write(header, h);
            rig.Queue.AddChain((header, 16, false), (buffer, Block, type == 0), (status, 1, true));
            long before = GC.GetAllocatedBytesForCurrentThread();
            rig.Driver.Notify(0);
            long after = GC.GetAllocatedBytesForCurrentThread();
            Assert.True(rig.Queue.TryTakeUsed(out _), $"request {i} was not completed inline");
            if (i >= 100)
            {
                // The first hundred warm up (the queue's reusable chain objects are made on the first notification).
                allocated += after - before;
            }
        }

        // A chain object per request alone would be over a hundred bytes each.
        Assert.True(allocated < Requests * 16L, $"{allocated} bytes allocated for {Requests} requests");
        Assert.False(rig.NeedsReset);
    }

    private static uint Submit(BlockRig rig, uint type, ulong sector, byte[] data, out GuestAddress status)
    {
        var header = rig.Driver.Allocate(16);
        var buffer = rig.Driver.Allocate(Block);
        status = rig.Driver.Allocate(1);
        var h = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), sector);
        rig.Memory.Write(header, h);
        rig.Memory.Write(buffer, data);
        rig.Memory.Write(status, (byte)0xff);
        return rig.Queue.AddChain((header, 16, false), (buffer, Block, type == 0), (status, 1, true));
    }
}
