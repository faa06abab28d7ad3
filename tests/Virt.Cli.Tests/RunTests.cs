using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

/// <summary>virt run boots the guest kit on the interpreter (without the kernel's crypto self-tests: <see cref="KernelParameters.SkipCryptoSelfTests"/>).</summary>
public sealed class RunTests
{
    private static bool Kit => File.Exists(Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz"));

    [Fact]
    public void Run_boots_the_kit_runs_the_command_and_exits_with_its_status()
    {
        Assert.SkipUnless(Kit, "The guest kit is missing; run scripts/get-linux-guest.sh.");
        string release = File.ReadAllText(Path.Combine(RepositoryPaths.LinuxGuestKit, "kernel.release")).Trim();

        var result = VirtTool.Run(
            ["run", "--backend", "interpreter", "--memory", "128", "--append", KernelParameters.SkipCryptoSelfTests, "--", "uname -r; echo args: \"$0\"; exit 3"],
            environment: new Dictionary<string, string?>
            {
                ["VIRT_LINUX_ARTIFACTS"] = RepositoryPaths.LinuxGuestKit,
                [InterpreterEnvironment.JitVariable] = InterpreterEnvironment.JitOff, // the subject is the tool, not the interpreter's JIT tier
            },
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

        var badGdb = VirtTool.Run(["run", "--gdb", "somewhere", "--", "true"], environment: env);
        Assert.Equal(2, badGdb.ExitCode);
        Assert.Contains("--gdb takes [HOST]:PORT", badGdb.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Run_with_gdb_waits_for_the_debugger_which_reads_the_boot_registers_and_kills_the_guest()
    {
        Assert.SkipUnless(Kit, "The guest kit is missing; run scripts/get-linux-guest.sh.");
        int port;
        using (var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        }

        var virt = Task.Run(() => VirtTool.Run(
            ["run", "--backend", "interpreter", "--memory", "128", "--gdb", $"127.0.0.1:{port}", "--", "true"],
            environment: new Dictionary<string, string?> { ["VIRT_LINUX_ARTIFACTS"] = RepositoryPaths.LinuxGuestKit },
            timeout: TimeSpan.FromMinutes(3)));

        // The stub listens once the VM is built; until then GDB's connection is refused and it tries again.
        string? gdb = null;
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        while (gdb is null && !virt.IsCompleted && DateTime.UtcNow < deadline)
        {
            try
            {
                gdb = HostTools.Run("gdb", $"-nx -batch -ex \"target remote 127.0.0.1:{port}\" -ex \"printf \\\"boot rip=%#lx\\n\\\", $rip\" -ex kill", TimeSpan.FromMinutes(1));
            }
            catch (InvalidOperationException) when (!virt.IsCompleted)
            {
                await Task.Delay(200, TestContext.Current.CancellationToken);
            }
        }

        var result = await virt;
        Assert.True(gdb is not null, "GDB never connected\n" + result.All);
        Assert.Contains("boot rip=0x", gdb, StringComparison.Ordinal);
        Assert.Contains($"waiting for GDB: gdb -ex 'target remote 127.0.0.1:{port}'", result.Stderr, StringComparison.Ordinal);
        Assert.True(result.ExitCode == 1, result.All);
        Assert.DoesNotContain("VIRT-EXIT-STATUS", result.Stdout, StringComparison.Ordinal);
    }
}
