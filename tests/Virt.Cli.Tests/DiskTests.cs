using Virt.Storage;
using Xunit;

namespace Virt.Cli.Tests;

public sealed class DiskTests
{
    [Fact]
    public async Task Create_write_convert_and_info_round_trip_the_data()
    {
        using var dir = new TempDirectory();
        string qcow2 = Path.Combine(dir.Path, "a.qcow2");
        var created = VirtTool.Run(["disk", "create", qcow2, "--size", "8M", "--format", "qcow2"]);
        Assert.True(created.ExitCode == 0, created.All);
        Assert.Equal(DiskFormat.Qcow2, DiskImage.DetectFormat(qcow2));

        // Data at two places, one in the last sector.
        byte[] head = [.. Enumerable.Range(0, 4096).Select(i => (byte)(i * 7 + 1))];
        byte[] tail = [.. Enumerable.Range(0, 512).Select(i => (byte)(255 - i))];
        await using (var image = DiskImage.Open(qcow2))
        {
            Assert.Equal(8L << 20, image.Capacity);
            await image.WriteAsync(65536, head, TestContext.Current.CancellationToken);
            await image.WriteAsync((8L << 20) - 512, tail, TestContext.Current.CancellationToken);
            await image.FlushAsync(TestContext.Current.CancellationToken);
        }

        var info = VirtTool.Run(["disk", "info", qcow2]);
        Assert.True(info.ExitCode == 0, info.All);
        Assert.Contains("format:       qcow2", info.Stdout, StringComparison.Ordinal);
        Assert.Contains("virtual size: 8 MiB (8388608 bytes)", info.Stdout, StringComparison.Ordinal);

        string raw = Path.Combine(dir.Path, "b.raw");
        var converted = VirtTool.Run(["disk", "convert", qcow2, raw, "--format", "raw"]);
        Assert.True(converted.ExitCode == 0, converted.All);
        byte[] bytes = File.ReadAllBytes(raw);
        Assert.Equal(8L << 20, bytes.Length);
        Assert.Equal(head, bytes.AsSpan(65536, head.Length).ToArray());
        Assert.Equal(tail, bytes.AsSpan(bytes.Length - 512).ToArray());
        Assert.True(bytes.AsSpan(0, 65536).IndexOfAnyExcept((byte)0) < 0);

        string overlay = Path.Combine(dir.Path, "c.overlay");
        var over = VirtTool.Run(["disk", "overlay", overlay, raw]);
        Assert.True(over.ExitCode == 0, over.All);
        var overlayInfo = VirtTool.Run(["disk", "info", overlay]);
        Assert.Contains("format:       overlay", overlayInfo.Stdout, StringComparison.Ordinal);
        Assert.Contains($"backing file: {raw}", overlayInfo.Stdout, StringComparison.Ordinal);
        await using (var image = DiskImage.Open(overlay))
        {
            var read = new byte[head.Length];
            await image.ReadAsync(65536, read, TestContext.Current.CancellationToken);
            Assert.Equal(head, read);
        }
    }

    [Fact]
    public void A_qcow2_overlay_with_extended_l2_entries_is_created_and_info_shows_its_subclusters()
    {
        using var dir = new TempDirectory();
        string baseImage = Path.Combine(dir.Path, "base.raw");
        string top = Path.Combine(dir.Path, "top.qcow2");
        Assert.Equal(0, VirtTool.Run(["disk", "create", baseImage, "--size", "4M"]).ExitCode);
        var created = VirtTool.Run(["disk", "create", top, "--format", "qcow2", "--backing", baseImage, "--extended-l2"]);
        Assert.True(created.ExitCode == 0, created.All);
        var info = VirtTool.Run(["disk", "info", top]);
        Assert.True(info.ExitCode == 0, info.All);
        Assert.Contains("subclusters:  32 of 2048 bytes (extended L2 entries)", info.Stdout, StringComparison.Ordinal);

        // On a raw image the option is refused with the reason.
        var raw = VirtTool.Run(["disk", "create", Path.Combine(dir.Path, "x.raw"), "--size", "1M", "--extended-l2"]);
        Assert.Equal(2, raw.ExitCode);
        Assert.Contains("qcow2 feature", raw.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Errors_say_what_is_wrong_and_exit_2()
    {
        using var dir = new TempDirectory();
        var missing = VirtTool.Run(["disk", "info", Path.Combine(dir.Path, "nope.img")]);
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("does not exist", missing.Stderr, StringComparison.Ordinal);

        var noSize = VirtTool.Run(["disk", "create", Path.Combine(dir.Path, "x.img")]);
        Assert.Equal(2, noSize.ExitCode);
        Assert.Contains("--size", noSize.Stderr, StringComparison.Ordinal);

        string existing = Path.Combine(dir.Path, "y.img");
        Assert.Equal(0, VirtTool.Run(["disk", "create", existing, "-s", "1M"]).ExitCode);
        var again = VirtTool.Run(["disk", "create", existing, "-s", "1M"]);
        Assert.Equal(2, again.ExitCode);
        Assert.Equal(0, VirtTool.Run(["disk", "create", existing, "-s", "2M", "--force"]).ExitCode);
        Assert.Equal(2L << 20, new FileInfo(existing).Length);
    }

    [Theory]
    [InlineData("512", 512L)]
    [InlineData("64K", 64L << 10)]
    [InlineData("10G", 10L << 30)]
    [InlineData("1MiB", 1L << 20)]
    [InlineData("2MB", 2L << 20)]
    [InlineData("1t", 1L << 40)]
    public void Sizes_parse_with_binary_suffixes(string text, long expected) => Assert.Equal(expected, DiskCommand.ParseSize(text));

    [Theory]
    [InlineData("")]
    [InlineData("-1G")]
    [InlineData("1.5G")]
    [InlineData("G")]
    [InlineData("99999999999T")]
    public void Bad_sizes_are_rejected(string text) => Assert.Throws<ArgumentException>(() => DiskCommand.ParseSize(text));
}
