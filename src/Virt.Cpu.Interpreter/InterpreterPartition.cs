using Virt.Platform;
using Virt.Memory;

namespace Virt.Cpu.Interpreter;

/// <summary>A partition of the interpreter: guest memory, vCPUs, CPUID/MSR lists and the dirty-page log.</summary>
internal sealed class InterpreterPartition : IPartition, IDirtyPageLog, IGuestWriteWatcher
{
    private readonly List<InterpreterVcpu> _vcpus = [];
    private readonly object _lock = new();
    private readonly ulong[][] _dirty;
    private readonly long _crystal;
    private readonly List<InterpreterPlatform> _vcpuPlatforms = [];

    /// <summary>Per region, one bit per page: some vCPU may hold decoded code from the page (partitions with several vCPUs).</summary>
    private readonly ulong[][] _code;
    private readonly Lock _busLock = new();
    private volatile InterpreterVcpu[] _vcpuArray = [];
    private volatile int _busLocked;
    private bool _disposed;

    public InterpreterPartition(InterpreterHypervisor hypervisor, IGuestMemoryBacking memory, PartitionOptions options)
    {
        Hypervisor = hypervisor;
        Memory = memory;
        Options = options;
        InterpreterOptions = hypervisor.Options;
        Jit = InterpreterOptions.EnableJit && global::Virt.Cpu.Interpreter.Jit.JitTier.Supported
            ? new Jit.JitTier(InterpreterOptions.JitThreshold) : null;
        var regions = memory.Regions;
        Regions = new PhysRegion[regions.Count];
        _dirty = new ulong[regions.Count][];
        _code = new ulong[regions.Count][];
        for (int i = 0; i < regions.Count; i++)
        {
            var r = regions[i];
            Regions[i] = new PhysRegion(r.Start.Value, r.Size, r.HostAddress, r.IsReadOnly);
            _dirty[i] = new ulong[(int)(((r.Size >> 12) + 63) / 64)];
            _code[i] = new ulong[_dirty[i].Length];
        }

        if (options.PhysicalAddressBits is { } bits && bits != Cpuid.PhysicalAddressBits)
        {
            throw new ArgumentException(
                $"{bits} physical address bits were asked for; the interpreter implements exactly {Cpuid.PhysicalAddressBits} (its page walker checks reserved bits against that width). Leave the width to the backend.",
                nameof(options));
        }

        SupportedCpuid = Cpuid.Build(options.MaskedCpuidFeatures);
        if (options.InterruptController)
        {
            var factory = options.InterruptPlatform ?? throw new ArgumentException(
                "The interpreter emulates the interrupt controllers and timers through an IInterruptPlatform: set PartitionOptions.InterruptPlatform "
                + "(Virt.Devices' PcInterruptPlatform.Factory builds a PC's), or leave InterruptController off.", nameof(options));
            long tsc = InterpreterOptions.TscFrequency;
            long crystal = PlatformCpuid.CrystalFrequencyFor(tsc);
            Platform = factory.Create(new InterruptPlatformParameters(options.VcpuCount, tsc, crystal));
            _crystal = crystal;
            SupportedCpuid = PlatformCpuid.Extend(SupportedCpuid, tsc, crystal, options.MaskedCpuidFeatures, options.VcpuCount);
        }

        memory.SetWriteWatcher(this);
    }

    public IHypervisor Hypervisor { get; }

    public IGuestMemoryBacking Memory { get; }

    public PartitionOptions Options { get; }

    public InterpreterOptions InterpreterOptions { get; }

    /// <summary>The compiled tier of this partition's vCPUs, or null when they only interpret.</summary>
    internal Jit.JitTier? Jit { get; }

    /// <summary>Guest RAM/ROM regions with their host mappings, sorted by address.</summary>
    public PhysRegion[] Regions { get; }

    public IReadOnlyList<CpuidEntry> SupportedCpuid { get; }

    public IReadOnlyList<uint> SupportedMsrs { get; } = Msrs.Supported;

    public bool HasInterruptController => Platform != null;

    /// <summary>The interrupt platform's state, when the platform saves it.</summary>
    public IReadOnlyList<Snapshots.IPersistentState> PersistentState =>
        Platform is Snapshots.IPersistentState state ? [state] : [];

    /// <summary>The emulated interrupt controllers and timers, when the partition was created with them.</summary>
    public IInterruptPlatform? Platform { get; }

    /// <summary>Number of vCPUs waiting in HLT or for a start-up IPI (virtual time may skip ahead only when all are).</summary>
    private int _idleVcpus;

    /// <summary>Whether every vCPU of the partition waits (halted or for a start-up IPI).</summary>
    public bool AllVcpusIdle => Volatile.Read(ref _idleVcpus) >= Options.VcpuCount;

    /// <summary>Counts a vCPU in (+1) or out (-1) of the waiting ones.</summary>
    public void CountIdle(int delta) => Interlocked.Add(ref _idleVcpus, delta);

    public IVirtualCpu CreateVcpu(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, Options.VcpuCount);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_vcpus.Exists(v => v.Index == index && !v.IsDisposed))
            {
                throw new InvalidOperationException($"vCPU {index} already exists in this partition.");
            }

            var vcpu = new InterpreterVcpu(this, index);
            if (Platform != null)
            {
                // Each vCPU has its local APIC; processors other than the first wait for INIT and a start-up IPI.
                var local = new InterpreterPlatform(Platform, index, _crystal);
                _vcpuPlatforms.Add(local);
                vcpu.AttachPlatform(local, InterpreterOptions.TscFrequency / InterpreterOptions.InstructionsPerSecond, InterpreterOptions.Clock == InterpreterClock.Host);
            }

            _vcpus.Add(vcpu);
            _vcpuArray = [.. _vcpus];
            return vcpu;
        }
    }

    public void SetInterruptLine(uint gsi, bool level)
    {
        if (Platform is not { } platform)
        {
            throw new InvalidOperationException("The interpreter partition has no interrupt controller; create it with PartitionOptions.InterruptController = true, or use IVirtualCpu.TryInjectInterrupt.");
        }

        platform.SetInterruptLine(gsi, level);
    }

    /// <summary>Records a guest write to page <paramref name="pageInRegion"/> of region <paramref name="region"/>.</summary>
    public void MarkDirty(int region, ulong pageInRegion)
    {
        ref ulong word = ref _dirty[region][(int)(pageInRegion >> 6)];
        ulong bit = 1UL << (int)(pageInRegion & 63);
        if ((Volatile.Read(ref word) & bit) == 0)
        {
            Interlocked.Or(ref word, bit);
        }
    }

    public void CollectDirtyPages(int regionIndex, Span<ulong> bitmap)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(regionIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(regionIndex, _dirty.Length);
        var d = _dirty[regionIndex];
        if (bitmap.Length < d.Length)
        {
            throw new ArgumentException($"The bitmap needs {d.Length} elements for region {regionIndex}.", nameof(bitmap));
        }

        Span<ulong> host = d.Length <= 512 ? stackalloc ulong[d.Length] : new ulong[d.Length];
        host.Clear();
        if (Memory.DirtyBitmapLength(regionIndex) <= host.Length)
        {
            Memory.CollectDirtyPages(regionIndex, host);
        }

        for (int i = 0; i < d.Length; i++)
        {
            bitmap[i] = Interlocked.Exchange(ref d[i], 0) | host[i];
        }

        // Pages the guest writes through cached write translations are marked when the translation is
        // made, so the vCPUs must make them again to see later writes; a write through an old translation
        // before that is on a page this log has just returned, which the caller reads after this returns.
        InterpreterVcpu[] vcpus;
        lock (_lock)
        {
            vcpus = [.. _vcpus];
        }

        foreach (var v in vcpus)
        {
            v.FlushWriteTranslationsAndWait();
        }
    }

    public void OnWatchedPageWritten(GuestAddress pageAddress)
    {
        lock (_lock)
        {
            foreach (var v in _vcpus)
            {
                v.NotifyCodePageWritten(pageAddress.Value);
            }
        }
    }

    /// <summary>Tells every vCPU except <paramref name="writer"/> that code on a page was overwritten by the guest.</summary>
    public void BroadcastCodeWrite(InterpreterVcpu writer, ulong page)
    {
        if (Options.VcpuCount == 1)
        {
            return;
        }

        lock (_lock)
        {
            foreach (var v in _vcpus)
            {
                if (v != writer)
                {
                    v.NotifyCodePageWritten(page);
                }
            }
        }
    }

    /// <summary>
    /// Records that <paramref name="writer"/> holds decoded code from page <paramref name="pageInRegion"/> of
    /// <paramref name="region"/>; the first time, every other vCPU drops its write translations, so that its next write
    /// to the page takes the slow path and invalidates the code.
    /// </summary>
    public void MarkCodePage(InterpreterVcpu writer, int region, ulong pageInRegion)
    {
        ref ulong word = ref _code[region][(int)(pageInRegion >> 6)];
        ulong bit = 1UL << (int)(pageInRegion & 63);
        if ((Volatile.Read(ref word) & bit) != 0 || (Interlocked.Or(ref word, bit) & bit) != 0)
        {
            return;
        }

        foreach (var v in _vcpuArray)
        {
            if (v != writer)
            {
                v.RequestWriteTlbFlush();
            }
        }
    }

    /// <summary>Whether some vCPU may hold code from the page; clears the mark (the caller then tells every vCPU).</summary>
    public bool TakeCodePage(int region, ulong pageInRegion)
    {
        ref ulong word = ref _code[region][(int)(pageInRegion >> 6)];
        ulong bit = 1UL << (int)(pageInRegion & 63);
        return (Volatile.Read(ref word) & bit) != 0 && (Interlocked.And(ref word, ~bit) & bit) != 0;
    }

    /// <summary>Whether a vCPU holds the bus lock (a split-locked access or CMPXCHG16B is under way).</summary>
    public bool BusLockHeld => _busLocked != 0;

    /// <summary>Spins until the bus lock is released.</summary>
    public void WaitForBusLock()
    {
        var spin = new SpinWait();
        while (_busLocked != 0)
        {
            spin.SpinOnce();
        }
    }

    /// <summary>
    /// Takes the bus lock for <paramref name="owner"/>: no other vCPU starts an atomic access until
    /// <see cref="ReleaseBusLock"/>, and those inside one have finished when this returns.
    /// </summary>
    public void AcquireBusLock(InterpreterVcpu owner)
    {
        _busLock.Enter();
        _busLocked = 1;
        Interlocked.MemoryBarrier();
        foreach (var v in _vcpuArray)
        {
            if (v == owner)
            {
                continue;
            }

            var spin = new SpinWait();
            while (v.InAtomic)
            {
                spin.SpinOnce();
            }
        }
    }

    /// <summary>Releases the bus lock taken by <see cref="AcquireBusLock"/>.</summary>
    public void ReleaseBusLock()
    {
        _busLocked = 0;
        _busLock.Exit();
    }

    internal void Remove(InterpreterVcpu vcpu)
    {
        lock (_lock)
        {
            _vcpus.Remove(vcpu);
            _vcpuArray = [.. _vcpus];
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
        }

        Memory.SetWriteWatcher(null);

        lock (_lock)
        {
            foreach (var p in _vcpuPlatforms)
            {
                p.Dispose();
            }
        }

        Platform?.Dispose();
    }
}

/// <summary>One guest physical region and its host mapping.</summary>
internal readonly record struct PhysRegion(ulong Start, ulong Size, nint Host, bool IsReadOnly);
