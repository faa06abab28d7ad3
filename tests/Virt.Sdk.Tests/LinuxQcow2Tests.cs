using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// Two qcow2 images made by qemu-img for the shared guest of <see cref="BootedDevicesGuest"/>: vda without a backing
/// file, vdb an overlay over a raw ext4 image that holds a file written on the host. Made before the guest boots; when
/// qemu-img is missing the guest boots without them and <see cref="LinuxQcow2Tests"/> fails saying so.
/// </summary>
public sealed class BootedQcow2Disks : IDisposable
{
    private readonly TempDirectory _dir = new("virt-qcow2-");

    private BootedQcow2Disks()
    {
        string tree = Directory.CreateDirectory(Path.Combine(_dir.Path, "tree")).FullName;
        File.WriteAllText(Path.Combine(tree, "from-base.txt"), "written-on-the-host\n");
        HostTools.Run("qemu-img", $"create -f qcow2 {Plain} 16M");
        HostTools.Run("mkfs.ext4", $"-q -F -d {tree} {BaseImage} 16M");
        HostTools.Run("qemu-img", $"create -f qcow2 -b base.raw -F raw {Top}");
        BaseBefore = File.ReadAllBytes(BaseImage);
    }

    /// <summary>vda: an empty qcow2 image, no backing file.</summary>
    public string Plain => Path.Combine(_dir.Path, "plain.qcow2");

    /// <summary>The raw ext4 image under <see cref="Top"/>; the guest must leave it as it was.</summary>
    public string BaseImage => Path.Combine(_dir.Path, "base.raw");

    /// <summary>vdb: a qcow2 overlay over <see cref="BaseImage"/>.</summary>
    public string Top => Path.Combine(_dir.Path, "top.qcow2");

    public byte[] BaseBefore { get; }

    /// <summary>A folder for what the test converts the images to.</summary>
    public string Work => _dir.Path;

    /// <summary>The images, or null when qemu-img is not installed (the test reports that).</summary>
    public static BootedQcow2Disks? CreateIfQemuImg() => File.Exists("/usr/bin/qemu-img") ? new BootedQcow2Disks() : null;

    /// <summary>Attaches the two images (vda, vdb: the guest's only virtio-blk devices).</summary>
    public VirtualMachineBuilder Configure(VirtualMachineBuilder builder) => builder.WithVirtioBlock(Plain).WithVirtioBlock(Top);

    public void Dispose() => _dir.Dispose();
}

/// <summary>
/// qcow2 images made by qemu-img, one without and one with a backing file, attached to a Linux guest on the
/// interpreter (the shared guest of <see cref="BootedDevicesGuest"/>, driven through its agent), which makes and
/// writes file systems on them and flushes them; qemu-img then checks the images and reads back what the guest wrote.
/// The images stay attached to the running guest, so qemu-img opens them with -U (the VM holds QEMU's locks on them):
/// what it reads is what the guest's flush (sync, umount) put in the files.
/// </summary>
[Collection(nameof(BootedDevicesGuest))]
public sealed class LinuxQcow2Tests(BootedDevicesGuest guest)
{
    [Fact]
    public async Task Guest_writes_file_systems_to_qemu_img_images_that_qemu_img_checks_and_reads_back()
    {
        guest.Require();
        var disks = guest.Qcow2Disks;
        Assert.True(disks is not null, "qemu-img is not installed: apt-get install -y qemu-utils (.ci/run installs it).");
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(6));

        // vda: a file system made in the guest; vdb: the host's file system through the overlay, plus a new file.
        string command =
            "mke2fs -q /dev/vda && mkdir -p /qa && mount -t ext2 /dev/vda /qa && seq 1 3000 > /qa/numbers.txt && echo guest-plain > /qa/hello.txt && umount /qa && "
            + "mkdir -p /qb && mount -t ext4 /dev/vdb /qb && cat /qb/from-base.txt && seq 5 4000 > /qb/more.txt && sync && umount /qb && echo DISKS-DONE";
        var run = await guest.Vm!.ExecAsync("sh", ["-c", command], cancellationToken: timeout.Token);
        string text = run.StandardOutput + run.StandardError;
        Assert.True(run.ExitCode == 0, $"exit {run.ExitCode}\n{text}");
        Assert.Contains("written-on-the-host", text, StringComparison.Ordinal);
        Assert.Contains("DISKS-DONE", text, StringComparison.Ordinal);

        HostTools.Run("qemu-img", $"check -U {disks.Plain}");
        HostTools.Run("qemu-img", $"check -U {disks.Top}");
        Assert.Equal(disks.BaseBefore, File.ReadAllBytes(disks.BaseImage));
        string plainRaw = Path.Combine(disks.Work, "plain.raw");
        string topRaw = Path.Combine(disks.Work, "top.raw");
        HostTools.Run("qemu-img", $"convert -U -O raw {disks.Plain} {plainRaw}");
        HostTools.Run("qemu-img", $"convert -U -O raw {disks.Top} {topRaw}");
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
