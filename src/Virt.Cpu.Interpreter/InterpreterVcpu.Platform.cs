using System.Runtime.CompilerServices;
using System.Diagnostics;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The emulated interrupt controllers seen from the vCPU: virtual time, the TSC, interrupt delivery,
/// HLT that sleeps until the next interrupt, the controllers' ports, MMIO pages and MSRs, and MTRRs.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>IA32_MTRRCAP: 8 variable ranges, fixed ranges, write-combining.</summary>
    private const ulong MtrrCapValue = 8 | (1UL << 8) | (1UL << 10);

    private const uint MsrMtrrCap = 0xFE, MsrMtrrPhysBase0 = 0x200, MsrMtrrPhysLast = 0x20F, MsrMtrrFix64K = 0x250,
        MsrMtrrFix16K80000 = 0x258, MsrMtrrFix16KA0000 = 0x259, MsrMtrrFix4KFirst = 0x268, MsrMtrrFix4KLast = 0x26F,
        MsrMtrrDefType = 0x2FF;

    /// <summary>Timer advances without a deliverable interrupt after which a halted vCPU also sleeps on the host.</summary>
    private const int HaltSpinLimit = 64;

    /// <summary>Longest host sleep of a halted vCPU before it looks again (it is woken earlier by interrupts and exit requests).</summary>
    private const int HaltSleepMilliseconds = 100;

    /// <summary>Under the host clock: most instructions between two looks at the host clock while a timer is armed.</summary>
    private const long HostClockCheckInstructions = 200_000;


    private InterpreterPlatform? _plat;
    private long _ticksPerInstruction = 1;

    /// <summary>Retired-instruction count at which the next timer falls due (long.MaxValue: none; long.MinValue: HLT).</summary>
    private long _timerStop = long.MaxValue;
    private long _timeBase;
    private long _retiredBase;
    private bool _halted;

    /// <summary>Guest time follows the host clock (<see cref="InterpreterClock.Host"/>).</summary>
    private bool _hostClock;

    /// <summary>Host timestamp (Stopwatch) and clock tick that correspond; 0: not yet anchored.</summary>
    private long _hostAnchor;
    private long _hostAnchorTicks;
    private double _ticksPerStopwatchTick;

    /// <summary>Under the host clock: the earliest timer deadline when the next stop was computed (long.MaxValue: none).</summary>
    private long _hostNextDeadline = long.MaxValue;

    /// <summary>Gives this vCPU the partition's interrupt controllers and virtual clock.</summary>
    internal void AttachPlatform(InterpreterPlatform platform, long ticksPerInstruction, bool hostClock)
    {
        _plat = platform;
        platform.Owner = this;
        _hostClock = hostClock;
        _ticksPerStopwatchTick = (double)platform.Clock.Frequency / Stopwatch.Frequency;
        _ticksPerInstruction = Math.Max(1, ticksPerInstruction);
        _timeBase = platform.Clock.Now;
        _retiredBase = _retired;
        UpdateTimerStop();

        // Application processors wait for INIT and a start-up IPI from the bootstrap processor, as on a PC.
        _waitForStartup = Index != 0;
    }

    /// <summary>This processor waits for a start-up IPI (after reset or INIT), executing nothing.</summary>
    private bool _waitForStartup;

    /// <summary>Whether this processor waits for a start-up IPI.</summary>
    internal bool WaitsForStartup => _waitForStartup;

    /// <summary>
    /// Waits for a start-up IPI: the processor then starts in real mode at CS = vector * 256, IP = 0, in the state INIT
    /// leaves. Returns an exit when the host asked for one (the processor still waits when run again).
    /// </summary>
    private VcpuExit? WaitForStartup()
    {
        var plat = _plat!;
        var lapic = plat.LocalController;
        while (true)
        {
            plat.PrepareWait();
            if (_exitRequested)
            {
                _exitRequested = false;
                return VcpuExit.Simple(VcpuExitReason.Interrupted);
            }

            lapic.AcknowledgeInit(); // a further INIT while waiting changes nothing
            int vector = lapic.AcknowledgeStartup();
            if (vector >= 0)
            {
                StartAt(vector);
                return null;
            }

            plat.Wait(HaltSleepMilliseconds);
        }
    }

    /// <summary>INIT: the processor goes back to its reset state and waits for a start-up IPI.</summary>
    private void EnterWaitForStartup()
    {
        _waitForStartup = true;
        _halted = false;
        _pendingIrq = -1;
        _interruptShadow = false;
    }

    /// <summary>Starts the processor from a start-up IPI with <paramref name="vector"/>.</summary>
    private void StartAt(int vector)
    {
        var tscOffset = _cpu.TscOffset;
        var mtrrDefType = _cpu.MtrrDefType;
        var xcr0 = _cpu.Xcr0;
        _cpu = CpuState.PowerOn();
        _cpu.TscOffset = tscOffset;
        _cpu.MtrrDefType = mtrrDefType;
        _cpu.Xcr0 = xcr0; // INIT leaves XCR0 alone (SDM Vol. 3, table 10-1)
        _cpu.Seg[SegCs] = SegmentRegister.RealMode((ushort)(vector << 8), code: true);
        _cpu.Rip = 0;
        UpdateMode();
        FlushTlb();
        _waitForStartup = false;
        _halted = false;
        _pendingIrq = -1;
        _interruptShadow = false;
        CatchUpClock();
    }

    /// <summary>
    /// With several vCPUs on virtual time, one that waited (halted, or for a start-up IPI) did not count time while
    /// the others moved the clock on: it continues from the clock's present tick instead of its own older one.
    /// </summary>
    private void CatchUpClock()
    {
        if (_hostClock || _plat is null)
        {
            return;
        }

        long now = _plat.Clock.Now;
        if (now > VirtualNow())
        {
            _timeBase = now;
            _retiredBase = _retired;
        }

        UpdateTimerStop();
    }

    /// <summary>
    /// Re-anchors guest time on the platform clock's present tick. A restore sets the clock (forwards or backwards) to
    /// the tick it was saved at; without this the vCPU would count from its own old anchor and time would stand still
    /// or jump. Under the host clock, the anchor is taken again when the vCPU next reads the time.
    /// </summary>
    private void RebaseClock()
    {
        if (_plat is null)
        {
            return;
        }

        _timeBase = _plat.Clock.Now;
        _retiredBase = _retired;
        UpdateTimerStop();
        _hostAnchor = 0;
    }

    /// <summary>
    /// Guest time now: the host clock under <see cref="InterpreterClock.Host"/>, else the instructions retired so
    /// far (including those earlier in the current block).
    /// </summary>
    private long VirtualNow()
    {
        if (_hostClock)
        {
            return HostNow();
        }

        long retired = _retired + (_inBlock ? _opIndex : 0);
        return _timeBase + ((retired - _retiredBase) * _ticksPerInstruction);
    }

    /// <summary>Clock ticks elapsed on the host since the vCPU first asked, added to the clock's value at that moment.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private long HostNow()
    {
        long stamp = Stopwatch.GetTimestamp();
        if (_hostAnchor == 0)
        {
            _hostAnchor = stamp;
            _hostAnchorTicks = _plat!.Clock.Now;
        }

        return _hostAnchorTicks + (long)((stamp - _hostAnchor) * _ticksPerStopwatchTick);
    }

    /// <summary>Moves the virtual clock up to the guest's time, firing due timers, and recomputes the next stop.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SyncClock()
    {
        var clock = _plat!.Clock;
        long now = VirtualNow();
        if (now > clock.Now)
        {
            clock.AdvanceTo(now);
        }

        UpdateTimerStop();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void UpdateTimerStop()
    {
        long? next = _plat!.Clock.NextDeadline;
        _hostNextDeadline = next ?? long.MaxValue;
        if (next is not long d)
        {
            _timerStop = long.MaxValue;
            return;
        }

        if (_hostClock)
        {
            // Estimate the instructions until the deadline and look at the host clock then (or sooner). The host
            // clock, not the virtual clock, which may lag it when only RDTSC's fast path read the time.
            long remaining = d - HostNow();
            _timerStop = remaining <= 0 ? _retired : _retired + Math.Clamp(remaining / _ticksPerInstruction, 1, HostClockCheckInstructions);
            return;
        }

        long ticks = d - _timeBase;
        if (ticks <= 0)
        {
            _timerStop = _retired;
            return;
        }

        long instructions = (ticks + _ticksPerInstruction - 1) / _ticksPerInstruction;
        _timerStop = instructions > long.MaxValue - _retiredBase ? long.MaxValue : _retiredBase + instructions;
    }

    /// <summary>The guest TSC: virtual clock ticks plus the guest's offset.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong VirtualTsc()
    {
        if (_hostClock)
        {
            // Before the next deadline nothing can fall due: read the host clock without the clock's locks.
            // (The host clock is never behind the virtual clock, which only ever moves to host-clock values.)
            long now = HostNow();
            if (now < _hostNextDeadline)
            {
                return (ulong)(now + _cpu.TscOffset);
            }
        }

        SyncClock();
        return (ulong)(_plat!.Clock.Now + _cpu.TscOffset);
    }

    /// <summary>HLT with emulated controllers: sleep (in virtual time) until an interrupt.</summary>
    private void EnterHalt()
    {
        _halted = true;
        _timerStop = long.MinValue; // leave the chained-block loop at once
    }

    /// <summary>An NMI handler runs: further NMIs are blocked until the next IRET (SDM Vol. 3, 6.7.1).</summary>
    private bool _nmiBlocked;

    /// <summary>An NMI arrived while blocked; it is delivered after the IRET. Further ones merge into it: the latch is one deep.</summary>
    private bool _nmiLatched;

    /// <summary>
    /// NMIs ignore RFLAGS.IF. One is delivered unless an NMI handler is in service (until its IRET) or a MOV SS/POP SS
    /// or STI shadow is in force; while blocked, arrivals are taken from the local APIC into the one-deep latch.
    /// Returns whether an NMI was delivered.
    /// </summary>
    private bool TryDeliverNmi()
    {
        var lapic = _plat!.LocalController;
        if (_nmiBlocked)
        {
            while (lapic.HasPendingNmi && lapic.AcknowledgeNmi())
            {
                _nmiLatched = true;
            }

            return false;
        }

        if (_interruptShadow || !(_nmiLatched || (lapic.HasPendingNmi && lapic.AcknowledgeNmi())))
        {
            return false;
        }

        _nmiLatched = false;
        _nmiBlocked = true;
        _plat.Attention = true; // a maskable interrupt may be waiting too
        DeliverExternal(Vectors.NMI);
        return true;
    }

    /// <summary>Takes the highest-priority pending maskable interrupt from the controllers and delivers it.</summary>
    private void DeliverPlatformInterrupt()
    {
        var plat = _plat!;
        plat.Attention = false;
        var lapic = plat.LocalController;
        if (!lapic.HasPendingInterrupt)
        {
            return;
        }

        int vector = lapic.AcknowledgeInterrupt();
        plat.Attention = true; // another may be waiting behind this one
        if (vector >= 0)
        {
            DeliverExternal(vector);
        }
    }

    /// <summary>
    /// Waits in HLT: jumps virtual time to the next timer deadline, or sleeps on the host until a device
    /// raises an interrupt. Returns an exit when the host asked for one or nothing can wake the vCPU.
    /// </summary>
    private VcpuExit? WaitWhileHalted()
    {
        var plat = _plat!;
        var lapic = plat.LocalController;
        int advances = 0;
        while (true)
        {
            plat.PrepareWait();
            if (_exitRequested)
            {
                _exitRequested = false;
                return VcpuExit.Simple(VcpuExitReason.Interrupted); // still halted when run again
            }

            // An INIT takes an application processor out of HLT whatever RFLAGS.IF says (it then waits for a start-up IPI).
            if ((lapic.HasPendingNmi && !_nmiBlocked) || ((_cpu.Flags & IF) != 0 && lapic.HasPendingInterrupt) || (Index != 0 && lapic.HasPendingInit))
            {
                _halted = false;
                plat.Attention = true;
                return null;
            }

            if ((_cpu.Flags & IF) == 0)
            {
                // Only an NMI could wake this processor, and nothing raises one: report the halt.
                _halted = false;
                return VcpuExit.Simple(VcpuExitReason.Halt);
            }

            if (_hostClock)
            {
                SyncClock();
                if ((lapic.HasPendingNmi && !_nmiBlocked) || lapic.HasPendingInterrupt)
                {
                    continue;
                }

                // Sleep on the host until the next timer is due, a device interrupts, or the host wants an exit.
                // SyncClock just moved the clock to the host's time and recorded the next deadline.
                int sleep = HaltSleepMilliseconds;
                if (_hostNextDeadline != long.MaxValue)
                {
                    double ms = (_hostNextDeadline - plat.Clock.Now) * 1000.0 / plat.Clock.Frequency;
                    if (ms < 0.1)
                    {
                        // Nearly due: yield rather than sleep, whose granularity is a millisecond.
                        Thread.Yield();
                        continue;
                    }

                    // A timer may fire up to about a millisecond late, as under a busy host; the vCPU does not spin.
                    sleep = (int)Math.Min(HaltSleepMilliseconds, Math.Ceiling(ms));
                }

                plat.Wait(sleep);
                continue;
            }

            // With several vCPUs, virtual time skips ahead only when every one waits: a running one counts time.
            if (advances < HaltSpinLimit && (!_smp || _partition.AllVcpusIdle) && plat.Clock.NextDeadline is long deadline)
            {
                advances++;
                if (deadline > _timeBase + ((_retired - _retiredBase) * _ticksPerInstruction))
                {
                    _timeBase = deadline;
                    _retiredBase = _retired;
                }

                SyncClock();
                continue;
            }

            // Nothing in virtual time will wake the vCPU: a device on another thread may.
            advances = 0;
            plat.Wait(HaltSleepMilliseconds);
        }
    }

    private bool TryPlatformPort(ushort port, int size, bool isWrite, ref ulong value)
    {
        if (_plat is not { } plat)
        {
            return false;
        }

        SyncClock();
        if (!plat.TryPort(port, size, isWrite, ref value))
        {
            return false;
        }

        AfterPlatformAccess();
        return true;
    }

    /// <summary>Called from the MMIO path before an exit is produced.</summary>
    private bool TryPlatformMmio(ulong phys, int size, bool isWrite, ref ulong value)
    {
        if (_plat is not { } plat)
        {
            return false;
        }

        if (!plat.OwnsMmio(phys))
        {
            return false;
        }

        SyncClock();
        plat.Mmio(phys, size, isWrite, ref value);
        AfterPlatformAccess();
        return true;
    }

    private void AfterPlatformAccess()
    {
        UpdateTimerStop();
        _plat!.Attention = true;
        _stop = true;
    }

    /// <summary>MSRs of the controllers and the MTRRs; false when <paramref name="index"/> is not one of them.</summary>
    private bool TryReadPlatformMsr(uint index, out ulong value, out bool exists)
    {
        exists = true;
        value = 0;
        switch (index)
        {
            case MsrMtrrCap:
                value = MtrrCapValue;
                return true;
            case MsrMtrrDefType:
                value = _cpu.MtrrDefType;
                return true;
            case >= MsrMtrrPhysBase0 and <= MsrMtrrPhysLast:
                value = _cpu.MtrrVariable[(int)(index - MsrMtrrPhysBase0)];
                return true;
            case MsrMtrrFix64K or MsrMtrrFix16K80000 or MsrMtrrFix16KA0000 or (>= MsrMtrrFix4KFirst and <= MsrMtrrFix4KLast):
                value = _cpu.MtrrFixed[FixedMtrrSlot(index)];
                return true;
        }

        if (_plat is not { } plat)
        {
            return false;
        }

        var lapic = plat.LocalController;
        switch (index)
        {
            case MsrIndex.ApicBase:
                value = lapic.ApicBase;
                return true;
            case MsrIndex.TscDeadline:
            {
                ulong d = lapic.TscDeadline;
                value = d == 0 ? 0 : d + (ulong)_cpu.TscOffset;
                return true;
            }

            default:
                if (!lapic.OwnsMsr(index))
                {
                    return false;
                }

                SyncClock();
                exists = lapic.TryReadMsr(index, out value);
                return true;
        }
    }

    private bool TryWritePlatformMsr(uint index, ulong value, out bool accepted)
    {
        accepted = true;
        switch (index)
        {
            case MsrMtrrCap:
                accepted = false;
                return true;
            case MsrMtrrDefType:
                accepted = (value & ~0xCFFUL) == 0;
                if (accepted)
                {
                    _cpu.MtrrDefType = value;
                }

                return true;
            case >= MsrMtrrPhysBase0 and <= MsrMtrrPhysLast:
                _cpu.MtrrVariable[(int)(index - MsrMtrrPhysBase0)] = value;
                return true;
            case MsrMtrrFix64K or MsrMtrrFix16K80000 or MsrMtrrFix16KA0000 or (>= MsrMtrrFix4KFirst and <= MsrMtrrFix4KLast):
                _cpu.MtrrFixed[FixedMtrrSlot(index)] = value;
                return true;
        }

        if (_plat is not { } plat)
        {
            return false;
        }

        var lapic = plat.LocalController;
        switch (index)
        {
            case MsrIndex.ApicBase:
                // The controller refuses a base away from where its page is decoded.
                accepted = IsValidApicBaseTransition(lapic.ApicBase, value) && lapic.TrySetApicBase(value);
                if (accepted)
                {
                    AfterPlatformAccess();
                }

                return true;
            case MsrIndex.TscDeadline:
                SyncClock();
                lapic.TscDeadline = value == 0 ? 0 : Math.Max(1, value - (ulong)_cpu.TscOffset);
                AfterPlatformAccess();
                return true;
            default:
                if (!lapic.OwnsMsr(index))
                {
                    return false;
                }

                SyncClock();
                accepted = lapic.TryWriteMsr(index, value);
                AfterPlatformAccess();
                return true;
        }
    }

    /// <summary>IA32_APIC_BASE: the APIC is enabled (bit 11) and in x2APIC mode (bit 10).</summary>
    private const ulong ApicBaseEnable = 1UL << 11, ApicBaseExtended = 1UL << 10;

    /// <summary>
    /// The mode changes IA32_APIC_BASE allows (SDM Vol. 3, 11.12.5): into x2APIC mode only where CPUID offers it and
    /// only from xAPIC mode; x2APIC mode without the enable bit, and from x2APIC mode straight back to xAPIC mode, are
    /// invalid (#GP). Disabling the APIC is always allowed, and leaves x2APIC mode.
    /// </summary>
    private bool IsValidApicBaseTransition(ulong current, ulong value)
    {
        bool toX2 = (value & ApicBaseExtended) != 0, toEnabled = (value & ApicBaseEnable) != 0;
        bool fromX2 = (current & ApicBaseExtended) != 0, fromEnabled = (current & ApicBaseEnable) != 0;
        if (!toX2)
        {
            return !(fromX2 && toEnabled);
        }

        return toEnabled && fromEnabled && OffersX2Apic();
    }

    /// <summary>Whether the guest's CPUID (leaf 1 ECX bit 21) offers x2APIC.</summary>
    private bool OffersX2Apic()
    {
        foreach (var e in _cpuid)
        {
            if (e.Function == 1)
            {
                return (e.Ecx & PlatformCpuid.X2Apic) != 0;
            }
        }

        return false;
    }

    private static int FixedMtrrSlot(uint index) => index switch
    {
        MsrMtrrFix64K => 0,
        MsrMtrrFix16K80000 => 1,
        MsrMtrrFix16KA0000 => 2,
        _ => 3 + (int)(index - MsrMtrrFix4KFirst),
    };
}
