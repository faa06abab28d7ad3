using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>The sixteen general-purpose registers in encoding order.</summary>
[InlineArray(16)]
internal struct GprFile
{
    private ulong _element0;
}

/// <summary>The six segment registers in Iced order (ES, CS, SS, DS, FS, GS).</summary>
[InlineArray(6)]
internal struct SegmentFile
{
    private SegmentRegister _element0;
}

/// <summary>The segment bases an address computation adds, one per segment register (zero for ES, CS, SS and DS in 64-bit mode).</summary>
[InlineArray(6)]
internal struct SegmentBaseFile
{
    private ulong _element0;
}

/// <summary>DR0-DR7 (DR4 and DR5 are kept but alias DR6 and DR7 only through the instructions).</summary>
[InlineArray(8)]
internal struct DebugRegisterFile
{
    private ulong _element0;
}

/// <summary>The eight variable-range MTRR pairs (IA32_MTRR_PHYSBASEn, IA32_MTRR_PHYSMASKn).</summary>
[InlineArray(16)]
internal struct VariableMtrrFile
{
    private ulong _element0;
}

/// <summary>MCi_CTL, MCi_STATUS, MCi_ADDR and MCi_MISC of the machine-check banks, four per bank.</summary>
[InlineArray(4 * MachineCheck.MachineCheckBanks)]
internal struct MachineCheckBankFile
{
    private ulong _element0;
}

/// <summary>The eleven fixed-range MTRRs (one 64K, two 16K, eight 4K).</summary>
[InlineArray(11)]
internal struct FixedMtrrFile
{
    private ulong _element0;
}

/// <summary>
/// The architectural state of one interpreted processor: general, segment, control and debug registers, MSRs,
/// the x87/SSE state and RFLAGS (kept as <see cref="Flags"/> plus the last flag-setting operation, from which
/// the six arithmetic flags are computed on demand).
/// </summary>
/// <remarks>
/// A mutable struct that lives inline in its <see cref="InterpreterVcpu"/> and is only ever used through that
/// field or by <c>ref</c>: a register access costs what a field of the vCPU costs, with no indirection, and
/// nothing on the hot path copies it. Derived values (<see cref="SegBase"/>, <see cref="Cpl"/>,
/// <see cref="Bitness"/>) are recomputed by <see cref="InterpreterVcpu.UpdateMode"/> whenever CS, CR0, EFER or
/// RFLAGS.VM change.
/// </remarks>
internal struct CpuState
{
    /// <summary>Segment register numbers (Iced order).</summary>
    public const int SegEs = 0, SegCs = 1, SegSs = 2, SegDs = 3, SegFs = 4, SegGs = 5;

    /// <summary>IA32_MTRR_DEF_TYPE at reset: MTRRs enabled, default type write-back.</summary>
    public const ulong MtrrDefTypeReset = (1UL << 11) | 6;

    public GprFile Gpr;
    public ulong Rip;

    /// <summary>RFLAGS, whose arithmetic flags are stale while <see cref="LzOp"/> is not <c>LzNone</c>.</summary>
    public ulong Flags;

    // Lazy arithmetic flags: the last flag-setting operation, its operands, result and size.
    public int LzOp;
    public int LzSize;
    public ulong LzA, LzB, LzR, LzCf;

    public SegmentFile Seg;
    public SegmentBaseFile SegBase;
    public SegmentRegister Tr, Ldt;
    public DescriptorTable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer;
    public DebugRegisterFile Dr;
    public ulong ApicBase;
    public ulong Star, Lstar, Cstar, Fmask, KernelGsBase, TscAux, Pat, MiscEnable;
    public ulong SysenterCs, SysenterEsp, SysenterEip, MiscFeatures, SpecCtrl;
    public VariableMtrrFile MtrrVariable;
    public FixedMtrrFile MtrrFixed;
    public ulong MtrrDefType;

    /// <summary>IA32_MCG_STATUS, IA32_MCG_CTL (0 at reset, as in KVM; the guest's machine-check setup enables the banks) and the machine-check banks.</summary>
    public ulong McgStatus, McgCtl;
    public MachineCheckBankFile McBanks;

    /// <summary>IA32_BIOS_SIGN_ID (the microcode revision in bits 63:32), which only the host sets.</summary>
    public ulong MicrocodeRevision;

    /// <summary>Offset of the guest TSC from the vCPU's virtual clock (IA32_TSC writes move it).</summary>
    public long TscOffset;
    public FpuState Fpu;

    /// <summary>Bits 255:128 of YMM0-YMM15 (the XSAVE AVX component); bits 127:0 are <see cref="FpuState.Xmm"/>.</summary>
    public XmmRegisterFile YmmHigh;

    /// <summary>XCR0: the XSAVE components the guest enabled (bit 0, x87, is always set).</summary>
    public ulong Xcr0;

    /// <summary>Current privilege level (derived).</summary>
    public int Cpl;

    /// <summary>Decode bitness of the current code segment: 16, 32 or 64 (derived).</summary>
    public int Bitness;

    /// <summary>The power-on state: real mode at F000:FFF0, caches disabled, x87 initialised.</summary>
    public static CpuState PowerOn()
    {
        var s = new CpuState
        {
            Flags = X86.Rflags.Fixed,
            LzSize = 8,
            Cr0 = X86.Cr0.ExtensionType | X86.Cr0.CacheDisable | X86.Cr0.NotWriteThrough,
            ApicBase = 0xFEE00900,
            Pat = 0x0007040600070406,

            // IA32_MISC_ENABLE after reset: fast strings on, branch trace store and PEBS unavailable (there are none).
            MiscEnable = 1 | (1UL << 11) | (1UL << 12),
            MtrrDefType = MtrrDefTypeReset,
            MicrocodeRevision = MachineCheck.MicrocodeRevisionReset,
            Fpu = FpuState.Initial,
            Xcr0 = 1,
            Bitness = 16,
            Tr = new SegmentRegister { Type = 3, Present = true, Limit = 0xFFFF },
            Ldt = new SegmentRegister { Type = 2, Present = true, Limit = 0xFFFF },
            Gdt = new DescriptorTable { Limit = 0xFFFF },
            Idt = new DescriptorTable { Limit = 0x3FF },
            Rip = 0xFFF0,
        };
        s.Seg[SegCs] = SegmentRegister.RealMode(0xF000, code: true);
        s.Seg[SegCs].Base = 0xFFFF0000;
        for (int i = 0; i < 6; i++)
        {
            if (i != SegCs)
            {
                s.Seg[i] = SegmentRegister.RealMode(0);
            }

            s.SegBase[i] = s.Seg[i].Base;
        }

        s.Gpr[2] = 0x600; // EDX: processor signature family 6
        return s;
    }

    /// <summary>The general registers with <paramref name="rflags"/> (the caller materialises the lazy flags).</summary>
    public readonly GeneralRegisters GetGeneral(ulong rflags) => new()
    {
        Rax = Gpr[0], Rcx = Gpr[1], Rdx = Gpr[2], Rbx = Gpr[3], Rsp = Gpr[4], Rbp = Gpr[5], Rsi = Gpr[6], Rdi = Gpr[7],
        R8 = Gpr[8], R9 = Gpr[9], R10 = Gpr[10], R11 = Gpr[11], R12 = Gpr[12], R13 = Gpr[13], R14 = Gpr[14], R15 = Gpr[15],
        Rip = Rip, Rflags = rflags,
    };

    /// <summary>Sets the general registers and RIP; RFLAGS is left to the caller (it may change the mode).</summary>
    public void SetGeneral(in GeneralRegisters r)
    {
        Gpr[0] = r.Rax; Gpr[1] = r.Rcx; Gpr[2] = r.Rdx; Gpr[3] = r.Rbx;
        Gpr[4] = r.Rsp; Gpr[5] = r.Rbp; Gpr[6] = r.Rsi; Gpr[7] = r.Rdi;
        Gpr[8] = r.R8; Gpr[9] = r.R9; Gpr[10] = r.R10; Gpr[11] = r.R11;
        Gpr[12] = r.R12; Gpr[13] = r.R13; Gpr[14] = r.R14; Gpr[15] = r.R15;
        Rip = r.Rip;
    }

    /// <summary>The segment, descriptor-table and control registers.</summary>
    public readonly SpecialRegisters GetSpecial() => new()
    {
        Es = Seg[SegEs], Cs = Seg[SegCs], Ss = Seg[SegSs], Ds = Seg[SegDs], Fs = Seg[SegFs], Gs = Seg[SegGs],
        Tr = Tr, Ldt = Ldt, Gdt = Gdt, Idt = Idt,
        Cr0 = Cr0, Cr2 = Cr2, Cr3 = Cr3, Cr4 = Cr4, Cr8 = Cr8, Efer = Efer, ApicBase = ApicBase,
    };

    /// <summary>Sets the segment, descriptor-table and control registers; the caller recomputes the mode and flushes the TLB.</summary>
    public void SetSpecial(in SpecialRegisters r)
    {
        Seg[SegEs] = r.Es; Seg[SegCs] = r.Cs; Seg[SegSs] = r.Ss;
        Seg[SegDs] = r.Ds; Seg[SegFs] = r.Fs; Seg[SegGs] = r.Gs;
        Tr = r.Tr; Ldt = r.Ldt; Gdt = r.Gdt; Idt = r.Idt;
        Cr0 = r.Cr0 | X86.Cr0.ExtensionType; Cr2 = r.Cr2; Cr3 = r.Cr3; Cr4 = r.Cr4; Cr8 = r.Cr8;
        Efer = r.Efer; ApicBase = r.ApicBase;
    }

    public readonly DebugRegisters GetDebug() => new()
    {
        Dr0 = Dr[0], Dr1 = Dr[1], Dr2 = Dr[2], Dr3 = Dr[3], Dr6 = Dr[6] | DebugRegisters.Dr6Reset, Dr7 = Dr[7] | DebugRegisters.Dr7Reset,
    };

    public void SetDebug(in DebugRegisters r)
    {
        Dr[0] = r.Dr0;
        Dr[1] = r.Dr1;
        Dr[2] = r.Dr2;
        Dr[3] = r.Dr3;
        Dr[6] = r.Dr6;
        Dr[7] = r.Dr7;
    }
}
