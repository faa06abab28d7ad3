using System.Runtime.Versioning;
using Virt.Memory;

namespace Virt.Cpu.Whp;

/// <summary>
/// A WHP partition: guest memory mapped with WHvMapGpaRange, CPUID and MSR exits enabled, and up to
/// <see cref="PartitionOptions.VcpuCount"/> virtual processors.
/// </summary>
/// <remarks>
/// WHP has no in-hypervisor PIC, IOAPIC or PIT (only an optional local APIC), so the partition has no
/// interrupt controller in the sense of <see cref="IPartition.HasInterruptController"/>: machines that
/// need one use the user-space controllers in Virt.Devices and inject with <see cref="IVirtualCpu.TryInjectInterrupt"/>.
/// </remarks>
[SupportedOSPlatform("windows")]
internal sealed class WhpPartition : IPartition, IDirtyPageLog
{
    internal const string NoInterruptControllerReason =
        "the WHP backend has no in-hypervisor PIC/IOAPIC/PIT (Windows provides only a local APIC); use the " +
        "user-space interrupt controllers from Virt.Devices and IVirtualCpu.TryInjectInterrupt instead.";

    private readonly WhpPartitionHandle _handle;
    private readonly bool[] _vcpuCreated;
    private readonly object _lock = new();
    private readonly bool _trackDirty;
    private int _disposed;

    internal unsafe WhpPartition(WhpHypervisor hypervisor, IGuestMemoryBacking memory, PartitionOptions options, ulong hostExtendedExits)
    {
        Hypervisor = hypervisor;
        Memory = memory;
        Options = options;
        _vcpuCreated = new bool[options.VcpuCount];
        var host = CpuidPolicy.ReadHost();
        int available = CpuidEntry.PhysicalAddressBits(host);
        if (options.PhysicalAddressBits is { } bits && (bits < 32 || bits > available))
        {
            throw new ArgumentException($"{bits} physical address bits were asked for; WHP on this host gives a guest 32 to {available}. Ask for at most {available}, or leave the width to the backend.", nameof(options));
        }

        SupportedCpuid = CpuidEntry.WithPhysicalAddressBits(CpuidPolicy.Apply(host, options.MaskedCpuidFeatures), options.PhysicalAddressBits).AsReadOnly();
        SupportedMsrs = [.. RegisterMap.Msrs.Keys.Order()];
        _trackDirty = options.TrackDirtyPages;

        HResult.Check(Interop.WinHvPlatform.WHvCreatePartition(out _handle), "WHvCreatePartition");
        try
        {
            var property = new WHV_PARTITION_PROPERTY { ProcessorCount = (uint)options.VcpuCount };
            SetProperty(WhvPartitionPropertyCode.ProcessorCount, property);

            ulong exits = hostExtendedExits & (WhvExtendedVmExits.X64CpuidExit | WhvExtendedVmExits.X64MsrExit);
            if (exits != 0)
            {
                SetProperty(WhvPartitionPropertyCode.ExtendedVmExits, new WHV_PARTITION_PROPERTY { ExtendedVmExits = exits });
            }

            if ((exits & WhvExtendedVmExits.X64MsrExit) != 0)
            {
                // Only MSRs the hypervisor does not implement should exit. Where this Windows cannot say
                // so, MSR exits are left off and the hypervisor keeps answering (and faulting) them itself.
                var bitmap = new WHV_PARTITION_PROPERTY { X64MsrExitBitmap = WhvExtendedVmExits.MsrExitUnhandledMsrs };

                // SAFETY: &bitmap is a local of this frame, of exactly the size passed.
                int hr = Interop.WinHvPlatform.WHvSetPartitionProperty(_handle, WhvPartitionPropertyCode.X64MsrExitBitmap, &bitmap, (uint)sizeof(WHV_PARTITION_PROPERTY));
                if (HResult.Failed(hr))
                {
                    exits &= ~WhvExtendedVmExits.X64MsrExit;
                    SetProperty(WhvPartitionPropertyCode.ExtendedVmExits, new WHV_PARTITION_PROPERTY { ExtendedVmExits = exits });
                }
            }

            ExtendedVmExits = exits;

            if ((exits & WhvExtendedVmExits.X64CpuidExit) != 0)
            {
                uint[] leaves = CpuidPolicy.ExitList(SupportedCpuid);
                if (leaves.Length > 0)
                {
                    fixed (uint* p = leaves)
                    {
                        // SAFETY: p pins the managed array for the call; the size passed is the array's byte length.
                        HResult.Check(
                            Interop.WinHvPlatform.WHvSetPartitionProperty(_handle, WhvPartitionPropertyCode.CpuidExitList, p, (uint)(leaves.Length * sizeof(uint))),
                            "WHvSetPartitionProperty(CpuidExitList)");
                    }
                }
            }

            HResult.Check(Interop.WinHvPlatform.WHvSetupPartition(_handle), "WHvSetupPartition");
            MapMemory();
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    public IHypervisor Hypervisor { get; }

    /// <summary>None: the WHP partition keeps no interrupt controllers of its own here.</summary>
    public IReadOnlyList<Snapshots.IPersistentState> PersistentState => [];

    public IGuestMemoryBacking Memory { get; }

    internal PartitionOptions Options { get; }

    internal WhpPartitionHandle Handle => _handle;

    /// <summary>The WHV_EXTENDED_VM_EXITS bits set on this partition.</summary>
    internal ulong ExtendedVmExits { get; }

    public IReadOnlyList<CpuidEntry> SupportedCpuid { get; }

    public IReadOnlyList<uint> SupportedMsrs { get; }

    public bool HasInterruptController => false;

    public IVirtualCpu CreateVcpu(int index)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        if (index >= _vcpuCreated.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"The partition was created for {_vcpuCreated.Length} vCPU(s); raise PartitionOptions.VcpuCount.");
        }

        lock (_lock)
        {
            if (_vcpuCreated[index])
            {
                throw new InvalidOperationException($"vCPU {index} already exists in this partition.");
            }

            var vcpu = new WhpVirtualCpu(this, index);
            _vcpuCreated[index] = true;
            return vcpu;
        }
    }

    public void SetInterruptLine(uint gsi, bool level) =>
        throw new InvalidOperationException("SetInterruptLine is not available: " + NoInterruptControllerReason);

    public unsafe void CollectDirtyPages(int regionIndex, Span<ulong> bitmap)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (!_trackDirty)
        {
            throw new InvalidOperationException("Dirty-page tracking is off for this partition; set PartitionOptions.TrackDirtyPages.");
        }

        var region = Memory.Regions[regionIndex];
        ulong pages = region.Size / 4096;
        int needed = (int)((pages + 63) / 64);
        if (bitmap.Length < needed)
        {
            throw new ArgumentException($"The bitmap needs {needed} elements for region {regionIndex}.", nameof(bitmap));
        }

        if (region.IsReadOnly)
        {
            bitmap[..needed].Clear();
            return;
        }

        fixed (ulong* p = bitmap)
        {
            // SAFETY: the span was checked to hold at least `needed` elements, and `needed` elements is the size passed.
            HResult.Check(
                Interop.WinHvPlatform.WHvQueryGpaRangeDirtyBitmap(_handle, region.Start.Value, region.Size, p, (uint)(needed * sizeof(ulong))),
                "WHvQueryGpaRangeDirtyBitmap");
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        foreach (var region in Memory.Regions)
        {
            // Best effort: deleting the partition below releases whatever is still mapped.
            _ = Interop.WinHvPlatform.WHvUnmapGpaRange(_handle, region.Start.Value, region.Size);
        }

        _handle.Dispose();
    }

    internal void VcpuDisposed(int index)
    {
        lock (_lock)
        {
            _vcpuCreated[index] = false;
        }
    }

    private unsafe void SetProperty(WhvPartitionPropertyCode code, WHV_PARTITION_PROPERTY value)
    {
        // SAFETY: &value is the address of a parameter of this frame, of exactly the size passed.
        HResult.Check(
            Interop.WinHvPlatform.WHvSetPartitionProperty(_handle, code, &value, (uint)sizeof(WHV_PARTITION_PROPERTY)),
            $"WHvSetPartitionProperty({code})");
    }

    private void MapMemory()
    {
        foreach (var region in Memory.Regions)
        {
            var flags = GpaMapping.Flags(region.IsReadOnly, _trackDirty);
            HResult.Check(
                Interop.WinHvPlatform.WHvMapGpaRange(_handle, region.HostAddress, region.Start.Value, region.Size, flags),
                $"WHvMapGpaRange({region.Start}, 0x{region.Size:x})");
        }
    }
}

/// <summary>How guest memory regions are mapped into a partition.</summary>
internal static class GpaMapping
{
    /// <summary>ROM is mapped read/execute so guest writes exit (and are reported as MMIO writes); RAM is read/write/execute.</summary>
    public static WhvMapGpaRangeFlags Flags(bool readOnly, bool trackDirty)
    {
        var flags = WhvMapGpaRangeFlags.Read | WhvMapGpaRangeFlags.Execute;
        if (!readOnly)
        {
            flags |= WhvMapGpaRangeFlags.Write;
            if (trackDirty)
            {
                flags |= WhvMapGpaRangeFlags.TrackDirtyPages;
            }
        }

        return flags;
    }
}
