using Iced.Intel;
using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// The JIT tier against the first tier: self-modifying code, exact budgets and instruction counts, precise faults
/// and exits requested while a compiled self-loop runs.
/// </summary>
public sealed class JitTierTests
{
    private const ulong Data = 0x100000;

    /// <summary>A program with self-loops, memory operands, partial registers and forms the tier hands to the interpreter.</summary>
    private static void Mixed(Assembler a)
    {
        var fill = a.CreateLabel();
        var sum = a.CreateLabel();
        var outer = a.CreateLabel();
        var inner = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(ecx, 3000);
        a.mov(eax, 0x12345);
        a.Label(ref fill);
        a.mov(__dword_ptr[rdi + rcx * 4 - 4], eax);
        a.imul(eax, eax, 1103515245);
        a.add(eax, 12345);
        a.dec(ecx);
        a.jnz(fill);
        a.xor(ebx, ebx);
        a.xor(esi, esi);
        a.mov(r8d, 4);
        a.Label(ref outer);
        a.mov(ecx, 3000);
        a.Label(ref sum);
        a.movzx(edx, __byte_ptr[rdi + rcx]);
        a.movsx(r9, __word_ptr[rdi + rcx * 2]);
        a.add(rbx, rdx);
        a.sub(rsi, r9);
        a.xor(bl, dh);
        a.add(ah, dl);
        a.lea(r10, __qword_ptr[rbx + rsi * 2 + 7]);
        a.cmp(r10d, 0x4000);
        a.dec(ecx);
        a.jnz(sum);
        a.mov(ecx, 500);
        a.Label(ref inner);
        a.add(__qword_ptr[rdi + rcx * 8], rbx);
        a.inc(__word_ptr[rdi + rcx * 2 + 1]);
        a.shl(rbx, 1);
        a.adc(rsi, 0);
        a.test(cl, 3);
        a.setne(dl);
        a.sub(ecx, 1);
        a.jg(inner);
        a.dec(r8d);
        a.jnz(outer);
        a.hlt();
    }

    private static (GeneralRegisters Regs, long Retired, VcpuExitReason Reason) RunAll(IHypervisor hv, Action<Assembler> program)
    {
        using var m = Machine.Long64(program, hypervisor: hv);
        var exit = m.Run();
        return (m.Regs, ((IInstructionCounting)m.Vcpu).InstructionsRetired, exit.Reason);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(50)]
    public void Whole_program_ends_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        var expected = RunAll(TestBackends.Interpreter(), Mixed);
        var jit = RunAll(new InterpreterHypervisor(new InterpreterOptions { EnableJit = true, JitThreshold = threshold }), Mixed);
        Assert.Equal(VcpuExitReason.Halt, expected.Reason);
        Assert.Equal(expected, jit);
    }

    [Fact]
    public void Budgets_that_end_inside_compiled_self_loops_stop_exactly_where_the_first_tier_does()
    {
        using var a = Machine.Long64(Mixed, hypervisor: TestBackends.Interpreter());
        using var b = Machine.Long64(Mixed, hypervisor: TestBackends.Jit());
        var ca = (IInstructionCounting)a.Vcpu;
        var cb = (IInstructionCounting)b.Vcpu;
        var rng = new Random(20);
        int steps = 0;
        while (true)
        {
            long budget = rng.Next(4) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 40), _ => rng.Next(1, 5000) };
            ca.InstructionBudget = budget;
            cb.InstructionBudget = budget;
            var ea = a.Vcpu.Run();
            var eb = b.Vcpu.Run();
            Assert.True(ea.Reason == eb.Reason, $"{ea} / {eb}");
            Assert.Equal(ca.InstructionsRetired, cb.InstructionsRetired);
            Assert.Equal(a.Regs, b.Regs);
            steps++;
            if (ea.Reason == VcpuExitReason.Halt)
            {
                break;
            }

            Assert.Equal(VcpuExitReason.BudgetExhausted, ea.Reason);
            Assert.Equal(0, cb.InstructionBudget);
        }

        Assert.True(steps > 50, $"only {steps} budget slices");
    }

    [Fact]
    public void Budget_in_the_middle_of_a_compiled_tight_loop_retires_exactly_that_many()
    {
        using var m = Machine.Long64(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 1_000_000);
            a.xor(eax, eax);
            a.Label(ref loop);
            a.add(rax, rcx);
            a.dec(rcx);
            a.jnz(loop);
            a.hlt();
        }, hypervisor: TestBackends.Jit());
        var counter = (IInstructionCounting)m.Vcpu;
        counter.InstructionBudget = 2 + (3 * 1000) + 2;
        Assert.Equal(VcpuExitReason.BudgetExhausted, m.Vcpu.Run().Reason);
        Assert.Equal(3004, counter.InstructionsRetired);
        var r = m.Regs;

        // 1000 iterations and the ADD and DEC of the next: RIP is the JNZ.
        Assert.Equal(1_000_000UL - 1001, r.Rcx);
        ulong sum = 0;
        for (ulong c = 1_000_000; c > 1_000_000 - 1001; c--)
        {
            sum += c;
        }

        Assert.Equal(sum, r.Rax);
        Assert.Equal(Machine.CodeAddress + 5 + 2 + 3 + 3, r.Rip);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Guest_store_into_its_own_hot_loop_takes_effect_on_the_next_iteration(int threshold)
    {
        // Each iteration adds the ADD's immediate to RAX, then stores CL over that immediate.
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 100);
            a.xor(eax, eax);
            a.mov(ebx, (int)Machine.CodeAddress + 12 + 2);
            a.Label(ref loop);
            a.add(rax, 1);
            a.mov(__byte_ptr[rbx], cl);
            a.dec(rcx);
            a.jnz(loop);
            a.hlt();
        }

        var code = GuestProgram.Assemble(64, Machine.CodeAddress, Program);
        Assert.Equal(new byte[] { 0x48, 0x05, 0x01, 0, 0, 0 }, code.AsSpan(12, 6).ToArray());
        var jit = RunAll(new InterpreterHypervisor(new InterpreterOptions { EnableJit = true, JitThreshold = threshold }), Program);
        var first = RunAll(TestBackends.Interpreter(), Program);
        Assert.Equal(VcpuExitReason.Halt, jit.Reason);
        ulong expected = 1;
        for (ulong c = 2; c <= 100; c++)
        {
            expected += c;
        }

        Assert.Equal(expected, first.Regs.Rax);
        Assert.Equal(first, jit);
    }

    [Fact]
    public void Host_write_to_compiled_code_between_runs_replaces_it()
    {
        using var m = Machine.Long64(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 10);
            a.xor(eax, eax);
            a.Label(ref loop);
            a.add(rax, 1);
            a.dec(rcx);
            a.jnz(loop);
            a.hlt();
        }, hypervisor: TestBackends.Jit());
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(10UL, m.Regs.Rax);

        // Patch the ADD's immediate from the host and run the program again.
        m.Memory.Write(new GuestAddress(Machine.CodeAddress + 7 + 2), (byte)7);
        m.Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = Machine.CodeAddress, Rsp = Machine.StackTop, Rflags = Machine.FlagsReserved });
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(70UL, m.Regs.Rax);
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Page_fault_in_a_compiled_loop_is_precise(string backend)
    {
        const ulong handler = 0x20000;
        const ulong mapped = 2UL << 20;
        using var m = new Machine(TestBackends.Create(backend));
        var code = GuestProgram.Assemble(64, Machine.CodeAddress, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ebx, (int)(mapped - 0x3000));
            a.xor(eax, eax);
            a.Label(ref loop);
            a.add(rax, 1);
            a.mov(rdx, __qword_ptr[rbx]);
            a.add(rbx, 0x1000);
            a.jmp(loop);
        });
        m.Memory.Write(new GuestAddress(Machine.CodeAddress), code);
        m.Vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(m.Memory, m.Vcpu.GetSpecialRegisters(), StartMode.Long64,
            new ProcessorSetupOptions { KernelStack = Machine.KernelStackTop, IdentityMapSize = mapped }));
        m.Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = Machine.CodeAddress, Rsp = Machine.StackTop, Rflags = Machine.FlagsReserved });
        m.InstallIdt(handler);
        for (int v = 0; v < 32; v++)
        {
            m.Memory.Write(new GuestAddress(handler + (ulong)(v * 16)), (byte)0xF4);
        }

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(handler + (14 * 16) + 1, r.Rip);
        Assert.Equal(4UL, r.Rax);
        Assert.Equal(mapped, r.Rbx);
        Assert.Equal(mapped, m.Vcpu.GetSpecialRegisters().Cr2);
        ulong faultRip = m.Memory.Read<ulong>(new GuestAddress(r.Rsp + 8));
        Assert.Equal(Machine.CodeAddress + 5 + 2 + 6, faultRip);

        // Two set-up instructions, three whole iterations of four, the ADD of the fourth and the HLT of the handler.
        Assert.Equal(2 + (4 * 3) + 1 + 1, ((IInstructionCounting)m.Vcpu).InstructionsRetired);
    }

    [Fact]
    public async Task Request_exit_stops_a_compiled_endless_loop_at_an_iteration_boundary()
    {
        using var m = Machine.Long64(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ebx, (int)Data);
            a.xor(eax, eax);
            a.Label(ref loop);
            a.add(rax, 1);
            a.mov(__qword_ptr[rbx], rax);
            a.jmp(loop);
        }, hypervisor: TestBackends.Jit());
        var run = Task.Run(m.Vcpu.Run, TestContext.Current.CancellationToken);
        while (m.Memory.Read<ulong>(new GuestAddress(Data)) < 100_000 && !run.IsCompleted)
        {
            Thread.Yield();
        }

        m.Vcpu.RequestExit();
        Assert.Equal(VcpuExitReason.Interrupted, (await run).Reason);
        var r = m.Regs;
        long retired = ((IInstructionCounting)m.Vcpu).InstructionsRetired;
        Assert.Equal(Machine.CodeAddress + 5 + 2, r.Rip);
        Assert.Equal(r.Rax, m.Memory.Read<ulong>(new GuestAddress(Data)));
        Assert.Equal(2 + (3 * (long)r.Rax), retired);
    }
}
