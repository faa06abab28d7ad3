using Xunit;

namespace Virt.Storage.Tests;

/// <summary>qcow2 read/write, checked against qemu-img in both directions.</summary>
public sealed class Qcow2Tests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Applies random writes, zeroes and discards to the backend and to a model of its bytes.</summary>
    private static async Task ExerciseAsync(IBlockBackend disk, byte[] model, int seed, int operations)
    {
        var random = new Random(seed);
        for (int i = 0; i < operations; i++)
        {
            int sectors = random.Next(1, 300);
            long length = Math.Min((long)sectors * 512, model.Length);
            long offset = random.NextInt64((model.Length - length) / 512 + 1) * 512;
            int kind = random.Next(10);
            if (kind < 7)
            {
                var data = new byte[length];
                random.NextBytes(data);
                await disk.WriteAsync(offset, data, Ct);
                data.CopyTo(model.AsSpan((int)offset));
            }
            else if (kind < 9)
            {
                await disk.WriteZeroesAsync(offset, length, Ct);
                model.AsSpan((int)offset, (int)length).Clear();
            }
            else
            {
                await disk.DiscardAsync(offset, length, Ct);
                model.AsSpan((int)offset, (int)length).Clear();
            }

            if (random.Next(8) == 0)
            {
                await disk.FlushAsync(Ct);
            }
        }
    }

    private static async Task<byte[]> ReadAllAsync(IBlockBackend disk)
    {
        var bytes = new byte[disk.Capacity];
        await disk.ReadAsync(0, bytes, Ct);
        return bytes;
    }

    [Theory]
    [InlineData(512, false)]
    [InlineData(4096, false)]
    [InlineData(65536, false)]
    [InlineData(16384, true)]
    [InlineData(65536, true)]
    public async Task Image_written_by_the_library_reads_back_byte_for_byte_in_qemu_img(int clusterSize, bool extendedL2)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string path = dir.File("disk.qcow2");
        const long size = 8 << 20;
        DiskImage.Create(path, size, DiskFormat.Qcow2, clusterSize: clusterSize, extendedL2: extendedL2);
        var model = new byte[size];
        await using (var disk = DiskImage.Open(path))
        {
            Assert.IsType<Qcow2BlockBackend>(disk);
            await ExerciseAsync(disk, model, clusterSize, 300);
            Assert.Equal(model, await ReadAllAsync(disk));
        }

        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ReadAll(path, dir.File("check")));
        string info = QemuImg.Run($"info \"{path}\"");
        Assert.Contains($"cluster_size: {clusterSize}", info, StringComparison.Ordinal);
        Assert.Contains($"extended l2: {(extendedL2 ? "true" : "false")}", info, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(65536)]
    [InlineData(16384)]
    public async Task Image_with_subclusters_written_by_qemu_io_over_a_backing_file_reads_back_and_stays_valid_after_library_writes(int clusterSize)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string baseRaw = dir.File("base.raw");
        string path = dir.File("top.qcow2");
        const int size = 4 << 20;
        var backing = new byte[size];
        new Random(clusterSize).NextBytes(backing);
        await File.WriteAllBytesAsync(baseRaw, backing, Ct);
        QemuImg.Run($"create -q -f qcow2 -o extended_l2=on,cluster_size={clusterSize} -b \"{baseRaw}\" -F raw \"{path}\"");

        // Every subcluster state QEMU writes: allocated (whole and partial subclusters, which copy the rest from the
        // backing file), zero subclusters in allocated and unallocated clusters, and a whole cluster zeroed.
        int sub = clusterSize / 32;
        string[] commands =
        [
            $"write -P 0x11 {sub} {sub}",
            $"write -P 0x22 {(3 * sub) + 512} 1024",
            $"write -z {8 * sub} {2 * sub}",
            $"write -z {clusterSize + (4 * sub)} {3 * sub}",
            $"write -z {2 * clusterSize} {clusterSize}",
            $"write -P 0x33 {(5 * clusterSize) - 512} 4096",
        ];
        var (code, output) = QemuImg.Exec("qemu-io", string.Join(' ', commands.Select(c => $"-c \"{c}\"")) + $" \"{path}\"");
        Assert.True(code == 0, $"qemu-io exited with {code}: {output}");
        var model = QemuImg.ReadAll(path, dir.File("expected"));
        Assert.NotEqual(backing, model);

        await using (var disk = Qcow2BlockBackend.Open(path))
        {
            Assert.Equal(model, await ReadAllAsync(disk));
            await ExerciseAsync(disk, model, clusterSize, 150);
            Assert.Equal(model, await ReadAllAsync(disk));
        }

        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ReadAll(path, dir.File("check")));
    }

    [Fact]
    public async Task A_small_write_to_an_overlay_with_subclusters_takes_one_subcluster_from_the_backing_file_not_a_cluster()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string baseRaw = dir.File("base.raw");
        string path = dir.File("top.qcow2");
        const int clusterSize = 65536, sub = clusterSize / 32;
        var backing = new byte[1 << 20];
        new Random(7).NextBytes(backing);
        await File.WriteAllBytesAsync(baseRaw, backing, Ct);
        DiskImage.Create(path, 0, DiskFormat.Qcow2, backing: "base.raw", clusterSize: clusterSize, extendedL2: true);

        // 512 bytes inside subcluster 2 of cluster 1.
        long at = clusterSize + (2 * sub) + 1000;
        var data = new byte[512];
        data.AsSpan().Fill(0x5a);
        await using (var disk = DiskImage.Open(path))
        {
            await disk.WriteAsync(at, data, Ct);
            await disk.FlushAsync(Ct);
        }

        data.CopyTo(backing.AsSpan((int)at));
        QemuImg.AssertClean(path);
        Assert.Equal(backing, QemuImg.ReadAll(path, dir.File("check")));

        // qemu-img map: only that subcluster is the top image's; the rest of the cluster still comes from the base.
        using var map = System.Text.Json.JsonDocument.Parse(QemuImg.Run($"map --output=json \"{path}\""));
        var own = map.RootElement.EnumerateArray()
            .Where(e => e.GetProperty("depth").GetInt32() == 0 && e.GetProperty("data").GetBoolean())
            .Select(e => (Start: e.GetProperty("start").GetInt64(), Length: e.GetProperty("length").GetInt64()))
            .ToList();
        Assert.Equal([(clusterSize + (2L * sub), (long)sub)], own);
    }

    [Theory]
    [InlineData("compat=1.1,cluster_size=65536", false)]
    [InlineData("compat=0.10,cluster_size=4096", false)]
    [InlineData("compat=1.1,cluster_size=512,refcount_bits=1", false)]
    [InlineData("compat=1.1,cluster_size=2097152,refcount_bits=64", false)]
    [InlineData("compat=1.1,cluster_size=65536", true)]
    [InlineData("compat=0.10,cluster_size=4096", true)]
    [InlineData("compat=1.1,cluster_size=65536,compression_type=zstd", true)]
    [InlineData("compat=1.1,cluster_size=4096,compression_type=zstd", true)]
    public async Task Image_written_by_qemu_img_reads_back_byte_for_byte_and_stays_valid_after_library_writes(string options, bool compressed)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string raw = dir.File("source.raw");
        string path = dir.File("disk.qcow2");
        const int size = 6 << 20;
        var model = new byte[size];
        var random = new Random(options.Length + (compressed ? 1 : 0));
        for (int i = 0; i < 40; i++)
        {
            // Compressible runs (text-like) and zero gaps, so compression and sparseness both occur.
            int at = random.Next(size / 4096) * 4096;
            int len = Math.Min(random.Next(1, 64) * 4096, size - at);
            for (int j = 0; j < len; j++)
            {
                model[at + j] = (byte)('a' + ((j / 7 + i) % 26));
            }
        }

        await File.WriteAllBytesAsync(raw, model, Ct);
        QemuImg.Run($"convert -f raw -O qcow2 {(compressed ? "-c " : string.Empty)}-o {options} \"{raw}\" \"{path}\"");

        await using (var disk = Qcow2BlockBackend.Open(path))
        {
            Assert.Equal(options.Contains("0.10", StringComparison.Ordinal) ? 2 : 3, disk.Version);
            Assert.Equal(model, await ReadAllAsync(disk));
            await ExerciseAsync(disk, model, 5, 120);
            Assert.Equal(model, await ReadAllAsync(disk));
        }

        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ReadAll(path, dir.File("check")));
    }

    [Fact]
    public async Task Backing_chain_of_raw_and_qcow2_images_made_by_qemu_img_reads_through_and_writes_only_the_top()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        const int size = 4 << 20;
        var model = new byte[size];
        new Random(3).NextBytes(model.AsSpan(0, size / 2));
        await File.WriteAllBytesAsync(dir.File("base.raw"), model, Ct);
        QemuImg.Run($"create -f qcow2 -b base.raw -F raw \"{dir.File("mid.qcow2")}\"");
        var mid = new byte[65536];
        new Random(4).NextBytes(mid);
        QemuImg.Exec("qemu-io", $"-c \"write -P 0x5a 1M 64k\" \"{dir.File("mid.qcow2")}\"");
        model.AsSpan(1 << 20, 65536).Fill(0x5a);
        QemuImg.Run($"create -f qcow2 -b mid.qcow2 -F qcow2 -o cluster_size=4096 \"{dir.File("top.qcow2")}\"");
        byte[] baseBefore = await File.ReadAllBytesAsync(dir.File("base.raw"), Ct);
        byte[] midBefore = await File.ReadAllBytesAsync(dir.File("mid.qcow2"), Ct);

        await using (var top = DiskImage.OpenQcow2(dir.File("top.qcow2")))
        {
            Assert.Equal("mid.qcow2", top.BackingPath);
            Assert.Equal("qcow2", top.BackingFormat);
            Assert.Equal(model, await ReadAllAsync(top));
            await ExerciseAsync(top, model, 9, 150);
            Assert.Equal(model, await ReadAllAsync(top));

            // A writer of the top holds its backing files shared: nobody may write them meanwhile.
            Assert.Equal(DiskImageError.InUse, Assert.Throws<DiskImageException>(() => DiskImage.OpenRaw(dir.File("base.raw"))).Error);
        }

        Assert.Equal(baseBefore, await File.ReadAllBytesAsync(dir.File("base.raw"), Ct));
        Assert.Equal(midBefore, await File.ReadAllBytesAsync(dir.File("mid.qcow2"), Ct));
        QemuImg.AssertClean(dir.File("top.qcow2"));
        Assert.Equal(model, QemuImg.ReadAll(dir.File("top.qcow2"), dir.File("check")));
    }

    [Fact]
    public async Task Image_with_a_backing_file_created_by_the_library_is_read_by_qemu_img()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        const int size = 2 << 20;
        var model = new byte[size];
        new Random(11).NextBytes(model);
        await File.WriteAllBytesAsync(dir.File("base.raw"), model, Ct);
        QemuImg.Run($"convert -f raw -O qcow2 \"{dir.File("base.raw")}\" \"{dir.File("base.qcow2")}\"");
        DiskImage.Create(dir.File("top.qcow2"), 0, DiskFormat.Qcow2, backing: "base.qcow2");
        await using (var top = DiskImage.OpenQcow2(dir.File("top.qcow2")))
        {
            Assert.Equal(size, top.Capacity);
            await ExerciseAsync(top, model, 12, 80);
        }

        string info = QemuImg.Run($"info \"{dir.File("top.qcow2")}\"");
        Assert.Contains("backing file: base.qcow2", info, StringComparison.Ordinal);
        Assert.Contains("backing file format: qcow2", info, StringComparison.Ordinal);
        QemuImg.AssertClean(dir.File("top.qcow2"));
        Assert.Equal(model, QemuImg.ReadAll(dir.File("top.qcow2"), dir.File("check")));
    }

    [Fact]
    public async Task Growing_past_the_first_refcount_table_moves_it_and_stays_valid()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string path = dir.File("disk.qcow2");
        const long size = 24 << 20;

        // 512-byte clusters: one refcount table cluster covers 64 blocks of 256 clusters = 8 MiB of file.
        DiskImage.Create(path, size, DiskFormat.Qcow2, clusterSize: 512);
        var model = new byte[size];
        await using (var disk = DiskImage.Open(path))
        {
            var chunk = new byte[1 << 20];
            for (int i = 0; i < 20; i++)
            {
                new Random(i).NextBytes(chunk);
                await disk.WriteAsync((long)i << 20, chunk, Ct);
                chunk.CopyTo(model, i << 20);
            }

            Assert.Equal(model, await ReadAllAsync(disk));
        }

        byte[] header = File.ReadAllBytes(path).AsSpan(0, 64).ToArray();
        Assert.NotEqual(512UL, System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(48)));
        Assert.True(System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(56)) > 1);
        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ReadAll(path, dir.File("check")));
    }

    [Fact]
    public async Task Writes_into_an_l2_table_dropped_from_the_cache_reach_the_file_and_do_not_take_the_no_wait_path()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string path = dir.File("disk.qcow2");
        const int size = 4 << 20;
        const int block = 4096;
        DiskImage.Create(path, size, DiskFormat.Qcow2);
        var model = new byte[size];
        await using (var disk = DiskImage.OpenQcow2(path))
        {
            // Every change flushes the tables and drops them from the cache, so each allocating write below looks its
            // one L2 table up again; a table kept from before the drop (the last one looked up) would take the new
            // entries where no flush writes them.
            disk.TableCacheLimitBytes = 1;
            for (int i = 0; i < 8; i++)
            {
                var data = new byte[block];
                new Random(i).NextBytes(data);
                long at = (i * 65536L) + (i * 512);
                await disk.WriteAsync(at, data, Ct);
                data.CopyTo(model, at);
            }

            // The table is not cached now: a write that must not wait declines (it would read the table), and the
            // waiting write that follows it lands.
            var again = new byte[block];
            new Random(99).NextBytes(again);
            unsafe
            {
                fixed (byte* p = again)
                {
                    Assert.False(((IVectoredBlockBackend)disk).TryWriteInPlace(0, [new HostBuffer((nint)p, block)]));
                }
            }

            await disk.WriteAsync(0, again, Ct);
            again.CopyTo(model, 0);
            await disk.FlushAsync(Ct);
            Assert.Equal(model, await ReadAllAsync(disk));
        }

        QemuImg.AssertClean(path);
        Assert.Equal(model, QemuImg.ReadAll(path, dir.File("check")));
    }

    [Fact]
    public async Task A_write_in_place_across_clusters_stored_apart_lands_in_each()
    {
        using var dir = new TempDir();
        string path = dir.File("disk.qcow2");
        const int cluster = 65536;
        DiskImage.Create(path, 1 << 20, DiskFormat.Qcow2);
        await using var disk = DiskImage.OpenQcow2(path);

        // Guest cluster 1 is allocated before cluster 0, so cluster 0's host cluster follows cluster 1's: a write
        // across their boundary is two runs, and its second half belongs before its first in the file.
        await disk.WriteAsync(cluster, new byte[cluster], Ct);
        await disk.WriteAsync(0, new byte[cluster], Ct);
        var data = new byte[8192];
        new Random(5).NextBytes(data);
        unsafe
        {
            fixed (byte* p = data)
            {
                Assert.True(((IVectoredBlockBackend)disk).TryWriteInPlace(cluster - 4096, [new HostBuffer((nint)p, 4096), new HostBuffer((nint)(p + 4096), 4096)]));
                Assert.True(((IVectoredBlockBackend)disk).TryWriteInPlace(cluster - 4096, [new HostBuffer((nint)p, data.Length)]));
            }
        }

        var model = new byte[3 * cluster];
        data.CopyTo(model, cluster - 4096);
        var back = new byte[3 * cluster];
        await disk.ReadAsync(0, back, Ct);
        Assert.Equal(model, back);
    }

    [Fact]
    public async Task Zeroed_and_discarded_clusters_read_as_zeroes_over_a_backing_file_and_free_their_space()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        const int size = 1 << 20;
        var model = new byte[size];
        Array.Fill(model, (byte)0xee);
        await File.WriteAllBytesAsync(dir.File("base.raw"), model, Ct);
        DiskImage.Create(dir.File("top.qcow2"), 0, DiskFormat.Qcow2, backing: dir.File("base.raw"));
        await using (var top = DiskImage.OpenQcow2(dir.File("top.qcow2")))
        {
            await top.WriteAsync(0, new byte[65536 * 4].Select(_ => (byte)1).ToArray(), Ct);
            await top.DiscardAsync(65536, 65536 * 2, Ct);
            await top.WriteZeroesAsync(65536 * 5, 1000 * 512, Ct);
            model.AsSpan(0, 65536 * 4).Fill(1);
            model.AsSpan(65536, 65536 * 2).Clear();
            model.AsSpan(65536 * 5, 1000 * 512).Clear();
            await top.FlushAsync(Ct);
            Assert.Equal(model, await ReadAllAsync(top));
        }

        QemuImg.AssertClean(dir.File("top.qcow2"));
        Assert.Equal(model, QemuImg.ReadAll(dir.File("top.qcow2"), dir.File("check")));
        string map = QemuImg.Run($"map --output=json \"{dir.File("top.qcow2")}\"");
        Assert.Contains("\"zero\": true", map, StringComparison.Ordinal);
    }

    [Fact]
    public void Format_is_detected_and_open_dispatches_on_it()
    {
        using var dir = new TempDir();
        DiskImage.CreateRaw(dir.File("a.raw"), 1 << 20);
        DiskImage.Create(dir.File("b.qcow2"), 1 << 20, DiskFormat.Qcow2);
        DiskImage.CreateOverlay(dir.File("c.overlay"), dir.File("a.raw"));
        Assert.Equal(DiskFormat.Raw, DiskImage.DetectFormat(dir.File("a.raw")));
        Assert.Equal(DiskFormat.Qcow2, DiskImage.DetectFormat(dir.File("b.qcow2")));
        Assert.Equal(DiskFormat.Overlay, DiskImage.DetectFormat(dir.File("c.overlay")));
        Assert.Throws<ArgumentException>(() => DiskImage.Create(dir.File("d.raw"), 1 << 20, DiskFormat.Raw, backing: dir.File("a.raw")));
        Assert.Throws<ArgumentOutOfRangeException>(() => DiskImage.Create(dir.File("e.qcow2"), 1 << 20, DiskFormat.Qcow2, clusterSize: 3000));
        Assert.Equal(DiskImageError.AlreadyExists, Assert.Throws<DiskImageException>(() => DiskImage.Create(dir.File("b.qcow2"), 1 << 20, DiskFormat.Qcow2)).Error);
    }

    [Fact]
    public async Task Qcow2_image_can_be_the_base_of_an_overlay()
    {
        using var dir = new TempDir();
        DiskImage.Create(dir.File("base.qcow2"), 1 << 20, DiskFormat.Qcow2);
        await using (var b = DiskImage.Open(dir.File("base.qcow2")))
        {
            await b.WriteAsync(4096, Enumerable.Repeat((byte)7, 4096).ToArray(), Ct);
        }

        DiskImage.CreateOverlay(dir.File("top.overlay"), dir.File("base.qcow2"));
        await using var top = DiskImage.OpenOverlay(dir.File("top.overlay"));
        var read = new byte[8192];
        await top.ReadAsync(0, read, Ct);
        Assert.All(read.AsSpan(0, 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.All(read.AsSpan(4096).ToArray(), b => Assert.Equal(7, b));
        await top.WriteAsync(0, new byte[512].Select(_ => (byte)9).ToArray(), Ct);
        await top.ReadAsync(0, read, Ct);
        Assert.Equal(9, read[0]);
    }

    [Fact]
    public async Task Qemu_and_the_library_keep_each_other_from_writing_an_open_image()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string path = dir.File("disk.qcow2");
        DiskImage.Create(path, 1 << 20, DiskFormat.Qcow2);
        await using (var disk = DiskImage.Open(path))
        {
            var (code, output) = QemuImg.Exec("qemu-io", $"-c \"write 0 512\" \"{path}\"");
            Assert.True(code != 0 && output.Contains("lock", StringComparison.OrdinalIgnoreCase), $"qemu-io wrote an image the library has open for writing: {code} {output}");
        }

        await using (var reader = DiskImage.Open(path, readOnly: true))
        {
            var (code, output) = QemuImg.Exec("qemu-io", $"-c \"write 0 512\" \"{path}\"");
            Assert.True(code != 0 && output.Contains("lock", StringComparison.OrdinalIgnoreCase), $"qemu-io wrote an image the library is reading: {code} {output}");
            Assert.Equal(0, QemuImg.Exec("qemu-img", $"info \"{path}\"").ExitCode);
        }
    }

    [Fact]
    public async Task Image_with_internal_snapshots_lists_them_and_opens_read_only_only()
    {
        QemuImg.Require();
        using var dir = new TempDir();
        string path = dir.File("disk.qcow2");
        QemuImg.Run($"create -f qcow2 \"{path}\" 1M");
        QemuImg.Exec("qemu-io", $"-c \"write -P 0x11 0 64k\" \"{path}\"");
        QemuImg.Run($"snapshot -c first \"{path}\"");
        QemuImg.Exec("qemu-io", $"-c \"write -P 0x22 0 64k\" \"{path}\"");

        var e = Assert.Throws<DiskImageException>(() => DiskImage.OpenQcow2(path));
        Assert.Contains("snapshot", e.Message, StringComparison.Ordinal);
        await using var disk = DiskImage.OpenQcow2(path, readOnly: true);
        var snapshot = Assert.Single(disk.Snapshots);
        Assert.Equal("first", snapshot.Name);
        Assert.Equal(1 << 20, snapshot.DiskSize);
        var read = new byte[512];
        await disk.ReadAsync(0, read, Ct);
        Assert.All(read, b => Assert.Equal(0x22, b));
    }
}
