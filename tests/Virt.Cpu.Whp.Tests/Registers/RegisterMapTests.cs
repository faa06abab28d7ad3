using Virt.Cpu;
using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Registers;

public sealed class RegisterMapTests
{
    public static TheoryData<string, uint> GeneralFields => new()
    {
        { nameof(GeneralRegisters.Rax), (uint)WhvRegisterName.Rax }, { nameof(GeneralRegisters.Rbx), (uint)WhvRegisterName.Rbx },
        { nameof(GeneralRegisters.Rcx), (uint)WhvRegisterName.Rcx }, { nameof(GeneralRegisters.Rdx), (uint)WhvRegisterName.Rdx },
        { nameof(GeneralRegisters.Rsi), (uint)WhvRegisterName.Rsi }, { nameof(GeneralRegisters.Rdi), (uint)WhvRegisterName.Rdi },
        { nameof(GeneralRegisters.Rsp), (uint)WhvRegisterName.Rsp }, { nameof(GeneralRegisters.Rbp), (uint)WhvRegisterName.Rbp },
        { nameof(GeneralRegisters.R8), (uint)WhvRegisterName.R8 }, { nameof(GeneralRegisters.R9), (uint)WhvRegisterName.R9 },
        { nameof(GeneralRegisters.R10), (uint)WhvRegisterName.R10 }, { nameof(GeneralRegisters.R11), (uint)WhvRegisterName.R11 },
        { nameof(GeneralRegisters.R12), (uint)WhvRegisterName.R12 }, { nameof(GeneralRegisters.R13), (uint)WhvRegisterName.R13 },
        { nameof(GeneralRegisters.R14), (uint)WhvRegisterName.R14 }, { nameof(GeneralRegisters.R15), (uint)WhvRegisterName.R15 },
        { nameof(GeneralRegisters.Rip), (uint)WhvRegisterName.Rip }, { nameof(GeneralRegisters.Rflags), (uint)WhvRegisterName.Rflags },
    };

    [Theory]
    [MemberData(nameof(GeneralFields))]
    public void General_register_field_travels_in_its_whp_register(string field, uint register)
    {
        var name = (WhvRegisterName)register;
        object boxed = default(GeneralRegisters);
        typeof(GeneralRegisters).GetField(field)!.SetValue(boxed, 0xABCD_0000_0000_1234UL);
        var registers = (GeneralRegisters)boxed;

        var names = new WhvRegisterName[RegisterMap.General.Length];
        var values = new WHV_REGISTER_VALUE[RegisterMap.General.Length];
        RegisterMap.GeneralNames(names);
        RegisterMap.ToValues(registers, values);

        int slot = Array.IndexOf(names, name);
        Assert.True(slot >= 0, $"{name} is not in the table");
        for (int i = 0; i < values.Length; i++)
        {
            Assert.Equal(i == slot ? 0xABCD_0000_0000_1234UL : 0UL, values[i].Reg64);
        }
    }

    [Fact]
    public void Every_general_register_field_is_in_the_table_once()
    {
        Assert.Equal(typeof(GeneralRegisters).GetFields().Length, RegisterMap.General.Length);
        Assert.Equal(RegisterMap.General.Length, RegisterMap.General.Select(g => g.Name).Distinct().Count());
    }

    [Fact]
    public void General_registers_round_trip()
    {
        var r = new GeneralRegisters
        {
            Rax = 1, Rbx = 2, Rcx = 3, Rdx = 4, Rsi = 5, Rdi = 6, Rsp = 7, Rbp = 8, R8 = 9, R9 = 10, R10 = 11, R11 = 12,
            R12 = 13, R13 = 14, R14 = 15, R15 = 16, Rip = 0xFFFF_FFFF_8000_0000, Rflags = 0x202,
        };
        var values = new WHV_REGISTER_VALUE[RegisterMap.General.Length];
        RegisterMap.ToValues(r, values);
        Assert.Equal(r, RegisterMap.FromValues(values));
    }

    [Fact]
    public void Special_register_table_covers_segments_tables_and_control_registers_in_order()
    {
        var names = new WhvRegisterName[RegisterMap.SpecialCount];
        RegisterMap.SpecialNames(names);
        Assert.Equal(
            [
                WhvRegisterName.Cs, WhvRegisterName.Ds, WhvRegisterName.Es, WhvRegisterName.Fs, WhvRegisterName.Gs,
                WhvRegisterName.Ss, WhvRegisterName.Tr, WhvRegisterName.Ldtr, WhvRegisterName.Gdtr, WhvRegisterName.Idtr,
                WhvRegisterName.Cr0, WhvRegisterName.Cr2, WhvRegisterName.Cr3, WhvRegisterName.Cr4, WhvRegisterName.Cr8,
                WhvRegisterName.Efer, WhvRegisterName.ApicBase,
            ],
            names);
        Assert.Equal(typeof(SpecialRegisters).GetFields().Length, RegisterMap.SpecialCount);
    }

    [Fact]
    public void Special_registers_round_trip()
    {
        var s = new SpecialRegisters
        {
            Cs = SegmentRegister.Flat(0x08, code: true, longMode: true),
            Ds = SegmentRegister.Flat(0x10, code: false, longMode: false),
            Es = SegmentRegister.RealMode(0x1234),
            Fs = SegmentRegister.Flat(0x10, code: false, longMode: false) with { Base = 0x7000_0000 },
            Gs = SegmentRegister.Flat(0x2B, code: false, longMode: false, dpl: 3),
            Ss = SegmentRegister.Flat(0x10, code: false, longMode: false),
            Tr = new SegmentRegister { Base = 0x580, Limit = 0x67, Selector = 0x38, Type = 0xB, Present = true },
            Ldt = new SegmentRegister { Type = 2, Unusable = true },
            Gdt = new DescriptorTable { Base = 0x500, Limit = 0x47 },
            Idt = new DescriptorTable { Base = 0x1000, Limit = 0xFFF },
            Cr0 = 0x8005_0033, Cr2 = 0xDEAD_0000, Cr3 = 0x9000, Cr4 = 0x620, Cr8 = 3, Efer = 0xD01, ApicBase = 0xFEE0_0900,
        };
        var values = new WHV_REGISTER_VALUE[RegisterMap.SpecialCount];
        RegisterMap.ToValues(s, values);
        var back = RegisterMap.SpecialFromValues(values);

        Assert.Equal(s.Cs, back.Cs);
        Assert.Equal(s.Ds, back.Ds);
        Assert.Equal(s.Es, back.Es);
        Assert.Equal(s.Fs, back.Fs);
        Assert.Equal(s.Gs, back.Gs);
        Assert.Equal(s.Ss, back.Ss);
        Assert.Equal(s.Tr, back.Tr);
        Assert.True(back.Ldt.Unusable);
        Assert.Equal(s.Gdt, back.Gdt);
        Assert.Equal(s.Idt, back.Idt);
        Assert.Equal((s.Cr0, s.Cr2, s.Cr3, s.Cr4, s.Cr8, s.Efer, s.ApicBase), (back.Cr0, back.Cr2, back.Cr3, back.Cr4, back.Cr8, back.Efer, back.ApicBase));
    }

    [Theory]
    [InlineData(true, false, 0x009B)]  // real-mode code: present, S, type 0xB
    [InlineData(false, false, 0x0093)] // real-mode data: present, S, type 3
    public void Real_mode_segments_have_the_attributes_whp_expects(bool code, bool unused, ushort attributes)
    {
        _ = unused;
        Assert.Equal(attributes, RegisterMap.ToWhv(SegmentRegister.RealMode(0, code)).Attributes);
    }

    [Fact]
    public void Flat_segments_have_the_vmx_access_rights_layout()
    {
        Assert.Equal(0xA09B, RegisterMap.ToWhv(SegmentRegister.Flat(0x08, code: true, longMode: true)).Attributes);
        Assert.Equal(0xC093, RegisterMap.ToWhv(SegmentRegister.Flat(0x10, code: false, longMode: false)).Attributes);
        Assert.Equal(0xC0FB, RegisterMap.ToWhv(SegmentRegister.Flat(0x23, code: true, longMode: false, dpl: 3)).Attributes);
        var w = RegisterMap.ToWhv(SegmentRegister.Flat(0x08, code: true, longMode: true));
        Assert.Equal((0UL, 0xFFFF_FFFFu, (ushort)0x08), (w.Base, w.Limit, w.Selector));
    }

    [Fact]
    public void Unusable_segment_is_given_to_whp_as_not_present()
    {
        var w = RegisterMap.ToWhv(new SegmentRegister { Type = 3, Present = true, IsCodeOrData = true, Unusable = true });
        Assert.Equal(0, w.Attributes & 0x80);
        Assert.True(RegisterMap.FromWhv(w).Unusable);
    }

    [Fact]
    public void Fpu_state_round_trips_through_fp_and_xmm_registers()
    {
        var s = FpuState.Initial;
        s.StatusWord = 0x3800;
        s.AbridgedTagWord = 0x81;
        s.LastOpcode = 0x7FF;
        s.LastInstructionPointer = 0x1234_5678;
        s.LastDataPointer = 0x9ABC_DEF0;
        Span<byte> x87 = s.Registers;
        for (int i = 0; i < x87.Length; i++)
        {
            x87[i] = (byte)(i * 7);
        }

        for (int r = 0; r < 16; r++)
        {
            s.GetXmm(r).Fill((byte)(0xA0 + r));
        }

        var names = new WhvRegisterName[RegisterMap.FpuCount];
        var values = new WHV_REGISTER_VALUE[RegisterMap.FpuCount];
        RegisterMap.FpuNames(names);
        RegisterMap.ToValues(s, values);
        var back = RegisterMap.FpuFromValues(values);

        Assert.Equal(WhvRegisterName.FpMmx0, names[0]);
        Assert.Equal(WhvRegisterName.FpMmx7, names[7]);
        Assert.Equal(WhvRegisterName.FpControlStatus, names[8]);
        Assert.Equal(WhvRegisterName.XmmControlStatus, names[9]);
        Assert.Equal(WhvRegisterName.Xmm0, names[10]);
        Assert.Equal(WhvRegisterName.Xmm15, names[25]);
        Assert.Equal(0x037F, values[8].FpControlStatus.FpControl);
        Assert.Equal(0x1F80u, values[9].XmmControlStatus.XmmStatusControl);
        Assert.Equal(RegisterMap.MxcsrMask, values[9].XmmControlStatus.XmmStatusControlMask);
        Assert.Equal(0xA0A0_A0A0_A0A0_A0A0UL, values[10].Low64);

        Assert.Equal((s.ControlWord, s.StatusWord, s.AbridgedTagWord, s.LastOpcode, s.LastInstructionPointer, s.LastDataPointer, s.Mxcsr),
            (back.ControlWord, back.StatusWord, back.AbridgedTagWord, back.LastOpcode, back.LastInstructionPointer, back.LastDataPointer, back.Mxcsr));
        Assert.True(((ReadOnlySpan<byte>)s.Registers).SequenceEqual(back.Registers));
        Assert.True(((ReadOnlySpan<byte>)s.Xmm).SequenceEqual(back.Xmm));
    }

    [Theory]
    [InlineData(MsrIndex.Tsc, (uint)WhvRegisterName.Tsc)]
    [InlineData(MsrIndex.ApicBase, (uint)WhvRegisterName.ApicBase)]
    [InlineData(MsrIndex.SysenterCs, (uint)WhvRegisterName.SysenterCs)]
    [InlineData(MsrIndex.SysenterEsp, (uint)WhvRegisterName.SysenterEsp)]
    [InlineData(MsrIndex.SysenterEip, (uint)WhvRegisterName.SysenterEip)]
    [InlineData(MsrIndex.MiscEnable, (uint)WhvRegisterName.MsrIa32MiscEnable)]
    [InlineData(MsrIndex.Pat, (uint)WhvRegisterName.Pat)]
    [InlineData(MsrIndex.TscDeadline, (uint)WhvRegisterName.TscDeadline)]
    [InlineData(MsrIndex.Efer, (uint)WhvRegisterName.Efer)]
    [InlineData(MsrIndex.Star, (uint)WhvRegisterName.Star)]
    [InlineData(MsrIndex.Lstar, (uint)WhvRegisterName.Lstar)]
    [InlineData(MsrIndex.Cstar, (uint)WhvRegisterName.Cstar)]
    [InlineData(MsrIndex.Fmask, (uint)WhvRegisterName.Sfmask)]
    [InlineData(MsrIndex.KernelGsBase, (uint)WhvRegisterName.KernelGsBase)]
    [InlineData(MsrIndex.TscAux, (uint)WhvRegisterName.TscAux)]
    public void Msr_maps_to_its_whp_register(uint msr, uint register) => Assert.Equal((WhvRegisterName)register, RegisterMap.Msrs[msr]);

    [Fact]
    public void Msr_table_has_no_other_entries() => Assert.Equal(15, RegisterMap.Msrs.Count);
}
