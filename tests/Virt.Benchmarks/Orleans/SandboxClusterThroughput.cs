using System.Diagnostics;
using System.Globalization;
using Orleans;
using Orleans.Hosting;
using Orleans.TestingHost;
using Virt.Benchmarks.Sandbox;
using Virt.Orleans;
using Virt.Sandbox;

namespace Virt.Benchmarks.Orleans;

/// <summary>
/// Sandbox calls per second through the cluster (<see cref="ISandboxGrain"/> from a cluster client, two in-process
/// silos with a pool each) against the same calls straight into one <see cref="SandboxPool"/> of as many sandboxes, in
/// one process, with the same number of calls in flight; the ratio is the cluster's cost. Run it in a fresh process
/// (the script mode does), so it also reports what a fresh process pays for its first call each way.
/// </summary>
/// <remarks>dotnet run -c Release --project tests/Virt.Benchmarks -- sandbox-cluster [calls] [in-flight]</remarks>
internal static class SandboxClusterThroughput
{
    private const int PoolPerSilo = 2;
    private const int Silos = 2;

    public static async Task RunAsync(int calls, int inFlight)
    {
        byte[] input = new byte[1024];
        long processStart = Process.GetCurrentProcess().StartTime.ToUniversalTime().Ticks;

        // Direct: one pool with the cluster's total of sandboxes.
        long started = Stopwatch.GetTimestamp();
        var pool = await SandboxPool.CreateAsync(Builder(), PoolPerSilo * Silos).ConfigureAwait(false);
        await using (pool.ConfigureAwait(false))
        {
            await pool.RunAsync(input).ConfigureAwait(false);
            var directFirst = Stopwatch.GetElapsedTime(started);
            var fromProcessStart = TimeSpan.FromTicks(DateTime.UtcNow.Ticks - processStart);
            Console.WriteLine($"fresh process: pool of {pool.Size} built and first call answered in {directFirst.TotalMilliseconds:F0} ms ({fromProcessStart.TotalMilliseconds:F0} ms after the process started)");

            started = Stopwatch.GetTimestamp();
            var builder = new TestClusterBuilder(Silos);
            builder.AddSiloBuilderConfigurator<SiloConfigurator>();
            var cluster = builder.Build();
            await cluster.DeployAsync().ConfigureAwait(false);
            await using (cluster.ConfigureAwait(false))
            {
                var grains = cluster.Client;
                var request = new SandboxRequest { Program = "echo", Stdin = input };
                var deployed = Stopwatch.GetElapsedTime(started);
                await grains.GetGrain<ISandboxGrain>(0).RunAsync(request).ConfigureAwait(false);
                var clusterFirst = Stopwatch.GetElapsedTime(started);
                Console.WriteLine($"fresh process: two silos and a client up in {deployed.TotalMilliseconds:F0} ms, first sandbox call through the cluster answered at {clusterFirst.TotalMilliseconds:F0} ms");

                // Warm both paths, then alternate measured rounds so that load from elsewhere hits both alike.
                await MeasureAsync(calls / 4, inFlight, _ => RunDirectAsync(pool, input)).ConfigureAwait(false);
                await MeasureAsync(calls / 4, inFlight, i => RunGrainAsync(grains, request, i)).ConfigureAwait(false);
                var direct = new List<double>();
                var through = new List<double>();
                for (int round = 0; round < 3; round++)
                {
                    direct.Add(await MeasureAsync(calls, inFlight, _ => RunDirectAsync(pool, input)).ConfigureAwait(false));
                    through.Add(await MeasureAsync(calls, inFlight, i => RunGrainAsync(grains, request, i)).ConfigureAwait(false));
                }

                double d = Median(direct), c = Median(through);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{calls} calls, {inFlight} in flight, {PoolPerSilo * Silos} sandboxes, median of 3 rounds: direct pool {d:F0} calls/s, through the cluster {c:F0} calls/s; cluster/direct = {c / d:F2}"));
                Console.WriteLine($"  rounds direct: {string.Join(", ", direct.Select(x => x.ToString("F0", CultureInfo.InvariantCulture)))}; through the cluster: {string.Join(", ", through.Select(x => x.ToString("F0", CultureInfo.InvariantCulture)))}");
            }
        }
    }

    private static SandboxBuilder Builder() => Virt.Sandbox.Sandbox.CreateBuilder().WithExecutable(SandboxPrograms.Echo());

    private static async Task RunDirectAsync(SandboxPool pool, byte[] input)
    {
        var result = await pool.RunAsync(input).ConfigureAwait(false);
        if (result.Stdout.Length != input.Length)
        {
            throw new InvalidOperationException($"The echo program answered {result.Stdout.Length} bytes, not {input.Length}.");
        }
    }

    private static async Task RunGrainAsync(IGrainFactory grains, SandboxRequest request, int i)
    {
        var response = await grains.GetGrain<ISandboxGrain>(i % 16).RunAsync(request).ConfigureAwait(false);
        if (response.Status != SandboxCallStatus.Exited || response.Stdout.Length != request.Stdin.Length)
        {
            throw new InvalidOperationException($"The echo program through the cluster ended {response.Status} with {response.Stdout.Length} bytes: {response.Message}");
        }
    }

    /// <summary>Runs <paramref name="calls"/> calls with <paramref name="inFlight"/> at a time; calls per second.</summary>
    private static async Task<double> MeasureAsync(int calls, int inFlight, Func<int, Task> call)
    {
        int next = -1;
        long started = Stopwatch.GetTimestamp();
        var workers = Enumerable.Range(0, inFlight).Select(async _ =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < calls)
            {
                await call(i).ConfigureAwait(false);
            }
        });
        await Task.WhenAll(workers).ConfigureAwait(false);
        return calls / Stopwatch.GetElapsedTime(started).TotalSeconds;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted[sorted.Count / 2];
    }

    private sealed class SiloConfigurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder) =>
            siloBuilder.AddVirtualMachineGrains().AddSandboxService(o => o.AddProgram("echo", Builder(), poolSize: PoolPerSilo));
    }
}
