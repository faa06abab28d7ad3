using System.Diagnostics;
using System.Globalization;
using Virt.Testing;

namespace Virt.Benchmarks.Linux;

/// <summary>
/// The peer of <see cref="SmpBootTime"/>: seconds from start to the guest kit's <c>VIRT-INIT-READY</c> marker with
/// <c>qemu-system-x86_64 -M pc -accel tcg -m 256</c> booting the same kernel, initramfs and command line, one process
/// per boot, with the CPU seconds of the whole QEMU process (all its threads) at that moment:
/// <c>dotnet run -c Release --project tests/Virt.Benchmarks -- qemu-boot [runs] [vcpus] [thp]</c>.
/// </summary>
/// <remarks>QEMU runs with transparent huge pages disabled unless <c>thp</c> is <c>on</c> (<see cref="QemuHugePages"/>).</remarks>
internal static class QemuBootTime
{
    private const string Marker = "VIRT-INIT-READY";

    public static void Run(int runs, int vcpus, bool thp = false)
    {
        Console.WriteLine(QemuHugePages.Configure(keep: thp));
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");
        if (!File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }

        for (int r = 0; r < runs; r++)
        {
            (double wall, double cpu) = Boot(kernel, initrd, vcpus);
            Console.WriteLine($"QEMU TCG, {vcpus} vCPU(s): {wall:F2} s to {Marker}, {cpu:F2} s of CPU (process)");
        }
    }

    private static (double Wall, double Cpu) Boot(string kernel, string initrd, int vcpus)
    {
        var psi = new ProcessStartInfo("qemu-system-x86_64")
        {
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string a in new[]
        {
            "-M", "pc", "-accel", "tcg", "-m", "256", "-smp", vcpus.ToString(CultureInfo.InvariantCulture), "-nographic", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 quiet virt.cmdline=true",
        })
        {
            psi.ArgumentList.Add(a);
        }

        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("qemu-system-x86_64 did not start (apt-get install qemu-system-x86).");
        try
        {
            string? line;
            while ((line = p.StandardOutput.ReadLine()) is not null && !line.Contains(Marker, StringComparison.Ordinal))
            {
            }

            double wall = clock.Elapsed.TotalSeconds;
            if (line is null)
            {
                throw new InvalidOperationException($"QEMU ended before {Marker}.");
            }

            p.Refresh();
            return (wall, p.TotalProcessorTime.TotalSeconds);
        }
        finally
        {
            p.Kill(entireProcessTree: true);
        }
    }
}
