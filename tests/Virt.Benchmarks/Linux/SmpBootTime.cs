using System.Diagnostics;
using Virt.Testing;

namespace Virt.Benchmarks.Linux;

/// <summary>
/// Seconds from start to the guest kit's <c>VIRT-INIT-READY</c> marker on the interpreter with 1, 2 and 4 vCPUs, each in
/// the same process one after the other, with the 1-vCPU boot as the baseline of the ratio:
/// <c>dotnet run -c Release --project tests/Virt.Benchmarks -- smp-boot [runs] [vcpus]</c> (a vCPU count given boots only that one).
/// </summary>
internal static class SmpBootTime
{
    private const string Marker = "VIRT-INIT-READY";

    public static async Task RunAsync(int runs, int onlyVcpus = 0)
    {
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio.gz");
        if (!File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }

        double baseline = 0;
        foreach (int vcpus in onlyVcpus > 0 ? new[] { onlyVcpus } : new[] { 1, 2, 4 })
        {
            double best = double.MaxValue;
            for (int r = 0; r < runs; r++)
            {
                best = Math.Min(best, await BootAsync(kernel, initrd, vcpus));
            }

            if (vcpus == 1)
            {
                baseline = best;
            }

            Console.WriteLine($"{vcpus} vCPU(s): {best:F1} s to {Marker} (best of {runs}; ratio {best / baseline:F2})");
        }
    }

    private static async Task<double> BootAsync(string kernel, string initrd, int vcpus)
    {
        var console = new MarkerStream(Marker);
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithVcpus(vcpus)
            .WithMemoryMiB(256)
            .WithLinuxKernel(kernel)
            .WithInitrd(initrd)
            .WithKernelCommandLine("quiet virt.cmdline=true")
            .WithSerialConsole(console)
            .Build();
        var clock = Stopwatch.StartNew();
        await vm.StartAsync();
        await console.Seen.Task.WaitAsync(TimeSpan.FromMinutes(10));
        double seconds = clock.Elapsed.TotalSeconds;
        await vm.StopAsync();
        return seconds;
    }
}
