using Virt.Cpu;
using Virt.Memory;
using Virt.X86;

namespace Virt.Debugging;

/// <summary>What a host breakpoint slot (DR0-DR3 of the host's debug settings) watches.</summary>
internal enum HostBreakpointKind
{
    /// <summary>Execution of the instruction at the address (GDB <c>Z1</c>).</summary>
    Execute,
    /// <summary>Writes (GDB <c>Z2</c>).</summary>
    Write,
    /// <summary>Reads; x86 watches reads and writes together, so writes report it too (GDB <c>Z3</c>).</summary>
    Read,
    /// <summary>Reads and writes (GDB <c>Z4</c>).</summary>
    Access,
}

/// <summary>Why the guest stopped for the debugger.</summary>
internal enum DebugStopKind
{
    /// <summary>The debugger attached or interrupted the guest.</summary>
    Interrupted,
    /// <summary>A single step completed.</summary>
    Step,
    /// <summary>A software breakpoint the debugger planted.</summary>
    SoftwareBreakpoint,
    /// <summary>An <c>INT3</c> the debugger did not plant.</summary>
    GuestBreakpointInstruction,
    /// <summary>A host execute breakpoint.</summary>
    HardwareBreakpoint,
    /// <summary>A host watchpoint (<see cref="DebugStop.Watch"/>).</summary>
    Watchpoint,
}

/// <summary>One stop: the vCPU and the reason; for watchpoints, the slot that hit.</summary>
internal readonly record struct DebugStop(int Vcpu, DebugStopKind Kind, HostBreakpoint? Watch = null);

/// <summary>A host breakpoint or watchpoint in one of the four slots.</summary>
internal sealed record HostBreakpoint(HostBreakpointKind Kind, ulong Address, int Length);

/// <summary>
/// The host side of guest debugging for one VM: software breakpoints (an <c>INT3</c> planted in guest memory, the
/// original byte kept), the four host hardware breakpoint slots, single steps, and the stop events the vCPU threads
/// report. The VM is paused whenever the debugger inspects or changes anything; every method but
/// <see cref="OnDebugExit"/> runs on the debugger's side while the vCPUs are parked (or not started, or stopped).
/// </summary>
internal sealed class GuestDebugger
{
    private const byte Int3 = 0xCC;

    private readonly IVirtualCpu[] _vcpus;
    private readonly IGuestMemory _memory;
    private readonly Action _requestPause;
    private readonly Dictionary<ulong, (ulong Physical, byte Original)> _softwareBreakpoints = [];
    private readonly HostBreakpoint?[] _slots = new HostBreakpoint?[4];

    /// <summary>Software breakpoints held in host execute slots (backends that cannot intercept INT3).</summary>
    private readonly HashSet<ulong> _hardwareStandIns = [];
    private readonly Lock _lock = new();
    private TaskCompletionSource<DebugStop>? _stop;

    public GuestDebugger(IVirtualCpu[] vcpus, IGuestMemory memory, Action requestPause)
    {
        _vcpus = vcpus;
        _memory = memory;
        _requestPause = requestPause;
        Features = GuestDebugFeatures.SingleStep | GuestDebugFeatures.SoftwareBreakpoints | GuestDebugFeatures.HardwareBreakpoints | GuestDebugFeatures.Watchpoints;
        foreach (var v in vcpus)
        {
            Features &= v.DebugFeatures;
        }
    }

    /// <summary>What every vCPU of the VM supports.</summary>
    public GuestDebugFeatures Features { get; }

    public int VcpuCount => _vcpus.Length;

    public IVirtualCpu Vcpu(int index) => _vcpus[index];

    /// <summary>
    /// Called on a vCPU thread for a <see cref="VcpuExitReason.Debug"/> exit. Records the first stop since the last
    /// resume and asks the VM to park every vCPU. Returns <see langword="false"/> when no debugger waits for one.
    /// </summary>
    public bool OnDebugExit(int index, in VcpuExit exit)
    {
        TaskCompletionSource<DebugStop>? stop;
        lock (_lock)
        {
            stop = _stop;
        }

        if (stop is null)
        {
            return false;
        }

        stop.TrySetResult(Classify(index, exit));
        _requestPause();
        return true;
    }

    private DebugStop Classify(int index, in VcpuExit exit)
    {
        if (exit.IsBreakpointInstruction)
        {
            ulong rip = LinearRip(index);
            bool ours;
            lock (_lock)
            {
                ours = _softwareBreakpoints.ContainsKey(rip);
            }

            return new DebugStop(index, ours ? DebugStopKind.SoftwareBreakpoint : DebugStopKind.GuestBreakpointInstruction);
        }

        ulong status = exit.DebugStatus;
        for (int i = 0; i < 4; i++)
        {
            if ((status & (1UL << i)) != 0 && _slots[i] is { } slot)
            {
                return slot.Kind == HostBreakpointKind.Execute
                    ? new DebugStop(index, _hardwareStandIns.Contains(slot.Address) ? DebugStopKind.SoftwareBreakpoint : DebugStopKind.HardwareBreakpoint)
                    : new DebugStop(index, DebugStopKind.Watchpoint, slot);
            }
        }

        return new DebugStop(index, DebugStopKind.Step);
    }

    /// <summary>Arms the stop event and the vCPUs' debug settings for a resume (stepping <paramref name="stepVcpu"/> if not negative); returns the event.</summary>
    public Task<DebugStop> PrepareResume(int stepVcpu)
    {
        var hardware = HardwareRegisters();
        bool intercept;
        lock (_lock)
        {
            intercept = _softwareBreakpoints.Count > 0;
            _stop = new TaskCompletionSource<DebugStop>(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        for (int i = 0; i < _vcpus.Length; i++)
        {
            var settings = new GuestDebugSettings(i == stepVcpu, intercept, hardware);
            if (Features != GuestDebugFeatures.None)
            {
                _vcpus[i].SetGuestDebug(settings);
            }
        }

        return _stop.Task;
    }

    /// <summary>The guest stopped (or the debugger stopped it): no stop event is expected until the next resume.</summary>
    public void Disarm()
    {
        lock (_lock)
        {
            _stop = null;
        }
    }

    /// <summary>Removes every breakpoint and turns host debugging off on every vCPU (the debugger detaches).</summary>
    public void Clear()
    {
        List<ulong> addresses;
        lock (_lock)
        {
            addresses = [.. _softwareBreakpoints.Keys];
        }

        foreach (ulong a in addresses)
        {
            RemoveSoftwareBreakpoint(a);
        }

        Array.Clear(_slots);
        _hardwareStandIns.Clear();
        Disarm();
        if (Features != GuestDebugFeatures.None)
        {
            foreach (var v in _vcpus)
            {
                v.SetGuestDebug(default);
            }
        }
    }

    private DebugRegisters HardwareRegisters()
    {
        var r = new DebugRegisters();
        ulong dr7 = 0;
        for (int i = 0; i < 4; i++)
        {
            if (_slots[i] is not { } slot)
            {
                continue;
            }

            ulong rw = slot.Kind switch
            {
                HostBreakpointKind.Execute => 0,
                HostBreakpointKind.Write => 1,
                _ => 3,
            };
            ulong len = slot.Kind == HostBreakpointKind.Execute ? 0UL : slot.Length switch
            {
                1 => 0,
                2 => 1,
                8 => 2,
                _ => 3,
            };
            dr7 |= (1UL << (i * 2)) | (rw << (16 + (i * 4))) | (len << (18 + (i * 4)));
            switch (i)
            {
                case 0: r.Dr0 = slot.Address; break;
                case 1: r.Dr1 = slot.Address; break;
                case 2: r.Dr2 = slot.Address; break;
                default: r.Dr3 = slot.Address; break;
            }
        }

        r.Dr7 = dr7;
        return r;
    }

    /// <summary>Takes a free slot for a host breakpoint or watchpoint; false when all four are used or the range cannot be watched.</summary>
    public bool TryAddHardware(HostBreakpointKind kind, ulong address, int length)
    {
        if ((Features & GuestDebugFeatures.HardwareBreakpoints) == 0)
        {
            return false;
        }

        if (kind != HostBreakpointKind.Execute
            && ((Features & GuestDebugFeatures.Watchpoints) == 0 || length is not (1 or 2 or 4 or 8) || (address & (ulong)(length - 1)) != 0))
        {
            return false;
        }

        for (int i = 0; i < 4; i++)
        {
            if (_slots[i] is null)
            {
                _slots[i] = new HostBreakpoint(kind, address, kind == HostBreakpointKind.Execute ? 1 : length);
                return true;
            }
        }

        return false;
    }

    /// <summary>Frees the slot holding this breakpoint; false when none does.</summary>
    public bool RemoveHardware(HostBreakpointKind kind, ulong address, int length)
    {
        for (int i = 0; i < 4; i++)
        {
            if (_slots[i] is { } s && s.Kind == kind && s.Address == address && (kind == HostBreakpointKind.Execute || s.Length == length))
            {
                _slots[i] = null;
                return true;
            }
        }

        return false;
    }

    /// <summary>Plants an <c>INT3</c> at <paramref name="address"/> (a linear address in <paramref name="vcpu"/>'s address space).</summary>
    /// <remarks>Where the backend cannot intercept INT3, a free host execute breakpoint stands in for it (reported as a software breakpoint).</remarks>
    public bool TryAddSoftwareBreakpoint(int vcpu, ulong address)
    {
        if ((Features & GuestDebugFeatures.SoftwareBreakpoints) == 0)
        {
            if (_hardwareStandIns.Contains(address))
            {
                return true;
            }

            if (!TryAddHardware(HostBreakpointKind.Execute, address, 1))
            {
                return false;
            }

            _hardwareStandIns.Add(address);
            return true;
        }

        lock (_lock)
        {
            if (_softwareBreakpoints.ContainsKey(address))
            {
                return true;
            }
        }

        if (!TryTranslate(vcpu, address, out ulong physical))
        {
            return false;
        }

        Span<byte> original = stackalloc byte[1];
        if (!_memory.TryRead(new GuestAddress(physical), original) || !_memory.TryWrite(new GuestAddress(physical), [Int3]))
        {
            return false;
        }

        lock (_lock)
        {
            _softwareBreakpoints[address] = (physical, original[0]);
        }

        return true;
    }

    /// <summary>Puts the original byte back where an <c>INT3</c> was planted.</summary>
    public bool RemoveSoftwareBreakpoint(ulong address)
    {
        if (_hardwareStandIns.Remove(address))
        {
            return RemoveHardware(HostBreakpointKind.Execute, address, 1);
        }

        (ulong Physical, byte Original) bp;
        lock (_lock)
        {
            if (!_softwareBreakpoints.Remove(address, out bp))
            {
                return false;
            }
        }

        _memory.TryWrite(new GuestAddress(bp.Physical), [bp.Original]);
        return true;
    }

    /// <summary>
    /// Reads guest memory at a linear address of <paramref name="vcpu"/> through its page tables, showing the original
    /// bytes where breakpoints are planted. Returns how many bytes were readable.
    /// </summary>
    public int ReadLinear(int vcpu, ulong address, Span<byte> destination)
    {
        int done = Transfer(vcpu, address, destination, write: false);
        lock (_lock)
        {
            foreach (var (linear, bp) in _softwareBreakpoints)
            {
                if (linear >= address && linear - address < (ulong)done)
                {
                    destination[(int)(linear - address)] = bp.Original;
                }
            }
        }

        return done;
    }

    /// <summary>Writes guest memory at a linear address of <paramref name="vcpu"/>; planted breakpoints stay and keep the new byte as their original.</summary>
    public bool WriteLinear(int vcpu, ulong address, ReadOnlySpan<byte> source)
    {
        byte[] data = source.ToArray();
        lock (_lock)
        {
            foreach (var linear in _softwareBreakpoints.Keys.ToArray())
            {
                if (linear >= address && linear - address < (ulong)data.Length)
                {
                    var bp = _softwareBreakpoints[linear];
                    int at = (int)(linear - address);
                    _softwareBreakpoints[linear] = (bp.Physical, data[at]);
                    data[at] = Int3;
                }
            }
        }

        return Transfer(vcpu, address, data, write: true) == data.Length;
    }

    /// <summary>Copies between <paramref name="buffer"/> and guest memory page by page; returns the bytes done before the first unmapped page.</summary>
    private int Transfer(int vcpu, ulong address, Span<byte> buffer, bool write)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            ulong at = address + (ulong)done;
            if (!TryTranslate(vcpu, at, out ulong physical))
            {
                break;
            }

            int chunk = (int)Math.Min((ulong)(buffer.Length - done), PageTable.PageSize - (at & PageTable.PageOffsetMask));
            var slice = buffer.Slice(done, chunk);
            bool ok = write ? _memory.TryWrite(new GuestAddress(physical), slice) : _memory.TryRead(new GuestAddress(physical), slice);
            if (!ok)
            {
                break;
            }

            done += chunk;
        }

        return done;
    }

    private bool TryTranslate(int vcpu, ulong linear, out ulong physical)
    {
        var sregs = _vcpus[vcpu].GetSpecialRegisters();
        var walk = PageWalker.Walk(_memory, PagingState.FromRegisters(sregs), linear, PageAccess.Read);
        physical = walk.PhysicalAddress;
        return walk.IsMapped;
    }

    /// <summary>RIP as a linear address (CS base added outside 64-bit mode).</summary>
    public ulong LinearRip(int vcpu)
    {
        var regs = _vcpus[vcpu].GetGeneralRegisters();
        var sregs = _vcpus[vcpu].GetSpecialRegisters();
        bool longMode = (sregs.Efer & Efer.LongModeActive) != 0 && sregs.Cs.Long;
        return longMode ? regs.Rip : (sregs.Cs.Base + regs.Rip) & uint.MaxValue;
    }
}
