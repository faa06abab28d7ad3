using Iced.Intel;
using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// REP MOVS and REP STOS in compiled code (a fast path through the TLB, the interpreter for the rest) against the first
/// tier: element sizes, page crossings, overlapping copies, the direction flag, faults part-way, MMIO, writes into the
/// code being run, budgets and exit requests.
/// </summary>
public sealed class JitStringTests
{
    private const ulong Data = 0x100000;
    private const ulong Mmio = 0x1000_0000;

    /// <summary>A hot loop of REP forms: in-page and page-crossing fills and copies of every element size, overlapping copies, a zero count and a downward copy.</summary>
    private static void Strings(Assembler a)
    {
        var loop = a.CreateLabel();
        var down = a.CreateLabel();
        a.mov(r8d, 300);
        a.xor(ebx, ebx);
        a.Label(ref loop);

        // Fill: byte count 1..0x13F at a moving offset, so some fills cross into the next page.
        a.lea(rdi, __qword_ptr[r8 * 8 + (long)Data + 0xE00]);
        a.mov(ecx, r8d);
        a.and(ecx, 0xFF);
        a.add(ecx, 0x40);
        a.mov(eax, r8d);
        a.rep.stosb();
        a.add(rbx, rdi);

        // Copy 0x30 quadwords from the fill to a page-aligned destination, then words and doublewords unaligned.
        a.mov(esi, (int)Data + 0xE00);
        a.mov(edi, (int)Data + 0x3000);
        a.mov(ecx, 0x30);
        a.rep.movsq();
        a.lea(rsi, __qword_ptr[r8 + (long)Data + 0x1F81]);
        a.mov(edi, (int)Data + 0x4FFD);
        a.mov(ecx, 0x51);
        a.rep.movsw();
        a.mov(edi, (int)Data + 0x6001);
        a.mov(ecx, r8d);
        a.mov(rax, r8);
        a.imul(rax, rax, 0x01000193);
        a.rep.stosd();
        a.mov(edi, (int)Data + 0x7FF8);
        a.mov(ecx, 3);
        a.mov(rax, rbx);
        a.rep.stosq();
        a.mov(ecx, 2);
        a.rep.stosw();

        // Overlapping forward copy (replicates a pattern) and a zero count.
        a.mov(esi, (int)Data + 0x8000);
        a.lea(rdi, __qword_ptr[rsi + 3]);
        a.mov(ecx, 0x81);
        a.rep.movsb();
        a.xor(ecx, ecx);
        a.rep.movsq();
        a.add(rbx, rsi);

        // Every eighth iteration: a downward copy (DF set).
        a.test(r8d, 7);
        a.jnz(down);
        a.std();
        a.mov(esi, (int)Data + 0x3100);
        a.mov(edi, (int)Data + 0x9100);
        a.mov(ecx, 0x101);
        a.rep.movsb();
        a.cld();
        a.Label(ref down);
        a.add(rbx, rcx);
        a.dec(r8d);
        a.jnz(loop);
        a.hlt();
    }

    private static (GeneralRegisters Regs, long Retired, VcpuExitReason Reason, byte[] Memory) RunAll(IHypervisor hv, Action<Assembler> program)
    {
        using var m = Machine.Long64(program, hypervisor: hv);
        var exit = m.Run();
        var memory = new byte[0xA000];
        m.Memory.Read(new GuestAddress(Data), memory);
        return (m.Regs, ((IInstructionCounting)m.Vcpu).InstructionsRetired, exit.Reason, memory);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Rep_fills_and_copies_in_a_hot_loop_leave_the_same_state_memory_and_count_as_the_first_tier(int threshold)
    {
        var expected = RunAll(TestBackends.Interpreter(), Strings);
        var jit = RunAll(TestBackends.Jit(threshold), Strings);
        Assert.Equal(VcpuExitReason.Halt, expected.Reason);
        Assert.Equal(expected.Regs, jit.Regs);
        Assert.Equal(expected.Retired, jit.Retired);
        Assert.Equal(expected.Memory, jit.Memory);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_around_compiled_rep_instructions_stop_exactly_where_the_first_tier_does(int threshold)
    {
        using var a = Machine.Long64(Strings, hypervisor: TestBackends.Interpreter());
        using var b = Machine.Long64(Strings, hypervisor: TestBackends.Jit(threshold));
        int steps = JitLockstep.RunInBudgetSlices(a, b, new Random(21),
            rng => rng.Next(3) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 60), _ => rng.Next(1, 600) }, budgetSpent: false);
        Assert.True(steps > 20, $"only {steps} budget slices");
    }

    /// <summary>
    /// A loop that copies 0x100 quadwords to the last mapped page each iteration; from iteration 200 on, the destination
    /// (or, with <paramref name="source"/>, the source) starts 0x900 bytes into that page, so the copy runs into the
    /// unmapped page part-way.
    /// </summary>
    private static Action<Assembler> CopyIntoUnmapped(ulong mapped, bool source) => a =>
    {
        var loop = a.CreateLabel();
        a.xor(ebx, ebx);
        a.Label(ref loop);
        a.mov(r9, (long)(mapped - 0x1000));
        a.lea(rax, __qword_ptr[r9 + 0x900]);
        a.cmp(ebx, 200);
        a.cmovae(r9, rax);
        a.mov(esi, (int)Data);
        a.mov(edi, (int)Data + 0x2000);
        if (source)
        {
            a.mov(rsi, r9);
        }
        else
        {
            a.mov(rdi, r9);
        }

        a.mov(ecx, 0x100);
        a.rep.movsq();
        a.inc(ebx);
        a.jmp(loop);
    };

    [Theory]
    [InlineData("interpreter", false)]
    [InlineData("jit", false)]
    [InlineData("jit2", false)]
    [InlineData("interpreter", true)]
    [InlineData("jit", true)]
    [InlineData("jit2", true)]
    public void Page_fault_in_the_middle_of_a_compiled_rep_movs_across_a_page_boundary_is_precise(string backend, bool source)
    {
        const ulong handler = 0x20000;
        const ulong mapped = 2UL << 20;
        IHypervisor hv = backend switch { "jit" => TestBackends.Jit(0), "jit2" => TestBackends.Jit(2), _ => TestBackends.Interpreter() };
        using var m = Machine.Long64Mapped(hv, CopyIntoUnmapped(mapped, source), mapped, handler);

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(handler + (14 * 16) + 1, r.Rip);
        Assert.Equal(mapped, m.Vcpu.GetSpecialRegisters().Cr2);
        Assert.Equal(200UL, r.Rbx);

        // 0x700 of the 0x800 bytes fit below the unmapped page: 0xE0 quadwords moved, 0x20 left.
        Assert.Equal(0x20UL, r.Rcx);
        Assert.Equal(source ? mapped : Data + 0x700, r.Rsi);
        Assert.Equal(source ? Data + 0x2000 + 0x700 : mapped, r.Rdi);
        ulong faultRip = m.Memory.Read<ulong>(new GuestAddress(r.Rsp + 8));
        var code = GuestProgram.Assemble(64, Machine.CodeAddress, CopyIntoUnmapped(mapped, source));
        Assert.Equal(Machine.CodeAddress + (ulong)code.AsSpan().IndexOf(new byte[] { 0xF3, 0x48, 0xA5 }), faultRip);

        // One set-up instruction, 200 whole iterations of 11, the 8 before the REP MOVSQ, the handler's HLT.
        Assert.Equal(1 + (200 * 11) + 8 + 1, ((IInstructionCounting)m.Vcpu).InstructionsRetired);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Rep_stos_into_mmio_from_compiled_code_exits_per_element_as_the_first_tier_does(int threshold)
    {
        // 60 iterations of a 3-doubleword fill: RAM for the first 50, MMIO for the last 10.
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(r8d, 60);
            a.Label(ref loop);
            a.mov(edi, (int)Data);
            a.mov(edx, (int)Mmio);
            a.cmp(r8d, 10);
            a.cmovbe(edi, edx);
            a.mov(ecx, 3);
            a.mov(eax, r8d);
            a.rep.stosd();
            a.add(rbx, rdi);
            a.dec(r8d);
            a.jnz(loop);
            a.hlt();
        }

        static (List<string> Exits, GeneralRegisters Regs, long Retired) Collect(IHypervisor hv)
        {
            using var m = Machine.Long64(Program, hypervisor: hv);
            var exits = new List<string>();
            while (true)
            {
                var exit = m.Run();
                if (exit.Reason != VcpuExitReason.Mmio)
                {
                    Assert.Equal(VcpuExitReason.Halt, exit.Reason);
                    break;
                }

                exits.Add($"{exit.Address.Value:x} {exit.Size} {exit.IsWrite} {Convert.ToHexString(m.Vcpu.ExitData[..exit.Size])} rcx={m.Regs.Rcx}");
            }

            return (exits, m.Regs, ((IInstructionCounting)m.Vcpu).InstructionsRetired);
        }

        var expected = Collect(TestBackends.Interpreter());
        var jit = Collect(TestBackends.Jit(threshold));
        Assert.True(expected.Exits.Count >= 30, string.Join('\n', expected.Exits));
        Assert.Equal(expected.Exits, jit.Exits);
        Assert.Equal(expected.Regs, jit.Regs);
        Assert.Equal(expected.Retired, jit.Retired);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Rep_movs_into_the_code_page_being_run_takes_effect_on_the_next_iteration(int threshold)
    {
        // Each iteration adds the ADD's immediate to RAX, then copies R8B over that immediate with REP MOVSB.
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(r8d, 100);
            a.xor(eax, eax);
            a.Label(ref loop);
            a.add(rax, 1);
            a.mov(__byte_ptr[Data], r8b);
            a.mov(esi, (int)Data);
            a.lea(rdi, __byte_ptr[loop]);
            a.add(rdi, 2);
            a.mov(ecx, 1);
            a.rep.movsb();
            a.dec(r8d);
            a.jnz(loop);
            a.hlt();
        }

        var first = RunAll(TestBackends.Interpreter(), Program);
        var jit = RunAll(TestBackends.Jit(threshold), Program);
        Assert.Equal(VcpuExitReason.Halt, jit.Reason);

        // 1, then the immediates 100..2 written by the iterations before.
        ulong expected = 1;
        for (ulong c = 2; c <= 100; c++)
        {
            expected += c;
        }

        Assert.Equal(expected, first.Regs.Rax);
        Assert.Equal(first.Regs, jit.Regs);
        Assert.Equal(first.Retired, jit.Retired);
    }

    [Fact]
    public async Task Request_exit_stops_a_long_compiled_rep_stos_part_way_with_consistent_registers()
    {
        // An endless loop of 2 MiB fills: an exit request lands inside one (each call moves a bounded number of elements).
        const int Quads = 0x40000;
        using var m = Machine.Long64(a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.mov(edi, (int)Data);
            a.mov(ecx, Quads);
            a.mov(rax, rbx);
            a.rep.stosq();
            a.inc(rbx);
            a.jmp(loop);
        }, hypervisor: TestBackends.Jit(), memorySize: 8UL << 20);
        var run = Task.Run(m.Vcpu.Run, TestContext.Current.CancellationToken);
        while (m.Memory.Read<ulong>(new GuestAddress(Data)) < 3 && !run.IsCompleted)
        {
            Thread.Yield();
        }

        m.Vcpu.RequestExit();
        Assert.Equal(VcpuExitReason.Interrupted, (await run).Reason);
        var r = m.Regs;
        const ulong Rep = Machine.CodeAddress + 5 + 5 + 3;
        if (r.Rip == Rep)
        {
            // Stopped inside the REP STOSQ: RDI has moved by exactly the elements RCX no longer counts, all of them
            // filled; the next run completes the fill and goes on (REP STOSQ, INC, JMP, MOV: four instructions).
            Assert.Equal(Data + ((Quads - r.Rcx) * 8), r.Rdi);
            Assert.Equal(r.Rbx, m.Memory.Read<ulong>(new GuestAddress(r.Rdi - 8)));
            ((IInstructionCounting)m.Vcpu).InstructionBudget = 4;
            Assert.Equal(VcpuExitReason.BudgetExhausted, m.Run().Reason);
            Assert.Equal(r.Rbx + 1, m.Regs.Rbx);
            Assert.Equal(0UL, m.Regs.Rcx);
            Assert.Equal(r.Rbx, m.Memory.Read<ulong>(new GuestAddress(Data + ((Quads - 1) * 8))));
        }
    }
}
