namespace Virt.Cpu;

/// <summary>
/// A machine partition: guest memory mapped in, vCPUs, and (optionally) interrupt controllers.
/// Disposing it releases every kernel object it owns; dispose the vCPUs first.
/// </summary>
public interface IPartition : IDisposable
{
    /// <summary>The backend that created the partition.</summary>
    IHypervisor Hypervisor { get; }

    /// <summary>The guest memory mapped into the partition.</summary>
    Memory.IGuestMemoryBacking Memory { get; }

    /// <summary>CPUID leaves this backend can give the guest, after the partition's feature mask.</summary>
    IReadOnlyList<CpuidEntry> SupportedCpuid { get; }

    /// <summary>MSR indexes this backend can get and set.</summary>
    IReadOnlyList<uint> SupportedMsrs { get; }

    /// <summary>Whether the partition emulates the PIC/IOAPIC (and PIT) so that <see cref="SetInterruptLine"/> works.</summary>
    bool HasInterruptController { get; }

    /// <summary>Creates vCPU <paramref name="index"/> (0 to <see cref="PartitionOptions.VcpuCount"/> - 1).</summary>
    IVirtualCpu CreateVcpu(int index);

    /// <summary>
    /// The partition's own state a snapshot saves besides guest memory and the vCPUs (KVM: the in-kernel PIC, IOAPIC, PIT
    /// and clock; the interpreter: its interrupt platform), in the order to restore it. Empty when there is none.
    /// </summary>
    IReadOnlyList<Snapshots.IPersistentState> PersistentState { get; }

    /// <summary>Drives interrupt line <paramref name="gsi"/> of the partition's interrupt controller to <paramref name="level"/>.</summary>
    /// <exception cref="InvalidOperationException">The partition has no interrupt controller.</exception>
    void SetInterruptLine(uint gsi, bool level);
}

/// <summary>Options for <see cref="IHypervisor.CreatePartition"/>.</summary>
public sealed record PartitionOptions
{
    /// <summary>Number of vCPUs the partition will hold. At least 1.</summary>
    public int VcpuCount { get; init; } = 1;

    /// <summary>Emulate the interrupt controllers and timer the guest expects (KVM: in-kernel irqchip and PIT).</summary>
    public bool InterruptController { get; init; }

    /// <summary>
    /// For backends that emulate the controllers themselves (the interpreter): what builds them when
    /// <see cref="InterruptController"/> is set, e.g. Virt.Devices' <c>PcInterruptPlatform.Factory</c>. Backends whose
    /// hypervisor has them (KVM's in-kernel irqchip) ignore it.
    /// </summary>
    public Platform.IInterruptPlatformFactory? InterruptPlatform { get; init; }

    /// <summary>Record which guest pages are written so that snapshots can copy only those (see <see cref="IDirtyPageLog"/>).</summary>
    public bool TrackDirtyPages { get; init; }

    /// <summary>Features removed from every CPUID leaf the guest sees, on top of what the backend cannot honour.</summary>
    public IReadOnlyList<CpuidFeature> MaskedCpuidFeatures { get; init; } = [];

    /// <summary>
    /// Physical address bits the guest's CPUID reports (leaf 0x80000008), or <see langword="null"/> for the backend's own.
    /// A backend that cannot give the value (more bits than the host has, or a fixed width) refuses it with
    /// <see cref="ArgumentException"/>.
    /// </summary>
    public int? PhysicalAddressBits { get; init; }
}

/// <summary>Implemented by partitions that can report which guest pages were written.</summary>
public interface IDirtyPageLog
{
    /// <summary>
    /// Fills <paramref name="bitmap"/> (one bit per 4 KiB page of region <paramref name="regionIndex"/> of
    /// <see cref="IPartition.Memory"/>) with the pages written since the last call, and clears the log.
    /// </summary>
    void CollectDirtyPages(int regionIndex, Span<ulong> bitmap);
}

/// <summary>Implemented by vCPUs that count retired instructions exactly (the interpreter).</summary>
public interface IInstructionCounting
{
    /// <summary>Instructions retired since the vCPU was created.</summary>
    long InstructionsRetired { get; }

    /// <summary>
    /// When set, <see cref="IVirtualCpu.Run"/> returns <see cref="VcpuExitReason.BudgetExhausted"/> after exactly
    /// this many further instructions. <see langword="null"/> for no limit.
    /// </summary>
    long? InstructionBudget { get; set; }
}
