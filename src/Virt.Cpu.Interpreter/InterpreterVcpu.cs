using System.Runtime.CompilerServices;
using Virt.Memory;

namespace Virt.Cpu.Interpreter;

/// <summary>The sixteen general-purpose registers in encoding order.</summary>
[InlineArray(16)]
internal struct GprFile
{
    private ulong _element0;
}

/// <summary>
/// One interpreted vCPU. The guest runs on the thread that calls <see cref="Run"/>; every other member
/// except <see cref="RequestExit"/> must be called on that thread while the vCPU is not running.
/// </summary>
internal sealed partial class InterpreterVcpu : IVirtualCpu, IInstructionCounting
{
    // RFLAGS bits.
    internal const ulong CF = 1UL << 0, Fixed1 = 1UL << 1, PF = 1UL << 2, AF = 1UL << 4, ZF = 1UL << 6, SF = 1UL << 7,
        TF = 1UL << 8, IF = 1UL << 9, DF = 1UL << 10, OF = 1UL << 11, IoplMask = 3UL << 12, NT = 1UL << 14,
        RF = 1UL << 16, VM = 1UL << 17, AC = 1UL << 18, VIF = 1UL << 19, VIP = 1UL << 20, ID = 1UL << 21;

    /// <summary>The six arithmetic status flags.</summary>
    internal const ulong ArithFlags = CF | PF | AF | ZF | SF | OF;

    // CR0 / CR4 / EFER bits.
    internal const ulong Cr0Pe = 1UL << 0, Cr0Mp = 1UL << 1, Cr0Em = 1UL << 2, Cr0Ts = 1UL << 3, Cr0Et = 1UL << 4,
        Cr0Ne = 1UL << 5, Cr0Wp = 1UL << 16, Cr0Am = 1UL << 18, Cr0Nw = 1UL << 29, Cr0Cd = 1UL << 30, Cr0Pg = 1UL << 31;
    internal const ulong Cr4Pse = 1UL << 4, Cr4Pae = 1UL << 5, Cr4Pge = 1UL << 7, Cr4OsFxsr = 1UL << 9,
        Cr4OsXmmExcpt = 1UL << 10, Cr4Tsd = 1UL << 2;
    internal const ulong EferSce = 1UL << 0, EferLme = 1UL << 8, EferLma = 1UL << 10, EferNxe = 1UL << 11;

    // Segment register numbers (Iced order).
    internal const int SegEs = 0, SegCs = 1, SegSs = 2, SegDs = 3, SegFs = 4, SegGs = 5;

    private readonly InterpreterPartition _partition;
    private readonly Action<int, ulong>? _trace;
    private readonly long _tscFrequency;
    private readonly long _tscStart = System.Diagnostics.Stopwatch.GetTimestamp();
    private readonly byte[] _exitBuffer = new byte[4096];
    private List<CpuidEntry> _cpuid;

    internal GprFile _gpr;
    internal ulong _rip;
    internal ulong _flags = Fixed1;
    internal readonly SegmentRegister[] _seg = new SegmentRegister[6];
    internal readonly ulong[] _segBase = new ulong[6];
    internal SegmentRegister _tr, _ldt;
    internal DescriptorTable _gdt, _idt;
    internal ulong _cr0 = Cr0Et | Cr0Cd | Cr0Nw, _cr2, _cr3, _cr4, _cr8, _efer;
    internal ulong _apicBase = 0xFEE00900;
    // IA32_MISC_ENABLE after reset: fast strings on, branch trace store and PEBS unavailable (there are none).
    internal ulong _star, _lstar, _cstar, _fmask, _kernelGsBase, _tscAux, _pat = 0x0007040600070406, _miscEnable = 1 | (1UL << 11) | (1UL << 12);
    internal ulong _sysenterCs, _sysenterEsp, _sysenterEip, _miscFeatures;
    internal long _tscOffset;
    internal FpuState _fpu = FpuState.Initial;
    internal int _cpl;

    /// <summary>Decode bitness of the current code segment: 16, 32 or 64.</summary>
    internal int _bitness = 16;

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
        Index = index;
        _trace = partition.InterpreterOptions.TraceHook;
        _tscFrequency = partition.InterpreterOptions.TscFrequency;
        _cpuid = [.. partition.SupportedCpuid];
        _regions = partition.Regions;
        InitTlb();
        ResetState();
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
        _plat?.Signal(); // wakes a halted vCPU at once
    }

    internal void RequestWriteTlbFlush() => _writeTlbFlushRequested = true;

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
        Interlocked.MemoryBarrier();
        var spin = new SpinWait();
        while (Volatile.Read(ref _executing) != 0 && Volatile.Read(ref _idle) == 0 && Interlocked.Read(ref _writeTlbFlushes) == before && !_disposed)
        {
            spin.SpinOnce();
        }
    }

    private void ResetState()
    {
        // Power-on state: real mode at F000:FFF0.
        _seg[SegCs] = SegmentRegister.RealMode(0xF000, code: true);
        _seg[SegCs].Base = 0xFFFF0000;
        for (int s = 0; s < 6; s++)
        {
            if (s != SegCs)
            {
                _seg[s] = SegmentRegister.RealMode(0);
            }

            _segBase[s] = _seg[s].Base;
        }

        _tr = new SegmentRegister { Type = 3, Present = true, Limit = 0xFFFF };
        _ldt = new SegmentRegister { Type = 2, Present = true, Limit = 0xFFFF };
        _gdt = new DescriptorTable { Limit = 0xFFFF };
        _idt = new DescriptorTable { Limit = 0x3FF };
        _rip = 0xFFF0;
        _gpr[2] = 0x600; // EDX: processor signature family 6
        UpdateMode();
    }

    public GeneralRegisters GetGeneralRegisters()
    {
        var r = new GeneralRegisters
        {
            Rax = _gpr[0], Rcx = _gpr[1], Rdx = _gpr[2], Rbx = _gpr[3], Rsp = _gpr[4], Rbp = _gpr[5], Rsi = _gpr[6], Rdi = _gpr[7],
            R8 = _gpr[8], R9 = _gpr[9], R10 = _gpr[10], R11 = _gpr[11], R12 = _gpr[12], R13 = _gpr[13], R14 = _gpr[14], R15 = _gpr[15],
            Rip = _rip, Rflags = GetRflags(),
        };
        return r;
    }

    public void SetGeneralRegisters(in GeneralRegisters registers)
    {
        _gpr[0] = registers.Rax; _gpr[1] = registers.Rcx; _gpr[2] = registers.Rdx; _gpr[3] = registers.Rbx;
        _gpr[4] = registers.Rsp; _gpr[5] = registers.Rbp; _gpr[6] = registers.Rsi; _gpr[7] = registers.Rdi;
        _gpr[8] = registers.R8; _gpr[9] = registers.R9; _gpr[10] = registers.R10; _gpr[11] = registers.R11;
        _gpr[12] = registers.R12; _gpr[13] = registers.R13; _gpr[14] = registers.R14; _gpr[15] = registers.R15;
        _rip = registers.Rip;
        SetRflags(registers.Rflags);
    }

    public SpecialRegisters GetSpecialRegisters() => new()
    {
        Es = _seg[SegEs], Cs = _seg[SegCs], Ss = _seg[SegSs], Ds = _seg[SegDs], Fs = _seg[SegFs], Gs = _seg[SegGs],
        Tr = _tr, Ldt = _ldt, Gdt = _gdt, Idt = _idt,
        Cr0 = _cr0, Cr2 = _cr2, Cr3 = _cr3, Cr4 = _cr4, Cr8 = _cr8, Efer = _efer, ApicBase = _apicBase,
    };

    public void SetSpecialRegisters(in SpecialRegisters registers)
    {
        _seg[SegEs] = registers.Es; _seg[SegCs] = registers.Cs; _seg[SegSs] = registers.Ss;
        _seg[SegDs] = registers.Ds; _seg[SegFs] = registers.Fs; _seg[SegGs] = registers.Gs;
        _tr = registers.Tr; _ldt = registers.Ldt; _gdt = registers.Gdt; _idt = registers.Idt;
        _cr0 = registers.Cr0 | Cr0Et; _cr2 = registers.Cr2; _cr3 = registers.Cr3; _cr4 = registers.Cr4; _cr8 = registers.Cr8;
        _efer = registers.Efer; _apicBase = registers.ApicBase;
        UpdateMode();
        FlushTlb();
    }

    public FpuState GetFpuState() => _fpu;

    public void SetFpuState(in FpuState state) => _fpu = state;

    /// <summary>The x87 and SSE components: the only XSAVE state the interpreter has.</summary>
    private const ulong LegacyComponents = (ulong)(XsaveComponents.X87 | XsaveComponents.Sse);

    public XsaveState GetXsaveState() => XsaveState.FromFpu(_fpu, LegacyComponents);

    public void SetXsaveState(XsaveState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if ((state.Xcr0 & ~LegacyComponents) != 0)
        {
            throw new ArgumentException(
                $"XCR0 0x{state.Xcr0:x} enables {(XsaveComponents)(state.Xcr0 & ~LegacyComponents)}; the interpreter has x87 and SSE state only.", nameof(state));
        }

        var beyond = state.StateComponents & ~(XsaveComponents)LegacyComponents;
        if (beyond != 0 && state.Area[XsaveState.MinimumSize..].IndexOfAnyExcept((byte)0) >= 0)
        {
            throw new ArgumentException($"The XSAVE image holds {beyond} state; the interpreter has x87 and SSE state only.", nameof(state));
        }

        _fpu = state.Fpu;
    }

    public DebugRegisters GetDebugRegisters() => new()
    {
        Dr0 = _dr[0], Dr1 = _dr[1], Dr2 = _dr[2], Dr3 = _dr[3], Dr6 = _dr[6] | DebugRegisters.Dr6Reset, Dr7 = _dr[7] | DebugRegisters.Dr7Reset,
    };

    public void SetDebugRegisters(in DebugRegisters registers)
    {
        _dr[0] = registers.Dr0;
        _dr[1] = registers.Dr1;
        _dr[2] = registers.Dr2;
        _dr[3] = registers.Dr3;
        _dr[6] = registers.Dr6;
        _dr[7] = registers.Dr7;
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
    }

    public bool TryInjectInterrupt(byte vector)
    {
        if (_pendingIrq >= 0)
        {
            return false;
        }

        _pendingIrq = vector;
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
    internal void UpdateMode()
    {
        for (int s = 0; s < 6; s++)
        {
            _segBase[s] = _seg[s].Base;
        }

        if ((_cr0 & Cr0Pe) == 0)
        {
            _bitness = 16;
            _cpl = 0;
        }
        else if ((_flags & VM) != 0)
        {
            _bitness = 16;
            _cpl = 3;
        }
        else
        {
            _cpl = _seg[SegCs].Selector & 3;
            if ((_efer & EferLma) != 0 && _seg[SegCs].Long)
            {
                _bitness = 64;
            }
            else
            {
                _bitness = _seg[SegCs].DefaultBig ? 32 : 16;
            }
        }

        if (_bitness == 64)
        {
            // In 64-bit mode only FS and GS have a base.
            _segBase[SegEs] = _segBase[SegCs] = _segBase[SegSs] = _segBase[SegDs] = 0;
        }

        _userKey = _cpl == 3 ? 1UL : 0UL;
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
