using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Virt.Testing;

namespace Virt.Benchmarks.Linux;

/// <summary>
/// Live migration of the guest-kit appliance (256 MiB, interpreter) while a shell loop keeps it busy, through a loopback
/// socket to a receiver in the same process: rounds, total time, the sender's downtime step by step, and the downtime end
/// to end (paused on the sender to running on the receiver). The appliance is booted once and saved; each run restores
/// it, so the first run is the cold one (a fresh process, nothing compiled) and the later ones are warm. The baseline of
/// the ratio, in the same run, is restoring the same snapshot to its first instruction:
/// <c>dotnet run -c Release --project tests/Virt.Benchmarks -- migrate [runs]</c>. Needs scripts/get-linux-guest.sh.
/// </summary>
internal static class MigrationDowntime
{
    public static async Task RunAsync(int runs)
    {
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");
        if (!File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }

        string dir = Directory.CreateTempSubdirectory("virt-migrate-bench-").FullName;
        try
        {
            string snapshot = Path.Combine(dir, "appliance.snap");
            var clock = Stopwatch.StartNew();
            await SnapshotBenchmarks.BootAndSaveAsync(kernel, initrd, snapshot).ConfigureAwait(false);
            Console.WriteLine($"boot to a ready shell and save: {clock.Elapsed.TotalSeconds:F1} s");
            for (int run = 1; run <= runs; run++)
            {
                await MigrateOnceAsync(snapshot, run == 1 ? "cold" : "warm").ConfigureAwait(false);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static async Task MigrateOnceAsync(string snapshot, string kind)
    {
        // The baseline: the same snapshot restored to its first instruction (paused) and disposed.
        long t = Stopwatch.GetTimestamp();
        await using (await VirtualMachine.RestoreAsync(snapshot, b => b.WithSerialConsole(Stream.Null)).ConfigureAwait(false))
        {
        }

        var baseline = Stopwatch.GetElapsedTime(t);

        var busy = new MarkerStream("LOOP-42", keep: false);
        await using var source = await VirtualMachine.RestoreAsync(snapshot, b => b.WithSerialConsole(busy).WithDirtyPageTracking()).ConfigureAwait(false);
        await source.ResumeAsync().ConfigureAwait(false);
        await source.WriteToSerialConsoleAsync("(i=0; while :; do i=$((i+1)); done) & echo LOOP-$((6*7))\n"u8.ToArray()).ConfigureAwait(false);
        await busy.Seen.Task.WaitAsync(TimeSpan.FromMinutes(1)).ConfigureAwait(false);

        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        using var client = new TcpClient();
        var accept = listener.AcceptTcpClientAsync();
        await client.ConnectAsync(IPAddress.Loopback, ((IPEndPoint)listener.LocalEndpoint).Port).ConfigureAwait(false);
        using var server = await accept.ConfigureAwait(false);
        await using var sending = client.GetStream();
        await using var receiving = server.GetStream();

        var moved = new MarkerStream("MOVED-42", keep: false);
        var receive = Task.Run(async () =>
        {
            var vm = await VirtualMachine.ReceiveMigrationAsync(receiving, b => b.WithInterpreter().WithSerialConsole(moved)).ConfigureAwait(false);
            long restoredAt = Stopwatch.GetTimestamp();
            await vm.ResumeAsync().ConfigureAwait(false);
            return (vm, restoredAt, runningAt: Stopwatch.GetTimestamp());
        });
        long start = Stopwatch.GetTimestamp();
        var report = await source.MigrateAsync(sending).ConfigureAwait(false);
        long pausedAt = start + Ticks(report.Duration - report.Downtime);
        long lastByteAt = start + Ticks(report.Duration);
        var (destination, restored, running) = await receive.WaitAsync(TimeSpan.FromMinutes(2)).ConfigureAwait(false);
        await using (destination)
        {
            await destination.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes("echo MOVED-$((6*7))\n")).ConfigureAwait(false);
            await moved.Seen.Task.WaitAsync(TimeSpan.FromMinutes(1)).ConfigureAwait(false);
        }

        var endToEnd = Stopwatch.GetElapsedTime(pausedAt, running);
        var s = report.DowntimeSteps;
        Console.WriteLine($"{kind}: {report.Rounds} rounds, {report.PagesSent} pages ({report.ZeroPagesSent} zero, {report.BytesSent >> 20} MiB) in {Ms(report.Duration)}; "
            + $"sender paused {Ms(report.Downtime)} (vCPU stop {Ms(s.Pause)}, quiesce {Ms(s.Quiesce)}, last {report.PagesSentPaused} pages {Ms(s.LastPages)}, "
            + $"state save {Ms(s.SaveState)}, send {Ms(s.SendState)}); receiver: restore after the last byte {Ms(Stopwatch.GetElapsedTime(lastByteAt, restored))}, "
            + $"resume {Ms(Stopwatch.GetElapsedTime(restored, running))}; end to end {Ms(endToEnd)} "
            + $"= {endToEnd / baseline:F1} x the baseline (restore to the first instruction: {Ms(baseline)})");
    }

    private static long Ticks(TimeSpan span) => (long)(span.TotalSeconds * Stopwatch.Frequency);

    private static string Ms(TimeSpan span) => $"{span.TotalMilliseconds:F1} ms";
}
