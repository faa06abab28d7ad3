using System.Runtime.CompilerServices;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The guest's own debug facilities (SDM Vol. 3, chapter 18): TF single-step, DR0-DR3 breakpoints on execution, data
/// writes, data reads and writes and (with CR4.DE) I/O ports, DR6 status and DR7 control with general detect, DR4/DR5,
/// and RF. They deliver #DB to the guest; host debugging (<see cref="SetGuestDebug"/>) is apart and reports exits.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>DR6 B0-B3: breakpoint conditions 0-3 were met.</summary>
    private const ulong Dr6Hits = 0xF;

    /// <summary>DR6 BD (bit 13): the #DB is a general-detect fault (a MOV DR with DR7.GD set).</summary>
    private const ulong Dr6Bd = 1UL << 13;

    /// <summary>DR6 BS (bit 14): the #DB is a single-step trap (TF).</summary>
    private const ulong Dr6Bs = 1UL << 14;

    /// <summary>DR7 L0-G3 (bits 0-7): local and global enables of the four breakpoints.</summary>
    private const ulong Dr7Enables = 0xFF;

    /// <summary>DR7 GD (bit 13): general detect, MOV to or from a debug register faults.</summary>
    private const ulong Dr7Gd = 1UL << 13;

    /// <summary>DR7 R/W value for an I/O breakpoint (defined only with CR4.DE).</summary>
    private const int DrIo = 2;

    /// <summary>Some guest DR0-DR3 breakpoint is enabled in DR7: instructions run one at a time and are checked.</summary>
    private bool _guestBreakpoints;

    /// <summary>Some enabled guest breakpoint watches data: memory accesses take the slow paths, where they are checked.</summary>
    private bool _guestWatch;

    /// <summary>Whether the host's SetGuestDebug asked for watchpoints.</summary>
    private bool _hostWatch;

    /// <summary>B0-B3 bits of guest data and I/O breakpoints the current instruction hit.</summary>
    private ulong _guestHits;

    /// <summary>DR6 bits of a trap-class #DB held back: by a MOV SS/POP SS shadow, or until an exit completes.</summary>
    private ulong _pendingDebugTrap;

    /// <summary>The held trap is delivered when the next run starts (its instruction ended in an exit).</summary>
    private bool _debugTrapAfterExit;

    /// <summary>The instruction being run loaded RF (IRET): RF is not cleared when it completes.</summary>
    private bool _rfLoaded;

    /// <summary>The instruction being run set up a MOV SS or POP SS shadow, which also holds back debug exceptions.</summary>
    private bool _stackShadow;

    /// <summary>Counts event deliveries: an instruction that delivered one (INT n, a fault) is not single-stepped past.</summary>
    private int _deliveries;

    /// <summary>Whether the run loop must take the one-instruction path for the guest's debug state.</summary>
    private bool GuestDebugPending
    {
        // Read after every block (NeedsAttention): inlined, it is three loads instead of a call.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => _guestBreakpoints || (_cpu.Flags & (TF | RF)) != 0 || _pendingDebugTrap != 0;
    }

    /// <summary>Recomputes what DR7 enables after a write to DR0-DR7 or to CR4.</summary>
    private void UpdateGuestBreakpoints()
    {
        ulong dr7 = _cpu.Dr[7];
        _guestBreakpoints = (dr7 & Dr7Enables) != 0;
        RaiseAttention();
        bool watch = false;
        for (int i = 0; i < 4; i++)
        {
            int kind = GuestSlotKind(i);
            watch |= GuestSlotEnabled(i) && kind != DrExecute && kind != DrIo;
        }

        if (watch != _guestWatch)
        {
            _guestWatch = watch;
            _debugWatch = _hostWatch || _guestWatch;

            // Watched pages must take the slow access paths, where the breakpoints are checked.
            FlushTlb();
        }
    }

    private bool GuestSlotEnabled(int i) => ((_cpu.Dr[7] >> (i * 2)) & 3) != 0;

    private int GuestSlotKind(int i) => (int)((_cpu.Dr[7] >> (16 + (i * 4))) & 3);

    private int GuestSlotLength(int i) => ((_cpu.Dr[7] >> (18 + (i * 4))) & 3) switch
    {
        0 => 1,
        1 => 2,
        2 => 8,
        _ => 4,
    };

    private bool GuestSlotCovers(int i, ulong address, int size)
    {
        int len = GuestSlotLength(i);
        ulong start = _cpu.Dr[i] & ~(ulong)(len - 1);
        return address < start + (ulong)len && start < address + (ulong)size;
    }

    /// <summary>A data access: records the guest breakpoints it meets (R/W 01 on writes, 11 on reads and writes).</summary>
    private void CheckGuestWatchpoints(ulong lin, int size, bool write)
    {
        for (int i = 0; i < 4; i++)
        {
            int kind = GuestSlotKind(i);
            if (GuestSlotEnabled(i) && (kind == 3 || (kind == DrWrite && write)) && GuestSlotCovers(i, lin, size))
            {
                _guestHits |= 1UL << i;
            }
        }
    }

    /// <summary>An I/O instruction's port access: with CR4.DE, records the I/O breakpoints (R/W 10) it meets.</summary>
    private void CheckIoBreakpoints(ushort port, int size)
    {
        if (!_guestBreakpoints || (_cpu.Cr4 & Cr4.DebuggingExtensions) == 0)
        {
            return;
        }

        for (int i = 0; i < 4; i++)
        {
            if (GuestSlotEnabled(i) && GuestSlotKind(i) == DrIo && GuestSlotCovers(i, port, size))
            {
                _guestHits |= 1UL << i;
            }
        }
    }

    /// <summary>Before an instruction: its execute breakpoints (none while RF is set), as DR6 B0-B3 bits.</summary>
    private ulong GuestExecuteBreakpoints()
    {
        if (!_guestBreakpoints || (_cpu.Flags & RF) != 0)
        {
            return 0;
        }

        ulong rip = LinearRip, hits = 0;
        for (int i = 0; i < 4; i++)
        {
            if (GuestSlotEnabled(i) && GuestSlotKind(i) == DrExecute && _cpu.Dr[i] == rip)
            {
                hits |= 1UL << i;
            }
        }

        return hits;
    }

    /// <summary>Delivers #DB with <paramref name="dr6"/> in DR6: B0-B3 replaced, BD and BS added (SDM Vol. 3, 18.2.3).</summary>
    private void RaiseDebugException(ulong dr6, bool fault)
    {
        _cpu.Dr[6] = (_cpu.Dr[6] & ~Dr6Hits) | dr6;
        _forceRfInFrame = fault;
        try
        {
            RaiseException(Vectors.DB, 0);
        }
        finally
        {
            _forceRfInFrame = false;
        }
    }

    /// <summary>Set while a fault-class #DB (instruction breakpoint, general detect) is delivered: the frame carries RF.</summary>
    private bool _forceRfInFrame;

    /// <summary>
    /// After one instruction on the debug path completed: RF is cleared (unless the instruction loaded it), and a
    /// single-step trap (TF at its start) and the data and I/O breakpoints it met become #DB, unless a MOV SS/POP SS
    /// shadow holds them until the next instruction completes.
    /// </summary>
    private void FinishDebugInstruction(bool tfAtStart, int deliveriesBefore)
    {
        if (_rfLoaded)
        {
            _rfLoaded = false;
        }
        else
        {
            _cpu.Flags &= ~RF;
        }

        ulong dr6 = _pendingDebugTrap | _guestHits;
        _guestHits = 0;
        if (tfAtStart && _deliveries == deliveriesBefore)
        {
            dr6 |= Dr6Bs;
        }

        if (dr6 == 0)
        {
            return;
        }

        if (_stackShadow || _hasExit)
        {
            _pendingDebugTrap = dr6;
            _debugTrapAfterExit = _hasExit;
            return;
        }

        _pendingDebugTrap = 0;
        RaiseDebugException(dr6, fault: false);
    }

    /// <summary>MOV to or from DR<paramref name="dr"/>: #UD for DR4/DR5 with CR4.DE, #DB for general detect; returns the register it names.</summary>
    private int CheckDebugRegisterAccess(int dr)
    {
        if (dr is 4 or 5)
        {
            if ((_cpu.Cr4 & Cr4.DebuggingExtensions) != 0)
            {
                throw Fault(Vectors.UD, 0);
            }

            dr += 2; // DR4 and DR5 are DR6 and DR7 without debugging extensions.
        }

        if ((_cpu.Dr[7] & Dr7Gd) != 0)
        {
            // The handler must be able to use the debug registers: GD is cleared as the fault is delivered.
            _cpu.Dr[7] &= ~Dr7Gd;
            _generalDetect = true;
            throw Fault(Vectors.DB, 0);
        }

        return dr;
    }

    /// <summary>The #DB being raised is general detect: DR6.BD is set and the frame carries RF.</summary>
    private bool _generalDetect;
}
