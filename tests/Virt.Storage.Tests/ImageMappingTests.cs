using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// Images on tmpfs served through a shared mapping of the file (<see cref="ImageMapping"/>): the bytes are the file's,
/// holes are never touched through the mapping, and another process truncating the image waits for the mapping to
/// stop instead of making the host fault.
/// </summary>
public sealed class ImageMappingTests
{
    private const int Block = 4096;
    private const string Shm = "/dev/shm";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static void RequireTmpfs() =>
        Assert.SkipUnless(OperatingSystem.IsLinux() && Directory.Exists(Shm), "Needs Linux with tmpfs at /dev/shm.");

    [Fact]
    public async Task Reads_and_writes_after_the_first_are_copies_through_the_mapping_and_match_the_file()
    {
        await using var image = await MappedImage.OpenAsync(seed: 3);
        var raw = image.Raw;
        var data = Filled(1 << 20, 3);
        var (vectored, buffer) = (image.Vectored, image.Buffer);
        long before = raw.Mapping.Copies;
        vectored.ReadVector(8 * Block, [buffer.Host]);
        Assert.Equal(data.AsSpan(8 * Block, Block).ToArray(), buffer.Bytes);
        vectored.ReadVector(100 * Block, [buffer.Host]);
        Assert.Equal(data.AsSpan(100 * Block, Block).ToArray(), buffer.Bytes);
        Filled(Block, 9).CopyTo(buffer.Bytes);
        vectored.WriteVector(50 * Block, [buffer.Host]);
        Assert.Equal(before + 3, raw.Mapping.Copies);

        // The file (read through the image's own handle: another open would break the lease) has the write.
        var back = new byte[Block];
        RandomAccess.Read(raw.Handle, back, 50 * Block);
        Assert.Equal(Filled(Block, 9), back);
    }

    [Fact]
    public async Task A_hole_is_read_and_written_with_system_calls_and_a_read_leaves_it_a_hole()
    {
        RequireTmpfs();
        using var dir = new TempDir(Shm);
        string path = dir.RawImage("disk.raw");
        await using var raw = DiskImage.OpenRaw(path);
        var vectored = (IVectoredBlockBackend)raw;
        using var buffer = new Pinned(Block);
        Filled(Block, 1).CopyTo(buffer.Bytes);

        vectored.ReadVector(20 * Block, [buffer.Host]);
        vectored.ReadVector(20 * Block, [buffer.Host]);
        Assert.Equal(new byte[Block], buffer.Bytes);
        Assert.Equal(0, raw.Mapping.Copies);
        Assert.Equal(0L, AllocatedBlocks(path));

        // The first write fills the hole with pwrite; the page is then known and served by the mapping.
        Filled(Block, 2).CopyTo(buffer.Bytes);
        vectored.WriteVector(20 * Block, [buffer.Host]);
        Assert.Equal(0, raw.Mapping.Copies);
        buffer.Bytes.AsSpan().Clear();
        vectored.ReadVector(20 * Block, [buffer.Host]);
        Assert.Equal(1, raw.Mapping.Copies);
        Assert.Equal(Filled(Block, 2), buffer.Bytes);
    }

    [Fact]
    public async Task Punching_a_hole_stops_copies_of_its_pages_and_they_read_as_zeroes()
    {
        await using var image = await MappedImage.OpenAsync(seed: 5);
        image.ReadCopied(16 * Block);
        long allocated = AllocatedBlocks(image.Raw.Path);

        await image.Raw.WriteZeroesAsync(16 * Block, 16 * Block, Ct);
        image.Vectored.ReadVector(16 * Block, [image.Buffer.Host]);
        Assert.Equal(new byte[Block], image.Buffer.Bytes);
        Assert.Equal(1, image.Raw.Mapping.Copies);
        Assert.True(AllocatedBlocks(image.Raw.Path) < allocated, "the punched range was deallocated and the read did not fill it again");
    }

    [Fact]
    public async Task Another_process_truncating_the_image_waits_until_the_mapping_stops_and_reads_then_see_zeroes()
    {
        await using var image = await MappedImage.OpenAsync(seed: 7);
        var raw = image.Raw;
        string path = raw.Path;
        var (vectored, buffer) = (image.Vectored, image.Buffer);
        image.ReadCopied(Block);

        await TruncateElsewhereAsync(path);

        Assert.False(raw.Mapping.IsMapped);
        Assert.Equal(0, new FileInfo(path).Length);
        long copies = raw.Mapping.Copies;
        Filled(Block, 1).CopyTo(buffer.Bytes);
        vectored.ReadVector(Block, [buffer.Host]);
        Assert.Equal(new byte[Block], buffer.Bytes);
        Assert.Equal(copies, raw.Mapping.Copies);
    }

    [Fact]
    public async Task A_qcow2_image_on_tmpfs_reads_and_writes_its_clusters_through_the_mapping()
    {
        RequireTmpfs();
        using var dir = new TempDir(Shm);
        string path = dir.File("disk.qcow2");
        DiskImage.Create(path, 4 << 20, DiskFormat.Qcow2);
        var data = Filled(1 << 20, 4);
        await using (var qcow2 = (Qcow2BlockBackend)DiskImage.Open(path))
        {
            await qcow2.WriteAsync(0, data, Ct);
            var vectored = (IVectoredBlockBackend)qcow2;
            using var buffer = new Pinned(Block);
            for (int i = 0; i < 4; i++)
            {
                vectored.ReadVector(i * 3 * Block, [buffer.Host]);
                Assert.Equal(data.AsSpan(i * 3 * Block, Block).ToArray(), buffer.Bytes);
            }

            Filled(Block, 8).CopyTo(buffer.Bytes);
            vectored.WriteVector(5 * Block, [buffer.Host]);
            Filled(Block, 8).CopyTo(data, 5 * Block);
            var store = Assert.IsType<FileImageStore>(qcow2.Store);
            Assert.True(store.Mapping is { IsMapped: true, Copies: >= 4 });
        }

        await using var reopened = DiskImage.Open(path);
        var back = new byte[1 << 20];
        await reopened.ReadAsync(0, back, Ct);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task A_read_only_image_is_mapped_under_a_read_lease_and_refuses_writes()
    {
        RequireTmpfs();
        using var dir = new TempDir(Shm);
        string path = dir.RawImage("disk.raw");
        await using (var writer = DiskImage.OpenRaw(path))
        {
            await writer.WriteAsync(0, Filled(1 << 20, 6), Ct);
        }

        await using var raw = DiskImage.OpenRaw(path, readOnly: true);
        var vectored = (IVectoredBlockBackend)raw;
        using var buffer = new Pinned(Block);
        vectored.ReadVector(0, [buffer.Host]);
        vectored.ReadVector(2 * Block, [buffer.Host]);
        Assert.Equal(Filled(1 << 20, 6).AsSpan(2 * Block, Block).ToArray(), buffer.Bytes);
        Assert.Equal(1, raw.Mapping.Copies);
        Assert.Throws<InvalidOperationException>(() => vectored.WriteVector(0, [buffer.Host]));

        // Another reader may open the file meanwhile (a read lease only waits for writers and truncation).
        Assert.Equal(1 << 20, (await File.ReadAllBytesAsync(path, Ct)).Length);
        vectored.ReadVector(3 * Block, [buffer.Host]);
        Assert.Equal(2, raw.Mapping.Copies);
    }

    [Fact]
    public async Task Copies_racing_with_punched_holes_and_a_truncation_never_touch_a_page_the_file_lost()
    {
        await using var image = await MappedImage.OpenAsync(seed: 2);
        var raw = image.Raw;
        string path = raw.Path;
        var vectored = image.Vectored;
        const int Pages = (1 << 20) / Block;
        using var stop = new CancellationTokenSource();

        // Readers and writers copy through the mapping while holes are punched and filled again under them; then
        // another process truncates the file. A copy of a page the file no longer has would end this process.
        var workers = Enumerable.Range(0, 3).Select(w => Task.Run(() =>
        {
            using var buffer = new Pinned(Block);
            var random = new Random(w);
            long transfers = 0;
            while (!stop.IsCancellationRequested || transfers < 1000)
            {
                long offset = random.Next(Pages) * (long)Block;
                if (random.Next(2) == 0)
                {
                    vectored.ReadVector(offset, [buffer.Host]);
                }
                else
                {
                    vectored.WriteVector(offset, [buffer.Host]);
                }

                transfers++;
            }

            return transfers;
        })).ToArray();

        Assert.True(SpinWait.SpinUntil(() => raw.Mapping.Copies >= 200, TimeSpan.FromMinutes(1)), "the workers copy through the mapping");
        var punches = new Random(5);
        for (int i = 0; i < 200; i++)
        {
            await raw.WriteZeroesAsync(punches.Next(Pages - 4) * (long)Block, 4 * Block, Ct);
        }

        // Written again, punched pages are learned again: copies go on after the punches.
        long afterPunches = raw.Mapping.Copies;
        Assert.True(SpinWait.SpinUntil(() => raw.Mapping.Copies >= afterPunches + 200, TimeSpan.FromMinutes(1)), "copies go on after the punches");
        await TruncateElsewhereAsync(path);

        await stop.CancelAsync();
        long[] done = await Task.WhenAll(workers);
        Assert.All(done, n => Assert.True(n >= 1000));
        Assert.False(raw.Mapping.IsMapped);
    }

    /// <summary>
    /// A 1 MiB raw image on tmpfs filled with bytes from a seed, open, and mapped: one vectored read (with a system
    /// call, which learns the allocated pages) has been made, so later ones are copies.
    /// </summary>
    private sealed class MappedImage : IAsyncDisposable
    {
        private readonly TempDir _dir;

        private MappedImage(TempDir dir, RawFileBlockBackend raw)
        {
            _dir = dir;
            Raw = raw;
        }

        public RawFileBlockBackend Raw { get; }

        public IVectoredBlockBackend Vectored => Raw;

        /// <summary>A 4 KiB buffer for the vectored calls.</summary>
        public Pinned Buffer { get; } = new(Block);

        public static async Task<MappedImage> OpenAsync(int seed)
        {
            RequireTmpfs();
            var dir = new TempDir(Shm);
            var image = new MappedImage(dir, DiskImage.OpenRaw(dir.RawImage("disk.raw")));
            await image.Raw.WriteAsync(0, Filled(1 << 20, seed), Ct);
            image.Vectored.ReadVector(0, [image.Buffer.Host]);
            Assert.True(image.Raw.Mapping is { IsMapped: true, Copies: 0 }, "an image on tmpfs, open only here, is mapped on its first transfer");
            return image;
        }

        /// <summary>Reads 4 KiB at <paramref name="offset"/> into <see cref="Buffer"/> and checks it was the first copy.</summary>
        public void ReadCopied(long offset)
        {
            Vectored.ReadVector(offset, [Buffer.Host]);
            Assert.Equal(1, Raw.Mapping.Copies);
        }

        public async ValueTask DisposeAsync()
        {
            await Raw.DisposeAsync();
            Buffer.Dispose();
            _dir.Dispose();
        }
    }

    /// <summary>
    /// Truncates the file to nothing from another process. The shell's open(O_TRUNC) waits for the lease (truncate(1)
    /// opens with O_NONBLOCK and would fail with EAGAIN instead). A later copy from the mapping would fault (SIGBUS) if
    /// the mapping outlived the lease.
    /// </summary>
    private static async Task TruncateElsewhereAsync(string path)
    {
        using var truncate = Process.Start(new ProcessStartInfo("sh", ["-c", ": > \"$1\"", "sh", path]) { UseShellExecute = false })!;
        await truncate.WaitForExitAsync(Ct);
        Assert.Equal(0, truncate.ExitCode);
    }

    /// <summary>The file's allocated 512-byte blocks (stat does not open the file, so the lease holds).</summary>
    private static long AllocatedBlocks(string path)
    {
        using var stat = Process.Start(new ProcessStartInfo("stat", ["-c", "%b", path]) { UseShellExecute = false, RedirectStandardOutput = true })!;
        string output = stat.StandardOutput.ReadToEnd();
        stat.WaitForExit();
        return long.Parse(output.Trim(), CultureInfo.InvariantCulture);
    }

    private static byte[] Filled(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>A pinned buffer, as guest memory is, for the vectored calls.</summary>
    private sealed class Pinned : IDisposable
    {
        private GCHandle _handle;

        public Pinned(int length)
        {
            Bytes = new byte[length];
            _handle = GCHandle.Alloc(Bytes, GCHandleType.Pinned);
        }

        public byte[] Bytes { get; }

        public HostBuffer Host => new(_handle.AddrOfPinnedObject(), Bytes.Length);

        public void Dispose() => _handle.Free();
    }
}
