using Orleans;
using Orleans.Concurrency;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>The cluster's VM capacity as a whole: every silo's last report (see <see cref="SiloCapacity"/>). Use key 0.</summary>
public interface IVirtualMachineClusterGrain : IGrainWithIntegerKey
{
    /// <summary>The last capacity report of each active silo that hosts VM grains.</summary>
    Task<SiloCapacity[]> GetSilosAsync(CancellationToken cancellationToken = default);
}

/// <summary>Where silos publish their capacity: each report is answered with everyone's.</summary>
internal interface ICapacityDirectoryGrain : IGrainWithIntegerKey
{
    Task<SiloCapacity[]> PublishAsync(SiloCapacity report, CancellationToken cancellationToken = default);
}

/// <summary>
/// Holds the silos' reports in memory (a new activation refills within one publish interval, so it needs no storage).
/// Reports of silos that are no longer active members are dropped.
/// </summary>
[Reentrant]
internal sealed class VirtualMachineClusterGrain(IClusterMembershipService membership) : Grain, IVirtualMachineClusterGrain, ICapacityDirectoryGrain
{
    private readonly Dictionary<SiloAddress, SiloCapacity> _reports = [];

    public Task<SiloCapacity[]> GetSilosAsync(CancellationToken cancellationToken = default) => Task.FromResult(Current());

    public Task<SiloCapacity[]> PublishAsync(SiloCapacity report, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(report);
        _reports[report.Silo] = report;
        return Task.FromResult(Current());
    }

    private SiloCapacity[] Current()
    {
        var members = membership.CurrentSnapshot.Members;
        foreach (var silo in _reports.Keys.ToList())
        {
            if (!members.TryGetValue(silo, out var member) || member.Status is SiloStatus.Dead or SiloStatus.ShuttingDown or SiloStatus.Stopping)
            {
                _reports.Remove(silo);
            }
        }

        return [.. _reports.Values.OrderBy(r => r.Silo.ToString(), StringComparer.Ordinal)];
    }
}
