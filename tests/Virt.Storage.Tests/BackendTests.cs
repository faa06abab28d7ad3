using System.Security.Cryptography;
using Xunit;

namespace Virt.Storage.Tests;

public sealed class BackendTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Flushed_write_is_in_the_file_when_reopened()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.img");
        byte[] data = RandomNumberGenerator.GetBytes(4096);
        await using (var backend = DiskImage.OpenRaw(path))
        {
            using var rig = new BlockRig(backend);
            Assert.Equal(0, rig.Request(1, 16, writeData: data).Status);
            Assert.Equal(0, rig.Request(4, 0).Status);
        }

        byte[] file = await File.ReadAllBytesAsync(path, Ct);
        Assert.Equal(1 << 20, file.Length);
        Assert.Equal(data, file.AsSpan(16 * 512, 4096).ToArray());
    }

    [Fact]
    public async Task Second_writer_of_an_image_is_refused_as_in_use()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.img");
        await using var first = DiskImage.OpenRaw(path);

        var e = Assert.Throws<DiskImageException>(() => DiskImage.OpenRaw(path));
        Assert.Equal(DiskImageError.InUse, e.Error);
        Assert.Contains("in use", e.Message, StringComparison.Ordinal);
        Assert.Equal(DiskImageError.InUse, Assert.Throws<DiskImageException>(() => DiskImage.OpenRaw(path, readOnly: true)).Error);
        Assert.Equal(DiskImageError.InUse, Assert.Throws<DiskImageException>(() => DiskImage.Delete(path)).Error);
    }

    [Fact]
    public async Task Two_readers_may_share_an_image_but_not_with_a_writer()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.img");
        await using var a = DiskImage.OpenRaw(path, readOnly: true);
        await using var b = DiskImage.OpenRaw(path, readOnly: true);

        Assert.True(a.IsReadOnly);
        Assert.Equal(DiskImageError.InUse, Assert.Throws<DiskImageException>(() => DiskImage.OpenRaw(path)).Error);
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await a.WriteAsync(0, new byte[512], Ct));
    }

    [Fact]
    public void Missing_image_is_reported_as_not_found()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<DiskImageException>(() => DiskImage.OpenRaw(dir.File("nope.img")));
        Assert.Equal(DiskImageError.NotFound, e.Error);
        Assert.Contains("does not exist", e.Message, StringComparison.Ordinal);
        Assert.Equal(DiskImageError.NotFound, Assert.Throws<DiskImageException>(() => DiskImage.Delete(dir.File("nope.img"))).Error);
        Assert.Equal(DiskImageError.NotFound, Assert.Throws<DiskImageException>(() => DiskImage.CreateOverlay(dir.File("o.img"), dir.File("nope.img"))).Error);
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void Image_this_user_may_not_write_is_reported_as_access_denied_with_what_to_do()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Unix file permissions: Linux only.");
        using var dir = new TempDir();
        string path = dir.RawImage("ro.img");
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        if (CanOpenForWriting(path))
        {
            // Root ignores file modes; a read-only sysfs attribute refuses writers even to root.
            path = "/sys/devices/system/cpu/online";
            Assert.False(CanOpenForWriting(path), $"{path} opened for writing; no file here refuses a writer.");
        }

        var e = Assert.Throws<DiskImageException>(() => DiskImage.OpenRaw(path));
        Assert.Equal(DiskImageError.AccessDenied, e.Error);
        Assert.IsType<UnauthorizedAccessException>(e.InnerException);
        Assert.Contains("read-only", e.Message, StringComparison.Ordinal);
        Assert.Equal(DiskImageError.AccessDenied, Assert.Throws<DiskImageException>(() => DiskImage.Open(path)).Error);

        static bool CanOpenForWriting(string file)
        {
            try
            {
                using var handle = File.OpenHandle(file, FileMode.Open, FileAccess.ReadWrite);
                return true;
            }
            catch (UnauthorizedAccessException)
            {
                return false;
            }
        }
    }

    [Theory]
    [InlineData(1000L)]
    [InlineData(0L)]
    [InlineData(-512L)]
    public void Size_that_is_not_a_positive_multiple_of_512_is_refused(long size)
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => DiskImage.CreateRaw(dir.File("disk.img"), size));
        Assert.Contains("multiple of 512", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(dir.File("disk.img")));
    }

    [Fact]
    public void Creating_over_an_existing_file_is_refused_unless_asked()
    {
        using var dir = new TempDir();
        string path = dir.File("disk.img");
        DiskImage.CreateRaw(path, 4096);
        Assert.Equal(DiskImageError.AlreadyExists, Assert.Throws<DiskImageException>(() => DiskImage.CreateRaw(path, 4096)).Error);
        DiskImage.CreateRaw(path, 8192, overwrite: true);
        Assert.Equal(8192, new FileInfo(path).Length);
        DiskImage.Delete(path);
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task Raw_image_discard_reads_back_as_zeroes()
    {
        using var dir = new TempDir();
        string path = dir.RawImage("disk.img");
        await using var backend = DiskImage.OpenRaw(path);
        await backend.WriteAsync(0, VirtioBlockDeviceTests.Filled(65536, 9), Ct);
        await backend.DiscardAsync(4096, 8192, Ct);
        var back = new byte[65536];
        await backend.ReadAsync(0, back, Ct);
        Assert.Equal(9, back[4095]);
        Assert.All(back.AsSpan(4096, 8192).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(9, back[12288]);
    }

    [Fact]
    public async Task Overlay_leaves_the_base_byte_identical()
    {
        using var dir = new TempDir();
        string basePath = dir.File("base.img");
        await File.WriteAllBytesAsync(basePath, RandomNumberGenerator.GetBytes(1 << 20), Ct);
        byte[] before = SHA256.HashData(await File.ReadAllBytesAsync(basePath, Ct));
        DiskImage.CreateOverlay(dir.File("overlay.img"), basePath);

        byte[] written = RandomNumberGenerator.GetBytes(3000 / 512 * 512);
        await using (var overlay = DiskImage.OpenOverlay(dir.File("overlay.img")))
        {
            using var rig = new BlockRig(overlay);
            Assert.Equal(0, rig.Request(1, 100, writeData: written).Status);
            Assert.Equal(0, rig.Request(13, 0, writeData: ZeroSegment(1000, 300)).Status);
            Assert.Equal(0, rig.Request(4, 0).Status);
            var back = new byte[written.Length];
            Assert.Equal(0, rig.Request(0, 100, readLength: back.Length, readInto: back).Status);
            Assert.Equal(written, back);
        }

        Assert.Equal(before, SHA256.HashData(await File.ReadAllBytesAsync(basePath, Ct)));
    }

    [Fact]
    public async Task Overlay_reads_base_where_unwritten_and_its_own_data_where_written()
    {
        using var dir = new TempDir();
        string basePath = dir.File("base.img");
        byte[] baseBytes = RandomNumberGenerator.GetBytes(1 << 20);
        await File.WriteAllBytesAsync(basePath, baseBytes, Ct);
        DiskImage.CreateOverlay(dir.File("o.img"), basePath);
        byte[] patch = VirtioBlockDeviceTests.Filled(1024, 0xEE);

        await using (var overlay = DiskImage.OpenOverlay(dir.File("o.img")))
        {
            await overlay.WriteAsync(65536 - 512, patch, Ct);
            await overlay.FlushAsync(Ct);
            Assert.Equal(2, overlay.AllocatedClusters);
        }

        await using (var reopened = DiskImage.OpenOverlay(dir.File("o.img")))
        {
            var back = new byte[200_000];
            await reopened.ReadAsync(0, back, Ct);
            byte[] expected = baseBytes[..200_000];
            patch.CopyTo(expected, 65536 - 512);
            Assert.Equal(expected, back);
        }
    }

    [Fact]
    public async Task Overlay_discard_changes_reverts_to_the_base_and_commit_merges_into_it()
    {
        using var dir = new TempDir();
        string basePath = dir.File("base.img");
        byte[] baseBytes = RandomNumberGenerator.GetBytes(1 << 18);
        await File.WriteAllBytesAsync(basePath, baseBytes, Ct);
        DiskImage.CreateOverlay(dir.File("o.img"), basePath);
        await using var overlay = DiskImage.OpenOverlay(dir.File("o.img"));
        var back = new byte[512];

        await overlay.WriteAsync(512, VirtioBlockDeviceTests.Filled(512, 1), Ct);
        await overlay.DiscardChangesAsync(Ct);
        await overlay.ReadAsync(512, back, Ct);
        Assert.Equal(baseBytes.AsSpan(512, 512).ToArray(), back);
        Assert.Equal(0, overlay.AllocatedClusters);

        await overlay.WriteAsync(512, VirtioBlockDeviceTests.Filled(512, 2), Ct);
        await overlay.CommitAsync(Ct);
        Assert.Equal(0, overlay.AllocatedClusters);
        await overlay.ReadAsync(512, back, Ct);
        Assert.All(back, b => Assert.Equal(2, b));
        await using (var raw = DiskImage.OpenRaw(basePath, readOnly: true))
        {
            await raw.ReadAsync(512, back, Ct);
        }

        Assert.All(back, b => Assert.Equal(2, b));
        Assert.Equal(baseBytes[1024], (await File.ReadAllBytesAsync(basePath, Ct))[1024]);
    }

    [Fact]
    public async Task Base_of_an_open_overlay_cannot_be_opened_for_writing()
    {
        using var dir = new TempDir();
        string basePath = dir.File("base.img");
        DiskImage.CreateRaw(basePath, 1 << 20);
        DiskImage.CreateOverlay(dir.File("o.img"), basePath);
        await using var overlay = DiskImage.OpenOverlay(dir.File("o.img"));
        Assert.Equal(DiskImageError.InUse, Assert.Throws<DiskImageException>(() => DiskImage.OpenRaw(basePath)).Error);
        Assert.Equal(DiskImageError.InUse, Assert.Throws<DiskImageException>(() => DiskImage.OpenOverlay(dir.File("o.img"))).Error);
    }

    [Fact]
    public async Task Raw_file_opened_as_overlay_is_refused_as_invalid_format()
    {
        using var dir = new TempDir();
        DiskImage.CreateRaw(dir.File("raw.img"), 1 << 20);
        var e = Assert.Throws<DiskImageException>(() => DiskImage.OpenOverlay(dir.File("raw.img")));
        Assert.Equal(DiskImageError.InvalidFormat, e.Error);
        await Task.CompletedTask;
    }

    private static byte[] ZeroSegment(ulong sector, uint count)
    {
        var s = new byte[16];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(s, sector);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(s.AsSpan(8), count);
        return s;
    }
}
