
namespace Virt.Cpu.Whp;

/// <summary>
/// The one place that says which WHV_REGISTER_NAME holds which field of the shared register structs,
/// and how the values convert. Pure: used by the vCPU on Windows and tested everywhere.
/// </summary>
internal static class RegisterMap
{
    internal delegate ref ulong GeneralField(ref GeneralRegisters registers);

    internal delegate ref SegmentRegister SegmentField(ref SpecialRegisters registers);

    internal delegate ref DescriptorTable TableField(ref SpecialRegisters registers);

    internal delegate ref ulong SpecialField(ref SpecialRegisters registers);

    /// <summary>Every field of <see cref="GeneralRegisters"/> and its register.</summary>
    internal static readonly (WhvRegisterName Name, GeneralField Field)[] General =
    [
        (WhvRegisterName.Rax, static ref ulong (ref GeneralRegisters r) => ref r.Rax),
        (WhvRegisterName.Rbx, static ref ulong (ref GeneralRegisters r) => ref r.Rbx),
        (WhvRegisterName.Rcx, static ref ulong (ref GeneralRegisters r) => ref r.Rcx),
        (WhvRegisterName.Rdx, static ref ulong (ref GeneralRegisters r) => ref r.Rdx),
        (WhvRegisterName.Rsi, static ref ulong (ref GeneralRegisters r) => ref r.Rsi),
        (WhvRegisterName.Rdi, static ref ulong (ref GeneralRegisters r) => ref r.Rdi),
        (WhvRegisterName.Rsp, static ref ulong (ref GeneralRegisters r) => ref r.Rsp),
        (WhvRegisterName.Rbp, static ref ulong (ref GeneralRegisters r) => ref r.Rbp),
        (WhvRegisterName.R8, static ref ulong (ref GeneralRegisters r) => ref r.R8),
        (WhvRegisterName.R9, static ref ulong (ref GeneralRegisters r) => ref r.R9),
        (WhvRegisterName.R10, static ref ulong (ref GeneralRegisters r) => ref r.R10),
        (WhvRegisterName.R11, static ref ulong (ref GeneralRegisters r) => ref r.R11),
        (WhvRegisterName.R12, static ref ulong (ref GeneralRegisters r) => ref r.R12),
        (WhvRegisterName.R13, static ref ulong (ref GeneralRegisters r) => ref r.R13),
        (WhvRegisterName.R14, static ref ulong (ref GeneralRegisters r) => ref r.R14),
        (WhvRegisterName.R15, static ref ulong (ref GeneralRegisters r) => ref r.R15),
        (WhvRegisterName.Rip, static ref ulong (ref GeneralRegisters r) => ref r.Rip),
        (WhvRegisterName.Rflags, static ref ulong (ref GeneralRegisters r) => ref r.Rflags),
    ];

    /// <summary>The segment registers of <see cref="SpecialRegisters"/>.</summary>
    internal static readonly (WhvRegisterName Name, SegmentField Field)[] Segments =
    [
        (WhvRegisterName.Cs, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Cs),
        (WhvRegisterName.Ds, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Ds),
        (WhvRegisterName.Es, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Es),
        (WhvRegisterName.Fs, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Fs),
        (WhvRegisterName.Gs, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Gs),
        (WhvRegisterName.Ss, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Ss),
        (WhvRegisterName.Tr, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Tr),
        (WhvRegisterName.Ldtr, static ref SegmentRegister (ref SpecialRegisters r) => ref r.Ldt),
    ];

    /// <summary>The descriptor-table registers of <see cref="SpecialRegisters"/>.</summary>
    internal static readonly (WhvRegisterName Name, TableField Field)[] Tables =
    [
        (WhvRegisterName.Gdtr, static ref DescriptorTable (ref SpecialRegisters r) => ref r.Gdt),
        (WhvRegisterName.Idtr, static ref DescriptorTable (ref SpecialRegisters r) => ref r.Idt),
    ];

    /// <summary>The 64-bit control registers and MSR-backed fields of <see cref="SpecialRegisters"/>.</summary>
    internal static readonly (WhvRegisterName Name, SpecialField Field)[] Control =
    [
        (WhvRegisterName.Cr0, static ref ulong (ref SpecialRegisters r) => ref r.Cr0),
        (WhvRegisterName.Cr2, static ref ulong (ref SpecialRegisters r) => ref r.Cr2),
        (WhvRegisterName.Cr3, static ref ulong (ref SpecialRegisters r) => ref r.Cr3),
        (WhvRegisterName.Cr4, static ref ulong (ref SpecialRegisters r) => ref r.Cr4),
        (WhvRegisterName.Cr8, static ref ulong (ref SpecialRegisters r) => ref r.Cr8),
        (WhvRegisterName.Efer, static ref ulong (ref SpecialRegisters r) => ref r.Efer),
        (WhvRegisterName.ApicBase, static ref ulong (ref SpecialRegisters r) => ref r.ApicBase),
    ];

    /// <summary>Number of registers that make up <see cref="SpecialRegisters"/>.</summary>
    internal static int SpecialCount => Segments.Length + Tables.Length + Control.Length;

    /// <summary>Number of registers that make up <see cref="FpuState"/>: ST0-7, the two control/status registers, XMM0-15.</summary>
    internal const int FpuCount = 8 + 2 + 16;

    /// <summary>MXCSR_MASK reported with XMM state: every MXCSR bit the guest may set (bits 0-15).</summary>
    internal const uint MxcsrMask = 0x0000_FFFF;

    /// <summary>The MSRs this backend reads and writes as WHP registers.</summary>
    internal static readonly IReadOnlyDictionary<uint, WhvRegisterName> Msrs = new Dictionary<uint, WhvRegisterName>
    {
        [MsrIndex.Tsc] = WhvRegisterName.Tsc,
        [MsrIndex.ApicBase] = WhvRegisterName.ApicBase,
        [MsrIndex.SysenterCs] = WhvRegisterName.SysenterCs,
        [MsrIndex.SysenterEsp] = WhvRegisterName.SysenterEsp,
        [MsrIndex.SysenterEip] = WhvRegisterName.SysenterEip,
        [MsrIndex.MiscEnable] = WhvRegisterName.MsrIa32MiscEnable,
        [MsrIndex.Pat] = WhvRegisterName.Pat,
        [MsrIndex.TscDeadline] = WhvRegisterName.TscDeadline,
        [MsrIndex.Efer] = WhvRegisterName.Efer,
        [MsrIndex.Star] = WhvRegisterName.Star,
        [MsrIndex.Lstar] = WhvRegisterName.Lstar,
        [MsrIndex.Cstar] = WhvRegisterName.Cstar,
        [MsrIndex.Fmask] = WhvRegisterName.Sfmask,
        [MsrIndex.KernelGsBase] = WhvRegisterName.KernelGsBase,
        [MsrIndex.TscAux] = WhvRegisterName.TscAux,
    };

    /// <summary>Fills <paramref name="names"/> with the registers of <see cref="GeneralRegisters"/>, in table order.</summary>
    public static void GeneralNames(Span<WhvRegisterName> names)
    {
        for (int i = 0; i < General.Length; i++)
        {
            names[i] = General[i].Name;
        }
    }

    public static void ToValues(in GeneralRegisters registers, Span<WHV_REGISTER_VALUE> values)
    {
        var copy = registers;
        for (int i = 0; i < General.Length; i++)
        {
            values[i] = new WHV_REGISTER_VALUE { Reg64 = General[i].Field(ref copy) };
        }
    }

    public static GeneralRegisters FromValues(ReadOnlySpan<WHV_REGISTER_VALUE> values)
    {
        var r = default(GeneralRegisters);
        for (int i = 0; i < General.Length; i++)
        {
            General[i].Field(ref r) = values[i].Reg64;
        }

        return r;
    }

    /// <summary>Fills <paramref name="names"/> with the registers of <see cref="SpecialRegisters"/>: segments, tables, control.</summary>
    public static void SpecialNames(Span<WhvRegisterName> names)
    {
        int n = 0;
        foreach (var s in Segments)
        {
            names[n++] = s.Name;
        }

        foreach (var t in Tables)
        {
            names[n++] = t.Name;
        }

        foreach (var c in Control)
        {
            names[n++] = c.Name;
        }
    }

    public static void ToValues(in SpecialRegisters registers, Span<WHV_REGISTER_VALUE> values)
    {
        var copy = registers;
        int n = 0;
        foreach (var s in Segments)
        {
            values[n++] = new WHV_REGISTER_VALUE { Segment = ToWhv(s.Field(ref copy)) };
        }

        foreach (var t in Tables)
        {
            ref var table = ref t.Field(ref copy);
            var v = default(WHV_REGISTER_VALUE);
            v.Table.Base = table.Base;
            v.Table.Limit = table.Limit;
            values[n++] = v;
        }

        foreach (var c in Control)
        {
            values[n++] = new WHV_REGISTER_VALUE { Reg64 = c.Field(ref copy) };
        }
    }

    public static SpecialRegisters SpecialFromValues(ReadOnlySpan<WHV_REGISTER_VALUE> values)
    {
        var r = default(SpecialRegisters);
        int n = 0;
        foreach (var s in Segments)
        {
            s.Field(ref r) = FromWhv(values[n++].Segment);
        }

        foreach (var t in Tables)
        {
            var v = values[n++];
            t.Field(ref r) = new DescriptorTable { Base = v.Table.Base, Limit = v.Table.Limit };
        }

        foreach (var c in Control)
        {
            c.Field(ref r) = values[n++].Reg64;
        }

        return r;
    }

    /// <summary>Fills <paramref name="names"/> with the FPU registers: FpMmx0-7, FpControlStatus, XmmControlStatus, Xmm0-15.</summary>
    public static void FpuNames(Span<WhvRegisterName> names)
    {
        for (int i = 0; i < 8; i++)
        {
            names[i] = WhvRegisterName.FpMmx0 + (uint)i;
        }

        names[8] = WhvRegisterName.FpControlStatus;
        names[9] = WhvRegisterName.XmmControlStatus;
        for (int i = 0; i < 16; i++)
        {
            names[10 + i] = WhvRegisterName.Xmm0 + (uint)i;
        }
    }

    public static void ToValues(in FpuState state, Span<WHV_REGISTER_VALUE> values)
    {
        var s = state;
        ReadOnlySpan<byte> x87 = s.Registers;
        for (int i = 0; i < 8; i++)
        {
            values[i] = ReadUInt128(x87.Slice(i * 16, 16));
        }

        var fp = default(WHV_REGISTER_VALUE);
        fp.FpControlStatus.FpControl = s.ControlWord;
        fp.FpControlStatus.FpStatus = s.StatusWord;
        fp.FpControlStatus.FpTag = s.AbridgedTagWord;
        fp.FpControlStatus.LastFpOp = s.LastOpcode;
        fp.FpControlStatus.LastFpRip = s.LastInstructionPointer;
        values[8] = fp;

        var xmm = default(WHV_REGISTER_VALUE);
        xmm.XmmControlStatus.LastFpRdp = s.LastDataPointer;
        xmm.XmmControlStatus.XmmStatusControl = s.Mxcsr;
        xmm.XmmControlStatus.XmmStatusControlMask = MxcsrMask;
        values[9] = xmm;

        for (int i = 0; i < 16; i++)
        {
            values[10 + i] = ReadUInt128(s.GetXmm(i));
        }
    }

    public static FpuState FpuFromValues(ReadOnlySpan<WHV_REGISTER_VALUE> values)
    {
        var s = default(FpuState);
        Span<byte> x87 = s.Registers;
        for (int i = 0; i < 8; i++)
        {
            WriteUInt128(values[i], x87.Slice(i * 16, 16));
        }

        var fp = values[8].FpControlStatus;
        s.ControlWord = fp.FpControl;
        s.StatusWord = fp.FpStatus;
        s.AbridgedTagWord = fp.FpTag;
        s.LastOpcode = fp.LastFpOp;
        s.LastInstructionPointer = fp.LastFpRip;
        var xmm = values[9].XmmControlStatus;
        s.LastDataPointer = xmm.LastFpRdp;
        s.Mxcsr = xmm.XmmStatusControl;
        for (int i = 0; i < 16; i++)
        {
            WriteUInt128(values[10 + i], s.GetXmm(i));
        }

        return s;
    }

    // Segment attribute bits of WHV_X64_SEGMENT_REGISTER (the VMX access-rights layout without the unusable bit).
    private const int AttrTypeMask = 0xF;
    private const int AttrNonSystem = 1 << 4;
    private const int AttrDplShift = 5;
    private const int AttrPresent = 1 << 7;
    private const int AttrAvailable = 1 << 12;
    private const int AttrLong = 1 << 13;
    private const int AttrDefault = 1 << 14;
    private const int AttrGranularity = 1 << 15;

    /// <summary>
    /// Converts a shared segment register to WHP's form. WHP has no "unusable" bit: an unusable segment
    /// is given as not present, which is how the processor treats a null selector's cache anyway.
    /// </summary>
    public static WHV_X64_SEGMENT_REGISTER ToWhv(in SegmentRegister s)
    {
        int a = s.Type & AttrTypeMask;
        if (s.IsCodeOrData) { a |= AttrNonSystem; }
        a |= (s.Dpl & 3) << AttrDplShift;
        if (s.Present && !s.Unusable) { a |= AttrPresent; }
        if (s.Available) { a |= AttrAvailable; }
        if (s.Long) { a |= AttrLong; }
        if (s.DefaultBig) { a |= AttrDefault; }
        if (s.Granularity) { a |= AttrGranularity; }
        return new WHV_X64_SEGMENT_REGISTER { Base = s.Base, Limit = s.Limit, Selector = s.Selector, Attributes = (ushort)a };
    }

    /// <summary>Converts WHP's segment register to the shared form; a segment that is not present is reported unusable.</summary>
    public static SegmentRegister FromWhv(in WHV_X64_SEGMENT_REGISTER w)
    {
        int a = w.Attributes;
        bool present = (a & AttrPresent) != 0;
        return new SegmentRegister
        {
            Base = w.Base,
            Limit = w.Limit,
            Selector = w.Selector,
            Type = (byte)(a & AttrTypeMask),
            IsCodeOrData = (a & AttrNonSystem) != 0,
            Dpl = (byte)((a >> AttrDplShift) & 3),
            Present = present,
            Available = (a & AttrAvailable) != 0,
            Long = (a & AttrLong) != 0,
            DefaultBig = (a & AttrDefault) != 0,
            Granularity = (a & AttrGranularity) != 0,
            Unusable = !present,
        };
    }

    private static WHV_REGISTER_VALUE ReadUInt128(ReadOnlySpan<byte> bytes) => new()
    {
        Low64 = BitConverter.ToUInt64(bytes),
        High64 = BitConverter.ToUInt64(bytes[8..]),
    };

    private static void WriteUInt128(in WHV_REGISTER_VALUE value, Span<byte> bytes)
    {
        BitConverter.TryWriteBytes(bytes, value.Low64);
        BitConverter.TryWriteBytes(bytes[8..], value.High64);
    }
}
