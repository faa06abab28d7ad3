using System.Globalization;
using Microsoft.Extensions.Options;
using Orleans;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace Virt.Orleans;

/// <summary>Places VM grains by host capacity (<see cref="CapacityPlacementDirector"/>).</summary>
[GenerateSerializer, Immutable]
internal sealed class CapacityPlacement : PlacementStrategy
{
    internal static readonly CapacityPlacement Instance = new();
}

/// <summary>Marks a grain class to be placed by host capacity.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
internal sealed class CapacityPlacementAttribute() : PlacementAttribute(CapacityPlacement.Instance);

/// <summary>
/// Chooses the silo for a new VM grain activation. A placement hint (a move's target, a caller's choice) wins when
/// the silo is active. Otherwise, among silos that published a report and are not draining: those with the memory
/// and vCPUs the VM needs (and KVM if its spec asks for it by name); of them, for a kernel guest, those whose KVM
/// runs kernels in hardware if any; then the one with the most free memory (ties: fewer VMs). Nothing fits: the
/// activation is refused with a <see cref="ClusterCapacityException"/>, unless the VM's size is unknown (a
/// reactivation), which goes to the non-draining silo with the most free memory.
/// </summary>
internal sealed class CapacityPlacementDirector(ClusterCapacityView view, IOptions<VirtualMachineGrainOptions> options) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var compatible = context.GetCompatibleSilos(target).ToArray();
        if (IPlacementDirector.GetPlacementHint(target.RequestContextData, compatible) is { } hint)
        {
            return Task.FromResult(hint);
        }

        var known = VirtualMachineDemand.Decode(target.RequestContextData?.GetValueOrDefault(VirtualMachineDemand.RequestContextKey));
        var demand = known ?? new VirtualMachineDemand((long)options.Value.DefaultVmMemoryMiB << 20, 1, false, false);
        var reports = view.Silos.Where(s => compatible.Contains(s.Silo)).ToList();
        if (reports.Count == 0)
        {
            // No reports yet (the cluster is starting): any compatible silo.
            return Task.FromResult(compatible[Random.Shared.Next(compatible.Length)]);
        }

        var chosen = Choose(reports, demand, out string refusal);
        if (chosen is null && known is null)
        {
            // A reactivation (after a failure) of a VM whose size placement cannot know: refusing a VM that may well fit
            // would leave it down, so it goes to the silo with the most free memory that is not draining.
            chosen = reports.Where(s => !s.Draining).OrderByDescending(s => s.FreeMemoryBytes).FirstOrDefault()?.Silo;
        }

        if (chosen is null)
        {
            throw new ClusterCapacityException(refusal);
        }

        view.Promise(chosen, demand);
        return Task.FromResult(chosen);
    }

    /// <summary>The silo for <paramref name="demand"/> among <paramref name="silos"/>, or null with the reason in <paramref name="refusal"/>.</summary>
    public static SiloAddress? Choose(IReadOnlyList<SiloCapacity> silos, VirtualMachineDemand demand, out string refusal)
    {
        var fits = silos.Where(s => !s.Draining
            && s.FreeMemoryBytes >= demand.MemoryBytes
            && s.FreeVcpus >= demand.Vcpus
            && (!demand.RequiresKvm || s.Kvm)).ToList();
        if (fits.Count == 0)
        {
            refusal = $"No silo has room for a VM of {demand}: "
                + string.Join("; ", silos.Select(s => string.Create(CultureInfo.InvariantCulture,
                    $"{s.Silo} {(s.Draining ? "is draining" : $"has {s.FreeMemoryBytes >> 20} MiB and {s.FreeVcpus} vCPUs free{(demand.RequiresKvm && !s.Kvm ? ", no KVM" : "")}")}")))
                + (silos.Count == 0 ? "no silo has published its capacity" : "")
                + ". Add silos, raise their budgets (VirtualMachineGrainOptions.MemoryBudgetMiB, VcpuBudget), or stop VMs.";
            return null;
        }

        if (demand.KernelGuest && fits.Any(s => s.KvmRunsKernels))
        {
            fits = [.. fits.Where(s => s.KvmRunsKernels)];
        }

        refusal = "";
        long most = fits.Max(s => s.FreeMemoryBytes);
        var best = fits.Where(s => s.FreeMemoryBytes == most).ToList();
        int fewest = best.Min(s => s.VirtualMachines);
        best = [.. best.Where(s => s.VirtualMachines == fewest)];
        return best[Random.Shared.Next(best.Count)].Silo;
    }
}

/// <summary>Places a grain on the silo its key names (<see cref="SiloAddress.ToParsableString"/>): a per-silo grain.</summary>
[GenerateSerializer, Immutable]
internal sealed class SiloPinnedPlacement : PlacementStrategy
{
    internal static readonly SiloPinnedPlacement Instance = new();
}

/// <summary>Marks a grain class whose key names the silo it must run on.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
internal sealed class SiloPinnedPlacementAttribute() : PlacementAttribute(SiloPinnedPlacement.Instance);

internal sealed class SiloPinnedPlacementDirector : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        string key = target.GrainIdentity.Key.ToString();
        SiloAddress silo;
        try
        {
            silo = SiloAddress.FromParsableString(key);
        }
        catch (Exception ex) when (ex is FormatException or ArgumentException or IndexOutOfRangeException)
        {
            throw new ArgumentException($"'{key}' does not name a silo; use SiloAddress.ToParsableString() as the key.", ex);
        }

        return context.GetCompatibleSilos(target).Contains(silo)
            ? Task.FromResult(silo)
            : throw new InvalidOperationException($"The silo {silo} is not an active member of the cluster.");
    }
}
