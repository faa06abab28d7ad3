using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Descriptor-table and segment bases written in 64-bit mode must be canonical (SDM Vol. 2, LGDT/LIDT, LLDT, LTR,
/// WRMSR): LGDT, LIDT and WRMSR raise #GP(0), LLDT and LTR #GP(selector), and nothing is loaded.
/// </summary>
public sealed class CanonicalBaseTests
{
    private const ulong Handlers = 0x40000;
    private const ulong Operand = 0x50000;
    private const ushort LdtSelector = 0x48, TssSelector = 0x58;
    private const ulong NonCanonical = 0x0000_8000_0000_0000;

    /// <summary>Runs <paramref name="code"/> at CPL 0; returns the vector it ended in (-1: none), the error code and the GDTR/IDTR/LDTR/TR then.</summary>
    private static (int Vector, ulong Error, SpecialRegisters Sregs) Run(Action<Assembler> code, ulong ldtBase = 0x60000, ulong tssBase = 0x61000)
    {
        using var m = new Machine();
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            code(a);
            a.hlt();
        }));
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(64, at, a => a.hlt()));
        }

        m.InstallIdt(Handlers);
        var s = m.Vcpu.GetSpecialRegisters();
        s.Gdt.Limit = 0x7F;
        m.Vcpu.SetSpecialRegisters(s);
        WriteSystemDescriptor(m, s.Gdt.Base + LdtSelector, ldtBase, type: 2, limit: 0xFFF);
        WriteSystemDescriptor(m, s.Gdt.Base + TssSelector, tssBase, type: 9, limit: 0x67);

        // A pseudo-descriptor with a non-canonical base for LGDT/LIDT.
        m.Memory.Write(new GuestAddress(Operand), (ushort)0xFFF);
        m.Memory.Write(new GuestAddress(Operand + 2), NonCanonical);
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        var r = m.Regs;
        int vector = r.Rip > Handlers && r.Rip <= Handlers + (32 * 16) ? (int)((r.Rip - 1 - Handlers) / 16) : -1;
        return (vector, m.Memory.Read<ulong>(new GuestAddress(r.Rsp)), m.Vcpu.GetSpecialRegisters());
    }

    private static void WriteSystemDescriptor(Machine m, ulong at, ulong baseAddress, int type, uint limit)
    {
        ulong low = (limit & 0xFFFF) | ((baseAddress & 0xFFFFFF) << 16) | ((ulong)(0x80 | type) << 40)
            | ((ulong)((limit >> 16) & 0xF) << 48) | (((baseAddress >> 24) & 0xFF) << 56);
        m.Memory.Write(new GuestAddress(at), low);
        m.Memory.Write(new GuestAddress(at + 8), baseAddress >> 32);
    }

    [Fact]
    public void Lgdt_with_a_non_canonical_base_raises_gp0_and_keeps_the_gdtr()
    {
        var (vector, error, s) = Run(a => a.lgdt(__[Operand]));
        Assert.Equal((13, 0UL), (vector, error));
        Assert.NotEqual(NonCanonical, s.Gdt.Base);
    }

    [Fact]
    public void Lidt_with_a_non_canonical_base_raises_gp0_and_keeps_the_idtr()
    {
        var (vector, error, s) = Run(a => a.lidt(__[Operand]));
        Assert.Equal((13, 0UL), (vector, error));
        Assert.Equal(Machine.IdtAddress, s.Idt.Base);
    }

    [Fact]
    public void Lldt_with_a_canonical_64_bit_base_loads_it()
    {
        var (vector, _, s) = Run(a =>
        {
            a.mov(eax, LdtSelector);
            a.lldt(ax);
        }, ldtBase: 0xFFFF_8000_0006_0000);
        Assert.Equal(-1, vector);
        Assert.Equal(0xFFFF_8000_0006_0000UL, s.Ldt.Base);
    }

    [Fact]
    public void Lldt_with_a_non_canonical_base_raises_gp_with_the_selector()
    {
        var (vector, error, s) = Run(a =>
        {
            a.mov(eax, LdtSelector);
            a.lldt(ax);
        }, ldtBase: NonCanonical);
        Assert.Equal((13, (ulong)LdtSelector), (vector, error));
        Assert.NotEqual(LdtSelector, s.Ldt.Selector);
    }

    [Fact]
    public void Ltr_with_a_non_canonical_base_raises_gp_with_the_selector_and_does_not_mark_it_busy()
    {
        var (vector, error, s) = Run(a =>
        {
            a.mov(eax, TssSelector);
            a.ltr(ax);
        }, tssBase: NonCanonical);
        Assert.Equal((13, (ulong)TssSelector), (vector, error));
        Assert.NotEqual(TssSelector, s.Tr.Selector);
    }

    [Theory]
    [InlineData(0xC0000100u)] // IA32_FS_BASE
    [InlineData(0xC0000101u)] // IA32_GS_BASE
    [InlineData(0xC0000102u)] // IA32_KERNEL_GS_BASE
    [InlineData(0xC0000082u)] // IA32_LSTAR
    [InlineData(0xC0000083u)] // IA32_CSTAR
    [InlineData(0x175u)] // IA32_SYSENTER_ESP
    [InlineData(0x176u)] // IA32_SYSENTER_EIP
    public void Wrmsr_of_a_non_canonical_address_raises_gp0(uint msr)
    {
        var (vector, error, _) = Run(a =>
        {
            a.mov(ecx, msr);
            a.mov(edx, (uint)(NonCanonical >> 32));
            a.xor(eax, eax);
            a.wrmsr();
        });
        Assert.Equal((13, 0UL), (vector, error));
    }
}
