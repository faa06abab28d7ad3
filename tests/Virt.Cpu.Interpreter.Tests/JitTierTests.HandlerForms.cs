using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>NEG, NOT, XCHG and PUSHF, which the first tier runs through handlers and compiled code runs inline.</summary>
public sealed partial class JitTierTests
{
    /// <summary>
    /// NEG and NOT of every size on registers (AH too) and memory, NEG of the values whose flags are special (0, the most
    /// negative of each size) and of others, with readers of NEG's flags (SETcc, JBE, JZ into a block that starts from
    /// them, CMOVcc, ADC, SBB, an INC that keeps NEG's carry for the ADC after it, PUSHFQ); XCHG of registers of every size
    /// (the same register on both sides too) and of memory and a register; PUSHFQ and PUSHF after flags of several producers.
    /// </summary>
    private static void HandlerForms(Assembler a)
    {
        var loop = a.CreateLabel();
        var lcg = a.CreateLabel();
        var b1 = a.CreateLabel();
        var skip = a.CreateLabel();
        a.mov(edi, (int)Data);
        ulong[] edges = [0, 0x80, 0x8000, 0x80000000, 0x8000000000000000, 1, ulong.MaxValue, 0x7F];
        for (int k = 0; k < edges.Length; k++)
        {
            a.mov(rax, unchecked((long)edges[k]));
            a.mov(__qword_ptr[rdi + 0x100 + (k * 8)], rax);
        }

        a.mov(r14, 6364136223846793005L);
        a.mov(r15, 0x0123456789ABCDEFL);
        a.mov(ecx, 3000);
        a.xor(r13d, r13d);
        a.xor(ebp, ebp);
        a.xor(r10d, r10d);
        a.Label(ref loop);
        a.imul(r15, r14);
        a.add(r15, 1442695040);
        a.mov(edx, ecx);
        a.and(edx, 15);
        a.mov(rax, r15);
        a.cmp(edx, 8);
        a.jae(lcg);
        a.mov(rax, __qword_ptr[rdi + rdx * 8 + 0x100]);
        a.Label(ref lcg);
        a.mov(rbx, rax);
        a.mov(r9, rax);
        a.neg(eax);
        a.setc(r8b);
        a.add(r13, r8);
        a.seto(r8b);
        a.add(r13, r8);
        a.neg(rbx);
        a.jbe(b1);
        a.inc(r13);
        a.Label(ref b1);
        a.mov(esi, eax);
        a.neg(si);
        a.setl(r8b);
        a.add(r13, r8);
        a.neg(ah);
        a.setg(r8b);
        a.add(r13, r8);
        a.neg(bl);
        a.inc(rsi);
        a.adc(r13, 0);
        a.neg(r9);
        a.jz(skip);
        a.mov(r8d, 3);
        a.Label(ref skip);
        a.adc(r13, r8);
        a.not(r10d);
        a.xor(r10, rax);
        a.not(r11);
        a.add(r11, rbx);
        a.not(dh);
        a.not(bp);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(__qword_ptr[rdi + 8], rbx);
        a.neg(__qword_ptr[rdi]);
        a.sbb(r13, 0);
        a.neg(__dword_ptr[rdi + 8]);
        a.cmovc(r12, rbx);
        a.add(r13, r12);
        a.neg(__word_ptr[rdi + 12]);
        a.setnz(r8b);
        a.add(r13, r8);
        a.neg(__byte_ptr[rdi + 1]);
        a.seto(r8b);
        a.add(r13, r8);
        a.not(__qword_ptr[rdi + 32]);
        a.not(__dword_ptr[rdi + 40]);
        a.not(__word_ptr[rdi + 48]);
        a.not(__byte_ptr[rdi + 57]);
        a.xchg(rax, rbx);
        a.xchg(esi, r10d);
        a.xchg(ah, bl);
        a.xchg(r8w, bp);
        a.xchg(edx, edx);
        a.xchg(r11d, eax);
        a.xchg(__qword_ptr[rdi + 64], rax);
        a.xchg(__dword_ptr[rdi + 72], esi);
        a.xchg(__word_ptr[rdi + 80], dx);
        a.xchg(__byte_ptr[rdi + 88], bh);
        a.add(r13, rax);
        a.xor(r13, rsi);
        a.add(r13, rbx);
        a.add(r13, rdx);
        a.pushfq();
        a.pop(r12);
        a.add(r13, r12);
        a.neg(rax);
        a.pushfq();
        a.pop(r12);
        a.add(r13, r12);
        a.sub(r12, 5);
        a.pushf();
        a.pop(r12w);
        a.add(r13, r12);
        a.dec(ecx);
        a.jnz(loop);
        a.mov(rax, __qword_ptr[rdi]);
        a.mov(rbx, __qword_ptr[rdi + 8]);
        a.mov(rdx, __qword_ptr[rdi + 32]);
        a.mov(rsi, __qword_ptr[rdi + 40]);
        a.mov(r8, __qword_ptr[rdi + 48]);
        a.mov(r9, __qword_ptr[rdi + 56]);
        a.mov(r10, __qword_ptr[rdi + 64]);
        a.mov(r11, __qword_ptr[rdi + 72]);
        a.mov(r12, __qword_ptr[rdi + 80]);
        a.mov(r14, __qword_ptr[rdi + 88]);
        a.hlt();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Neg_not_xchg_and_pushf_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        var expected = RunAll(TestBackends.Interpreter(), HandlerForms);
        var jit = RunAll(TestBackends.Jit(threshold), HandlerForms);
        Assert.Equal(VcpuExitReason.Halt, expected.Reason);
        Assert.Equal(expected, jit);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_among_neg_not_xchg_and_pushf_stop_exactly_where_the_first_tier_does(int threshold)
    {
        using var a = Machine.Long64(HandlerForms, hypervisor: TestBackends.Interpreter());
        using var b = Machine.Long64(HandlerForms, hypervisor: TestBackends.Jit(threshold));
        int steps = JitLockstep.RunInBudgetSlices(a, b, new Random(31),
            rng => rng.Next(4) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 60), _ => rng.Next(1, 8000) }, budgetSpent: true);
        Assert.True(steps > 20, $"only {steps} budget slices");
    }

    /// <summary>
    /// NEG, NOT and XCHG of memory and PUSHF run compiled on mapped memory, then once on memory that reaches the unmapped
    /// page above 2 MiB (directly or across a page end) with flags another operation left pending: the page fault is the
    /// first tier's (CR2; the error code of a write, as a read-modify-write checks for writing before it reads; RIP, RSP,
    /// the flags and the registers as before the instruction) and so is the count.
    /// </summary>
    [Theory]
    [InlineData("neg64cross")]
    [InlineData("neg8")]
    [InlineData("not32cross")]
    [InlineData("not16")]
    [InlineData("xchg64cross")]
    [InlineData("xchg8")]
    [InlineData("pushfq")]
    [InlineData("pushf16cross")]
    public void Faults_of_neg_not_xchg_and_pushf_in_compiled_code_match_the_first_tier(string last)
    {
        const int Top = 2 << 20;
        void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(edi, (int)Data);
            a.mov(rax, 0x0123456789ABCDEFL);
            a.xor(ebx, ebx);
            a.mov(ecx, 200);
            a.Label(ref loop);
            a.neg(__qword_ptr[rdi]);
            a.adc(rbx, __qword_ptr[rdi]);
            a.neg(__byte_ptr[rdi + 9]);
            a.not(__dword_ptr[rdi + 16]);
            a.not(__word_ptr[rdi + 20]);
            a.xchg(__qword_ptr[rdi + 24], rax);
            a.xchg(__byte_ptr[rdi + 33], ah);
            a.pushfq();
            a.pop(rdx);
            a.add(rbx, rdx);
            a.pushf();
            a.pop(dx);
            a.add(rbx, rdx);
            a.rol(rax, 3);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(edi, Top);
            a.mov(rdx, rsp);
            a.add(rbx, -1);
            switch (last)
            {
                case "neg64cross": a.neg(__qword_ptr[rdi - 4]); break;
                case "neg8": a.neg(__byte_ptr[rdi]); break;
                case "not32cross": a.not(__dword_ptr[rdi - 2]); break;
                case "not16": a.not(__word_ptr[rdi]); break;
                case "xchg64cross": a.xchg(__qword_ptr[rdi - 4], rax); break;
                case "xchg8": a.xchg(__byte_ptr[rdi], ah); break;
                case "pushfq": a.lea(rsp, __qword_ptr[rdi + 4]); a.add(rbx, -1); a.pushfq(); break;
                default: a.lea(rsp, __qword_ptr[rdi + 1]); a.add(rbx, -1); a.pushf(); break;
            }

            a.hlt();
        }

        var expected = AssertPagedTiersMatch(Program);
        Assert.Equal((ulong)Top, expected.Cr2);
        Assert.Equal(0x20000UL + (14 * 16) + 1, expected.Regs.Rip); // the page fault's handler halted
        Assert.Equal(2UL, expected.Frame[0] & 2); // a write fault
    }
}
