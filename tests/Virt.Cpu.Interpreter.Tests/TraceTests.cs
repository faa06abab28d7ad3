using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

public sealed class TraceTests
{
    [Fact]
    public void Trace_hook_sees_every_instruction_in_order()
    {
        var rips = new List<ulong>();
        var hv = new InterpreterHypervisor(new InterpreterOptions { TraceHook = (_, rip) => rips.Add(rip) });
        using var m = new Machine(hv);
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            var l = a.CreateLabel();
            a.mov(ecx, 3);   // 5 bytes
            a.Label(ref l);
            a.dec(ecx);      // 2 bytes
            a.jnz(l);        // 2 bytes
            a.hlt();
        }));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        const ulong c = Machine.CodeAddress;
        Assert.Equal([c, c + 5, c + 7, c + 5, c + 7, c + 5, c + 7, c + 9], rips);
    }

    [Fact]
    public void Rep_string_instruction_counts_once_and_budget_stops_after_it()
    {
        using var m = Machine.Long64(a =>
        {
            a.mov(edi, 0x100000);
            a.mov(ecx, 100_000);
            a.rep.stosb();
            a.inc(rax);
            a.hlt();
        });
        var counting = (IInstructionCounting)m.Vcpu;
        counting.InstructionBudget = 3;
        Assert.Equal(VcpuExitReason.BudgetExhausted, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(0UL, r.Rcx);
        Assert.Equal(0x100000UL + 100_000, r.Rdi);
        Assert.Equal(Machine.CodeAddress + 12, r.Rip);
        Assert.Equal(3, counting.InstructionsRetired);
    }
}
