using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// qcow2 images made by qemu-img, one without and one with a backing file, attached to a Linux guest on the
/// interpreter, which makes and writes file systems on them; qemu-img then checks the images and reads back what
/// the guest wrote.
/// </summary>
public sealed class LinuxQcow2Tests
{
    [Fact]
    public async Task Guest_writes_file_systems_to_qemu_img_images_that_qemu_img_checks_and_reads_back()
    {
        Assert.SkipUnless(File.Exists(LinuxKit.Kernel) && File.Exists(LinuxKit.Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        Assert.True(File.Exists("/usr/bin/qemu-img"), "qemu-img is not installed: apt-get install -y qemu-utils (.ci/run installs it).");
        using var dir = new TempDirectory();
        string plain = Path.Combine(dir.Path, "plain.qcow2");
        string baseImage = Path.Combine(dir.Path, "base.raw");
        string top = Path.Combine(dir.Path, "top.qcow2");
        string tree = Directory.CreateDirectory(Path.Combine(dir.Path, "tree")).FullName;
        File.WriteAllText(Path.Combine(tree, "from-base.txt"), "written-on-the-host\n");
        HostTools.Run("qemu-img", $"create -f qcow2 {plain} 16M");
        HostTools.Run("mkfs.ext4", $"-q -F -d {tree} {baseImage} 16M");
        HostTools.Run("qemu-img", $"create -f qcow2 -b base.raw -F raw {top}");
        byte[] baseBefore = File.ReadAllBytes(baseImage);

        // vda: a file system made in the guest; vdb: the host's file system through the overlay, plus a new file.
        string command =
            "mke2fs -q /dev/vda && mount -t ext2 /dev/vda /mnt && seq 1 3000 > /mnt/numbers.txt && echo guest-plain > /mnt/hello.txt && umount /mnt && "
            + "mkdir -p /b && mount -t ext4 /dev/vdb /b && cat /b/from-base.txt && seq 5 4000 > /b/more.txt && sync && umount /b && echo DISKS-DONE";
        var output = new MemoryStream();
        await using (var vm = LinuxKit.Interactive(output)
            .WithKernelCommandLine($"quiet virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(command))}")
            .WithVirtioBlock(plain)
            .WithVirtioBlock(top)
            .Build())
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(12));
            var exit = await vm.RunAsync(timeout.Token);
            string text = Encoding.UTF8.GetString(output.ToArray());
            Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
            Assert.Contains("written-on-the-host", text, StringComparison.Ordinal);
            Assert.Contains("DISKS-DONE", text, StringComparison.Ordinal);
            Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);
        }

        HostTools.Run("qemu-img", $"check {plain}");
        HostTools.Run("qemu-img", $"check {top}");
        Assert.Equal(baseBefore, File.ReadAllBytes(baseImage));
        string plainRaw = Path.Combine(dir.Path, "plain.raw");
        string topRaw = Path.Combine(dir.Path, "top.raw");
        HostTools.Run("qemu-img", $"convert -O raw {plain} {plainRaw}");
        HostTools.Run("qemu-img", $"convert -O raw {top} {topRaw}");
        string numbers = string.Concat(Enumerable.Range(1, 3000).Select(i => i + "\n"));
        string more = string.Concat(Enumerable.Range(5, 4000 - 4).Select(i => i + "\n"));
        Assert.Equal(numbers, HostTools.Run("debugfs", $"-R \"cat /numbers.txt\" {plainRaw}"));
        Assert.Equal("guest-plain\n", HostTools.Run("debugfs", $"-R \"cat /hello.txt\" {plainRaw}"));
        Assert.Equal(more, HostTools.Run("debugfs", $"-R \"cat /more.txt\" {topRaw}"));
        Assert.Equal("written-on-the-host\n", HostTools.Run("debugfs", $"-R \"cat /from-base.txt\" {topRaw}"));
        HostTools.Run("e2fsck", $"-f -n {plainRaw}");
        HostTools.Run("e2fsck", $"-f -n {topRaw}");
    }
}
