using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans;
using Orleans.Concurrency;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// A silo as a host of VMs, keyed by the silo's address (<see cref="SiloAddress.ToParsableString"/>; use
/// <see cref="VirtualMachineHostGrainExtensions.GetVirtualMachineHost"/>): always active on that silo.
/// </summary>
public interface IVirtualMachineHostGrain : IGrainWithStringKey
{
    /// <summary>The silo's capacity now (not the last published report).</summary>
    Task<SiloCapacity> GetCapacityAsync(CancellationToken cancellationToken = default);

    /// <summary>The names of the VMs active on the silo.</summary>
    Task<string[]> GetVirtualMachinesAsync(CancellationToken cancellationToken = default);

    /// <summary>The cluster's capacity as this silo's placement sees it (the last reports, with its own placements since counted in).</summary>
    Task<SiloCapacity[]> GetClusterViewAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Moves every VM off the silo: marks it draining (placement sends it no new VMs), then moves each VM to the silo
    /// placement chooses for it (live where it can, see <see cref="VirtualMachineMoveMode.Auto"/>), a few at a time,
    /// and returns once each has left or failed to. The silo stays draining until <see cref="UndrainAsync"/>.
    /// </summary>
    Task<DrainReport> DrainAsync(CancellationToken cancellationToken = default);

    /// <summary>Lets placement send VMs to the silo again after a drain.</summary>
    Task UndrainAsync(CancellationToken cancellationToken = default);
}

/// <summary>Finds a silo's <see cref="IVirtualMachineHostGrain"/>.</summary>
public static class VirtualMachineHostGrainExtensions
{
    /// <summary>The host grain of <paramref name="silo"/>.</summary>
    public static IVirtualMachineHostGrain GetVirtualMachineHost(this IGrainFactory grains, SiloAddress silo)
    {
        ArgumentNullException.ThrowIfNull(grains);
        ArgumentNullException.ThrowIfNull(silo);
        return grains.GetGrain<IVirtualMachineHostGrain>(silo.ToParsableString());
    }
}

/// <summary>A ticket for one live migration into a silo: where to connect and the one-time token to present.</summary>
[GenerateSerializer, Immutable]
internal sealed record MigrationTicket(
    [property: Id(0)] string Host,
    [property: Id(1)] int Port,
    [property: Id(2)] byte[] Token);

/// <summary>What silos ask of each other's host grains.</summary>
internal interface IVirtualMachineHostInternalGrain : IGrainWithStringKey
{
    /// <summary>
    /// Expects the VM <paramref name="name"/> by live migration; the sender connects with the ticket. With
    /// <paramref name="resumeOnArrival"/> the guest runs as soon as its state has arrived, before the grain moves.
    /// </summary>
    Task<MigrationTicket> PrepareIncomingAsync(string name, VirtualMachineSpec spec, bool resumeOnArrival, CancellationToken cancellationToken = default);

    /// <summary>Drops a VM received for <paramref name="name"/> that its grain did not claim (the move was abandoned).</summary>
    Task DiscardIncomingAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>Runs a sandbox call on this silo's pool, or refuses it with a <see cref="ClusterCapacityException"/> when the pool and its queue are full.</summary>
    Task<SandboxResponse> RunSandboxAsync(SandboxRequest request, CancellationToken cancellationToken = default);
}

[Reentrant]
[SiloPinnedPlacement]
[SuppressMessage("Reliability", "CA2007:Consider calling ConfigureAwait on the awaited task", Justification = "Grain code must continue on the grain's scheduler.")]
internal sealed partial class VirtualMachineHostGrain(
    LocalVirtualMachines local,
    ClusterCapacityView view,
    IServiceProvider services,
    IOptions<VirtualMachineGrainOptions> options,
    ILocalSiloDetails silo,
    ILogger<VirtualMachineHostGrain> logger) : Grain, IVirtualMachineHostGrain, IVirtualMachineHostInternalGrain
{
    public Task<SiloCapacity> GetCapacityAsync(CancellationToken cancellationToken = default) => Task.FromResult(local.Report());

    public Task<string[]> GetVirtualMachinesAsync(CancellationToken cancellationToken = default) => Task.FromResult(local.Names.Order(StringComparer.Ordinal).ToArray());

    public Task<SiloCapacity[]> GetClusterViewAsync(CancellationToken cancellationToken = default) => Task.FromResult(view.Silos.ToArray());

    public async Task<DrainReport> DrainAsync(CancellationToken cancellationToken = default)
    {
        long started = Stopwatch.GetTimestamp();
        local.Draining = true;
        var here = silo.SiloAddress;
        var moved = new Dictionary<string, SiloAddress>();
        var failed = new Dictionary<string, string>();
        using var gate = new SemaphoreSlim(Math.Max(1, options.Value.DrainParallelism));
        var names = local.Names.Order(StringComparer.Ordinal).ToList();
        LogDraining(logger, here, names.Count);
        var moves = names.Select(async name =>
        {
            await gate.WaitAsync(cancellationToken);
            try
            {
                var target = await MoveOffAsync(name, cancellationToken);
                lock (moved)
                {
                    moved[name] = target;
                }
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                lock (moved)
                {
                    failed[name] = ex.Message;
                }
            }
            finally
            {
                gate.Release();
            }
        }).ToList();
        await Task.WhenAll(moves);
        return new DrainReport { Silo = here, Moved = moved, Failed = failed, Duration = Stopwatch.GetElapsedTime(started) };
    }

    /// <summary>Moves one VM to the silo placement chooses and waits until it has left this silo.</summary>
    private async Task<SiloAddress> MoveOffAsync(string name, CancellationToken cancellationToken)
    {
        var vm = GrainFactory.GetGrain<IVirtualMachineGrain>(name);
        var here = silo.SiloAddress;
        var others = view.Silos.Where(s => !s.Silo.Equals(here)).ToList();
        var demand = local.Demand(name) ?? new VirtualMachineDemand((long)options.Value.DefaultVmMemoryMiB << 20, 1, false, false);
        var target = CapacityPlacementDirector.Choose(others, demand, out string refusal) ?? throw new ClusterCapacityException(refusal);
        view.Promise(target, demand);
        var timeout = Stopwatch.StartNew();
        while (local.Contains(name))
        {
            // A VM whose move did not happen (the target was not yet a placement candidate) is asked again.
            await vm.MoveAsync(target, VirtualMachineMoveMode.Auto, cancellationToken);
            for (int poll = 0; poll < 250 && local.Contains(name); poll++)
            {
                await Task.Delay(20, cancellationToken);
            }

            if (timeout.Elapsed > TimeSpan.FromMinutes(2))
            {
                throw new TimeoutException($"The VM '{name}' did not leave {here} within two minutes of being moved to {target}.");
            }
        }

        return target;
    }

    public Task UndrainAsync(CancellationToken cancellationToken = default)
    {
        local.Draining = false;
        return Task.CompletedTask;
    }

    public Task<MigrationTicket> PrepareIncomingAsync(string name, VirtualMachineSpec spec, bool resumeOnArrival, CancellationToken cancellationToken = default)
    {
        var listener = services.GetService<MigrationListener>() ?? throw new InvalidOperationException($"The silo {silo.SiloAddress} does not accept live migrations.");
        return Task.FromResult(listener.Expect(name, spec, resumeOnArrival));
    }

    public Task DiscardIncomingAsync(string name, CancellationToken cancellationToken = default)
    {
        services.GetService<MigrationListener>()?.Discard(name);
        return Task.CompletedTask;
    }

    public Task<SandboxResponse> RunSandboxAsync(SandboxRequest request, CancellationToken cancellationToken = default)
    {
        var pools = services.GetService<LocalSandboxPools>() ?? throw new ClusterCapacityException($"The silo {silo.SiloAddress} runs no sandbox service.");
        return pools.TryRun(request, cancellationToken, out var run)
            ? run
            : throw new ClusterCapacityException($"The '{request.Program}' sandbox pool of silo {silo.SiloAddress} is full.");
    }

    [LoggerMessage(30, LogLevel.Information, "Draining silo {Silo}: moving {Count} VMs")]
    private static partial void LogDraining(ILogger logger, SiloAddress silo, int count);
}
