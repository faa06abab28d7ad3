using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

public sealed class DoctorTests
{
    [Fact]
    public void Doctor_reports_each_backend_and_the_choice_the_sdk_makes()
    {
        using var empty = new TempDirectory();
        var result = VirtTool.Run(["doctor"], environment: new Dictionary<string, string?> { ["VIRT_LINUX_ARTIFACTS"] = empty.Path });

        Assert.True(result.ExitCode == 0, result.All);
        foreach (string line in new[] { "kvm:", "whp:", "interpreter:", "tap networking:", "linux guest kit:" })
        {
            Assert.Contains(line, result.Stdout, StringComparison.Ordinal);
        }

        // The report states what the SDK itself decides on this host, for kernels and for user-mode guests.
        var linux = BackendSelector.Select(BackendKind.Auto, null, kernelModeGuest: true);
        var sandbox = BackendSelector.Select(BackendKind.Auto, null, kernelModeGuest: false);
        Assert.Contains($"linux guests run on: {linux.Name} ", result.Stdout, StringComparison.Ordinal);
        Assert.Contains($"sandboxes run on:    {sandbox.Name} ", result.Stdout, StringComparison.Ordinal);

        var kvm = BackendSelector.Create(BackendKind.Kvm).GetAvailability();
        if (kvm.IsAvailable)
        {
            string expected = kvm.SlowKernelMode is null ? "[ok]      kvm hardware virtualization" : "[no]      kvm hardware virtualization: " + kvm.SlowKernelMode;
            Assert.Contains(expected, result.Stdout, StringComparison.Ordinal);
        }
        else
        {
            Assert.Contains("[no]      kvm: " + kvm.Reason, result.Stdout, StringComparison.Ordinal);
        }

        // An empty kit folder is reported with the command that fills it.
        Assert.Contains($"[no]      linux guest kit: no vmlinuz and initramfs.cpio in {empty.Path}", result.Stdout, StringComparison.Ordinal);
        Assert.Contains("run: virt kit", result.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Doctor_finds_the_guest_kit_given_with_kit()
    {
        using var kit = new TempDirectory();
        File.WriteAllBytes(Path.Combine(kit.Path, "vmlinuz"), [1]);
        File.WriteAllBytes(Path.Combine(kit.Path, "initramfs.cpio"), [1]);
        File.WriteAllText(Path.Combine(kit.Path, "kernel.release"), "6.1.0-test\n");

        var result = VirtTool.Run(["doctor", "--kit", kit.Path]);

        Assert.True(result.ExitCode == 0, result.All);
        Assert.Contains($"[ok]      linux guest kit: {kit.Path} (from --kit, kernel 6.1.0-test)", result.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Unknown_command_fails_with_usage()
    {
        var result = VirtTool.Run(["frobnicate"]);
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("frobnicate", result.All, StringComparison.Ordinal);
    }
}

/// <summary>A temporary directory removed at the end of the test.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "virt-cli-" + Guid.NewGuid().ToString("N"));

    public void Dispose() => Directory.Delete(Path, recursive: true);
}
