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
public sealed partial class JitTierTests
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

    /// <summary>
    /// The op groups compiled code runs inline besides ALU and MOV forms: PUSH/POP (register, immediate, 16-bit),
    /// CALL/RET from two call sites (so the return link misses and is remade), IMUL (two and three operands, with and
    /// without overflow), SETcc to registers and memory, CMOVcc (64- and 32-bit, taken and not), shifts by immediates
    /// on registers and memory, and flag readers the interpreter runs (ADC, SBB) after them.
    /// </summary>
    private static void StackAndFlags(Assembler a)
    {
        var loop = a.CreateLabel();
        var f = a.CreateLabel();
        var g = a.CreateLabel();
        var skip = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(__qword_ptr[rdi + 16], -12345);
        a.mov(__word_ptr[rdi + 8], 0x1357);
        a.mov(ecx, 2000);
        a.xor(eax, eax);
        a.xor(ebx, ebx);
        a.mov(r12, 0x123456789L);
        a.Label(ref loop);
        a.push(rcx);
        a.push(0x55);
        a.call(f);
        a.pop(rdx);
        a.add(rbx, rdx);
        a.pop(rcx);
        a.push(ax);
        a.pop(dx);
        a.add(rbx, rdx);
        a.imul(r12, r12, 0x343FD);
        a.imul(eax, r12d);
        a.seto(r8b);
        a.add(rbx, r8);
        a.imul(r13d, __dword_ptr[rdi + 16], 77);
        a.setb(ah);
        a.mov(r9, r12);
        a.shr(r9, 7);
        a.cmp(ecx, 1000);
        a.cmovb(rbx, r9);
        a.cmovae(eax, ecx);
        a.cmovl(r13d, ecx);
        a.setb(__byte_ptr[rdi]);
        a.movzx(r10d, __byte_ptr[rdi]);
        a.add(rbx, r10);
        a.shl(__word_ptr[rdi + 8], 3);
        a.sar(__qword_ptr[rdi + 16], 5);
        a.sar(r9d, 3);
        a.setl(r11b);
        a.shl(r9d, 31);
        a.adc(rbx, 0);
        a.shl(r12b, 1);
        a.setbe(r14b);
        a.jno(skip);
        a.inc(rbx);
        a.Label(ref skip);
        a.call(g);
        a.call(f);
        a.dec(ecx);
        a.jnz(loop);
        a.hlt();
        a.Label(ref f);
        a.add(rax, rcx);
        a.sub(rbx, __qword_ptr[rsp + 8]);
        a.ret();
        a.Label(ref g);
        a.shl(rax, 1);
        a.sbb(rbx, 0);
        a.xor(rbx, r14);
        a.ret();
    }

    /// <summary>
    /// A loop whose body branches four ways inside one page (the shape the compiler turns into one region): blocks
    /// entered with flags from the block before them (a logic result, a compare, a shift and an IMUL), a store, SETcc
    /// and CMOVcc reading those flags.
    /// </summary>
    private static void Branchy(Assembler a)
    {
        var top = a.CreateLabel();
        var one = a.CreateLabel();
        var zero = a.CreateLabel();
        var join = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(ecx, 20000);
        a.xor(eax, eax);
        a.xor(ebx, ebx);
        a.xor(edx, edx);
        a.Label(ref top);
        a.mov(r8d, ecx);
        a.and(r8d, 3);
        a.jz(zero);
        a.setnz(r11b);
        a.cmp(r8d, 2);
        a.jb(one);
        a.cmovs(r10, rbx);
        a.add(rbx, rcx);
        a.shl(rbx, 1);
        a.jmp(join);
        a.Label(ref one);
        a.sub(rbx, rax);
        a.imul(rbx, rbx, 3);
        a.jmp(join);
        a.Label(ref zero);
        a.inc(rdx);
        a.and(edx, 0xFF);
        a.mov(__qword_ptr[rdi + rdx * 8], rbx);
        a.Label(ref join);
        a.setb(r9b);
        a.add(rax, r9);
        a.add(rax, rbx);
        a.add(rax, r11);
        a.dec(ecx);
        a.jnz(top);
        a.hlt();
    }

    /// <summary>
    /// A loop of fifteen blocks in one page, each a long run of loads, adds and stores ending in a branch to the next
    /// block: the region formed around it would hold about 400 instructions, far more IL than the .NET JIT optimises.
    /// </summary>
    private static void Wide(Assembler a)
    {
        var top = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(ecx, 100000);
        a.xor(eax, eax);
        a.Label(ref top);
        for (int block = 0; block < 14; block++)
        {
            for (int j = 0; j < 9; j++)
            {
                int slot = (block * 9) + j;
                a.mov(r8, __qword_ptr[rdi + ((slot % 32) * 8)]);
                a.add(rax, r8);
                a.mov(__qword_ptr[rdi + (((slot + 5) % 32) * 8)], rax);
            }

            var next = a.CreateLabel();
            a.cmp(r8d, block);
            a.jb(next);
            a.Label(ref next);
        }

        a.dec(ecx);
        a.jnz(top);
        a.hlt();
    }

    /// <summary>
    /// INC/DEC after ADD, SUB and logic operations of several sizes, whose carry they keep, with that carry read by SETC,
    /// CMOVB, ADC (which the interpreter runs) and JB: in self-loops, in a loop of several blocks whose join the flags
    /// reach from different producers, and around memory stores (the first store to each page takes the slow path).
    /// </summary>
    private static void Carries(Assembler a)
    {
        var first = a.CreateLabel();
        var second = a.CreateLabel();
        var third = a.CreateLabel();
        var odd = a.CreateLabel();
        var join = a.CreateLabel();
        var fourth = a.CreateLabel();
        var fifth = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(ecx, 3000);
        a.mov(ebx, 0x7FFFF000);
        a.xor(eax, eax);
        a.xor(esi, esi);
        a.Label(ref first);
        a.add(eax, ebx);
        a.inc(rsi);
        a.dec(rcx);
        a.jnz(first);
        a.setc(dl);
        a.mov(ecx, 2500);
        a.mov(r11d, 1200);
        a.Label(ref second);
        a.sub(r11, 1);
        a.dec(rcx);
        a.cmovb(r12, rcx);
        a.jnz(second);
        a.mov(ecx, 4000);
        a.mov(edx, 0xFFF0);
        a.Label(ref third);
        a.add(bx, cx);
        a.inc(rdx);
        a.test(dl, 7);
        a.jz(odd);
        a.add(r8d, 0x3000_0000);
        a.dec(r9);
        a.Label(ref join);
        a.setc(r10b);
        a.add(r13, r10);
        a.mov(__qword_ptr[rdi + rcx * 8], r13);
        a.dec(ecx);
        a.jnz(third);
        a.jmp(fourth);
        a.Label(ref odd);
        a.or(r14, rdx);
        a.inc(r14);
        a.jmp(join);
        a.Label(ref fourth);
        a.mov(ecx, 1000);
        a.Label(ref fifth);
        a.add(al, 0x93);
        a.inc(r15);
        a.adc(rsi, 0);
        a.dec(ecx);
        a.setc(r10b);
        a.jnz(fifth);
        a.hlt();
    }

    /// <summary>The encoding of <c>add rax, 100</c> (the immediate is at offset 2).</summary>
    private static readonly byte[] AddRax100 = [0x48, 0x05, 100, 0, 0, 0];

    /// <summary>The program <paramref name="padded"/> builds with the padding that puts <paramref name="marker"/> (after the padding) at the start of the next page.</summary>
    private static Action<Assembler> AtNextPage(Func<int, Action<Assembler>> padded, byte[] marker)
    {
        const int Probe = 0x400;
        int at = GuestProgram.Assemble(64, Machine.CodeAddress, padded(Probe)).AsSpan().IndexOf(marker);
        Assert.True(at > Probe, "marker not found after the padding");
        return padded(0x1000 - (at - Probe));
    }

    /// <summary>
    /// ROL and ROR by immediates (counts 1, a multiple of the width, others; 8- to 64-bit registers and memory) in a loop
    /// with a branch in it, followed by readers of the flags they merge into (CF and OF from the rotate, ZF and SF from
    /// the producer before it): SETcc, ADC, CMOVcc and a JCC on ZF across the rotate.
    /// </summary>
    private static void Rotates(Assembler a)
    {
        var loop = a.CreateLabel();
        var odd = a.CreateLabel();
        var join = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(__qword_ptr[rdi + 16], -0x1234567);
        a.mov(__word_ptr[rdi + 8], 0x8001);
        a.mov(ecx, 1500);
        a.mov(rax, 0x0123456789ABCDEFL);
        a.xor(ebx, ebx);
        a.mov(edx, 0x80000001);
        a.Label(ref loop);
        a.rol(rax, 13);
        a.adc(rbx, 0);
        a.ror(edx, 1);
        a.seto(r8b);
        a.add(rbx, r8);
        a.test(ecx, 3);
        a.rol(__word_ptr[rdi + 8], 16);
        a.setc(r9b);
        a.jz(odd);
        a.ror(__qword_ptr[rdi + 16], 7);
        a.cmovc(r10, rax);
        a.rol(r11b, 1);
        a.seto(r12b);
        a.jmp(join);
        a.Label(ref odd);
        a.ror(si, 3);
        a.cmp(ecx, 700);
        a.rol(r13d, 32);
        a.setbe(r14b);
        a.setl(r15b);
        a.Label(ref join);
        a.add(rbx, r9);
        a.xor(rbx, rax);
        a.dec(ecx);
        a.jnz(loop);
        a.mov(rcx, __qword_ptr[rdi + 16]);
        a.movzx(ebp, __word_ptr[rdi + 8]);
        a.hlt();
    }

    /// <summary>
    /// Multi-precision arithmetic as big-number code does it, compiled inline: an N-limb sum whose carry crosses the loop's
    /// back edge in the lazy flags (kept by DEC, read by the next ADC from memory), addmul and submul loops (64-bit MUL of a
    /// register and of memory, ADD/ADC and SUB/SBB to memory, carry limbs through ADC), and a branching loop of the other
    /// sizes and forms (ADC/SBB of 8, 16, 32 and 64 bits with registers, immediates and memory on either side; MUL and
    /// one-operand IMUL of 8 (AH too), 16 and 32 bits) with readers of their flags: JC, JO and JBE, SETcc (parity too),
    /// CMOVcc, ADC after MUL and IMUL, PUSHFQ (which the interpreter runs from the stored flags).
    /// </summary>
    private static void BigNumbers(Assembler a)
    {
        const int N = 64;
        var fill = a.CreateLabel();
        var outer = a.CreateLabel();
        var add = a.CreateLabel();
        var addmul = a.CreateLabel();
        var submul = a.CreateLabel();
        var small = a.CreateLabel();
        var divrem = a.CreateLabel();
        var carry = a.CreateLabel();
        var noOverflow = a.CreateLabel();
        var join = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(rax, 0x0123456789ABCDEFL);
        a.mov(r11, 6364136223846793005L);
        a.mov(r10, 1442695040888963407L);
        a.mov(ecx, 0x1000 / 8);
        a.Label(ref fill);
        a.imul(rax, r11);
        a.add(rax, r10);
        a.mov(__qword_ptr[rdi + rcx * 8 - 8], rax);
        a.dec(ecx);
        a.jnz(fill);
        a.xor(ebx, ebx);
        a.xor(r9d, r9d);
        a.xor(r13d, r13d);
        a.mov(r15d, 5);
        a.Label(ref outer);

        // Sum: [Data + 0x1000] = [Data] + [Data + 0x800] (the fill covers both), the carry across the back edge through DEC.
        a.xor(esi, esi);
        a.mov(ecx, N);
        a.Label(ref add);
        a.mov(rax, __qword_ptr[rdi + rsi * 8]);
        a.adc(rax, __qword_ptr[rdi + rsi * 8 + 0x800]);
        a.mov(__qword_ptr[rdi + rsi * 8 + 0x1000], rax);
        a.lea(rsi, __qword_ptr[rsi + 1]);
        a.dec(ecx);
        a.jnz(add);
        a.adc(rbx, 0);

        // addmul_1: [Data + 0x1000] += [Data] * limb.
        a.mov(r11, __qword_ptr[rdi + 0x800]);
        a.xor(r8d, r8d);
        a.xor(esi, esi);
        a.Label(ref addmul);
        a.mov(rax, __qword_ptr[rdi + rsi * 8]);
        a.mul(r11);
        a.add(rax, r8);
        a.adc(rdx, 0);
        a.add(__qword_ptr[rdi + rsi * 8 + 0x1000], rax);
        a.adc(rdx, 0);
        a.mov(r8, rdx);
        a.inc(rsi);
        a.cmp(rsi, N);
        a.jb(addmul);
        a.add(rbx, r8);

        // submul_1 with a memory multiplier: [Data + 0x1000] -= [Data + 0x800] * limb, SBB chains on registers.
        a.xor(r8d, r8d);
        a.mov(ecx, N);
        a.xor(esi, esi);
        a.Label(ref submul);
        a.mov(rax, __qword_ptr[rdi + rsi * 8 + 0x800]);
        a.mul(__qword_ptr[rdi + 8]);
        a.add(rax, r8);
        a.adc(rdx, 0);
        a.sub(__qword_ptr[rdi + rsi * 8 + 0x1000], rax);
        a.adc(rdx, 0);
        a.mov(r8, rdx);
        a.sbb(r9, rdx);
        a.sbb(r13, __qword_ptr[rdi + rsi * 8]);
        a.inc(esi);
        a.dec(ecx);
        a.jnz(submul);
        a.add(rbx, r8);

        // divrem_1: [Data + 0x2000] = [Data + 0x1000] / limb from the top limb down, the remainder carried in RDX.
        a.mov(r11, __qword_ptr[rdi + 0x808]);
        a.xor(edx, edx);
        a.mov(esi, N - 1);
        a.Label(ref divrem);
        a.mov(rax, __qword_ptr[rdi + rsi * 8 + 0x1000]);
        a.div(r11);
        a.mov(__qword_ptr[rdi + rsi * 8 + 0x2000], rax);
        a.sub(rsi, 1);
        a.jae(divrem);
        a.add(rbx, rdx);
        a.mov(rax, rbx);
        a.cqo();
        a.idiv(__qword_ptr[rdi + 0x810]);
        a.add(rbx, rax);
        a.xor(rbx, rdx);

        // Other sizes and forms in a loop of several blocks.
        a.mov(ecx, 700);
        a.Label(ref small);
        a.inc(r14);
        a.adc(r8, rcx);
        a.mov(eax, ecx);
        a.imul(eax, eax, unchecked((int)0x9E3779B1));
        a.adc(bl, al);
        a.sbb(dx, 0x1234);
        a.adc(r9d, __dword_ptr[rdi + rcx * 4]);
        a.pushfq();
        a.pop(r12);
        a.add(r13, r12);
        a.sbb(r14, r14);
        a.adc(r14, -1);
        a.pushfq();
        a.pop(r12);
        a.add(r13, r12);
        a.sbb(r12d, r12d);
        a.setc(r10b);
        a.add(r13, r10);
        a.adc(r9b, 0xFF);
        a.sbb(r12w, r12w);
        a.adc(r13, r12);
        a.sbb(__qword_ptr[rdi + rcx * 8], -3);
        a.sbb(__word_ptr[rdi + rcx * 2 + 0x1800], ax);
        a.adc(__byte_ptr[rdi + rcx + 0x1800], 0x5A);
        a.jc(carry);
        a.setbe(r11b);
        a.mul(ah);
        a.jo(noOverflow);
        a.inc(r13);
        a.Label(ref noOverflow);
        a.seto(r10b);
        a.imul(dx);
        a.setc(r12b);
        a.adc(r13d, 7);
        a.mov(eax, r9d);
        a.xor(dx, dx);
        a.div(cx);
        a.add(r13, rdx);
        a.movsx(eax, r13b);
        a.mov(r14d, ecx);
        a.and(r14d, 0x3F);
        a.or(r14d, 0x41);
        a.idiv(r14b);
        a.add(r13, rax);
        a.mov(eax, r9d);
        a.cdq();
        a.idiv(r14d);
        a.movzx(eax, al);
        a.div(r14b);
        a.add(r13, rax);
        a.add(r13, rdx);
        a.jmp(join);
        a.Label(ref carry);
        a.adc(r13, r8);
        a.sbb(r8, r8);
        a.jc(join);
        a.mov(r14d, ecx);
        a.imul(r14d);
        a.cmovo(r9d, eax);
        a.sbb(r13, rdx);
        a.setp(r10b);
        a.setl(r12b);
        a.mul(__byte_ptr[rdi + rcx]);
        a.setp(r11b);
        a.adc(al, 1);
        a.mul(ecx);
        a.sbb(r8b, dl);
        a.Label(ref join);
        a.setbe(r11b);
        a.add(rbx, r10);
        a.xor(rbx, r12);
        a.add(rbx, r11);
        a.add(rbx, r13);
        a.dec(ecx);
        a.jnz(small);
        a.dec(r15d);
        a.jnz(outer);
        a.mov(rcx, __qword_ptr[rdi + 0x1000 + 40]);
        a.mov(rsi, __qword_ptr[rdi + 0x1000 + 504]);
        a.mov(rbp, __qword_ptr[rdi + 0x1800 + 300]);
        a.hlt();
    }

    private static (GeneralRegisters Regs, long Retired, VcpuExitReason Reason) RunAll(IHypervisor hv, Action<Assembler> program)
    {
        using var m = Machine.Long64(program, hypervisor: hv);
        var exit = m.Run();
        return (m.Regs, ((IInstructionCounting)m.Vcpu).InstructionsRetired, exit.Reason);
    }

    /// <summary>Runs <paramref name="program"/> to its halt in the first tier and with the JIT at <paramref name="threshold"/>: the same registers, instruction count and exit.</summary>
    /// <summary>
    /// IMUL in the forms hashing and big-number code use, with flags a later op of the block overwrites (the product
    /// alone is compiled) and with flags that are read: a limb multiply built from 32-bit halves as portable big-number
    /// code does it (four two-operand IMULs of 64 bits, then shifts and adds, a CMP read by CMOVAE and SETB), a
    /// multiplicative hash of 64, 32 and 16 bits with immediates and a memory source, an IMUL followed by INC (whose flags
    /// are dead as well) before the ADD that overwrites them, and IMULs whose CF/OF JO, SETC, ADC and PUSHFQ read, on
    /// products that overflow and products that do not.
    /// </summary>
    private static void ImulForms(Assembler a)
    {
        const int N = 48;
        var fill = a.CreateLabel();
        var limbs = a.CreateLabel();
        var hash = a.CreateLabel();
        var read = a.CreateLabel();
        var noOverflow = a.CreateLabel();
        var again = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(__qword_ptr[rdi + 0x3000], 12);
        a.mov(rax, 0x0F1E2D3C4B5A6978L);
        a.mov(r11, 6364136223846793005L);
        a.mov(ecx, N * 2);
        a.Label(ref fill);
        a.imul(rax, r11);
        a.inc(rax);
        a.add(rax, rcx);
        a.mov(__qword_ptr[rdi + rcx * 8 - 8], rax);
        a.dec(ecx);
        a.jnz(fill);

        // result[i] = src[i] * limb + carry, the 64x64 product from four 32x32 ones (twelve rounds of the rest, each on the
        // results of the round before).
        a.Label(ref again);
        a.mov(r9, 0x9E3779B97F4A7C15L);
        a.mov(r10, r9);
        a.shr(r10, 32);
        a.mov(r9d, r9d);
        a.mov(rbp, 0x100000000L);
        a.xor(esi, esi);
        a.xor(r8d, r8d);
        a.Label(ref limbs);
        a.mov(rcx, __qword_ptr[rdi + rsi * 8]);
        a.mov(rdx, rcx);
        a.mov(ecx, ecx);
        a.shr(rdx, 32);
        a.mov(rax, rcx);
        a.imul(rax, r9);
        a.mov(r13, rdx);
        a.imul(r13, r9);
        a.imul(rcx, r10);
        a.imul(rdx, r10);
        a.mov(r14, rax);
        a.mov(eax, eax);
        a.shr(r14, 32);
        a.add(rcx, r13);
        a.add(rcx, r14);
        a.mov(r14, rdx);
        a.add(rdx, rbp);
        a.cmp(rcx, r13);
        a.mov(r13, rcx);
        a.cmovae(rdx, r14);
        a.add(rax, r8);
        a.shl(r13, 32);
        a.add(rax, r13);
        a.cmp(rax, r8);
        a.mov(__qword_ptr[rdi + rsi * 8 + 0x1000], rax);
        a.setb(r8b);
        a.shr(rcx, 32);
        a.movzx(r8d, r8b);
        a.add(r8, rcx);
        a.add(r8, rdx);
        a.add(esi, 1);
        a.cmp(esi, N);
        a.jne(limbs);

        // Hashes: three-operand IMUL with immediates, a memory source, INC between IMUL and the ADD after it.
        a.mov(ecx, N);
        a.xor(ebx, ebx);
        a.Label(ref hash);
        a.imul(rax, __qword_ptr[rdi + rcx * 8 + 0x1000 - 8], 0x61C88647);
        a.xor(rbx, rax);
        a.imul(edx, ebx, unchecked((int)0x9E3779B1));
        a.inc(edx);
        a.add(ebx, edx);
        a.imul(r12w, bx, 0x4F1B);
        a.sub(r12w, cx);
        a.movzx(r12d, r12w);
        a.imul(r12d, __dword_ptr[rdi + rcx * 4]);
        a.add(rbx, r12);
        a.rol(rbx, 13);
        a.dec(ecx);
        a.jnz(hash);

        // Flags read after IMUL: products that overflow (the fill's values) and that do not (small ones).
        a.mov(ecx, N);
        a.xor(r15d, r15d);
        a.Label(ref read);
        a.mov(rax, __qword_ptr[rdi + rcx * 8 - 8]);
        a.test(ecx, 3);
        a.jnz(noOverflow);
        a.movzx(eax, al);
        a.Label(ref noOverflow);
        a.imul(rax, rax);
        a.setc(dl);
        a.movzx(edx, dl);
        a.add(r15, rdx);
        a.imul(eax, ecx, 0x7FFF);
        a.adc(r15, rax);
        a.imul(ax, cx);
        a.pushfq();
        a.pop(rdx);
        a.and(edx, 0x8D5);
        a.add(r15, rdx);
        a.imul(rdx, rcx, -3);
        a.jo(read);
        a.add(r15, rdx);
        a.dec(ecx);
        a.jnz(read);
        a.mov(__qword_ptr[rdi], r15);
        a.dec(__qword_ptr[rdi + 0x3000]);
        a.jnz(again);
        a.hlt();
    }

    private static void AssertRunMatchesFirstTier(Action<Assembler> program, int threshold)
    {
        var expected = RunAll(TestBackends.Interpreter(), program);
        Assert.Equal(VcpuExitReason.Halt, expected.Reason);
        Assert.Equal(expected, RunAll(TestBackends.Jit(threshold), program));
    }

    /// <summary>
    /// Runs <paramref name="program"/> in the first tier and with the JIT at <paramref name="threshold"/> in the same
    /// budget slices (sizes from <paramref name="slice"/>, random from <paramref name="seed"/>), each stopping both in the
    /// same state (<see cref="JitLockstep.RunInBudgetSlices"/>); more than 20 slices.
    /// </summary>
    private static void AssertBudgetSlicesMatchFirstTier(Action<Assembler> program, int threshold, int seed, Func<Random, long> slice)
    {
        using var a = Machine.Long64(program, hypervisor: TestBackends.Interpreter());
        using var b = Machine.Long64(program, hypervisor: TestBackends.Jit(threshold));
        int steps = JitLockstep.RunInBudgetSlices(a, b, new Random(seed), slice, budgetSpent: true);
        Assert.True(steps > 20, $"only {steps} budget slices");
    }

    [Fact]
    public void Methods_promoted_to_inline_link_checks_while_the_guest_runs_keep_the_first_tiers_state_in_every_slice()
    {
        // Blocks that call and return to each other about 150,000 times each (f returns to two call sites in turn): far
        // past the slow exits after which their methods are compiled again with inline link checks, and published while
        // the vCPU runs them. The
        // promotion waits for an idle compiler (other tests' blocks may keep it busy), so rounds repeat, each on new
        // machines and each compared with the first tier slice by slice, until one has seen a promotion.
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            var f = a.CreateLabel();
            var g = a.CreateLabel();
            var skip = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(ecx, 150_000);
            a.xor(eax, eax);
            a.Label(ref loop);
            a.call(f);
            a.call(g);
            a.call(f);
            a.dec(ecx);
            a.jnz(loop);
            a.jmp(done);
            a.Label(ref f);
            a.add(rax, rcx);
            a.ret();
            a.Label(ref g);
            a.xor(rax, 0x55);
            a.test(al, 1);
            a.jz(skip);
            a.inc(rax);
            a.Label(ref skip);
            a.ret();
            a.Label(ref done);
            a.hlt();
        }

        long before = Jit.JitCompilerThread.Shared.Promoted;
        for (int round = 0; round < 20 && Jit.JitCompilerThread.Shared.Promoted == before; round++)
        {
            AssertBudgetSlicesMatchFirstTier(Program, threshold: 2, seed: round, slice: r => r.Next(20_000, 60_000));
        }

        Assert.True(Jit.JitCompilerThread.Shared.Promoted > before, "no method was promoted in 20 rounds");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(50)]
    public void Whole_program_ends_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(Mixed, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(50)]
    public void Stack_ops_calls_imul_setcc_cmovcc_and_shifts_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(StackAndFlags, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Rotates_by_immediates_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(Rotates, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Branching_loop_compiled_as_a_region_ends_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(Branchy, threshold);
    }

    [Fact]
    public void A_blocks_method_is_machine_code_when_the_compiler_hands_it_over()
    {
        // The compiler thread, not the vCPU that runs the method first, pays for the .NET JIT (and finds a method the
        // JIT rejects before it is published): building a method compiles it on the building thread. The first build
        // here compiles whatever building needs; the second compiles only the new method.
        Assert.NotNull(Jit.JitCompilerThread.Build(Jit.JitCompilerThread.WarmUpBlock(), out _));
        long before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        var code = Jit.JitCompilerThread.Build(Jit.JitCompilerThread.WarmUpBlock(), out int ilBytes);
        long compiled = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;

        Assert.NotNull(code);
        Assert.True(ilBytes > 0);
        Assert.True(compiled >= 1, "the block's method was left for its first caller to compile");
    }

    [Fact]
    public void A_region_too_large_for_the_net_jit_to_optimise_is_cut_down_and_ends_in_the_same_state_as_the_first_tier()
    {
        long before = Jit.JitCompilerThread.Shared.Compiled;
        AssertRunMatchesFirstTier(Wide, threshold: 2);

        // The loop as one region would be about three times the limit; cut down, it no longer loops back to its root, so
        // its fifteen blocks are compiled one by one (the compiler thread may still be at them when the guest halts).
        // No method may grow past the limit above which the .NET JIT compiles without optimisation.
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (Jit.JitCompilerThread.Shared.Compiled < before + 15 && Jit.JitCompilerThread.LargestMethodIl <= Jit.BlockCompiler.MaxMethodIl
            && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(10);
        }

        Assert.InRange(Jit.JitCompilerThread.LargestMethodIl, 1, Jit.BlockCompiler.MaxMethodIl);
        Assert.True(Jit.JitCompilerThread.Shared.Compiled >= before + 15, "the loop's blocks were not compiled");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Multi_precision_adc_sbb_and_mul_loops_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(BigNumbers, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Imul_with_flags_overwritten_or_read_ends_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(ImulForms, threshold);
    }

    [Fact]
    public void Inline_stack_ops_leave_the_same_memory_as_the_first_tier()
    {
        using var a = Machine.Long64(StackAndFlags, hypervisor: TestBackends.Interpreter());
        using var b = Machine.Long64(StackAndFlags, hypervisor: TestBackends.Jit());
        Assert.Equal(VcpuExitReason.Halt, a.Run().Reason);
        Assert.Equal(VcpuExitReason.Halt, b.Run().Reason);
        Assert.Equal(a.Regs, b.Regs);
        foreach (ulong at in (ulong[])[Data, Data + 8, Data + 16, Machine.StackTop - 32, Machine.StackTop - 24, Machine.StackTop - 16, Machine.StackTop - 8])
        {
            Assert.Equal(a.Memory.Read<ulong>(new GuestAddress(at)), b.Memory.Read<ulong>(new GuestAddress(at)));
        }
    }

    [Theory]
    [InlineData("mixed", 0)]
    [InlineData("stack", 0)]
    [InlineData("branchy", 0)]
    [InlineData("mixed", 2)]
    [InlineData("stack", 2)]
    [InlineData("branchy", 2)]
    [InlineData("carries", 0)]
    [InlineData("carries", 2)]
    [InlineData("bignum", 0)]
    [InlineData("bignum", 2)]
    [InlineData("imul", 0)]
    [InlineData("imul", 2)]
    public void Budgets_that_end_inside_compiled_loops_and_regions_stop_exactly_where_the_first_tier_does(string name, int threshold)
    {
        // At threshold 0 every block is compiled alone before its first run; at 2 the compiler thread forms
        // regions along the links the first runs recorded.
        Action<Assembler> program = name switch { "stack" => StackAndFlags, "branchy" => Branchy, "carries" => Carries, "bignum" => BigNumbers, "imul" => ImulForms, _ => Mixed };
        AssertBudgetSlicesMatchFirstTier(program, threshold, 20,
            rng => rng.Next(4) switch { 0 => rng.Next(1, 4), 1 => rng.Next(1, 40), _ => rng.Next(1, 5000) });
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
        var jit = RunAll(TestBackends.Jit(threshold), Program);
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
        using var m = Machine.Long64Mapped(TestBackends.Create(backend), a =>
        {
            var loop = a.CreateLabel();
            a.mov(ebx, (int)(mapped - 0x3000));
            a.xor(eax, eax);
            a.Label(ref loop);
            a.add(rax, 1);
            a.mov(rdx, __qword_ptr[rbx]);
            a.add(rbx, 0x1000);
            a.jmp(loop);
        }, mapped, handler);

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

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Guest_rewrite_of_a_chained_to_block_on_another_page_takes_effect(int threshold)
    {
        // Block A branches to block B on the next page while ECX is not 50; once, A falls through to a store that
        // rewrites B's ADD immediate (100 -> 7). By then A's compiled code calls B's directly, so the rewritten B must
        // replace the old one behind that link.
        static Action<Assembler> Padded(int pad) => a =>
        {
            var head = a.CreateLabel();
            var b = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(ecx, 100);
            a.xor(eax, eax);
            a.mov(ebx, (int)(Machine.CodeAddress + 0x1000 + 2));
            a.Label(ref head);
            a.add(rax, 1);
            a.cmp(ecx, 50);
            a.jne(b);
            a.mov(__byte_ptr[rbx], 7);
            a.jmp(b);
            a.db(new byte[pad]);
            a.Label(ref b);
            a.add(rax, 100);
            a.dec(ecx);
            a.jnz(head);
            a.Label(ref done);
            a.hlt();
        };

        var program = AtNextPage(Padded, AddRax100);
        var code = GuestProgram.Assemble(64, Machine.CodeAddress, program);
        Assert.Equal(AddRax100, code.AsSpan(0x1000, AddRax100.Length).ToArray());
        var jit = RunAll(TestBackends.Jit(threshold), program);
        var first = RunAll(TestBackends.Interpreter(), program);
        Assert.Equal(VcpuExitReason.Halt, jit.Reason);

        // ECX 100..51: 1 + 100 each; ECX 50 (the rewrite): 1 + 7; ECX 49..1: 1 + 7 each.
        Assert.Equal((50UL * 101) + 8 + (49UL * 8), first.Regs.Rax);
        Assert.Equal(first, jit);
    }

    [Fact]
    public void Host_write_to_a_chained_to_block_between_runs_replaces_it()
    {
        static Action<Assembler> Padded(int pad) => a =>
        {
            var head = a.CreateLabel();
            var b = a.CreateLabel();
            a.mov(ecx, 10);
            a.xor(eax, eax);
            a.Label(ref head);
            a.add(rax, 1);
            a.jmp(b);
            a.db(new byte[pad]);
            a.Label(ref b);
            a.add(rax, 100);
            a.dec(ecx);
            a.jnz(head);
            a.hlt();
        };

        var program = AtNextPage(Padded, AddRax100);
        Assert.Equal(AddRax100, GuestProgram.Assemble(64, Machine.CodeAddress, program).AsSpan(0x1000, AddRax100.Length).ToArray());
        using var m = Machine.Long64(program, hypervisor: TestBackends.Jit());
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(1010UL, m.Regs.Rax);

        m.Memory.Write(new GuestAddress(Machine.CodeAddress + 0x1000 + 2), (byte)7);
        m.Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = Machine.CodeAddress, Rsp = Machine.StackTop, Rflags = Machine.FlagsReserved });
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(80UL, m.Regs.Rax);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public async Task Request_exit_stops_an_endless_loop_of_chained_blocks_at_a_block_boundary(int threshold)
    {
        using var m = Machine.Long64(a =>
        {
            var head = a.CreateLabel();
            var b = a.CreateLabel();
            a.mov(ebx, (int)Data);
            a.xor(eax, eax);
            a.Label(ref head);
            a.add(rax, 1);
            a.jmp(b);
            a.Label(ref b);
            a.mov(__qword_ptr[rbx], rax);
            a.jmp(head);
        }, hypervisor: TestBackends.Jit(threshold));
        var run = Task.Run(m.Vcpu.Run, TestContext.Current.CancellationToken);
        while (m.Memory.Read<ulong>(new GuestAddress(Data)) < 100_000 && !run.IsCompleted)
        {
            Thread.Yield();
        }

        m.Vcpu.RequestExit();
        Assert.Equal(VcpuExitReason.Interrupted, (await run).Reason);
        var r = m.Regs;
        long retired = ((IInstructionCounting)m.Vcpu).InstructionsRetired;
        ulong stored = m.Memory.Read<ulong>(new GuestAddress(Data));
        const ulong Head = Machine.CodeAddress + 5 + 2;
        if (r.Rip == Head)
        {
            Assert.Equal(r.Rax, stored);
            Assert.Equal(2 + (4 * (long)r.Rax), retired);
        }
        else
        {
            Assert.Equal(Head + 6 + 2, r.Rip);
            Assert.Equal(r.Rax - 1, stored);
            Assert.Equal(2 + (4 * (long)r.Rax) - 2, retired);
        }
    }

    [Fact]
    public void Page_fault_in_a_compiled_region_is_precise()
    {
        // A loop of two blocks (a branch over a HLT, then a load that walks into an unmapped page): compiled as one
        // region once both have run, the fault must leave the same state and count as the first tier.
        const ulong handler = 0x20000;
        const ulong mapped = 2UL << 20;
        static void Program(Assembler a)
        {
            var head = a.CreateLabel();
            var body = a.CreateLabel();
            a.mov(ebx, (int)(mapped - (8 * 30000)));
            a.xor(eax, eax);
            a.Label(ref head);
            a.add(rax, 1);
            a.cmp(rax, 0);
            a.jne(body);
            a.hlt();
            a.Label(ref body);
            a.mov(rdx, __qword_ptr[rbx]);
            a.add(rbx, 8);
            a.jmp(head);
        }

        (GeneralRegisters Regs, long Retired, ulong Cr2, ulong FaultRip) Run(IHypervisor hv)
        {
            using var m = Machine.Long64Mapped(hv, Program, mapped, handler);

            Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
            var r = m.Regs;
            return (r, ((IInstructionCounting)m.Vcpu).InstructionsRetired, m.Vcpu.GetSpecialRegisters().Cr2, m.Memory.Read<ulong>(new GuestAddress(r.Rsp + 8)));
        }

        var first = Run(TestBackends.Interpreter());
        Assert.Equal(handler + (14 * 16) + 1, first.Regs.Rip);
        Assert.Equal(mapped, first.Cr2);
        Assert.Equal(30000UL + 1, first.Regs.Rax);
        Assert.Equal(first, Run(TestBackends.Jit(2)));
        Assert.Equal(first, Run(TestBackends.Jit()));
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void A_link_made_before_a_remap_of_its_target_page_is_not_followed_after_it(string backend)
    {
        // The same CALL calls linear 0x400000 twenty times. After the tenth call the guest points that 2 MiB page at
        // other physical memory (new PDE, INVLPG): the block the CALL's exit was linked to is still valid (its memory
        // was not written) but no longer what the address holds, so the link must not be followed.
        const ulong Target = 0x400000;
        const ulong Pde = 0x9000 + 0x2000 + (2 * 8);
        using var m = Machine.Long64(a =>
        {
            var top = a.CreateLabel();
            var skip = a.CreateLabel();
            a.mov(ecx, 20);
            a.xor(eax, eax);
            a.mov(ebx, (int)Pde);
            a.Label(ref top);
            a.call(Target);
            a.cmp(ecx, 11);
            a.jne(skip);
            a.mov(rdx, __qword_ptr[rbx]);
            a.add(rdx, 0x200000);
            a.mov(__qword_ptr[rbx], rdx);
            a.invlpg(__byte_ptr[Target]);
            a.Label(ref skip);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, hypervisor: TestBackends.Create(backend), memorySize: 8UL << 20);
        m.Memory.Write(new GuestAddress(Target), GuestProgram.Assemble(64, Target, a =>
        {
            a.add(rax, 1);
            a.ret();
        }));
        m.Memory.Write(new GuestAddress(Target + 0x200000), GuestProgram.Assemble(64, Target, a =>
        {
            a.add(rax, 100);
            a.ret();
        }));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal((10UL * 1) + (10UL * 100), m.Regs.Rax);
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void A_link_to_non_global_code_is_not_followed_after_a_cr3_write(string backend)
    {
        // Two address spaces map linear 0x400000 (a 2 MiB page, not global) to different physical memory; the loop
        // calls it and switches CR3 between them after every call. Links made under one address space must not be
        // followed under the other: a CR3 write keeps only links to code reached through global translations.
        const ulong Target = 0x400000;
        const ulong SecondTables = 0x7F0000;
        using var m = Machine.Long64(a =>
        {
            var top = a.CreateLabel();
            var toSecond = a.CreateLabel();
            var next = a.CreateLabel();
            a.mov(ecx, 20);
            a.xor(eax, eax);
            a.mov(r8, cr3);
            a.mov(r9, SecondTables);
            a.Label(ref top);
            a.call(Target);
            a.mov(rdx, cr3);
            a.cmp(rdx, r8);
            a.je(toSecond);
            a.mov(cr3, r8);
            a.jmp(next);
            a.Label(ref toSecond);
            a.mov(cr3, r9);
            a.Label(ref next);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, hypervisor: TestBackends.Create(backend), memorySize: 8UL << 20);

        // CR4.PGE on, so that a CR3 write keeps global translations (and only those).
        var sregs = m.Vcpu.GetSpecialRegisters();
        sregs.Cr4 |= Virt.X86.Cr4.PageGlobalEnable;
        m.Vcpu.SetSpecialRegisters(sregs);

        // The second address space: copies of the PML4, the PDPT and the PD, the copy of the PD pointing 0x400000 at
        // 0x600000; both entries for 0x400000 without G.
        const ulong Global = 1UL << 8;
        const ulong AddressBits = 0x000F_FFFF_FFFF_F000;
        ulong pml4 = m.Vcpu.GetSpecialRegisters().Cr3 & AddressBits;
        ulong pdpt = m.Memory.Read<ulong>(new GuestAddress(pml4)) & AddressBits;
        ulong pd = m.Memory.Read<ulong>(new GuestAddress(pdpt)) & AddressBits;
        byte[] page = new byte[4096];
        foreach (var (from, to) in new[] { (pml4, SecondTables), (pdpt, SecondTables + 0x1000), (pd, SecondTables + 0x2000) })
        {
            m.Memory.Read(new GuestAddress(from), page);
            m.Memory.Write(new GuestAddress(to), page);
        }

        ulong pml4e = m.Memory.Read<ulong>(new GuestAddress(pml4));
        ulong pdpte = m.Memory.Read<ulong>(new GuestAddress(pdpt));
        ulong pde = m.Memory.Read<ulong>(new GuestAddress(pd + (2 * 8))) & ~Global;
        m.Memory.Write(new GuestAddress(SecondTables), (pml4e & ~AddressBits) | (SecondTables + 0x1000));
        m.Memory.Write(new GuestAddress(SecondTables + 0x1000), (pdpte & ~AddressBits) | (SecondTables + 0x2000));
        m.Memory.Write(new GuestAddress(pd + (2 * 8)), pde);
        m.Memory.Write(new GuestAddress(SecondTables + 0x2000 + (2 * 8)), (pde & ~AddressBits) | (Target + 0x200000));
        m.Memory.Write(new GuestAddress(Target), GuestProgram.Assemble(64, Target, a =>
        {
            a.add(rax, 1);
            a.ret();
        }));
        m.Memory.Write(new GuestAddress(Target + 0x200000), GuestProgram.Assemble(64, Target, a =>
        {
            a.add(rax, 100);
            a.ret();
        }));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal((10UL * 1) + (10UL * 100), m.Regs.Rax);
    }

    /// <summary>
    /// One function called from three sites in a loop (its RET goes to another block each time, so the RET's link
    /// misses and the next block comes from the lookup), with a store and a data-dependent branch between the calls.
    /// </summary>
    private static void ThreeCallSites(Assembler a)
    {
        var loop = a.CreateLabel();
        var f = a.CreateLabel();
        var skip = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(ecx, 3000);
        a.xor(eax, eax);
        a.xor(ebx, ebx);
        a.Label(ref loop);
        a.call(f);
        a.add(rbx, rax);
        a.call(f);
        a.mov(__qword_ptr[rdi], rbx);
        a.test(cl, 5);
        a.jz(skip);
        a.call(f);
        a.xor(rbx, rdx);
        a.Label(ref skip);
        a.dec(ecx);
        a.jnz(loop);
        a.hlt();
        a.Label(ref f);
        a.add(rax, rcx);
        a.inc(rdx);
        a.ret();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Returns_to_many_call_sites_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(ThreeCallSites, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_in_blocks_reached_through_looked_up_returns_stop_exactly_where_the_first_tier_does(int threshold)
    {
        AssertBudgetSlicesMatchFirstTier(ThreeCallSites, threshold, 7,
            rng => rng.Next(3) switch { 0 => rng.Next(1, 8), 1 => rng.Next(1, 200), _ => rng.Next(1, 3000) });
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public async Task Request_exit_stops_an_endless_loop_of_calls_from_two_sites_in_the_first_tier_state_of_its_count(int threshold)
    {
        // Compiled blocks chain into each other through links and looked-up returns without the run loop; the exit
        // must still come, and leave the state the first tier has after the same number of instructions.
        static void Program(Assembler a)
        {
            var head = a.CreateLabel();
            var f = a.CreateLabel();
            a.mov(ebx, (int)Data);
            a.xor(eax, eax);
            a.Label(ref head);
            a.call(f);
            a.mov(__qword_ptr[rbx], rax);
            a.call(f);
            a.jmp(head);
            a.Label(ref f);
            a.add(rax, 1);
            a.ret();
        }

        using var m = Machine.Long64(Program, hypervisor: TestBackends.Jit(threshold));
        var run = Task.Run(m.Vcpu.Run, TestContext.Current.CancellationToken);
        while (m.Memory.Read<ulong>(new GuestAddress(Data)) < 100_000 && !run.IsCompleted)
        {
            Thread.Yield();
        }

        m.Vcpu.RequestExit();
        Assert.Equal(VcpuExitReason.Interrupted, (await run).Reason);
        long retired = ((IInstructionCounting)m.Vcpu).InstructionsRetired;
        Assert.True(retired > 400_000, $"{retired} retired");

        using var first = Machine.Long64(Program, hypervisor: TestBackends.Interpreter());
        ((IInstructionCounting)first.Vcpu).InstructionBudget = retired;
        Assert.Equal(VcpuExitReason.BudgetExhausted, first.Vcpu.Run().Reason);
        Assert.Equal(first.Regs, m.Regs);
        Assert.Equal(first.Memory.Read<ulong>(new GuestAddress(Data)), m.Memory.Read<ulong>(new GuestAddress(Data)));
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(2, false)]
    [InlineData(0, true)]
    [InlineData(2, true)]
    public void Guest_rewrite_of_a_return_site_is_not_bypassed_by_a_looked_up_or_expected_return(int threshold, bool samePage)
    {
        // F returns to two sites. Once, the loop rewrites the second site's ADD immediate (100 -> 7): F's RET must not
        // enter the old block, neither one the lookup still holds (F on the next page) nor one a region expects
        // there (F in the loop's page, so that its returns are branches inside the region's method).
        byte[] site = [0x48, 0x05, 100, 0, 0, 0];
        static Action<Assembler> Padded(int pad, ulong siteImm) => a =>
        {
            var head = a.CreateLabel();
            var skip = a.CreateLabel();
            var f = a.CreateLabel();
            a.mov(ecx, 100);
            a.xor(eax, eax);
            a.mov(ebx, (int)siteImm);
            a.Label(ref head);
            a.call(f);
            a.add(rax, 1000);
            a.cmp(ecx, 50);
            a.jne(skip);
            a.mov(__byte_ptr[rbx], 7);
            a.Label(ref skip);
            a.call(f);
            a.add(rax, 100);
            a.dec(ecx);
            a.jnz(head);
            a.hlt();
            a.db(new byte[pad]);
            a.Label(ref f);
            a.add(rax, 3);
            a.ret();
        };

        int at = GuestProgram.Assemble(64, Machine.CodeAddress, Padded(0x400, 0)).AsSpan().IndexOf(site);
        Assert.True(at > 0);
        ulong imm = Machine.CodeAddress + (ulong)at + 2;
        var program = samePage ? Padded(0, imm) : AtNextPage(pad => Padded(pad, imm), [0x48, 0x05, 3, 0, 0, 0]);
        Assert.Equal(site, GuestProgram.Assemble(64, Machine.CodeAddress, program).AsSpan(at, site.Length).ToArray());
        var first = RunAll(TestBackends.Interpreter(), program);
        Assert.Equal(VcpuExitReason.Halt, first.Reason);

        // ECX 100..51: 3 + 1000 + 3 + 100; ECX 50..1 (the rewrite comes before the second call at 50): 3 + 1000 + 3 + 7.
        Assert.Equal((50UL * 1106) + (50UL * 1013), first.Regs.Rax);
        Assert.Equal(first, RunAll(TestBackends.Jit(threshold), program));
    }

    /// <summary>
    /// Calls through a table of four functions (one per pass, in turn) and a direct call of a fifth from two sites, all
    /// in one page: the shape in which regions follow computed exits (the indirect CALL to the function it went to last,
    /// each RET to the site it returned to last), so every expected target is sometimes right and sometimes wrong.
    /// </summary>
    private static void TableCalls(Assembler a)
    {
        var start = a.CreateLabel();
        var loop = a.CreateLabel();
        var skip = a.CreateLabel();
        var g = a.CreateLabel();
        var f3Skip = a.CreateLabel();
        Label[] f = [a.CreateLabel(), a.CreateLabel(), a.CreateLabel(), a.CreateLabel()];
        a.jmp(start);
        a.Label(ref f[0]);
        a.lea(rax, __[rax + rdi * 2]);
        a.ret();
        a.Label(ref f[1]);
        a.xor(rax, rdi);
        a.add(rax, 7);
        a.ret();
        a.Label(ref f[2]);
        a.rol(rax, 3);
        a.ret();
        a.Label(ref f[3]);
        a.cmp(edi, 1500);
        a.jb(f3Skip);
        a.imul(rax, rax, 3);
        a.Label(ref f3Skip);
        a.sub(rax, rdi);
        a.ret();
        a.Label(ref g);
        a.add(rbx, rax);
        a.ret();
        a.Label(ref start);
        for (int k = 0; k < 4; k++)
        {
            a.lea(rcx, __[f[k]]);
            a.mov(__qword_ptr[(int)Data + (k * 8)], rcx);
        }

        a.xor(eax, eax);
        a.xor(ebx, ebx);
        a.mov(r12d, 3000);
        a.Label(ref loop);
        a.mov(edi, r12d);
        a.mov(ecx, edi);
        a.and(ecx, 3);
        a.call(__qword_ptr[rcx * 8 + (int)Data]);
        a.call(g);
        a.test(r12d, 1);
        a.jz(skip);
        a.call(g);
        a.Label(ref skip);
        a.dec(r12d);
        a.jnz(loop);
        a.hlt();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Indirect_calls_and_returns_in_one_page_end_in_the_same_state_and_count_as_the_first_tier(int threshold)
    {
        AssertRunMatchesFirstTier(TableCalls, threshold);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_in_blocks_reached_through_expected_returns_stop_exactly_where_the_first_tier_does(int threshold)
    {
        AssertBudgetSlicesMatchFirstTier(TableCalls, threshold, 11,
            rng => rng.Next(3) switch { 0 => rng.Next(1, 8), 1 => rng.Next(1, 200), _ => rng.Next(1, 3000) });
    }

    [Fact]
    public void A_block_in_a_published_region_is_compiled_alone_until_its_promotion()
    {
        // The branching loop runs in the first tier with a threshold it never reaches, so its links are recorded and
        // nothing is compiled; then its blocks are compiled here, in turn, as the compiler thread would.
        using var m = Machine.Long64(Branchy, hypervisor: TestBackends.Jit(int.MaxValue));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Block[]? region = null;
        Block? root = null;
        foreach (var b in ((InterpreterVcpu)m.Vcpu).CachedBlocks())
        {
            if (Jit.BlockCompiler.Compile(b, out _)?.Target is Block[] { Length: > 1 } r)
            {
                (root, region) = (b, r);
                break;
            }
        }

        Assert.NotNull(region);
        var code = Jit.BlockCompiler.Compile(root!, out _)!;
        Volatile.Write(ref root!.Compiled, code);
        Jit.JitCompilerThread.NoteRegionMembers(root, code);
        var member = ((Block[])code.Target!)[1];

        // Once the root's region is published, its other blocks are compiled alone, and as roots of regions again when
        // promoted (compiled with their link checks inline); a block of a region that was dropped is a root at once.
        Assert.Equal(1, ((Block[])Jit.BlockCompiler.Compile(member, out _)!.Target!).Length);
        Assert.True(((Block[])Jit.BlockCompiler.Compile(member, out _, inlineLinks: true)!.Target!).Length > 1);
        Volatile.Write(ref root.Compiled, null);
        Assert.True(((Block[])Jit.BlockCompiler.Compile(member, out _)!.Target!).Length > 1);
    }

    [Fact]
    public void A_region_follows_an_indirect_call_into_its_function_and_the_return_back_to_the_call_site()
    {
        // Once the loop has run a few times its links name where the indirect CALL and the RETs went; a region rooted in
        // the loop then holds the CALL's block, a function from the table and the block after the CALL, reached only
        // through the function's RET. The compiler thread may still be at it when the guest halts: wait for it.
        using var m = Machine.Long64(TableCalls, hypervisor: TestBackends.Jit(2));
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var functions = new HashSet<ulong>();
        for (int k = 0; k < 4; k++)
        {
            functions.Add(m.Memory.Read<ulong>(new GuestAddress(Data + (ulong)(k * 8))));
        }

        var vcpu = (InterpreterVcpu)m.Vcpu;
        bool Formed()
        {
            foreach (var b in vcpu.CachedBlocks())
            {
                if (b.Compiled?.Target is not Block[] region)
                {
                    continue;
                }

                foreach (var x in region)
                {
                    ref Op last = ref x.Ops[x.Count - 1];
                    ulong site = last.Next;
                    if (last.Inline == InlineOp.CallInd && region.Any(y => functions.Contains(y.Lin)) && region.Any(y => y.Lin == site))
                    {
                        return true;
                    }
                }
            }

            return false;
        }

        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (!Formed() && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(10);
        }

        Assert.True(Formed(), "no region holds the indirect call, a function it calls and the block it returns to");
        Assert.Equal(RunAll(TestBackends.Interpreter(), TableCalls), (m.Regs, ((IInstructionCounting)m.Vcpu).InstructionsRetired, VcpuExitReason.Halt));
    }

    /// <summary>
    /// Runs <paramref name="program"/> at CPL 0 with the first 2 MiB identity-mapped (nothing above) and halting exception
    /// handlers: the registers, the count, CR2 and the five quadwords of the last exception frame, for comparing tiers.
    /// </summary>
    private static (GeneralRegisters Regs, long Retired, ulong Cr2, ulong[] Frame) RunPaged(string backend, Action<Assembler> program)
    {
        const ulong handler = 0x20000;
        const ulong mapped = 2UL << 20;
        using var m = Machine.Long64Mapped(TestBackends.Create(backend), program, mapped, handler);

        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        var r = m.Regs;
        var frame = new ulong[5];
        for (int i = 0; i < frame.Length; i++)
        {
            frame[i] = m.Memory.Read<ulong>(new GuestAddress(r.Rsp + (ulong)(i * 8)));
        }

        return (r, ((IInstructionCounting)m.Vcpu).InstructionsRetired, m.Vcpu.GetSpecialRegisters().Cr2, frame);
    }

    /// <summary>
    /// Runs <paramref name="program"/> with <see cref="RunPaged"/> on the first tier and on the JIT tier, asserts that both
    /// end with the same registers, count, CR2 and exception frame, and returns the first tier's run.
    /// </summary>
    private static (GeneralRegisters Regs, long Retired, ulong Cr2, ulong[] Frame) AssertPagedTiersMatch(Action<Assembler> program)
    {
        var expected = RunPaged("interpreter", program);
        var jit = RunPaged("jit", program);
        Assert.Equal(expected.Regs, jit.Regs);
        Assert.Equal(expected.Retired, jit.Retired);
        Assert.Equal(expected.Cr2, jit.Cr2);
        Assert.Equal(expected.Frame, jit.Frame);
        return expected;
    }

    /// <summary>
    /// Compiled memory accesses that cross a page boundary (reads, writes and read-modify-writes of 2, 4 and 8 bytes at
    /// every offset that straddles it) take the slow path and read and write what the first tier does; the last one
    /// reaches from a page the TLB holds (a read just before) into the unmapped page above 2 MiB and faults precisely
    /// (CR2 the unmapped page, RIP the access).
    /// </summary>
    [Fact]
    public void Accesses_that_cross_a_page_end_in_the_same_state_count_and_fault_as_the_first_tier()
    {
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(edi, (int)(Data + 0xFF8));
            a.mov(rax, 0x0123456789ABCDEFL);
            a.xor(ebx, ebx);
            a.mov(ecx, 40);
            a.Label(ref loop);
            a.mov(__qword_ptr[rdi], rax);
            a.mov(__dword_ptr[rdi + 3], eax);
            a.add(__word_ptr[rdi + 7], bx);
            a.mov(rdx, __qword_ptr[rdi + 1]);
            a.add(rbx, rdx);
            a.movzx(esi, __word_ptr[rdi + 7]);
            a.xor(rbx, rsi);
            a.rol(rax, 7);
            a.inc(rdi);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(edi, (int)((2UL << 20) - 4));
            a.mov(eax, __dword_ptr[rdi]);
            a.add(rbx, 1);
            a.mov(rdx, __qword_ptr[rdi]);
            a.hlt();
        }

        var expected = AssertPagedTiersMatch(Program);
        Assert.Equal(2UL << 20, expected.Cr2);
    }

    /// <summary>
    /// A block (a function called on a new page each time, so its accesses miss the TLB and take their slow paths) whose
    /// slow paths come with different pending flags, which share one write-back, each storing its own flags first:
    /// the state, the flags each call leaves and the frame of the page fault its last call takes under SUB's flags are the
    /// first tier's.
    /// </summary>
    [Fact]
    public void Slow_paths_with_different_pending_flags_share_a_write_back_and_stay_exact()
    {
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            var f = a.CreateLabel();
            var skip = a.CreateLabel();
            a.mov(edi, (int)Data);
            a.mov(esi, (int)(Data + 0x40000));
            a.mov(ebx, 5);
            a.mov(ecx, 100);
            a.xor(edx, edx);
            a.xor(r12d, r12d);
            a.mov(r13d, 30);
            a.Label(ref loop);
            a.call(f);
            a.pushfq();
            a.pop(r11);
            a.add(r12, r11);
            a.add(rdi, 0x1000);
            a.add(rsi, 0x1000);
            a.cmp(r13d, 2);
            a.jne(skip);
            a.mov(esi, (int)((2UL << 20) - 0x40));
            a.Label(ref skip);
            a.dec(r13d);
            a.jnz(loop);
            a.hlt();
            a.Label(ref f);
            a.mov(rax, __qword_ptr[rdi]);
            a.add(rax, rbx);
            a.mov(__qword_ptr[rsi], rax);
            a.sub(rcx, 3);
            a.mov(__qword_ptr[rsi + 0x48], rcx);
            a.inc(rdx);
            a.mov(rbx, __qword_ptr[rdi + 8]);
            a.adc(rbx, rax);
            a.ret();
        }

        var expected = AssertPagedTiersMatch(Program);
        Assert.Equal((2UL << 20) + 8, expected.Cr2);
    }

    /// <summary>
    /// MUL, one-operand IMUL, ADC and SBB with memory operands that cross a page end (a read, and read-modify-writes to
    /// memory) take the slow path and leave what the first tier does; the last one reaches from a mapped page into the
    /// unmapped one above 2 MiB and faults precisely, with flags another operation left pending (RDX:RAX, the memory and
    /// the flags as before it).
    /// </summary>
    [Theory]
    [InlineData("mul")]
    [InlineData("imul")]
    [InlineData("adc")]
    [InlineData("sbb")]
    public void Multiply_adc_and_sbb_with_memory_across_a_page_end_match_the_first_tier_and_fault_precisely(string last)
    {
        void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(edi, (int)(Data + 0xFF0));
            a.mov(r11, 0x0FEDCBA987654321L);
            a.mov(rax, r11);
            a.mov(__qword_ptr[rdi], rax);
            a.mov(__qword_ptr[rdi + 8], r11);
            a.mov(__qword_ptr[rdi + 16], rax);
            a.xor(ebx, ebx);
            a.mov(ecx, 24);
            a.Label(ref loop);
            a.mov(rax, r11);
            a.mul(__qword_ptr[rdi]);
            a.adc(rbx, rdx);
            a.imul(__dword_ptr[rdi + 3]);
            a.sbb(__qword_ptr[rdi + 1], rax);
            a.adc(r9w, __word_ptr[rdi + 7]);
            a.setc(r10b);
            a.add(rbx, r10);
            a.imul(__word_ptr[rdi + 5]);
            a.adc(__dword_ptr[rdi + 2], edx);
            a.rol(r11, 9);
            a.inc(rdi);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(edi, (int)((2UL << 20) - 4));
            a.mov(eax, __dword_ptr[rdi]);
            a.mov(edx, 0x1234);
            a.add(rbx, 1);
            switch (last)
            {
                case "mul": a.mul(__qword_ptr[rdi]); break;
                case "imul": a.imul(__qword_ptr[rdi]); break;
                case "adc": a.adc(__qword_ptr[rdi], rax); break;
                default: a.sbb(rdx, __qword_ptr[rdi]); break;
            }

            a.hlt();
        }

        var expected = AssertPagedTiersMatch(Program);
        Assert.Equal(2UL << 20, expected.Cr2);
    }

    /// <summary>
    /// DIV and IDIV whose divisor is 0 or whose quotient does not fit raise #DE from compiled code as the first tier does
    /// (RIP the division, registers and flags as before it, with flags another operation left pending, the count), after
    /// a loop of divisions that do not fault.
    /// </summary>
    [Theory]
    [InlineData("div0")]
    [InlineData("div64overflow")]
    [InlineData("div8overflow")]
    [InlineData("idiv0")]
    [InlineData("idiv64min")]
    [InlineData("idiv32min")]
    [InlineData("idiv16overflow")]
    [InlineData("idiv8edge")]
    [InlineData("divmem0")]
    public void Divide_errors_in_compiled_code_are_raised_as_the_first_tier_raises_them(string last)
    {
        void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(edi, (int)Data);
            a.mov(__qword_ptr[rdi], 0);
            a.mov(ecx, 300);
            a.xor(ebx, ebx);
            a.mov(r11, 0x0123456789ABCDEFL);
            a.Label(ref loop);
            a.mov(rax, r11);
            a.xor(edx, edx);
            a.div(rcx);
            a.add(rbx, rdx);
            a.mov(rax, r11);
            a.cqo();
            a.idiv(rcx);
            a.add(rbx, rax);
            a.rol(r11, 5);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(rax, r11);
            a.mov(rdx, 0x55);
            a.xor(ecx, ecx);
            a.add(rbx, -1);
            switch (last)
            {
                case "div0": a.div(rcx); break;
                case "div64overflow": a.mov(ecx, 0x55); a.add(rbx, -1); a.div(rcx); break;
                case "div8overflow": a.mov(ecx, 2); a.mov(eax, 0x300); a.add(rbx, -1); a.div(cl); break;
                case "idiv0": a.idiv(ecx); break;
                case "idiv64min": a.mov(rcx, -1); a.mov(rdx, -1); a.mov(rax, long.MinValue); a.add(rbx, -1); a.idiv(rcx); break;
                case "idiv32min": a.mov(ecx, -1); a.mov(edx, unchecked((int)0x80000000)); a.xor(eax, eax); a.add(rbx, -1); a.idiv(ecx); break;
                case "idiv16overflow": a.mov(ecx, 3); a.mov(edx, 0x7000); a.add(rbx, -1); a.idiv(cx); break;
                case "idiv8edge": a.mov(ecx, 2); a.mov(eax, 256); a.add(rbx, -1); a.idiv(cl); break;
                default: a.div(__qword_ptr[rdi]); break;
            }

            a.hlt();
        }

        var expected = AssertPagedTiersMatch(Program);
        Assert.Equal(0x20000UL + 1, expected.Regs.Rip); // vector 0's handler halted
    }
}
