using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Orleans;
using Orleans.Hosting;
using Orleans.Runtime;
using Orleans.Runtime.Placement;
using Orleans.TestingHost;
using Virt.Boot;
using Virt.Orleans;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Orleans;

/// <summary>A two-silo in-process TestCluster with VM grains and file storage, and the 16 MiB counter guest both benchmarks use.</summary>
internal sealed class BenchCluster : IAsyncDisposable
{
    public const ulong Load = 0x100000;
    public const ulong Counter = 0x50000;
    private const string StorageKey = "VirtBenchmarks:Storage";
    private const string ResumeOnArrivalKey = "VirtBenchmarks:ResumeOnArrival";

    public static readonly byte[] Guest = GuestProgram.Assemble(64, Load, a =>
    {
        var loop = a.CreateLabel();
        a.mov(dx, 0x3F8);
        foreach (char c in "ready\n")
        {
            a.mov(al, (byte)c);
            a.@out(dx, al);
        }

        a.Label(ref loop);
        a.inc(__qword_ptr[Counter]);
        a.jmp(loop);
    });

    private BenchCluster(TempDirectory directory, TestCluster cluster)
    {
        Directory = directory;
        Cluster = cluster;
    }

    public TempDirectory Directory { get; }

    public TestCluster Cluster { get; }

    public static VirtualMachineSpec Spec => new() { MemoryMiB = 16, Backend = VirtualMachineBackend.Interpreter, FlatImage = Guest, LoadAddress = Load };

    /// <summary>The same machine built directly, for the baselines.</summary>
    public static VirtualMachineBuilder DirectBuilder() => VirtualMachine.CreateBuilder()
        .WithInterpreter()
        .WithMemoryMiB(16)
        .WithFlatBinary(Guest, new GuestAddress(Load))
        .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
        .WithSerialConsole(Stream.Null);

    /// <summary>Starts the two silos; <paramref name="resumeOnArrival"/> sets <see cref="VirtualMachineGrainOptions.ResumeOnArrival"/>.</summary>
    public static async Task<BenchCluster> StartAsync(bool resumeOnArrival = false)
    {
        var directory = new TempDirectory();
        var builder = new TestClusterBuilder(2);
        builder.Properties[StorageKey] = directory.Path;
        builder.Properties[ResumeOnArrivalKey] = resumeOnArrival ? "true" : "false";
        builder.AddSiloBuilderConfigurator<SiloConfigurator>();
        var cluster = builder.Build();
        await cluster.DeployAsync().ConfigureAwait(false);
        return new BenchCluster(directory, cluster);
    }

    /// <summary>A VM grain on the second silo, started (so it has run) and paused: no guest competes for the CPU.</summary>
    public async Task<IVirtualMachineGrain> PausedVmAsync(string name)
    {
        var vm = Cluster.Client.GetGrain<IVirtualMachineGrain>(name);
        RequestContext.Set(IPlacementDirector.PlacementHintKey, Cluster.SecondarySilos[0].SiloAddress);
        try
        {
            await vm.CreateAsync(Spec).ConfigureAwait(false);
        }
        finally
        {
            RequestContext.Remove(IPlacementDirector.PlacementHintKey);
        }

        await vm.StartAsync().ConfigureAwait(false);
        await vm.WaitForConsoleAsync("ready\n", 0, TimeSpan.FromMinutes(1)).ConfigureAwait(false);
        await vm.PauseAsync().ConfigureAwait(false);
        return vm;
    }

    /// <summary>A running VM grain with dirty-page tracking on the second silo, past its ready line.</summary>
    public async Task<IVirtualMachineGrain> RunningVmAsync(string name)
    {
        var vm = Cluster.Client.GetGrain<IVirtualMachineGrain>(name);
        RequestContext.Set(IPlacementDirector.PlacementHintKey, Cluster.SecondarySilos[0].SiloAddress);
        try
        {
            await vm.CreateAsync(Spec with { DirtyPageTracking = true }).ConfigureAwait(false);
        }
        finally
        {
            RequestContext.Remove(IPlacementDirector.PlacementHintKey);
        }

        await vm.StartAsync().ConfigureAwait(false);
        await vm.WaitForConsoleAsync("ready\n", 0, TimeSpan.FromMinutes(1)).ConfigureAwait(false);
        return vm;
    }

    public async ValueTask DisposeAsync()
    {
        await Cluster.DisposeAsync().ConfigureAwait(false);
        Directory.Dispose();
    }

    private sealed class SiloConfigurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder) =>
            siloBuilder
                .AddVirtualMachineGrains(o => o.ResumeOnArrival = siloBuilder.Configuration[ResumeOnArrivalKey] != "false")
                .AddVirtualMachineFileStorage(siloBuilder.Configuration[StorageKey]!);
    }
}

/// <summary>
/// What a grain call costs: reading 8 bytes of guest memory through the VM grain (cluster client, gateway, silo,
/// grain) and the grain's status, against the same read on a VM in this process (baseline).
/// </summary>
[SimpleJob(RunStrategy.Throughput, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class OrleansCallBenchmarks
{
    private BenchCluster? _cluster;
    private IVirtualMachineGrain? _grain;
    private VirtualMachine? _direct;

    [GlobalSetup]
    public void Setup()
    {
        _cluster = BenchCluster.StartAsync().GetAwaiter().GetResult();
        _grain = _cluster.PausedVmAsync("call-bench").GetAwaiter().GetResult();
        _direct = BenchCluster.DirectBuilder().Build();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _direct?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _cluster?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    [Benchmark(Baseline = true, Description = "read 8 bytes of guest memory, VM in this process")]
    public ulong DirectRead() => _direct!.Memory.Read<ulong>(new GuestAddress(BenchCluster.Counter));

    [Benchmark(Description = "read 8 bytes of guest memory through the VM grain")]
    public async Task<byte[]> GrainRead() => await _grain!.ReadMemoryAsync(BenchCluster.Counter, 8).ConfigureAwait(false);

    [Benchmark(Description = "the VM grain's status")]
    public async Task<VirtualMachineStatus> GrainStatus() => await _grain!.GetStatusAsync().ConfigureAwait(false);
}

/// <summary>
/// Bringing a VM back on another silo: moving a paused VM grain between the two silos (save to the store, deactivate,
/// activate on the other silo, restore from the store, answer a call there), against restoring the same machine's
/// snapshot file directly in this process (baseline). The global clean-up prints the grain's own restore and save times.
/// </summary>
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 2, iterationCount: 15)]
public class OrleansReactivationBenchmarks
{
    private BenchCluster? _cluster;
    private IVirtualMachineGrain? _grain;
    private string _snapshot = "";

    [GlobalSetup]
    public void Setup()
    {
        _cluster = BenchCluster.StartAsync().GetAwaiter().GetResult();
        _grain = _cluster.PausedVmAsync("move-bench").GetAwaiter().GetResult();
        _snapshot = Path.Combine(_cluster.Directory.Path, "direct.snap");
        SaveDirectAsync(_snapshot).GetAwaiter().GetResult();
    }

    private static async Task SaveDirectAsync(string path)
    {
        await using var vm = BenchCluster.DirectBuilder().Build();
        await vm.StartAsync().ConfigureAwait(false);
        await vm.PauseAsync().ConfigureAwait(false);
        await vm.SaveSnapshotAsync(path).ConfigureAwait(false);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        var metrics = _grain!.GetMetricsAsync().GetAwaiter().GetResult();
        Console.WriteLine($"// grain: {metrics.Restores} restores, last {metrics.LastRestoreDuration.TotalMilliseconds:F2} ms; {metrics.SnapshotsSaved} saves, last {metrics.LastSaveDuration.TotalMilliseconds:F2} ms, {metrics.LastSnapshotBytes >> 20} MiB");
        _cluster?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    [Benchmark(Baseline = true, Description = "restore the snapshot file in this process (paused)")]
    public async Task DirectRestore()
    {
        await using var vm = await VirtualMachine.RestoreAsync(_snapshot, b => b.WithSerialConsole(Stream.Null)).ConfigureAwait(false);
    }

    [Benchmark(Description = "move the paused VM grain to the other silo and call it there")]
    public async Task GrainMove()
    {
        var here = (await _grain!.GetStatusAsync().ConfigureAwait(false)).Silo;
        var target = await _grain.MoveAsync(mode: VirtualMachineMoveMode.SaveAndRestore).ConfigureAwait(false);
        SiloAddress now = here;
        while (!now.Equals(target))
        {
            now = (await _grain.GetStatusAsync().ConfigureAwait(false)).Silo;
        }
    }
}

/// <summary>
/// Moving a running VM grain (16 MiB counter guest on the interpreter, dirty-page tracking on) back and forth between
/// the two silos: by live migration over the silos' migration connection, against save to the store and restore
/// (the baseline). The time measured is the whole move as a caller sees it (until the grain answers from the target);
/// the global clean-up prints the guest's downtime (paused on the source to running on the target) that the grain
/// measured for each move.
/// </summary>
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 2, iterationCount: 15)]
public class OrleansMigrationBenchmarks
{
    private readonly List<double> _downtimes = [];
    private BenchCluster? _cluster;
    private IVirtualMachineGrain? _grain;

    /// <summary>How the VM moves.</summary>
    [Params(VirtualMachineMoveMode.SaveAndRestore, VirtualMachineMoveMode.Live)]
    public VirtualMachineMoveMode Mode { get; set; }

    /// <summary>Whether a live move resumes the guest on the target as soon as it arrives (<see cref="VirtualMachineGrainOptions.ResumeOnArrival"/>).</summary>
    [Params(false, true)]
    public bool ResumeOnArrival { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _cluster = BenchCluster.StartAsync(ResumeOnArrival).GetAwaiter().GetResult();
        _grain = _cluster.RunningVmAsync($"migration-bench-{Mode}").GetAwaiter().GetResult();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        var sorted = _downtimes.Order().ToList();
        if (sorted.Count > 0)
        {
            Console.WriteLine($"// {Mode}, resume on arrival {ResumeOnArrival}: guest downtime over {sorted.Count} moves: median {sorted[sorted.Count / 2]:F2} ms, mean {sorted.Average():F2} ms, min {sorted[0]:F2} ms, max {sorted[^1]:F2} ms");
        }

        _cluster?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    [Benchmark(Description = "move the running VM grain to the other silo and call it there")]
    public async Task Move()
    {
        var here = (await _grain!.GetStatusAsync().ConfigureAwait(false)).Silo;
        var target = _cluster!.Cluster.Silos.Select(s => s.SiloAddress).First(s => !s.Equals(here));
        await _grain.MoveAsync(target, Mode).ConfigureAwait(false);
        SiloAddress now = here;
        while (!now.Equals(target))
        {
            now = (await _grain.GetStatusAsync().ConfigureAwait(false)).Silo;
        }

        var metrics = await _grain.GetMetricsAsync().ConfigureAwait(false);
        if (metrics.LastMoveDowntime is { } downtime)
        {
            _downtimes.Add(downtime.TotalMilliseconds);
        }
    }
}
