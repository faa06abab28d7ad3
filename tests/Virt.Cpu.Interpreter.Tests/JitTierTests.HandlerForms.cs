using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// NEG, NOT, XCHG, PUSHF, BSWAP, CBW/CWD and their wider forms, MOV from segment registers, shifts by CL, BT/BTS/BTR/BTC,
/// CMPXCHG and XADD, which the first tier runs through handlers, and the indirect CALL, which compiled code ran through
/// the first tier: compiled code runs them inline.
/// </summary>
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

    /// <summary>
    /// SHL, SAL, SHR and SAR by CL of every size on registers (BH too) and memory, with counts of 0 (after a compare whose
    /// flags must survive it, and a 32-bit register whose upper half it clears), 1, the width minus one, the width and
    /// past it, each followed by readers of the flags (SETcc, ADC, PUSHFQ); BSWAP of 64-, 32- and 16-bit registers;
    /// CBW, CWDE, CDQE, CWD, CDQ and CQO; MOV from segment registers to 16-, 32- and 64-bit registers and to memory.
    /// </summary>
    private static void ShiftsAndMoves(Assembler a)
    {
        var loop = a.CreateLabel();
        a.mov(edi, (int)Data);
        byte[] counts = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 5, 0, 2, 40];
        for (int k = 0; k < counts.Length; k++)
        {
            a.mov(__byte_ptr[rdi + 0x200 + k], counts[k]);
        }

        a.mov(r14, 6364136223846793005L);
        a.mov(r12, 0x0123456789ABCDEFL);
        a.mov(r15d, 2000);
        a.xor(r13d, r13d);
        a.Label(ref loop);
        a.imul(r12, r14);
        a.add(r12, 1442695040);
        a.mov(edx, r15d);
        a.and(edx, 15);
        a.movzx(ecx, __byte_ptr[rdi + rdx + 0x200]);
        a.mov(rax, r12);
        a.mov(__qword_ptr[rdi], r12);
        a.mov(__qword_ptr[rdi + 8], r12);
        a.cmp(rax, r13);
        a.shl(rax, cl);
        a.setb(r8b);
        a.add(r13, r8);
        a.seto(r8b);
        a.add(r13, r8);
        a.mov(r9, r12);
        a.cmp(r9d, 1000);
        a.shr(r9d, cl);
        a.setl(r8b);
        a.add(r13, r8);
        a.add(r13, r9);
        a.mov(r10, r12);
        a.sar(r10w, cl);
        a.setbe(r8b);
        a.add(r13, r8);
        a.add(r13, r10);
        a.mov(r11, r12);
        a.sar(r11b, cl);
        a.setp(r8b);
        a.add(r13, r8);
        a.mov(rbx, r12);
        a.sal(bh, cl);
        a.seto(r8b);
        a.add(r13, r8);
        a.sar(rbx, cl);
        a.adc(r13, rbx);
        a.shr(r11, cl);
        a.setc(r8b);
        a.add(r13, r8);
        a.shl(__qword_ptr[rdi], cl);
        a.adc(r13, __qword_ptr[rdi]);
        a.shr(__dword_ptr[rdi + 8], cl);
        a.setc(r8b);
        a.add(r13, r8);
        a.sar(__word_ptr[rdi + 12], cl);
        a.sets(r8b);
        a.add(r13, r8);
        a.shl(__byte_ptr[rdi + 14], cl);
        a.seto(r8b);
        a.add(r13, r8);
        a.add(r13, __qword_ptr[rdi + 8]);
        a.shr(rax, cl);
        a.pushfq();
        a.pop(rdx);
        a.add(r13, rdx);
        a.mov(rax, r12);
        a.bswap(rax);
        a.add(r13, rax);
        a.bswap(r9d);
        a.xor(r13, r9);
        a.mov(rsi, r12);
        a.db(0x66, 0x0F, 0xCE); // BSWAP SI
        a.add(r13, rsi);
        a.mov(rax, r12);
        a.cbw();
        a.add(r13, rax);
        a.cwde();
        a.add(r13, rax);
        a.cdqe();
        a.add(r13, rax);
        a.mov(rax, r12);
        a.cwd();
        a.add(r13, rdx);
        a.cdq();
        a.add(r13, rdx);
        a.cqo();
        a.add(r13, rdx);
        a.mov(rax, r12);
        a.mov(ax, ds);
        a.add(r13, rax);
        a.mov(rax, r12);
        a.mov(eax, ss);
        a.add(r13, rax);
        a.mov(rax, r12);
        a.mov(rax, fs);
        a.add(r13, rax);
        a.mov(__word_ptr[rdi + 16], cs);
        a.add(r13, __qword_ptr[rdi + 16]);
        a.dec(r15d);
        a.jnz(loop);
        a.mov(rax, __qword_ptr[rdi]);
        a.mov(rbx, __qword_ptr[rdi + 8]);
        a.mov(rcx, __qword_ptr[rdi + 16]);
        a.hlt();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Shifts_by_cl_bswap_sign_extensions_and_segment_moves_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(ShiftsAndMoves, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_among_shifts_by_cl_and_segment_moves_stop_exactly_where_the_first_tier_does(int threshold)
    {
        AssertBudgetSlicesMatchFirstTier(ShiftsAndMoves, threshold, 37,
            rng => rng.Next(4) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 60), _ => rng.Next(1, 8000) });
    }

    /// <summary>
    /// BT, BTS, BTR and BTC of every size by immediates and registers on registers and memory, BT of bit strings (signed
    /// register offsets reaching units before and after the operand), each after a compare whose flags but CF must
    /// survive (SETZ, SETL, SETA, ADC, SBB, PUSHFQ read them); CMPXCHG of every size on registers (AH too) and memory,
    /// equal about half the time, with readers of its flags and the accumulator and destination after it; XADD of every
    /// size on memory and registers (the same register on both sides, AH) with readers of its flags.
    /// </summary>
    private static void BitTestsAndExchanges(Assembler a)
    {
        var loop = a.CreateLabel();
        var fill = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(r14, 6364136223846793005L);
        a.mov(r12, 0x0123456789ABCDEFL);
        a.mov(ecx, 0x1000 / 8);
        a.Label(ref fill);
        a.imul(r12, r14);
        a.add(r12, 1442695040);
        a.mov(__qword_ptr[rdi + rcx * 8 - 8], r12);
        a.dec(ecx);
        a.jnz(fill);
        a.mov(r15d, 2000);
        a.xor(r13d, r13d);
        a.Label(ref loop);
        a.imul(r12, r14);
        a.add(r12, 1442695040);
        a.mov(rax, r12);
        a.mov(ecx, r12d);
        a.mov(rdx, r12);
        a.sar(rdx, 53);
        a.mov(rbx, r12);
        a.mov(r9, r12);
        a.mov(r10, r12);
        a.cmp(rax, r13);
        a.bt(rax, 13);
        a.setc(r8b);
        a.add(r13, r8);
        a.cmp(eax, r13d);
        a.bt(eax, ecx);
        a.setz(r8b);
        a.add(r13, r8);
        a.adc(r13, 0);
        a.cmp(rbx, r13);
        a.bts(rbx, rdx);
        a.setl(r8b);
        a.add(r13, r8);
        a.add(r13, rbx);
        a.btr(r9w, 7);
        a.cmp(r9, rbx);
        a.btc(r10d, edx);
        a.seta(r8b);
        a.add(r13, r8);
        a.add(r13, r10);
        a.add(r13, r9);
        a.bt(__qword_ptr[rdi + 0x400], 35);
        a.sbb(r13, 0);
        a.bts(__qword_ptr[rdi + 0x408], 63);
        a.adc(r13, 0);
        a.btr(__dword_ptr[rdi + 0x410], 5);
        a.adc(r13, 0);
        a.btc(__word_ptr[rdi + 0x418], 12);
        a.adc(r13, 0);
        a.bt(__qword_ptr[rdi + 0x800], rdx);
        a.adc(r13, 0);
        a.bt(__dword_ptr[rdi + 0x800], edx);
        a.adc(r13, 0);
        a.bt(__word_ptr[rdi + 0x800], dx);
        a.pushfq();
        a.pop(r8);
        a.add(r13, r8);
        a.mov(rax, r12);
        a.shr(rax, 7);
        a.and(eax, 1);
        a.mov(__qword_ptr[rdi + 0x700], rax);
        a.mov(__qword_ptr[rdi + 0x708], rax);
        a.mov(eax, r12d);
        a.and(eax, 1);
        a.cmpxchg(__qword_ptr[rdi + 0x700], rbx);
        a.setz(r8b);
        a.add(r13, r8);
        a.add(r13, rax);
        a.add(r13, __qword_ptr[rdi + 0x700]);
        a.cmpxchg(__dword_ptr[rdi + 0x708], ecx);
        a.setb(r8b);
        a.add(r13, r8);
        a.cmpxchg(__word_ptr[rdi + 0x70C], si);
        a.cmpxchg(__byte_ptr[rdi + 0x70E], dl);
        a.setg(r8b);
        a.add(r13, r8);
        a.add(r13, rax);
        a.add(r13, __qword_ptr[rdi + 0x708]);
        a.mov(r9, r12);
        a.mov(eax, r12d);
        a.shr(eax, 1);
        a.and(eax, 1);
        a.xor(eax, r9d);
        a.cmpxchg(r9d, r10d);
        a.setbe(r8b);
        a.add(r13, r8);
        a.add(r13, r9);
        a.add(r13, rax);
        a.mov(rbx, r12);
        a.mov(eax, r12d);
        a.shr(eax, 2);
        a.and(eax, 1);
        a.xor(eax, ebx);
        a.cmpxchg(bl, ah);
        a.setz(r8b);
        a.add(r13, r8);
        a.add(r13, rbx);
        a.add(r13, rax);
        a.mov(rax, r12);
        a.cmpxchg(r11, r12);
        a.add(r13, r11);
        a.mov(rsi, r12);
        a.xadd(__qword_ptr[rdi + 0x720], rsi);
        a.setc(r8b);
        a.add(r13, r8);
        a.add(r13, rsi);
        a.xadd(__dword_ptr[rdi + 0x728], esi);
        a.seto(r8b);
        a.add(r13, r8);
        a.xadd(__word_ptr[rdi + 0x72C], si);
        a.xadd(__byte_ptr[rdi + 0x72E], bh);
        a.setbe(r8b);
        a.add(r13, r8);
        a.add(r13, rbx);
        a.mov(r9, r12);
        a.xadd(r9d, r10d);
        a.adc(r13, r9);
        a.add(r13, r10);
        a.xadd(r10, r10);
        a.setl(r8b);
        a.add(r13, r8);
        a.add(r13, r10);
        a.xadd(ah, bl);
        a.add(r13, rax);
        a.add(r13, rbx);
        a.dec(r15d);
        a.jnz(loop);
        a.mov(rax, __qword_ptr[rdi + 0x400]);
        a.mov(rbx, __qword_ptr[rdi + 0x408]);
        a.mov(rcx, __qword_ptr[rdi + 0x410]);
        a.mov(rdx, __qword_ptr[rdi + 0x418]);
        a.mov(rsi, __qword_ptr[rdi + 0x720]);
        a.mov(rbp, __qword_ptr[rdi + 0x728]);
        a.hlt();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Bit_tests_compare_exchange_and_exchange_add_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(BitTestsAndExchanges, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_among_bit_tests_compare_exchange_and_exchange_add_stop_exactly_where_the_first_tier_does(int threshold)
    {
        AssertBudgetSlicesMatchFirstTier(BitTestsAndExchanges, threshold, 41,
            rng => rng.Next(4) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 60), _ => rng.Next(1, 8000) });
    }

    /// <summary>
    /// CALL through a table in memory (four entries, three functions) and through a register, with flags pending across
    /// the call that a function reads, a function that reads its return address, and functions that return to two sites.
    /// </summary>
    private static void IndirectCalls(Assembler a)
    {
        var loop = a.CreateLabel();
        var f0 = a.CreateLabel();
        var f1 = a.CreateLabel();
        var f2 = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.lea(rax, __qword_ptr[f0]);
        a.mov(__qword_ptr[rdi + 0x900], rax);
        a.mov(__qword_ptr[rdi + 0x918], rax);
        a.lea(rax, __qword_ptr[f1]);
        a.mov(__qword_ptr[rdi + 0x908], rax);
        a.lea(rax, __qword_ptr[f2]);
        a.mov(__qword_ptr[rdi + 0x910], rax);
        a.mov(ecx, 3000);
        a.xor(eax, eax);
        a.xor(ebx, ebx);
        a.Label(ref loop);
        a.mov(edx, ecx);
        a.and(edx, 3);
        a.cmp(ecx, 1000);
        a.call(__qword_ptr[rdi + rdx * 8 + 0x900]);
        a.add(rbx, rax);
        a.mov(r8, __qword_ptr[rdi + 0x908]);
        a.call(r8);
        a.xor(rbx, rax);
        a.dec(ecx);
        a.jnz(loop);
        a.hlt();
        a.Label(ref f0);
        a.setb(r9b);
        a.add(rax, r9);
        a.add(rax, rcx);
        a.ret();
        a.Label(ref f1);
        a.mov(r10, __qword_ptr[rsp]);
        a.add(rbx, r10);
        a.imul(rax, rax, 3);
        a.ret();
        a.Label(ref f2);
        a.neg(rax);
        a.ret();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Indirect_calls_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(IndirectCalls, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_around_indirect_calls_stop_exactly_where_the_first_tier_does(int threshold)
    {
        AssertBudgetSlicesMatchFirstTier(IndirectCalls, threshold, 43,
            rng => rng.Next(4) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 60), _ => rng.Next(1, 8000) });
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Neg_not_xchg_and_pushf_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(HandlerForms, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_among_neg_not_xchg_and_pushf_stop_exactly_where_the_first_tier_does(int threshold)
    {
        AssertBudgetSlicesMatchFirstTier(HandlerForms, threshold, 31,
            rng => rng.Next(4) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 60), _ => rng.Next(1, 8000) });
    }

    /// <summary>
    /// NEG, NOT, XCHG, BT/BTS (of a bit string too), CMPXCHG and XADD of memory, CALL through memory and a register, PUSHF, shifts of memory by CL (by 0 too,
    /// which still checks the operand for writing) and MOV of a segment register to memory run compiled on mapped
    /// memory, then once on memory that reaches the unmapped page above 2 MiB (directly or across a page end) with flags
    /// another operation left pending: the page fault is the first tier's (CR2; the error code of a write, as a
    /// read-modify-write checks for writing before it reads, or of a read for BT and a call's target; RIP, RSP, the flags and the registers
    /// as before the instruction) and so is the count.
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
    [InlineData("shl32cl0")]
    [InlineData("sar64clcross")]
    [InlineData("movsreg")]
    [InlineData("btsimmcross")]
    [InlineData("btstring")]
    [InlineData("cmpxchg64cross")]
    [InlineData("cmpxchg8")]
    [InlineData("xadd32cross")]
    [InlineData("callmem")]
    [InlineData("callpush")]
    public void Faults_of_memory_forms_compiled_instead_of_handled_match_the_first_tier(string last)
    {
        const int Top = 2 << 20;
        void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            var fn = a.CreateLabel();
            a.mov(edi, (int)Data);
            a.lea(rsi, __qword_ptr[fn]);
            a.mov(__qword_ptr[rdi + 96], rsi);
            a.mov(rax, 0x0123456789ABCDEFL);
            a.xor(ebx, ebx);
            a.mov(ecx, 200);
            a.Label(ref loop);
            a.call(__qword_ptr[rdi + 96]);
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
            a.shl(__dword_ptr[rdi + 40], cl);
            a.sar(__qword_ptr[rdi + 48], cl);
            a.mov(__word_ptr[rdi + 56], ss);
            a.bts(__qword_ptr[rdi + 64], 9);
            a.bt(__qword_ptr[rdi + 64], rcx);
            a.cmpxchg(__qword_ptr[rdi + 72], rbx);
            a.cmpxchg(__byte_ptr[rdi + 80], dl);
            a.xadd(__dword_ptr[rdi + 88], esi);
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
                case "shl32cl0": a.xor(ecx, ecx); a.add(rbx, -1); a.shl(__dword_ptr[rdi], cl); break;
                case "sar64clcross": a.mov(ecx, 3); a.add(rbx, -1); a.sar(__qword_ptr[rdi - 4], cl); break;
                case "movsreg": a.mov(__word_ptr[rdi - 1], ds); break;
                case "btsimmcross": a.bts(__qword_ptr[rdi - 4], 3); break;
                case "btstring": a.mov(edx, 64); a.add(rbx, -1); a.bt(__qword_ptr[rdi - 8], rdx); break;
                case "cmpxchg64cross": a.cmpxchg(__qword_ptr[rdi - 4], rbx); break;
                case "cmpxchg8": a.cmpxchg(__byte_ptr[rdi], dl); break;
                case "xadd32cross": a.xadd(__dword_ptr[rdi - 2], esi); break;
                case "callmem": a.call(__qword_ptr[rdi]); break;
                case "callpush": a.lea(rsp, __qword_ptr[rdi + 4]); a.add(rbx, -1); a.call(rsi); break;
                default: a.lea(rsp, __qword_ptr[rdi + 1]); a.add(rbx, -1); a.pushf(); break;
            }

            a.hlt();
            a.Label(ref fn);
            a.add(rbx, rcx);
            a.ret();
        }

        var expected = AssertPagedTiersMatch(Program);
        Assert.Equal((ulong)Top, expected.Cr2);
        Assert.Equal(0x20000UL + (14 * 16) + 1, expected.Regs.Rip); // the page fault's handler halted
        Assert.Equal(last is "btstring" or "callmem" ? 0UL : 2UL, expected.Frame[0] & 2); // a write fault (BT and the call's target read)
    }
}
