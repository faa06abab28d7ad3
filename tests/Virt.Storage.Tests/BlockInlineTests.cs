using System.Buffers.Binary;
using Virt.Memory;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// Reads and writes served on the notifying thread (<see cref="VirtioBlockOptions.Inline"/>) against the same
/// requests served by the queue's worker: same bytes, same statuses, same completion order, and a FLUSH after an
/// inline write makes it durable.
/// </summary>
public sealed class BlockInlineTests
{
    private const uint In = 0, Out = 1, Flush = 4, GetId = 8, Unknown = 99;
    private const long Size = 4 << 20;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string, VirtioBlockInline> Cases() => new()
    {
        { "raw", VirtioBlockInline.Always },
        { "raw", VirtioBlockInline.Never },
        { "qcow2", VirtioBlockInline.Always },
        { "qcow2", VirtioBlockInline.Never },
    };

    public static TheoryData<string> Formats() => new() { "raw", "qcow2" };

    private static IBlockBackend Open(TempDir dir, string format)
    {
        string path = dir.File("disk." + format);
        DiskImage.Create(path, Size, format == "raw" ? DiskFormat.Raw : DiskFormat.Qcow2, clusterSize: 4096);
        return DiskImage.Open(path);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Random_reads_and_writes_return_the_same_bytes_and_statuses_inline_and_on_the_worker(string format, VirtioBlockInline mode)
    {
        using var dir = new TempDir();
        await using var backend = Open(dir, format);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { Inline = mode });
        Assert.Equal(mode == VirtioBlockInline.Always, rig.Device.ServesInline);
        var model = new byte[Size];
        var random = new Random(11);
        for (int i = 0; i < 300; i++)
        {
            int length = random.Next(1, 65) * 512;
            long sector = random.Next((int)(Size / 512) - 64);
            if (random.Next(2) == 0)
            {
                var data = new byte[length];
                random.NextBytes(data);
                Assert.Equal((0, 1u), rig.Request(Out, (ulong)sector, writeData: data));
                data.CopyTo(model, sector * 512);
            }
            else
            {
                var back = new byte[length];
                Assert.Equal((0, (uint)length + 1), rig.Request(In, (ulong)sector, readLength: length, readInto: back));
                Assert.Equal(model.AsSpan((int)(sector * 512), length).ToArray(), back);
            }
        }

        // Requests the device refuses answer the same way on both paths.
        ulong last = (ulong)(Size / 512);
        Assert.Equal(1, rig.Request(In, last, readLength: 512).Status);
        Assert.Equal(1, rig.Request(Out, last - 1, writeData: new byte[1024]).Status);
        Assert.Equal(1, rig.Request(In, 0, readLength: 100).Status);
        Assert.Equal(1, rig.Request(Out, 0, writeData: new byte[700]).Status);
        Assert.Equal(2, rig.Request(Unknown, 0).Status);
        Assert.Equal(0, rig.Request(Flush, 0).Status);
        var id = new byte[20];
        Assert.Equal(0, rig.Request(GetId, 0, readLength: 20, readInto: id).Status);
        Assert.Equal("virt-disk", System.Text.Encoding.ASCII.GetString(id).TrimEnd('\0'));
        Assert.False(rig.NeedsReset);
        Assert.Equal(0, rig.Memory.Violations);

        var all = new byte[Size];
        await backend.ReadAsync(0, all, Ct);
        Assert.Equal(model, all);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public async Task An_inline_request_is_used_before_the_notification_returns_and_raises_the_interrupt(string format)
    {
        using var dir = new TempDir();
        await using var backend = Open(dir, format);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { Inline = VirtioBlockInline.Always });

        // The activation kicked the worker once; a notification is served inline only while the worker is idle.
        Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
        var data = rig.Driver.Allocate(4096);
        var header = rig.Driver.Allocate(16);
        var status = rig.Driver.Allocate(1);
        rig.Memory.Write(header, new byte[16]);
        rig.Memory.Write(status, (byte)0xff);
        rig.Queue.AddChain((header, 16, false), (data, 4096, true), (status, 1, true));

        rig.Driver.Notify(0);

        Assert.True(rig.Queue.TryTakeUsed(out var used));
        Assert.Equal(4097u, used.Length);
        Assert.Equal(0, rig.Memory.Read<byte>(status));
        Assert.True(rig.Irq.RaiseCount > 0);
        Assert.False(rig.Device.IsBusy);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public async Task A_batch_with_a_flush_and_more_than_the_inline_limit_completes_in_order(string format)
    {
        using var dir = new TempDir();
        await using var backend = Open(dir, format);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { Inline = VirtioBlockInline.Always }, queueSize: 256);
        var model = new byte[Size];
        var random = new Random(3);
        var reads = new List<(GuestAddress At, long Offset)>();

        // Round 1: writes with a FLUSH among them; the first writes run on the notifying thread, the FLUSH and all
        // after it on the worker. Round 2: more reads than one notification serves inline; the rest go to the worker.
        int count = VirtioBlockDevice.InlineMaxRequests + 4;
        for (int round = 0; round < 2; round++)
        {
            var heads = new List<uint>();
            var statuses = new List<GuestAddress>();
            for (int r = 0; r < count; r++)
            {
                var header = rig.Driver.Allocate(16);
                var status = rig.Driver.Allocate(1);
                rig.Memory.Write(status, (byte)0xff);
                statuses.Add(status);
                var h = new byte[16];
                long offset = r * 8192L;
                uint type = round == 1 ? In : r == 3 ? Flush : Out;
                BinaryPrimitives.WriteUInt32LittleEndian(h, type);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), (ulong)(offset / 512));
                rig.Memory.Write(header, h);
                if (type == Flush)
                {
                    heads.Add(rig.Queue.AddChain((header, 16, false), (status, 1, true)));
                    continue;
                }

                var data = rig.Driver.Allocate(4096);
                if (type == Out)
                {
                    var bytes = new byte[4096];
                    random.NextBytes(bytes);
                    rig.Memory.Write(data, bytes);
                    bytes.CopyTo(model, offset);
                }
                else
                {
                    reads.Add((data, offset));
                }

                heads.Add(rig.Queue.AddChain((header, 16, false), (data, 4096, type == In), (status, 1, true)));
            }

            // A notification is served inline only while the worker is idle (it ran on activation, and after round 1).
            Assert.True(SpinWait.SpinUntil(() => !rig.Device.IsBusy, TimeSpan.FromSeconds(10)));
            rig.Driver.Notify(0);
            var order = new List<uint>();
            for (int r = 0; r < heads.Count; r++)
            {
                order.Add(rig.Queue.WaitUsed().Id);
            }

            Assert.Equal(heads, order);
            Assert.All(statuses, s => Assert.Equal(0, rig.Memory.Read<byte>(s)));
        }

        Assert.Equal(count, reads.Count);
        foreach (var (at, offset) in reads)
        {
            var back = new byte[4096];
            rig.Memory.Read(at, back);
            Assert.Equal(model.AsSpan((int)offset, 4096).ToArray(), back);
        }

        Assert.False(rig.NeedsReset);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public async Task A_flushed_inline_write_is_in_the_file(string format)
    {
        using var dir = new TempDir();
        await using var backend = Open(dir, format);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { Inline = VirtioBlockInline.Always });
        var data = new byte[8192];
        new Random(9).NextBytes(data);

        Assert.Equal(0, rig.Request(Out, 2048, writeData: data).Status);
        Assert.Equal(0, rig.Request(Flush, 0).Status);

        // A copy of the file as it is now (read through the image's own handle, which holds the lock) is what a crash
        // would leave: it holds the write (qcow2: the data and the tables that find it).
        var handle = backend switch
        {
            RawFileBlockBackend raw => raw.Handle,
            Qcow2BlockBackend qcow2 => qcow2.FileHandle!,
            _ => throw new InvalidOperationException("unexpected backend"),
        };
        var bytes = new byte[RandomAccess.GetLength(handle)];
        Assert.Equal(bytes.Length, RandomAccess.Read(handle, bytes, 0));
        string copy = dir.File("copy." + format);
        await File.WriteAllBytesAsync(copy, bytes, Ct);
        await using var reopened = DiskImage.Open(copy, readOnly: true);
        var back = new byte[data.Length];
        await reopened.ReadAsync(2048L * 512, back, Ct);
        Assert.Equal(data, back);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public async Task A_host_failure_on_the_inline_path_answers_ioerr_and_the_device_keeps_running(string format)
    {
        using var dir = new TempDir();
        var backend = Open(dir, format);
        using var rig = new BlockRig(backend, new VirtioBlockOptions { Inline = VirtioBlockInline.Always });
        Assert.Equal(0, rig.Request(Out, 0, writeData: new byte[4096]).Status);

        // The image is closed under the device: its file handle is gone, as after a host-side failure.
        await backend.DisposeAsync();

        Assert.Equal(1, rig.Request(In, 0, readLength: 4096).Status);
        Assert.Equal(1, rig.Request(Out, 8, writeData: new byte[4096]).Status);
        Assert.False(rig.NeedsReset);
        Assert.Equal(3, rig.Queue.UsedIndex);
        Assert.Equal(2, rig.Logger.Messages.Count(m => m.Contains("host I/O failed", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Automatic_serves_inline_any_request_for_an_image_in_host_memory_and_page_cache_hits_for_one_on_disk()
    {
        await using var memory = new MemoryBlockBackend(1 << 20);
        Assert.False(new VirtioBlockDevice(memory).ServesInline);

        using var dir = new TempDir();
        await using (var onDisk = Open(dir, "raw"))
        {
            Assert.False(new VirtioBlockDevice(onDisk, new VirtioBlockOptions { Inline = VirtioBlockInline.Never }).ServesInline);
            var always = new VirtioBlockDevice(onDisk, new VirtioBlockOptions { Inline = VirtioBlockInline.Always });
            Assert.True(always.ServesInline);
            Assert.False(always.ServesInlineOnlyFromCache);
            if (!((IVectoredBlockBackend)onDisk).IsInMemory)
            {
                // A disk file system: Automatic tries small requests with RWF_NOWAIT (Linux), otherwise the worker serves.
                var automatic = new VirtioBlockDevice(onDisk);
                Assert.Equal(OperatingSystem.IsLinux(), automatic.ServesInline);
                Assert.Equal(OperatingSystem.IsLinux(), automatic.ServesInlineOnlyFromCache);
            }
        }

        if (!OperatingSystem.IsLinux() || !Directory.Exists("/dev/shm"))
        {
            return;
        }

        foreach (string format in new[] { "raw", "qcow2" })
        {
            string path = Path.Combine("/dev/shm", $"virt-inline-{Guid.NewGuid():N}.{format}");
            try
            {
                DiskImage.Create(path, 1 << 20, format == "raw" ? DiskFormat.Raw : DiskFormat.Qcow2);
                await using var inMemory = DiskImage.Open(path);
                Assert.True(new VirtioBlockDevice(inMemory).ServesInline);
                Assert.False(new VirtioBlockDevice(inMemory).ServesInlineOnlyFromCache);
                Assert.False(new VirtioBlockDevice(inMemory, new VirtioBlockOptions { Inline = VirtioBlockInline.Never }).ServesInline);
            }
            finally
            {
                File.Delete(path);
            }
        }
    }
}
