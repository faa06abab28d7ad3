using System.Diagnostics;
using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

/// <summary>
/// virt kit builds the kit from what the tool carries (the script and the guest programs it compiles), not from a
/// clone of the repository. The downloaded packages and their extracted trees are linked in from the repository's kit,
/// so the run builds only the initramfs and needs no network.
/// </summary>
public sealed class KitTests
{
    [Fact]
    public void Kit_builds_an_initramfs_with_the_guest_programs_from_the_tool_alone()
    {
        string source = RepositoryPaths.LinuxGuestKit;
        Assert.SkipUnless(Directory.Exists(Path.Combine(source, "debs")) && Directory.Exists(Path.Combine(source, "kernel-root")),
            "The guest kit's downloads are missing; run scripts/get-linux-guest.sh.");
        using var kit = new TempDirectory();
        foreach (string name in (string[])["debs", "kernel-root", "busybox-root"])
        {
            // Hard links: nothing is copied, and the script's "already extracted" stamps come along.
            HostTools.Run("cp", $"-al {Path.Combine(source, name)} {Path.Combine(kit.Path, name)}");
        }

        // Outside the repository, so that nothing can be found beside the current directory.
        using var elsewhere = new TempDirectory();
        var result = VirtTool.Run(["kit", "--output", kit.Path, "--quiet"], workingDirectory: elsewhere.Path, timeout: TimeSpan.FromMinutes(5));

        Assert.True(result.ExitCode == 0, result.All);
        string initramfs = Path.Combine(kit.Path, "initramfs.cpio");
        Assert.True(File.Exists(initramfs), result.All);
        Assert.True(File.Exists(Path.Combine(kit.Path, "vmlinuz")), result.All);
        string listing = HostTools.Run("cpio", $"-it --quiet -F {initramfs}");
        Assert.Contains("bin/virt-agent\n", listing, StringComparison.Ordinal);
        Assert.Contains("bin/virt-modload\n", listing, StringComparison.Ordinal);
        Assert.Contains("lib/modules/load.order\n", listing, StringComparison.Ordinal);
        Assert.Contains("init\n", listing, StringComparison.Ordinal);
    }
}
