using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>RF in the RFLAGS image an exception pushes: set for faults, clear for traps (SDM Vol. 3, 18.3.1.1), on both backends.</summary>
public sealed class ResumeFlagTests
{
    private const ulong Handlers = 0x40000;
    private const ulong Rf = 1UL << 16;

    /// <summary>Runs <paramref name="faulting"/> at CPL 0; every exception handler copies the pushed RFLAGS (at <paramref name="flagsOffset"/> from RSP) to RAX and halts.</summary>
    private static ulong PushedFlags(string backend, Action<Iced.Intel.Assembler> faulting, int flagsOffset)
    {
        using var m = new Machine(TestBackends.Create(backend));
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, faulting));
        for (int v = 0; v < 32; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(64, at, a =>
            {
                a.mov(rax, __qword_ptr[rsp + flagsOffset]);
                a.hlt();
            }));
        }

        m.InstallIdt(Handlers);
        var exit = m.Run();
        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        return m.Regs.Rax;
    }

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void A_fault_without_error_code_pushes_RF_set(string backend) =>
        Assert.Equal(Rf, PushedFlags(backend, a => a.ud2(), flagsOffset: 16) & Rf);

    [Theory]
    [MemberData(nameof(TestBackends.Both), MemberType = typeof(TestBackends))]
    public void A_fault_with_error_code_pushes_RF_set(string backend) =>
        Assert.Equal(Rf, PushedFlags(backend, a =>
        {
            a.mov(rbx, 0x7FFF_0000_0000L); // canonical but not mapped: #PF with an error code
            a.mov(rax, __qword_ptr[rbx]);
        }, flagsOffset: 24) & Rf);

    // Traps are checked on the interpreter only: the CI machines' KVM cannot emulate INT3 or INT n at CPL 0 (an
    // emulation failure), and at CPL 3 it runs them natively with its own delivery.
    [Fact]
    public void A_software_interrupt_pushes_RF_clear() =>
        Assert.Equal(0UL, PushedFlags("interpreter", a => a.@int(4), flagsOffset: 16) & Rf);

    [Fact]
    public void An_int3_trap_pushes_RF_clear() =>
        Assert.Equal(0UL, PushedFlags("interpreter", a => a.int3(), flagsOffset: 16) & Rf);
}
