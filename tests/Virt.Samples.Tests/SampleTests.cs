using System.Diagnostics;
using System.Reflection;
using Virt.Testing;
using Xunit;

[assembly: AssemblyFixture(typeof(Virt.Testing.DeleteRunDirectories))]

namespace Virt.Samples.Tests;

/// <summary>Runs a sample (each is built before this project) as a process and returns its exit code and output.</summary>
internal static class Samples
{
    private static readonly string Configuration =
        typeof(Samples).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";

    public static (int ExitCode, string Output) Run(string name, params string[] args) => Run(name, jit: true, args);

    /// <summary>Runs a sample; <paramref name="jit"/> false turns the interpreter's JIT tier off in it (<see cref="InterpreterEnvironment.JitOff"/>).</summary>
    public static (int ExitCode, string Output) Run(string name, bool jit, params string[] args)
    {
        string root = RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root (Virt.Sdk.sln) was not found.");
        string dll = Path.Combine(root, "samples", name, "bin", Configuration, "net10.0", name + ".dll");
        Assert.True(File.Exists(dll), $"{dll} is missing; build the solution first.");
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (!jit)
        {
            psi.Environment[InterpreterEnvironment.JitVariable] = InterpreterEnvironment.JitOff;
        }

        psi.ArgumentList.Add(dll);
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        // Linux samples boot a kernel on the interpreter: generous on a loaded machine, and what the sample printed
        // so far goes into the failure so a slow run can be told from a stuck one.
        if (!p.WaitForExit(TimeSpan.FromMinutes(8)))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            Assert.Fail($"sample {name} did not finish in 8 minutes; it printed:\n{stdout.Result}{stderr.Result}");
        }

        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    public static bool GuestKit => File.Exists(Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz"));
}

/// <summary>
/// The samples run and do what their comments promise. The samples that boot Linux each have a class of their own, so
/// that they run in parallel with the other test classes instead of one after another.
/// </summary>
public sealed class SampleTests
{
    [Theory]
    [InlineData("interpreter")]
    [InlineData("kvm")]
    public void HelloGuest_prints_its_greeting(string backend)
    {
        if (backend == "kvm")
        {
            HostRequirements.RequireKvm();
        }

        var (code, output) = Samples.Run("HelloGuest", "--backend", backend);
        Assert.True(code == 0, output);
        Assert.Contains("Hello from a Virt.Sdk guest", output, StringComparison.Ordinal);
    }

    [Fact]
    public void VectorGuest_computes_a_dot_product_with_fma_on_ymm_registers_on_the_interpreter()
    {
        var (code, output) = Samples.Run("VectorGuest", "--backend", "interpreter");
        Assert.True(code == 0, output);
        Assert.Contains("processor model x86-64-v3", output, StringComparison.Ordinal);
        Assert.Contains("dot product of 1024 floats: guest 4001.2188, host 4001.2188: the same bits", output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("kvm")]
    public void CustomDevice_computes_a_crc32_by_dma_and_rejects_a_request_outside_ram(string backend)
    {
        if (backend == "kvm")
        {
            HostRequirements.RequireKvm();
        }

        var (code, output) = Samples.Run("CustomDevice", "--backend", backend);
        Assert.True(code == 0, output);
        Assert.Contains("crc32(\"123456789\") = 0xcbf43926", output, StringComparison.Ordinal); // the standard CRC-32 check value
        Assert.Contains("request outside RAM: status 2", output, StringComparison.Ordinal);
        Assert.Contains("device: 1 request(s) done, 1 rejected", output, StringComparison.Ordinal);
    }

    [Fact]
    public void Telemetry_exports_the_vm_span_and_metrics_to_the_console()
    {
        var (code, output) = Samples.Run("Telemetry");
        Assert.True(code == 0, output);
        Assert.Contains("guest stopped: debug exit with code 0", output, StringComparison.Ordinal);
        Assert.Contains("virt.vm.run", output, StringComparison.Ordinal);
        Assert.Contains("virt.stop.reason: debug_exit", output, StringComparison.Ordinal);
        Assert.Contains("virt.vm.exits", output, StringComparison.Ordinal);
        Assert.Contains("virt.vm.stops", output, StringComparison.Ordinal);
    }

    [Fact]
    public void Sandbox_prints_the_md5_of_its_input()
    {
        Assert.SkipUnless(File.Exists("/bin/busybox") || File.Exists("/usr/bin/busybox"), "The sandbox sample needs a static busybox (apt-get install busybox-static).");
        var (code, output) = Samples.Run("Sandbox", "hello sandbox");
        Assert.True(code == 0, output);
#pragma warning disable CA5351 // MD5 only to compare with the digest busybox md5sum prints
        string expected = Convert.ToHexStringLower(System.Security.Cryptography.MD5.HashData("hello sandbox"u8));
#pragma warning restore CA5351
        Assert.Contains(expected, output, StringComparison.Ordinal);
    }

    [Fact]
    public void ResourcePool_shares_one_cpu_two_to_one_and_refuses_a_vm_that_does_not_fit()
    {
        var (code, output) = Samples.Run("ResourcePool", "--backend", "interpreter", "--seconds", "2");
        Assert.True(code == 0, output);
        Assert.Contains("refused (Memory)", output, StringComparison.Ordinal);
        Assert.Contains("gold/silver CPU ratio", output, StringComparison.Ordinal);
    }
}

/// <summary>samples/LinuxAppliance boots the guest kit and runs a command.</summary>
public sealed class LinuxApplianceSampleTests
{
    [Fact]
    public void LinuxAppliance_runs_the_command_and_exits_with_its_status()
    {
        Assert.SkipUnless(Samples.GuestKit, "The guest kit is missing; run scripts/get-linux-guest.sh.");
        // No --backend: Auto chooses, and on a host whose KVM emulates kernel-mode code it must choose the interpreter and say why.
        // The interpreter's JIT tier is off: this boot's subject is the sample (the Sdk tests boot the same sample with it on).
        var (code, output) = Samples.Run("LinuxAppliance", jit: false, "--append", KernelParameters.SkipCryptoSelfTests, "echo sample-ran; uname -r; exit 3");
        Assert.True(code == 3, output);
        var kvm = new Virt.Cpu.Kvm.KvmHypervisor().GetAvailability();
        if (kvm.IsAvailable && kvm.SlowKernelMode is not null)
        {
            Assert.Contains("backend: interpreter (auto: kvm passed over for a guest that runs a kernel", output, StringComparison.Ordinal);
        }

        Assert.Contains("sample-ran", output, StringComparison.Ordinal);
        Assert.Contains("6.1.0", output, StringComparison.Ordinal);
    }
}

/// <summary>
/// samples/Snapshots run once per test process with <c>--keep</c>: it boots the guest kit, restores two clones, and
/// leaves its snapshot of the booted shell, which samples/Migration then starts from (<c>--snapshot</c>), so the two
/// samples share one boot.
/// </summary>
internal sealed class SnapshotsSampleRun
{
    private static readonly Lazy<Task<SnapshotsSampleRun>> Shared = new(() => Task.Run(Run), LazyThreadSafetyMode.ExecutionAndPublication);

    private SnapshotsSampleRun(int exitCode, string output, string snapshot)
    {
        ExitCode = exitCode;
        Output = output;
        Snapshot = snapshot;
    }

    public int ExitCode { get; }

    public string Output { get; }

    /// <summary>The snapshot the sample kept: the guest kit booted to a shell that has answered a command.</summary>
    public string Snapshot { get; }

    /// <summary>The one run (started by the first caller); skips the test when the guest kit is missing.</summary>
    public static Task<SnapshotsSampleRun> GetAsync()
    {
        Assert.SkipUnless(Samples.GuestKit, "The guest kit is missing; run scripts/get-linux-guest.sh.");
        return Shared.Value;
    }

    private static SnapshotsSampleRun Run()
    {
        // Deleted when every test has run (RunDirectories).
        string directory = RunDirectories.Create("virt-snapshots-sample-");

        string snapshot = Path.Combine(directory, "appliance.snap");
        // The interpreter's JIT tier is off for the boot, as in the other sample boots: the subject is the sample's
        // snapshot and clones (the Sdk tests boot with the tier on).
        var (code, output) = Samples.Run("Snapshots", jit: false, "--backend", "interpreter", "--keep", snapshot, "--append", KernelParameters.SkipCryptoSelfTests);
        return new SnapshotsSampleRun(code, output, snapshot);
    }
}

/// <summary>samples/Snapshots boots the guest kit once and restores two clones.</summary>
public sealed class SnapshotsSampleTests
{
    [Fact]
    public async Task Snapshots_restores_two_clones_that_each_answer_their_command()
    {
        var run = await SnapshotsSampleRun.GetAsync();
        Assert.True(run.ExitCode == 0, run.Output);
        Assert.Contains("6.1.0", run.Output, StringComparison.Ordinal);
        Assert.Contains("42 clones", run.Output, StringComparison.Ordinal);
        Assert.Contains("clone 2: restored in", run.Output, StringComparison.Ordinal);
        Assert.True(File.Exists(run.Snapshot), $"--keep left no snapshot at {run.Snapshot}\n{run.Output}");
    }
}

/// <summary>samples/Migration moves an appliance (restored from the Snapshots sample's snapshot) to a second process.</summary>
public sealed class MigrationSampleTests
{
    [Fact]
    public async Task Migration_moves_a_running_appliance_to_a_second_process_that_answers()
    {
        var snapshots = await SnapshotsSampleRun.GetAsync();
        Assert.True(snapshots.ExitCode == 0, "samples/Snapshots, whose snapshot this sample starts from, failed:\n" + snapshots.Output);
        var (code, output) = Samples.Run("Migration", "--backend", "interpreter", "--snapshot", snapshots.Snapshot);
        Assert.True(code == 0, output);
        Assert.Contains("[source] restored", output, StringComparison.Ordinal);
        Assert.Contains("the guest was paused for", output, StringComparison.Ordinal);
        Assert.Matches(@"\[destination \d+\] the guest answered after \d+ ms: MOVED-42 6\.1\.0", output);
    }
}

/// <summary>samples/ApplianceNetwork boots two appliances on a private network.</summary>
public sealed class ApplianceNetworkSampleTests
{
    [Fact]
    public void ApplianceNetwork_client_fetches_the_servers_page()
    {
        Assert.SkipUnless(Samples.GuestKit, "The guest kit is missing; run scripts/get-linux-guest.sh.");
        // The interpreter's JIT tier is off in both appliances: this test's subject is the sample (two JIT-tier guests
        // talk HTTP on a private network in LinuxGuestTests).
        var (code, output) = Samples.Run("ApplianceNetwork", jit: false, "--backend", "interpreter", "--append", KernelParameters.SkipCryptoSelfTests);
        Assert.True(code == 0, output);
        Assert.Contains("[client] hello from the server appliance", output, StringComparison.Ordinal);
        Assert.Contains("3 packets received", output, StringComparison.Ordinal);
    }
}
