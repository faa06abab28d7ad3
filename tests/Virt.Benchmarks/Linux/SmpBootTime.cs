using System.Diagnostics;
using System.Globalization;
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
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");
        if (!File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }

        _ = Instructions;
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

            Console.WriteLine($"{vcpus} vCPU(s): {best:F2} s to {Marker} (best of {runs}; ratio {best / baseline:F2})");
        }
    }

    private static long s_instructions;

    /// <summary>Adds up the SDK's <c>virt.vm.instructions</c> counter (recorded when a VM stops).</summary>
    private static readonly System.Diagnostics.Metrics.MeterListener Instructions = StartListener();

    private static System.Diagnostics.Metrics.MeterListener StartListener()
    {
        var listener = new System.Diagnostics.Metrics.MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Name == "virt.vm.instructions")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref s_instructions, value));
        listener.Start();
        return listener;
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
        PrintThreadCpu();
        long before = Interlocked.Read(ref s_instructions);
        await vm.StopAsync();
        Console.WriteLine($"  guest instructions retired by the stop: {(Interlocked.Read(ref s_instructions) - before) / 1e6:F0} million");
        return seconds;
    }

    /// <summary>
    /// The CPU seconds of the vCPU threads and of the JIT tier's compiler thread so far (Linux, from
    /// /proc/self/task/*/stat), and the compiler's counts: on a machine shared with other work these say more than the
    /// wall-clock time, and on an idle 2-core machine the vCPU threads' time is about the boot's wall-clock time.
    /// </summary>
    private static void PrintThreadCpu()
    {
        const string Tasks = "/proc/self/task";
        if (!Directory.Exists(Tasks))
        {
            return;
        }

        double vcpu = 0, compiler = 0;
        foreach (string task in Directory.GetDirectories(Tasks))
        {
            try
            {
                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                int open = stat.IndexOf('(', StringComparison.Ordinal);
                int close = stat.LastIndexOf(')');
                string name = stat[(open + 1)..close];
                string[] fields = stat[(close + 2)..].Split(' ');
                double cpu = (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
                if (name.Contains("vCPU", StringComparison.Ordinal))
                {
                    vcpu += cpu;
                }
                else if (name == "Virt JIT")
                {
                    compiler += cpu;
                }
            }
            catch (IOException)
            {
                // The thread ended meanwhile.
            }
        }

        double process = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
        Console.WriteLine($"  CPU: process {process:F1} s, vCPU threads {vcpu:F2} s, JIT compiler thread {compiler:F2} s; jit: {Virt.Cpu.Interpreter.Jit.JitCompilerThread.Shared.Describe()}; managed heap {GC.GetTotalMemory(false) / 1e6:F0} MB, working set {Environment.WorkingSet / 1e6:F0} MB; GC: {GC.CollectionCount(0)} collections ({GC.CollectionCount(1)} of gen 1, {GC.CollectionCount(2)} of gen 2), {GC.GetTotalPauseDuration().TotalMilliseconds:F0} ms paused, {GC.GetTotalAllocatedBytes() / 1e6:F0} MB allocated");
    }
}
