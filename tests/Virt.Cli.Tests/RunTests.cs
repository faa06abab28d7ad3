using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

/// <summary>virt run boots the guest kit on the interpreter, once for every check (a boot costs about 20 s).</summary>
public sealed class RunTests
{
    private static bool Kit => File.Exists(Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz"));

    [Fact]
    public void Run_boots_the_kit_runs_the_command_and_exits_with_its_status()
    {
        Assert.SkipUnless(Kit, "The guest kit is missing; run scripts/get-linux-guest.sh.");
        string release = File.ReadAllText(Path.Combine(RepositoryPaths.LinuxGuestKit, "kernel.release")).Trim();

        var result = VirtTool.Run(
            ["run", "--backend", "interpreter", "--memory", "128", "--", "uname -r; echo args: \"$0\"; exit 3"],
            environment: new Dictionary<string, string?> { ["VIRT_LINUX_ARTIFACTS"] = RepositoryPaths.LinuxGuestKit },
            timeout: TimeSpan.FromMinutes(6));

        Assert.True(result.ExitCode == 3, result.All);
        Assert.Contains(release + "\n", result.Stdout.ReplaceLineEndings("\n"), StringComparison.Ordinal);
        Assert.Contains("virt run: interpreter", result.Stderr, StringComparison.Ordinal);
        Assert.Contains("guest stopped: the guest powered the machine off", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_without_a_kit_says_how_to_get_one()
    {
        using var empty = new TempDirectory();
        var result = VirtTool.Run(["run", "--", "true"], environment: new Dictionary<string, string?> { ["VIRT_LINUX_ARTIFACTS"] = empty.Path });
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("virt kit", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_rejects_bad_options_before_booting()
    {
        using var empty = new TempDirectory();
        var env = new Dictionary<string, string?> { ["VIRT_LINUX_ARTIFACTS"] = RepositoryPaths.LinuxGuestKit };
        var badNet = VirtTool.Run(["run", "--net", "bridge", "--", "true"], environment: env);
        Assert.NotEqual(0, badNet.ExitCode);
        Assert.Contains("bridge", badNet.All, StringComparison.Ordinal);

        var forwardWithoutNet = VirtTool.Run(["run", "--forward", "8080:80", "--", "true"], environment: env);
        Assert.Equal(2, forwardWithoutNet.ExitCode);
        Assert.Contains("--net user", forwardWithoutNet.Stderr, StringComparison.Ordinal);
    }
}
