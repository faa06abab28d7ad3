using System.Runtime.CompilerServices;
using Virt.Memory;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// One interpreted vCPU. The guest runs on the thread that calls <see cref="Run"/>; every other member
/// except <see cref="RequestExit"/> must be called on that thread while the vCPU is not running.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1506:Avoid excessive class coupling", Justification = "One vCPU implements the whole instruction set over Iced's decoder, the Virt.Abstractions seams and Virt.X86's facts, split by ISA group into partial files (Handlers/); the coupling is the breadth of the ISA, and the hot path reaches every handler without going through another object.")]
internal sealed partial class InterpreterVcpu : IVirtualCpu, IInstructionCounting
{
    // RFLAGS bits by their SDM names, as the flag logic reads best with them (values: Virt.X86.Rflags).
    internal const ulong CF = Rflags.Carry, Fixed1 = Rflags.Fixed, PF = Rflags.Parity, AF = Rflags.AuxiliaryCarry, ZF = Rflags.Zero,
        SF = Rflags.Sign, TF = Rflags.Trap, IF = Rflags.InterruptEnable, DF = Rflags.Direction, OF = Rflags.Overflow,
        IoplMask = Rflags.IoPrivilegeLevel, NT = Rflags.NestedTask, RF = Rflags.Resume, VM = Rflags.Virtual8086,
        AC = Rflags.AlignmentCheck, VIF = Rflags.VirtualInterrupt, VIP = Rflags.VirtualInterruptPending, ID = Rflags.Id;

    /// <summary>The six arithmetic status flags.</summary>
    internal const ulong ArithFlags = Rflags.Status;

    // Segment register numbers (Iced order).
    internal const int SegEs = CpuState.SegEs, SegCs = CpuState.SegCs, SegSs = CpuState.SegSs, SegDs = CpuState.SegDs,
        SegFs = CpuState.SegFs, SegGs = CpuState.SegGs;

    private readonly InterpreterPartition _partition;

    /// <summary>The partition has several vCPUs: locked instructions are atomic on host memory and code pages are shared.</summary>
    private readonly bool _smp;
    private readonly Action<int, ulong>? _trace;
    private readonly long _tscFrequency;
    private readonly long _tscStart = System.Diagnostics.Stopwatch.GetTimestamp();
    private readonly byte[] _exitBuffer = new byte[4096];
    private List<CpuidEntry> _cpuid;

    /// <summary>The architectural registers; used in place (never copied) by every instruction.</summary>
    internal CpuState _cpu = CpuState.PowerOn();

    private long _retired;
    private long _budgetEnd = long.MaxValue;
    private volatile bool _exitRequested;
    private volatile bool _writeTlbFlushRequested;
    private int _pendingIrq = -1;
    private bool _interruptShadow;
    private VcpuExit _exit;
    private bool _hasExit;
    private int _exitDataLength;
    private PendingIo _pendingIo;
    private bool _disposed;

    public InterpreterVcpu(InterpreterPartition partition, int index)
    {
        _partition = partition;
        _smp = partition.Options.VcpuCount > 1;
        Index = index;
        _trace = partition.InterpreterOptions.TraceHook;
        _tscFrequency = partition.InterpreterOptions.TscFrequency;
        _cpuid = [.. partition.SupportedCpuid];
        RefreshIsaFeatures();
        _regions = partition.Regions;
        _handlers = InstructionTable.Bind(this);
        _jit = partition.Jit;
        InitTlb();
        UpdateMode();
    }

    public int Index { get; }

    public bool IsDisposed => _disposed;

    public long InstructionsRetired => _retired;

    public long? InstructionBudget
    {
        get => _budgetEnd == long.MaxValue ? null : _budgetEnd - _retired;
        set
        {
            if (value is long v)
            {
                ArgumentOutOfRangeException.ThrowIfNegative(v);
                _budgetEnd = _retired + v;
            }
            else
            {
                _budgetEnd = long.MaxValue;
            }
        }
    }

    public Span<byte> ExitData => _exitBuffer.AsSpan(0, _exitDataLength);

    public void RequestExit()
    {
        _exitRequested = true;
        RaiseAttention();
        _plat?.Signal(); // wakes a halted vCPU at once
    }

    internal void RequestWriteTlbFlush()
    {
        _writeTlbFlushRequested = true;
        RaiseAttention();
    }

    /// <summary>Set while <see cref="Run"/> executes on some thread.</summary>
    private int _executing;

    /// <summary>Set while a halted vCPU waits for an interrupt inside <see cref="Run"/> (it writes nothing meanwhile).</summary>
    private int _idle;

    /// <summary>Write-translation flushes so far: a collector of the dirty log waits for it to move.</summary>
    private long _writeTlbFlushes;

    /// <summary>
    /// Drops every cached write translation before this vCPU writes guest memory again, and returns once that holds:
    /// the vCPU has flushed, or is not executing (it flushes before it next executes), or waits halted (it flushes
    /// when it wakes). Pages written through a translation are marked dirty only when it is made, so a dirty-log
    /// collector calls this after taking the log: every later write then marks its page again.
    /// </summary>
    internal void FlushWriteTranslationsAndWait()
    {
        long before = Interlocked.Read(ref _writeTlbFlushes);
        _writeTlbFlushRequested = true;
        RaiseAttention();
        Interlocked.MemoryBarrier();
        var spin = new SpinWait();
        while (Volatile.Read(ref _executing) != 0 && Volatile.Read(ref _idle) == 0 && Interlocked.Read(ref _writeTlbFlushes) == before && !_disposed)
        {
            spin.SpinOnce();
        }
    }

    public GeneralRegisters GetGeneralRegisters() => _cpu.GetGeneral(GetRflags());

    public void SetGeneralRegisters(in GeneralRegisters registers)
    {
        _cpu.SetGeneral(registers);
        SetRflags(registers.Rflags);
    }

    public SpecialRegisters GetSpecialRegisters() => _cpu.GetSpecial();

    public void SetSpecialRegisters(in SpecialRegisters registers)
    {
        // A processor the host gives a state to runs from it, even one waiting for a start-up IPI (flat guests start
        // every vCPU at their entry point; a Linux guest's application processors are left to the start-up IPIs).
        _waitForStartup = false;
        _cpu.SetSpecial(registers);
        UpdateMode();
        FlushTlb();
    }

    public FpuState GetFpuState() => _cpu.Fpu;

    public void SetFpuState(in FpuState state) => _cpu.Fpu = state;

    public XsaveState GetXsaveState() => BuildXsaveState();

    public void SetXsaveState(XsaveState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        LoadXsaveState(state);
    }

    public DebugRegisters GetDebugRegisters() => _cpu.GetDebug();

    public void SetDebugRegisters(in DebugRegisters registers)
    {
        _cpu.SetDebug(registers);
        UpdateGuestBreakpoints();
    }

    public void GetMsrs(Span<MsrEntry> entries)
    {
        for (int i = 0; i < entries.Length; i++)
        {
            if (!TryReadMsr(entries[i].Index, out ulong v))
            {
                throw new ArgumentException($"MSR 0x{entries[i].Index:x} is not supported by the interpreter; see IPartition.SupportedMsrs.", nameof(entries));
            }

            entries[i] = entries[i] with { Value = v };
        }
    }

    public void SetMsrs(ReadOnlySpan<MsrEntry> entries)
    {
        foreach (var e in entries)
        {
            if (!TryWriteMsr(e.Index, e.Value, fromGuest: false))
            {
                throw new ArgumentException($"MSR 0x{e.Index:x} is not supported by the interpreter or the value 0x{e.Value:x} is invalid.", nameof(entries));
            }
        }
    }

    public void SetCpuid(IReadOnlyList<CpuidEntry> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        _cpuid = [.. entries];
        RefreshIsaFeatures();
    }

    public bool TryInjectInterrupt(byte vector)
    {
        if (_pendingIrq >= 0)
        {
            return false;
        }

        _pendingIrq = vector;
        RaiseAttention();
        return true;
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _partition.Remove(this);
    }

    /// <summary>Recomputes CPL and decode bitness after CS, CR0 or EFER changed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal void UpdateMode()
    {
        for (int s = 0; s < 6; s++)
        {
            _cpu.SegBase[s] = _cpu.Seg[s].Base;
        }

        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0)
        {
            _cpu.Bitness = 16;
            _cpu.Cpl = 0;
        }
        else if ((_cpu.Flags & VM) != 0)
        {
            _cpu.Bitness = 16;
            _cpu.Cpl = 3;
        }
        else
        {
            _cpu.Cpl = _cpu.Seg[SegCs].Selector & 3;
            if ((_cpu.Efer & Efer.LongModeActive) != 0 && _cpu.Seg[SegCs].Long)
            {
                _cpu.Bitness = 64;
            }
            else
            {
                _cpu.Bitness = _cpu.Seg[SegCs].DefaultBig ? 32 : 16;
            }
        }

        if (_cpu.Bitness == 64)
        {
            // In 64-bit mode only FS and GS have a base.
            _cpu.SegBase[SegEs] = _cpu.SegBase[SegCs] = _cpu.SegBase[SegSs] = _cpu.SegBase[SegDs] = 0;
        }

        _userKey = _cpu.Cpl == 3 ? 1UL : 0UL;
        UpdateAlignmentCheck();
        UpdateSegmentCheck();
    }

    private enum PendingIoKind : byte
    {
        None,
        In,
        Ins,
        MmioRead,
        MmioWrite,
    }

    private struct PendingIo
    {
        public PendingIoKind Kind;
        public int Size;
        public int Count;
        public int Register;
        public int AddrSize;
    }
}
