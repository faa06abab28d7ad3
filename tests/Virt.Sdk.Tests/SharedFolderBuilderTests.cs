using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>WithSharedFolder: what it refuses, and the virt.mount parameters it gives a Linux guest.</summary>
public sealed class SharedFolderBuilderTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("virt-sdk-share-").FullName;

    public SharedFolderBuilderTests() => Assert.SkipUnless(OperatingSystem.IsLinux(), "Shared folders need a Linux host.");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Bad_tags_mount_points_and_missing_directories_are_refused_with_what_to_change()
    {
        var b = VirtualMachine.CreateBuilder().WithSharedFolder(_dir, "data");
        Assert.Contains("already has a shared folder tagged 'data'", Assert.Throws<ArgumentException>(() => b.WithSharedFolder(_dir, "data")).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => b.WithSharedFolder(_dir, "two words"));
        Assert.Throws<ArgumentException>(() => b.WithSharedFolder(_dir, new string('t', 37)));
        Assert.Contains("absolute path", Assert.Throws<ArgumentException>(() => b.WithSharedFolder(_dir, "x", guestMountPoint: "mnt/x")).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => b.WithSharedFolder(_dir, "y", guestMountPoint: "/mnt/a:b"));
        Assert.Throws<DirectoryNotFoundException>(() => b.WithSharedFolder(Path.Combine(_dir, "missing"), "z"));
    }

    [Fact]
    public async Task Mount_points_become_virt_mount_parameters()
    {
        Assert.SkipUnless(File.Exists(LinuxKit.Kernel), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(128)
            .WithLinuxKernel(LinuxKit.Kernel)
            .WithSharedFolder(_dir, "rw", guestMountPoint: "/mnt/rw")
            .WithSharedFolder(_dir, "ro", readOnly: true, guestMountPoint: "/mnt/ro")
            .WithSharedFolder(_dir, "manual")
            .Build();
        Assert.Contains("virt.mount=rw:/mnt/rw virt.mount=ro:/mnt/ro:ro", vm.KernelCommandLine, StringComparison.Ordinal);
        Assert.DoesNotContain("manual", vm.KernelCommandLine, StringComparison.Ordinal);
        Assert.Equal(3, vm.VirtioDevices.Count(d => d.Kind == "virtio-fs"));
    }
}
