using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using Virt.Testing;

namespace Virt.Benchmarks.Linux;

/// <summary>
/// What decompressing the guest kit's bzImage on the host saves: boots to <c>VIRT-INIT-READY</c> on the interpreter,
/// alternately with the kernel decompressed in the guest and on the host, in one process, and prints for each the
/// build time, the guest instructions retired and the vCPU thread's CPU to the marker, and the wall-clock time:
/// <c>dotnet run -c Release --project tests/Virt.Benchmarks -- kernel-load [runs]</c>.
/// </summary>
internal static class KernelLoadCost
{
    private const string Marker = "VIRT-INIT-READY";

    public static async Task RunAsync(int runs)
    {
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");
        if (!File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }

        long retired = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == VirtualizationTelemetry.MeterName && instrument.Name == "virt.vm.instructions")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref retired, value));
        listener.Start();

        for (int r = 0; r < runs; r++)
        {
            foreach (bool onHost in new[] { false, true })
            {
                var console = new MarkerStream(Marker);
                var clock = Stopwatch.StartNew();
                var vm = VirtualMachine.CreateBuilder()
                    .WithInterpreter()
                    .WithMemoryMiB(256)
                    .WithLinuxKernel(kernel)
                    .WithHostKernelDecompression(onHost)
                    .WithInitrd(initrd)
                    .WithKernelCommandLine("quiet virt.cmdline=true")
                    .WithSerialConsole(console)
                    .Build();
                double build = clock.Elapsed.TotalSeconds;
                await using (vm)
                {
                    clock.Restart();
                    await vm.StartAsync();
                    await console.Seen.Task.WaitAsync(TimeSpan.FromMinutes(10));
                    double seconds = clock.Elapsed.TotalSeconds;
                    double cpu = VcpuThreadSeconds();
                    long before = Interlocked.Read(ref retired);
                    await vm.StopAsync();
                    long instructions = Interlocked.Read(ref retired) - before;
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{(onHost ? "host " : "guest")} decompression: build {build * 1000:F0} ms, {instructions / 1e6:F0} M instructions, vCPU thread {cpu:F1} s CPU, {seconds:F1} s to {Marker}"));
                }
            }
        }
    }

    /// <summary>The CPU seconds of the vCPU threads that exist now (Linux, /proc/self/task/*/stat).</summary>
    private static double VcpuThreadSeconds()
    {
        double total = 0;
        foreach (string task in Directory.Exists("/proc/self/task") ? Directory.GetDirectories("/proc/self/task") : [])
        {
            try
            {
                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                int open = stat.IndexOf('(', StringComparison.Ordinal);
                int close = stat.LastIndexOf(')');
                if (stat[(open + 1)..close].Contains("vCPU", StringComparison.Ordinal))
                {
                    string[] fields = stat[(close + 2)..].Split(' ');
                    total += (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
                }
            }
            catch (IOException)
            {
                // The thread ended meanwhile.
            }
        }

        return total;
    }
}
