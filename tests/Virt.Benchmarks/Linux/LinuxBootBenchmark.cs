using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Virt.Testing;

namespace Virt.Benchmarks.Linux;

/// <summary>
/// Seconds from start to the guest kit's <c>VIRT-INIT-READY</c> marker (printed by <c>/init</c>): Debian's
/// kernel and initramfs on the interpreter backend, next to <c>qemu-system-x86_64 -M pc -accel tcg</c>
/// booting the same files in the same run (the baseline). Needs <c>scripts/get-linux-guest.sh</c> and,
/// for the baseline, the qemu-system-x86 package.
/// </summary>
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 0, iterationCount: 3)]
public class LinuxBootBenchmark
{
    private const string Marker = "VIRT-INIT-READY";
    private string _kernel = "";
    private string _initrd = "";

    [GlobalSetup]
    public void Setup()
    {
        string kit = RepositoryPaths.LinuxGuestKit;
        _kernel = Path.Combine(kit, "vmlinuz");
        _initrd = Path.Combine(kit, "initramfs.cpio");
        if (!File.Exists(_kernel) || !File.Exists(_initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }
    }

    [Benchmark(Baseline = true, Description = "QEMU TCG, -M pc")]
    public void Qemu()
    {
        var psi = new ProcessStartInfo("qemu-system-x86_64")
        {
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "-M", "pc", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-kernel", _kernel, "-initrd", _initrd, "-append", "console=ttyS0 quiet virt.cmdline=true" })
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi) ?? throw new InvalidOperationException("qemu-system-x86_64 did not start (apt-get install qemu-system-x86).");
        try
        {
            string? line;
            while ((line = p.StandardOutput.ReadLine()) is not null && !line.Contains(Marker, StringComparison.Ordinal))
            {
            }
        }
        finally
        {
            p.Kill(entireProcessTree: true);
        }
    }

    [Benchmark(Description = "Virt.Sdk interpreter")]
    public async Task Interpreter()
    {
        var seen = new MarkerStream(Marker, keep: false);
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(_kernel)
            .WithInitrd(_initrd)
            .WithKernelCommandLine("quiet virt.cmdline=true")
            .WithSerialConsole(seen)
            .Build();
        await vm.StartAsync().ConfigureAwait(false);
        await seen.Seen.Task.WaitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        await vm.StopAsync().ConfigureAwait(false);
    }
}
