namespace Virt.Cpu.Interpreter;

/// <summary>
/// Host debugging (<see cref="IVirtualCpu.SetGuestDebug"/>): while it is on the vCPU runs one instruction at a time,
/// checks the host's execute breakpoints before each, and reports single steps, watchpoint hits and intercepted
/// <c>INT3</c>s as <see cref="VcpuExitReason.Debug"/> exits. The host's breakpoints are apart from the guest's DR0-DR7.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>DR7 R/W field values (SDM Vol. 3, 18.2.4).</summary>
    private const int DrExecute = 0, DrWrite = 1;

    /// <summary>Host debugging is on: run single instructions and check breakpoints.</summary>
    private bool _debugActive;
    private bool _debugStep;
    private bool _debugInt3;
    private bool _debugWatch;
    private DebugRegisters _debugRegs;

    /// <summary>DR6-format bits of watchpoints the current instruction hit.</summary>
    private ulong _debugHits;

    /// <summary>The linear RIP of the execute breakpoint last reported: the next run executes that instruction (as RF does).</summary>
    private ulong? _debugResumeAt;

    /// <summary>A port-I/O instruction retired during a single step and exited: the step is reported by the next run.</summary>
    private bool _debugStepOwed;

    public GuestDebugFeatures DebugFeatures =>
        GuestDebugFeatures.SingleStep | GuestDebugFeatures.SoftwareBreakpoints | GuestDebugFeatures.HardwareBreakpoints | GuestDebugFeatures.Watchpoints;

    public void SetGuestDebug(in GuestDebugSettings settings)
    {
        ulong dr7 = settings.HardwareBreakpoints.Dr7;
        for (int i = 0; i < 4; i++)
        {
            if (((dr7 >> (i * 2)) & 3) != 0 && ((dr7 >> (16 + (i * 4))) & 3) == 2)
            {
                throw new NotSupportedException($"Host breakpoint {i} asks for an I/O breakpoint (DR7 R/W 10); host breakpoints watch execution or memory.");
            }
        }

        _debugStep = settings.SingleStep;
        _debugInt3 = settings.InterceptBreakpointInstructions;
        _debugRegs = settings.HardwareBreakpoints;
        _hostWatch = false;
        for (int i = 0; i < 4; i++)
        {
            _hostWatch |= DebugSlotEnabled(i) && DebugSlotKind(i) != DrExecute;
        }

        _debugWatch = _hostWatch || _guestWatch;

        _debugActive = settings.IsEnabled;
        _debugHits = 0;
        _debugResumeAt = null;
        _debugStepOwed = false;

        // Watched pages must take the slow access paths, where the watchpoints are checked.
        FlushTlb();
    }

    private bool DebugSlotEnabled(int i) => ((_debugRegs.Dr7 >> (i * 2)) & 3) != 0;

    private int DebugSlotKind(int i) => (int)((_debugRegs.Dr7 >> (16 + (i * 4))) & 3);

    private int DebugSlotLength(int i) => ((_debugRegs.Dr7 >> (18 + (i * 4))) & 3) switch
    {
        0 => 1,
        1 => 2,
        2 => 8,
        _ => 4,
    };

    private ulong DebugSlotAddress(int i) => i switch
    {
        0 => _debugRegs.Dr0,
        1 => _debugRegs.Dr1,
        2 => _debugRegs.Dr2,
        _ => _debugRegs.Dr3,
    };

    private ulong LinearRip => CodeLinear(out _);

    /// <summary>Before an instruction: the DR6 bits of the host execute breakpoints at RIP (zero when none, or when resuming from one).</summary>
    private ulong CheckExecuteBreakpoints()
    {
        ulong rip = LinearRip;
        if (_debugResumeAt is ulong resume)
        {
            _debugResumeAt = null;
            if (resume == rip)
            {
                return 0;
            }
        }

        ulong hits = 0;
        for (int i = 0; i < 4; i++)
        {
            if (DebugSlotEnabled(i) && DebugSlotKind(i) == DrExecute && DebugSlotAddress(i) == rip)
            {
                hits |= 1UL << i;
            }
        }

        if (hits != 0)
        {
            _debugResumeAt = rip;
        }

        return hits;
    }

    /// <summary>A data access of <paramref name="size"/> bytes at <paramref name="lin"/>: records the host watchpoints it touches.</summary>
    private void CheckWatchpoints(ulong lin, int size, bool write)
    {
        if (_guestWatch)
        {
            CheckGuestWatchpoints(lin, size, write);
        }

        if (!_hostWatch)
        {
            return;
        }

        for (int i = 0; i < 4; i++)
        {
            if (!DebugSlotEnabled(i))
            {
                continue;
            }

            int kind = DebugSlotKind(i);
            if (kind == DrExecute || (kind == DrWrite && !write))
            {
                continue;
            }

            int len = DebugSlotLength(i);
            ulong start = DebugSlotAddress(i) & ~(ulong)(len - 1);
            if (lin < start + (ulong)len && start < lin + (ulong)size)
            {
                _debugHits |= 1UL << i;
            }
        }
    }

    /// <summary>After one instruction under host debugging: the exit to report, if any.</summary>
    private VcpuExit? TakeDebugEvent()
    {
        ulong status = _debugHits | (_debugStep ? GuestDebugSettings.SingleStepStatus : 0);
        _debugHits = 0;
        return status != 0 ? VcpuExit.DebugEvent(status, breakpointInstruction: false) : null;
    }

    /// <summary><c>INT3</c> under host debugging: stop with RIP at the instruction instead of raising #BP.</summary>
    private bool InterceptInt3()
    {
        if (!_debugInt3)
        {
            return false;
        }

        SetExit(VcpuExit.DebugEvent(0, breakpointInstruction: true));
        return true;
    }
}
