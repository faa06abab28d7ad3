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

/// <summary>Where silos publish their capacity: each report is answered with what changed since the publisher's cursor.</summary>
internal interface ICapacityDirectoryGrain : IGrainWithIntegerKey
{
    Task<CapacityUpdate> PublishAsync(SiloCapacity report, CapacityCursor since, CancellationToken cancellationToken = default);
}

/// <summary>How far a silo's view has followed the directory: the directory activation's epoch and its change counter.</summary>
[GenerateSerializer, Immutable]
internal sealed record CapacityCursor([property: Id(0)] Guid Epoch, [property: Id(1)] long Version)
{
    public static CapacityCursor None { get; } = new(Guid.Empty, 0);
}

/// <summary>
/// The directory's answer to a report: with <see cref="Full"/>, every silo's report (the view is replaced); otherwise
/// the reports that changed since the cursor and the silos that left. <see cref="Cursor"/> is where the view is now.
/// </summary>
[GenerateSerializer, Immutable]
internal sealed record CapacityUpdate(
    [property: Id(0)] CapacityCursor Cursor,
    [property: Id(1)] bool Full,
    [property: Id(2)] SiloCapacity[] Changed,
    [property: Id(3)] SiloAddress[] Removed);

/// <summary>
/// Holds the silos' reports in memory (a new activation refills within one publish interval, so it needs no storage).
/// Reports of silos that are no longer active members are dropped. Each report that differs from the silo's previous
/// one in more than its time takes the next change number, and each silo that leaves leaves a tombstone, so a
/// publisher is answered with what changed since it last asked (a whole table only when it is new, the directory is
/// new, or it fell further behind than the tombstones kept).
/// </summary>
[Reentrant]
internal sealed class VirtualMachineClusterGrain(IClusterMembershipService membership) : Grain, IVirtualMachineClusterGrain, ICapacityDirectoryGrain
{
    private const int MaxTombstones = 4096;
    private readonly Guid _epoch = Guid.NewGuid();
    private readonly Dictionary<SiloAddress, (SiloCapacity Report, long Version)> _reports = [];
    private readonly Queue<(SiloAddress Silo, long Version)> _tombstones = new();
    private long _version;
    private long _forgottenBefore;

    public Task<SiloCapacity[]> GetSilosAsync(CancellationToken cancellationToken = default)
    {
        DropDeparted();
        return Task.FromResult(Ordered(_reports.Values.Select(r => r.Report)));
    }

    public Task<CapacityUpdate> PublishAsync(SiloCapacity report, CapacityCursor since, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(report);
        ArgumentNullException.ThrowIfNull(since);
        bool changed = !_reports.TryGetValue(report.Silo, out var previous) || previous.Report with { ReportedAt = report.ReportedAt } != report;
        _reports[report.Silo] = (report, changed ? ++_version : previous.Version);
        DropDeparted();
        var cursor = new CapacityCursor(_epoch, _version);
        if (since.Epoch != _epoch || since.Version < _forgottenBefore || since.Version > _version)
        {
            return Task.FromResult(new CapacityUpdate(cursor, Full: true, Ordered(_reports.Values.Select(r => r.Report)), []));
        }

        var newer = Ordered(_reports.Values.Where(r => r.Version > since.Version).Select(r => r.Report));
        SiloAddress[] removed = [.. _tombstones.Where(t => t.Version > since.Version).Select(t => t.Silo)];
        return Task.FromResult(new CapacityUpdate(cursor, Full: false, newer, removed));
    }

    private static SiloCapacity[] Ordered(IEnumerable<SiloCapacity> reports) => [.. reports.OrderBy(r => r.Silo.ToString(), StringComparer.Ordinal)];

    private void DropDeparted()
    {
        var members = membership.CurrentSnapshot.Members;
        foreach (var silo in _reports.Keys.ToList())
        {
            if (!members.TryGetValue(silo, out var member) || member.Status is SiloStatus.Dead or SiloStatus.ShuttingDown or SiloStatus.Stopping)
            {
                _reports.Remove(silo);
                _tombstones.Enqueue((silo, ++_version));
                while (_tombstones.Count > MaxTombstones)
                {
                    _forgottenBefore = _tombstones.Dequeue().Version;
                }
            }
        }
    }
}
