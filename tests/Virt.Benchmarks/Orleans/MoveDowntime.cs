using System.Diagnostics;
using System.Globalization;
using Orleans.Runtime;
using Virt.Orleans;

namespace Virt.Benchmarks.Orleans;

/// <summary>
/// The guest downtime of moves of a running VM grain (the 16 MiB counter guest, dirty-page tracking on) back and forth
/// between two in-process silos: save and restore, live with the guest resumed when its grain arrives (the behaviour
/// before <see cref="VirtualMachineGrainOptions.ResumeOnArrival"/>), and live with the guest resumed as soon as its state
/// arrives, in one process, one cluster per way, so the three can be compared.
/// </summary>
/// <remarks>dotnet run -c Release --project tests/Virt.Benchmarks -- orleans-move [moves]</remarks>
internal static class MoveDowntime
{
    public static async Task RunAsync(int moves)
    {
        var ways = new (string Name, VirtualMachineMoveMode Mode, bool ResumeOnArrival)[]
        {
            ("save and restore", VirtualMachineMoveMode.SaveAndRestore, false),
            ("live, resumed when the grain arrives", VirtualMachineMoveMode.Live, false),
            ("live, resumed when the state arrives", VirtualMachineMoveMode.Live, true),
        };
        var results = new List<(string Name, List<double> Downtime, List<double> Whole, List<double> SourcePause)>();
        foreach (var way in ways)
        {
            var cluster = await BenchCluster.StartAsync(way.ResumeOnArrival).ConfigureAwait(false);
            await using (cluster.ConfigureAwait(false))
            {
                var grain = await cluster.RunningVmAsync("move-downtime").ConfigureAwait(false);
                var downtime = new List<double>();
                var whole = new List<double>();
                var sourcePause = new List<double>();
                for (int i = 0; i < moves + 3; i++)
                {
                    var here = (await grain.GetStatusAsync().ConfigureAwait(false)).Silo;
                    var target = cluster.Cluster.Silos.Select(s => s.SiloAddress).First(s => !s.Equals(here));
                    long started = Stopwatch.GetTimestamp();
                    await grain.MoveAsync(target, way.Mode).ConfigureAwait(false);
                    SiloAddress now = here;
                    while (!now.Equals(target))
                    {
                        now = (await grain.GetStatusAsync().ConfigureAwait(false)).Silo;
                    }

                    double elapsed = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                    var metrics = await grain.GetMetricsAsync().ConfigureAwait(false);
                    if (i >= 3 && metrics.LastMoveDowntime is { } d)
                    {
                        if (way.Mode == VirtualMachineMoveMode.Live && !metrics.LastMoveLive)
                        {
                            throw new InvalidOperationException("A live move fell back to save and restore.");
                        }

                        downtime.Add(d.TotalMilliseconds);
                        whole.Add(elapsed);
                        sourcePause.Add(metrics.LastMigrationSourcePause.TotalMilliseconds);
                    }
                }

                results.Add((way.Name, downtime, whole, sourcePause));
            }
        }

        double baseline = Median(results[1].Downtime);
        Console.WriteLine($"{moves} moves each of a running 16 MiB guest between two in-process silos (after 3 warm-up moves):");
        foreach (var (name, downtime, whole, sourcePause) in results)
        {
            var sorted = downtime.Order().ToList();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {name}: guest downtime median {Median(downtime):F1} ms, mean {downtime.Average():F1}, min {sorted[0]:F1}, max {sorted[^1]:F1}; whole move as the caller sees it, median {Median(whole):F1} ms; live: the source's pause to the end of the transfer, median {Median(sourcePause):F1} ms; downtime / live-before = {Median(downtime) / baseline:F2}"));
        }
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted[sorted.Count / 2];
    }
}
