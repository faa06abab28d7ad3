using Virt.Memory;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

/// <summary>A KVM VM: one memory slot per guest memory region, optional in-kernel irqchip and PIT, and its vCPUs.</summary>
internal sealed class KvmPartition : IPartition, IDirtyPageLog
{
    /// <summary>Bytes KVM_SET_TSS_ADDR (three pages) and KVM_SET_IDENTITY_MAP_ADDR (one page) need together.</summary>
    internal const ulong SystemPagesSize = 4 * 4096;

    /// <summary>Where the search for the TSS/identity-map hole starts: just below the local APIC window, as QEMU places them.</summary>
    internal const ulong PreferredSystemPagesAddress = 0xFEFF_C000;

    /// <summary>Lowest address tried for the hole (the top 256 MiB below 4 GiB is the usual MMIO window; then anywhere above 1 MiB).</summary>
    private const ulong LowestSystemPagesAddress = 0x10_0000;

    private const ulong PageSize = 4096;

    private readonly KvmVmHandle _vm;
    private readonly KvmHostInfo _host;
    private readonly GuestMemoryRegionInfo[] _regions;
    private readonly bool[] _slotMapped;
    private readonly List<KvmVcpu> _vcpus = [];
    private readonly Lock _lock = new();
    private readonly PartitionOptions _options;
    private int _disposed;

    internal KvmPartition(KvmHypervisor hypervisor, IGuestMemoryBacking memory, PartitionOptions options)
    {
        if (options.VcpuCount < 1)
        {
            throw new ArgumentException($"PartitionOptions.VcpuCount is {options.VcpuCount}; a partition needs at least one vCPU.", nameof(options));
        }

        _regions = [.. memory.Regions];
        foreach (var r in _regions)
        {
            if (r.HostAddress == 0)
            {
                throw new ArgumentException($"Guest memory region at {r.Start} has no host address; KVM can only map memory that lives in this process (Virt.Memory.GuestMemory does).", nameof(memory));
            }

            if (r.Size == 0 || r.Size % PageSize != 0 || r.Start.Value % PageSize != 0 || r.HostAddress % (nint)PageSize != 0)
            {
                throw new ArgumentException($"Guest memory region at {r.Start} (size 0x{r.Size:x}) is not page aligned in guest or host memory.", nameof(memory));
            }
        }

        Hypervisor = hypervisor;
        Memory = memory;
        _options = options;
        using (var kvm = KvmIoctls.OpenSystem())
        {
            _host = KvmHostInfo.Get(kvm);
            if (options.VcpuCount > _host.MaxVcpus)
            {
                throw new ArgumentException($"PartitionOptions.VcpuCount is {options.VcpuCount}; KVM on this host allows at most {_host.MaxVcpus}.", nameof(options));
            }

            if (_regions.Length > _host.MemorySlots)
            {
                throw new ArgumentException($"The guest memory has {_regions.Length} regions; KVM on this host has {_host.MemorySlots} memory slots.", nameof(memory));
            }

            _vm = KvmIoctls.CreateVm(kvm);
        }

        try
        {
            SupportedCpuid = CpuidEntry.WithPhysicalAddressBits(
                MaskCpuid(_host.SupportedCpuid, options.MaskedCpuidFeatures), CheckPhysicalAddressBits(options.PhysicalAddressBits, _host.SupportedCpuid, "KVM"));
            SupportedMsrs = _host.SupportedMsrs;
            PlaceSystemPages();
            _slotMapped = new bool[_regions.Length];
            for (int i = 0; i < _regions.Length; i++)
            {
                MapSlot(i);
            }

            if (options.InterruptController)
            {
                if (!_host.HasIrqchip || !_host.HasPit2)
                {
                    throw new HypervisorException(nameof(KVM_CREATE_IRQCHIP), 0, "this KVM has no in-kernel interrupt controller or PIT (KVM_CAP_IRQCHIP, KVM_CAP_PIT2)");
                }

                // The irqchip must exist before vCPUs are created; the PIT needs the irqchip.
                KvmIoctls.CreateIrqchip(_vm);
                KvmIoctls.CreatePit2(_vm);
                HasInterruptController = true;
            }
        }
        catch
        {
            _vm.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public IHypervisor Hypervisor { get; }

    /// <inheritdoc />
    public IGuestMemoryBacking Memory { get; }

    /// <inheritdoc />
    public IReadOnlyList<CpuidEntry> SupportedCpuid { get; }

    /// <inheritdoc />
    public IReadOnlyList<uint> SupportedMsrs { get; }

    /// <inheritdoc />
    public bool HasInterruptController { get; }

    /// <inheritdoc />
    public IReadOnlyList<Snapshots.IPersistentState> PersistentState => HasInterruptController ? _persistentState ??= KvmPartitionState.For(this) : [];

    private Snapshots.IPersistentState[]? _persistentState;

    /// <summary>Guest physical address of the three-page TSS area KVM needs on Intel hosts, and of the identity-map page after it.</summary>
    internal ulong SystemPagesAddress { get; private set; }

    internal KvmVmHandle VmHandle => _vm;

    internal KvmHostInfo Host => _host;

    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <inheritdoc />
    public IVirtualCpu CreateVcpu(int index)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, _options.VcpuCount);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(IsDisposed, this);
            if (_vcpus.Any(v => v.Index == index && !v.IsDisposed))
            {
                throw new InvalidOperationException($"vCPU {index} already exists in this partition.");
            }

            var vcpu = new KvmVcpu(this, index);
            _vcpus.Add(vcpu);
            return vcpu;
        }
    }

    /// <inheritdoc />
    public void SetInterruptLine(uint gsi, bool level)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (!HasInterruptController)
        {
            throw new InvalidOperationException("The partition has no interrupt controller; create it with PartitionOptions.InterruptController = true.");
        }

        KvmIoctls.IrqLine(_vm, gsi, level);
    }

    /// <inheritdoc />
    /// <remarks>
    /// Pages the guest wrote come from KVM's log; pages the host wrote through <see cref="Memory"/> are merged in
    /// (and cleared from its own log), so the result covers every write.
    /// </remarks>
    /// <exception cref="InvalidOperationException">The partition was created without <see cref="PartitionOptions.TrackDirtyPages"/>.</exception>
    /// <exception cref="ArgumentException">The bitmap is too small for the region.</exception>
    public void CollectDirtyPages(int regionIndex, Span<ulong> bitmap)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (!_options.TrackDirtyPages)
        {
            throw new InvalidOperationException("Dirty-page tracking is off; create the partition with PartitionOptions.TrackDirtyPages = true.");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(regionIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(regionIndex, _regions.Length);
        int words = (int)(((_regions[regionIndex].Size / PageSize) + 63) / 64);
        if (bitmap.Length < words)
        {
            throw new ArgumentException($"The bitmap for region {regionIndex} needs {words} elements; it has {bitmap.Length}.", nameof(bitmap));
        }

        var target = bitmap[..words];
        target.Clear();
        if (_slotMapped[regionIndex] && !_regions[regionIndex].IsReadOnly)
        {
            KvmIoctls.GetDirtyLog(_vm, (uint)regionIndex, target);
        }

        if (Memory.DirtyBitmapLength(regionIndex) is int hostWords && hostWords <= words)
        {
            Span<ulong> host = hostWords <= 512 ? stackalloc ulong[hostWords] : new ulong[hostWords];
            Memory.CollectDirtyPages(regionIndex, host);
            for (int i = 0; i < hostWords; i++)
            {
                target[i] |= host[i];
            }
        }
    }

    /// <summary>Disposes the vCPUs that are still alive, then closes the VM descriptor (exactly once).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        KvmVcpu[] vcpus;
        lock (_lock)
        {
            vcpus = [.. _vcpus];
            _vcpus.Clear();
        }

        foreach (var v in vcpus)
        {
            v.Dispose();
        }

        _vm.Dispose();
    }

    internal void OnVcpuDisposed(KvmVcpu vcpu)
    {
        lock (_lock)
        {
            _vcpus.Remove(vcpu);
        }
    }

    /// <summary>
    /// <paramref name="requested"/> when the host's processor has at least that many physical address bits (a guest may be
    /// told fewer, not more); throws otherwise.
    /// </summary>
    internal static int? CheckPhysicalAddressBits(int? requested, IReadOnlyList<CpuidEntry> host, string backend)
    {
        int available = CpuidEntry.PhysicalAddressBits(host);
        return requested is { } bits && (bits < 32 || bits > available)
            ? throw new ArgumentException($"{bits} physical address bits were asked for; {backend} on this host gives a guest 32 to {available}. Ask for at most {available}, or leave the width to the backend.", nameof(requested))
            : requested;
    }

    /// <summary>
    /// The supported CPUID table with <paramref name="masked"/> features cleared. A feature applies to every
    /// entry of its leaf when the leaf has no significant sub-leaf, else only to the matching sub-leaf.
    /// </summary>
    internal static CpuidEntry[] MaskCpuid(IReadOnlyList<CpuidEntry> entries, IReadOnlyList<CpuidFeature> masked)
    {
        foreach (var f in masked)
        {
            if (f.Bit is < 0 or > 31)
            {
                throw new ArgumentException($"CPUID feature bit {f.Bit} of leaf 0x{f.Function:x} is outside 0-31.", nameof(masked));
            }
        }

        return CpuidEntry.WithoutAll(entries, masked);
    }

    /// <summary>
    /// Finds <see cref="SystemPagesSize"/> bytes below 4 GiB that no region uses, for the TSS and identity map
    /// that KVM on Intel keeps in guest physical space, and tells KVM. Searching downwards from just below the
    /// APIC window keeps them out of low RAM, where guests expect their memory.
    /// </summary>
    private void PlaceSystemPages()
    {
        if (!_host.HasSetTssAddr && !_host.HasSetIdentityMapAddr)
        {
            return;
        }

        SystemPagesAddress = FindSystemPagesHole(_regions)
            ?? throw new ArgumentException("Guest memory leaves no free 16 KiB below 4 GiB for KVM's TSS and identity-map pages; leave a hole below 4 GiB (e.g. at 0xFEFFC000).");
        if (_host.HasSetIdentityMapAddr)
        {
            KvmIoctls.SetIdentityMapAddr(_vm, SystemPagesAddress + (3 * PageSize));
        }

        if (_host.HasSetTssAddr)
        {
            KvmIoctls.SetTssAddr(_vm, SystemPagesAddress);
        }
    }

    internal static ulong? FindSystemPagesHole(IReadOnlyList<GuestMemoryRegionInfo> regions)
    {
        for (ulong candidate = PreferredSystemPagesAddress; candidate >= LowestSystemPagesAddress; candidate -= SystemPagesSize)
        {
            ulong end = candidate + SystemPagesSize;
            GuestMemoryRegionInfo? hit = null;
            foreach (var r in regions)
            {
                if (r.Start.Value < end && candidate < r.End.Value)
                {
                    hit = r;
                    break;
                }
            }

            if (hit is null)
            {
                return candidate;
            }

            // Jump below the overlapping region instead of stepping through it page by page.
            ulong below = hit.Value.Start.Value;
            if (below < LowestSystemPagesAddress + SystemPagesSize)
            {
                return null;
            }

            candidate = ((below - SystemPagesSize) & ~(PageSize - 1)) + SystemPagesSize;
        }

        return null;
    }

    private void MapSlot(int index)
    {
        var r = _regions[index];
        uint flags = 0;
        if (r.IsReadOnly)
        {
            if (!_host.HasReadOnlyMemory)
            {
                // Without KVM_CAP_READONLY_MEM a writable slot would let the guest change ROM; leave it unmapped
                // so that accesses exit as MMIO and the VMM decides.
                return;
            }

            flags |= KVM_MEM_READONLY;
        }
        else if (_options.TrackDirtyPages)
        {
            flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }

        KvmIoctls.SetUserMemoryRegion(_vm, new KvmUserspaceMemoryRegion
        {
            Slot = (uint)index,
            Flags = flags,
            GuestPhysAddr = r.Start.Value,
            MemorySize = r.Size,
            UserspaceAddr = (ulong)r.HostAddress,
        });
        _slotMapped[index] = true;
    }
}
