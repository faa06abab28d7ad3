using Orleans;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// What one silo offers VMs and sandboxes, as it last published it: its budgets, what its VMs use of them, which
/// backends its host has, and whether it is being drained. Placement compares these across the cluster.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record SiloCapacity
{
    /// <summary>The silo.</summary>
    [Id(0)]
    public required SiloAddress Silo { get; init; }

    /// <summary>Guest RAM the silo gives its VMs in all (<see cref="VirtualMachineGrainOptions.MemoryBudgetMiB"/>), in bytes.</summary>
    [Id(1)]
    public long MemoryBudgetBytes { get; init; }

    /// <summary>Guest RAM of the VMs active on the silo, in bytes.</summary>
    [Id(2)]
    public long MemoryInUseBytes { get; init; }

    /// <summary>vCPUs the silo gives its VMs in all (<see cref="VirtualMachineGrainOptions.VcpuBudget"/>).</summary>
    [Id(3)]
    public int VcpuBudget { get; init; }

    /// <summary>vCPUs of the VMs active on the silo.</summary>
    [Id(4)]
    public int VcpusInUse { get; init; }

    /// <summary>VMs active on the silo.</summary>
    [Id(5)]
    public int VirtualMachines { get; init; }

    /// <summary>Whether the silo's host has a usable KVM.</summary>
    [Id(6)]
    public bool Kvm { get; init; }

    /// <summary>Whether that KVM runs kernel-mode guest code in hardware (false for a paravirtual KVM that emulates it, which is slow for kernels).</summary>
    [Id(7)]
    public bool KvmRunsKernels { get; init; }

    /// <summary>The silo is being drained: placement sends it no new VMs, and its VMs are moving away.</summary>
    [Id(8)]
    public bool Draining { get; init; }

    /// <summary>Sandboxes in the silo's pools (all programs).</summary>
    [Id(9)]
    public int SandboxSlots { get; init; }

    /// <summary>Of <see cref="SandboxSlots"/>, those running a call now.</summary>
    [Id(10)]
    public int SandboxesBusy { get; init; }

    /// <summary>Sandbox calls waiting on the silo for a free sandbox.</summary>
    [Id(11)]
    public int SandboxCallsWaiting { get; init; }

    /// <summary>Where the silo accepts live migrations (<c>host:port</c>), or null when it does not.</summary>
    [Id(12)]
    public string? MigrationEndpoint { get; init; }

    /// <summary>When the silo made this report (its clock).</summary>
    [Id(13)]
    public DateTimeOffset ReportedAt { get; init; }

    /// <summary>Guest RAM still free for VMs, in bytes (never negative).</summary>
    public long FreeMemoryBytes => Math.Max(0, MemoryBudgetBytes - MemoryInUseBytes);

    /// <summary>vCPUs still free for VMs (never negative).</summary>
    public int FreeVcpus => Math.Max(0, VcpuBudget - VcpusInUse);
}

/// <summary>What <see cref="IVirtualMachineHostGrain.DrainAsync"/> did: the VMs it moved and where, and those it could not move.</summary>
[GenerateSerializer, Immutable]
public sealed record DrainReport
{
    /// <summary>The drained silo.</summary>
    [Id(0)]
    public required SiloAddress Silo { get; init; }

    /// <summary>Each VM moved, with the silo it runs on now.</summary>
    [Id(1)]
    public required IReadOnlyDictionary<string, SiloAddress> Moved { get; init; }

    /// <summary>Each VM that could not be moved, with the reason; it is still on the silo.</summary>
    [Id(2)]
    public required IReadOnlyDictionary<string, string> Failed { get; init; }

    /// <summary>How long the drain took.</summary>
    [Id(3)]
    public TimeSpan Duration { get; init; }
}

/// <summary>How <see cref="IVirtualMachineGrain.MoveAsync"/> moves a VM.</summary>
[GenerateSerializer]
public enum VirtualMachineMoveMode
{
    /// <summary>Live if the target silo accepts live migrations, otherwise save and restore; a live move that cannot start falls back to save and restore.</summary>
    Auto = 0,

    /// <summary>
    /// Live migration: memory is copied to the target over a silo-to-silo connection while the guest runs, and the
    /// guest is paused only for the last pages and its machine state (with dirty-page tracking, see
    /// <see cref="VirtualMachineSpec.DirtyPageTracking"/>; without it the whole copy happens paused).
    /// </summary>
    Live,

    /// <summary>Save the VM to the snapshot store, deactivate, and restore it on the target: paused from the save to the restore.</summary>
    SaveAndRestore,
}
