using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// This silo's picture of the cluster's capacity: the reports the directory returned at the last publish, less what
/// this silo's placements have promised since (so a burst of placements does not pile onto one silo between reports).
/// </summary>
internal sealed class ClusterCapacityView
{
    private readonly Lock _sync = new();
    private SiloCapacity[] _silos = [];
    private CapacityCursor _cursor = CapacityCursor.None;
    private readonly Dictionary<SiloAddress, (long Memory, int Vcpus, int Count)> _promised = [];

    /// <summary>Where this view stands against the directory (sent with the next report).</summary>
    public CapacityCursor Cursor
    {
        get
        {
            lock (_sync)
            {
                return _cursor;
            }
        }
    }

    /// <summary>Takes the directory's answer: a whole table replaces the view, a delta changes and removes reports.</summary>
    public void Apply(CapacityUpdate update)
    {
        lock (_sync)
        {
            if (update.Full)
            {
                _silos = [.. update.Changed];
            }
            else
            {
                var bySilo = _silos.ToDictionary(s => s.Silo);
                foreach (var report in update.Changed)
                {
                    bySilo[report.Silo] = report;
                }

                foreach (var silo in update.Removed)
                {
                    bySilo.Remove(silo);
                }

                _silos = [.. bySilo.Values.OrderBy(r => r.Silo.ToString(), StringComparer.Ordinal)];
            }

            _cursor = update.Cursor;
            _promised.Clear();
        }
    }

    /// <summary>The reports, with this silo's recent placements counted in.</summary>
    public IReadOnlyList<SiloCapacity> Silos
    {
        get
        {
            lock (_sync)
            {
                return [.. _silos.Select(s => _promised.TryGetValue(s.Silo, out var p)
                    ? s with { MemoryInUseBytes = s.MemoryInUseBytes + p.Memory, VcpusInUse = s.VcpusInUse + p.Vcpus, VirtualMachines = s.VirtualMachines + p.Count }
                    : s)];
            }
        }
    }

    /// <summary>Counts a placement on <paramref name="silo"/> until the next report.</summary>
    public void Promise(SiloAddress silo, VirtualMachineDemand demand)
    {
        lock (_sync)
        {
            _promised.TryGetValue(silo, out var p);
            _promised[silo] = (p.Memory + demand.MemoryBytes, p.Vcpus + demand.Vcpus, p.Count + 1);
        }
    }
}
