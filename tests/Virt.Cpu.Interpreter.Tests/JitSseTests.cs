using Iced.Intel;
using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// The SSE integer and move forms compiled code runs itself, against the first tier: register and memory forms, 16-byte
/// operands that cross a page end or reach an unmapped page, misaligned MOVDQA, SSE disabled by CR0.TS, and budgets
/// that end inside a compiled SSSE3 loop.
/// </summary>
public sealed class JitSseTests
{
    private const ulong Data = 0x100000;
    private const ulong Handler = 0x20000;
    private const ulong Mapped = 2UL << 20;

    private readonly record struct Outcome(GeneralRegisters Regs, long Retired, VcpuExitReason Reason, byte[] Xmm, byte[] Memory, ulong Cr2, ulong[] Frame);

    private static Outcome Run(IHypervisor hv, Action<Assembler> program)
    {
        using var m = Machine.Long64Mapped(hv, program, Mapped, Handler);
        var exit = m.Run();
        var r = m.Regs;
        var frame = new ulong[3];
        for (int i = 0; i < frame.Length; i++)
        {
            frame[i] = m.Memory.Read<ulong>(new GuestAddress(r.Rsp + (ulong)(i * 8)));
        }

        var mem = new byte[0x3000];
        m.Memory.Read(new GuestAddress(Data), mem);
        var fpu = m.Vcpu.GetFpuState();
        return new(r, ((IInstructionCounting)m.Vcpu).InstructionsRetired, exit.Reason, ((ReadOnlySpan<byte>)fpu.Xmm).ToArray(), mem,
            m.Vcpu.GetSpecialRegisters().Cr2, frame);
    }

    private static void AssertSame(Outcome expected, Outcome jit)
    {
        Assert.Equal(expected.Reason, jit.Reason);
        Assert.Equal(expected.Regs, jit.Regs);
        Assert.Equal(expected.Retired, jit.Retired);
        Assert.Equal(expected.Xmm, jit.Xmm);
        Assert.Equal(expected.Memory, jit.Memory);
        Assert.Equal(expected.Cr2, jit.Cr2);
        Assert.Equal(expected.Frame, jit.Frame);
    }

    /// <summary>The RIP a handler of <see cref="Machine.Long64Mapped"/> halts at for <paramref name="vector"/>.</summary>
    private static ulong HaltedIn(int vector) => Handler + (ulong)(vector * 16) + 1;

    /// <summary>
    /// A loop over every compiled form: aligned and unaligned loads and stores, MOVD/MOVQ both ways with registers and
    /// memory, the logic, add, subtract, compare, min/max and unpack operations, PSHUFD, PSHUFB, lane shifts (counts
    /// within and past the lane width) and byte shifts, PMOVMSKB, folded into general registers each iteration.
    /// </summary>
    private static void AllForms(Assembler a)
    {
        var loop = a.CreateLabel();
        a.mov(edi, (int)Data);
        a.mov(rax, 0x0F0E0D0C0B0A0908L);
        a.mov(__qword_ptr[rdi + 0x300], rax);
        a.mov(rax, 0x0706050403020100L);
        a.mov(__qword_ptr[rdi + 0x308], rax);
        a.mov(rax, 0x0123456789ABCDEFL);
        a.movq(xmm0, rax);
        a.mov(rax, unchecked((long)0xFEDCBA9876543210UL));
        a.movq(xmm1, rax);
        a.punpcklqdq(xmm0, xmm1);
        a.pshufd(xmm2, xmm0, 0x1B);
        a.movdqa(xmm5, __xmmword_ptr[rdi + 0x300]);
        a.xor(ebx, ebx);
        a.mov(ecx, 2000);
        a.Label(ref loop);
        a.movdqa(xmm3, __xmmword_ptr[rdi + 0x100]);
        a.movdqu(xmm4, __xmmword_ptr[rdi + rcx + 3]);
        a.paddd(xmm0, xmm2);
        a.pxor(xmm1, xmm0);
        a.pshufb(xmm1, xmm5);
        a.movdqa(xmm6, xmm1);
        a.psrld(xmm1, 12);
        a.pslld(xmm6, 20);
        a.por(xmm1, xmm6);
        a.paddq(xmm2, xmm1);
        a.paddb(xmm3, xmm1);
        a.paddw(xmm3, xmm4);
        a.psubb(xmm4, xmm0);
        a.psubw(xmm4, xmm2);
        a.psubd(xmm3, __xmmword_ptr[rdi + 0x300]);
        a.psubq(xmm2, xmm3);
        a.pcmpeqb(xmm7, xmm3);
        a.pmovmskb(eax, xmm7);
        a.add(rbx, rax);
        a.pcmpeqw(xmm7, xmm4);
        a.pcmpeqd(xmm7, xmm2);
        a.pmovmskb(rax, xmm4);
        a.xor(rbx, rax);
        a.pminub(xmm4, xmm0);
        a.pmaxub(xmm3, xmm4);
        a.movdqa(xmm8, xmm3);
        a.punpcklbw(xmm8, xmm4);
        a.punpckhbw(xmm4, xmm3);
        a.punpcklwd(xmm8, xmm2);
        a.punpckhwd(xmm2, xmm8);
        a.punpckldq(xmm8, xmm1);
        a.punpckhdq(xmm1, xmm8);
        a.punpckhqdq(xmm8, xmm0);
        a.movdqa(xmm9, xmm8);
        a.psrldq(xmm8, 3);
        a.pslldq(xmm9, 5);
        a.pxor(xmm8, xmm9);
        a.movdqa(xmm10, xmm0);
        a.psraw(xmm10, 3);
        a.movdqa(xmm11, xmm2);
        a.psrad(xmm11, 40);
        a.psrlq(xmm10, 7);
        a.psllq(xmm11, 9);
        a.psllw(xmm10, 2);
        a.psrlw(xmm11, 17);
        a.movdqa(xmm12, xmm11);
        a.psrldq(xmm12, 20);
        a.pand(xmm10, xmm8);
        a.pandn(xmm11, xmm10);
        a.xorps(xmm12, xmm11);
        a.andps(xmm12, xmm3);
        a.orps(xmm12, xmm2);
        a.andnps(xmm11, xmm12);
        a.movaps(xmm13, xmm12);
        a.movups(xmm14, xmm13);
        a.movdqu(__xmmword_ptr[rdi + rcx + 5 + 0x400], xmm1);
        a.movdqa(__xmmword_ptr[rdi + 0x100], xmm8);
        a.movaps(__xmmword_ptr[rdi + 0x110], xmm11);
        a.movups(__xmmword_ptr[rdi + rcx + 0x801], xmm14);
        a.movd(edx, xmm1);
        a.add(rbx, rdx);
        a.movq(r8, xmm0);
        a.xor(rbx, r8);
        a.movd(xmm13, ecx);
        a.movq(xmm14, __qword_ptr[rdi + rcx + 8]);
        a.movq(__qword_ptr[rdi + rcx + 0x200], xmm14);
        a.movd(__dword_ptr[rdi + rcx + 0x1000], xmm13);
        a.movd(xmm15, __dword_ptr[rdi + rcx + 0x400]);
        a.movq(xmm15, xmm4);
        a.movq(r9, xmm15);
        a.add(rbx, r9);
        a.dec(ecx);
        a.jnz(loop);
        a.hlt();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(50)]
    public void Sse_integer_and_move_forms_end_in_the_same_state_count_and_memory_as_the_first_tier(int threshold)
    {
        var expected = Run(TestBackends.Interpreter(), AllForms);
        var jit = Run(TestBackends.Jit(threshold), AllForms);
        Assert.Equal(VcpuExitReason.Halt, expected.Reason);
        Assert.Equal(Machine.CodeAddress, expected.Regs.Rip & ~0xFFFFUL);
        AssertSame(expected, jit);
    }

    /// <summary>
    /// 16-byte loads and stores (MOVDQU, and the PXOR and MOVQ memory forms) at every offset that straddles a page end
    /// run the interpreter's slow path and match the first tier; the last load reaches from a mapped page into the
    /// unmapped one above 2 MiB and faults precisely (CR2 that page, RIP the load, the count of the instructions before it).
    /// </summary>
    [Fact]
    public void Sixteen_byte_accesses_at_page_ends_end_in_the_same_state_count_and_fault_as_the_first_tier()
    {
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(edi, (int)(Data + 0xFEF));
            a.mov(ecx, 20);
            a.mov(rax, 0x1122334455667788L);
            a.movq(xmm1, rax);
            a.pshufd(xmm1, xmm1, 0x44);
            a.Label(ref loop);
            a.movdqu(__xmmword_ptr[rdi], xmm1);
            a.paddb(xmm1, xmm1);
            a.movdqu(xmm2, __xmmword_ptr[rdi + 1]);
            a.pxor(xmm1, xmm2);
            a.movq(xmm3, __qword_ptr[rdi + 5]);
            a.movq(__qword_ptr[rdi + 0x1001], xmm1);
            a.movd(edx, xmm2);
            a.add(ebx, edx);
            a.inc(rdi);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(edi, (int)(Mapped - 0x20));
            a.movdqu(xmm4, __xmmword_ptr[rdi]);
            a.movdqu(xmm5, __xmmword_ptr[rdi + 0x18]);
            a.hlt();
        }

        var expected = Run(TestBackends.Interpreter(), Program);
        var jit = Run(TestBackends.Jit(), Program);
        Assert.Equal(HaltedIn(14), expected.Regs.Rip);
        Assert.Equal(Mapped, expected.Cr2);
        AssertSame(expected, jit);
    }

    /// <summary>
    /// MOVDQA (a load, then a store) whose address becomes misaligned in a compiled loop raises #GP with RIP at the
    /// MOVDQA and the instructions before it retired, as in the first tier; so does PADDD with a misaligned memory operand.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Misaligned_movdqa_and_paddd_fault_at_the_instruction_as_in_the_first_tier(int form)
    {
        void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(edi, (int)Data);
            a.xor(eax, eax);
            a.Label(ref loop);
            a.add(eax, 1);
            a.movdqu(xmm1, __xmmword_ptr[rdi + 3]);
            switch (form)
            {
                case 0: a.movdqa(xmm0, __xmmword_ptr[rdi]); break;
                case 1: a.movdqa(__xmmword_ptr[rdi], xmm1); break;
                default: a.paddd(xmm0, __xmmword_ptr[rdi]); break;
            }

            a.add(rdi, 8);
            a.jmp(loop);
        }

        var expected = Run(TestBackends.Interpreter(), Program);
        var jit = Run(TestBackends.Jit(), Program);
        Assert.Equal(HaltedIn(13), expected.Regs.Rip);
        // After the error code: the MOVDQA/PADDD (MOV 5, XOR 2, ADD EAX,imm32 5 and MOVDQU 5 bytes before it).
        Assert.Equal(Machine.CodeAddress + 5 + 2 + 5 + 5, expected.Frame[1]);
        Assert.Equal(2UL, expected.Regs.Rax);
        AssertSame(expected, jit);
    }

    /// <summary>With CR0.TS set (after a compiled block ran the same forms), the compiled forms raise #NM at the first SSE instruction, as the first tier does.</summary>
    [Fact]
    public void Sse_ops_with_cr0_ts_set_raise_nm_as_in_the_first_tier()
    {
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            var body = a.CreateLabel();
            a.mov(ecx, 3);
            a.Label(ref loop);
            a.add(ebx, 1);
            a.pxor(xmm0, xmm0);
            a.paddd(xmm0, xmm1);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(rax, cr0);
            a.or(rax, 8);
            a.mov(cr0, rax);
            a.Label(ref body);
            a.add(ebx, 1);
            a.pxor(xmm0, xmm0);
            a.hlt();
        }

        var expected = Run(TestBackends.Interpreter(), Program);
        var jit = Run(TestBackends.Jit(), Program);
        Assert.Equal(HaltedIn(7), expected.Regs.Rip);
        Assert.Equal(4UL, expected.Regs.Rbx);
        AssertSame(expected, jit);
    }

    /// <summary>An SSSE3 round (BLAKE2s-like: add, xor, PSHUFB and shift-or rotates) in a loop: budgets that end anywhere in it stop exactly where the first tier does, with the same XMM state.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void Budgets_that_end_inside_a_compiled_ssse3_loop_stop_exactly_where_the_first_tier_does(int threshold)
    {
        static void Program(Assembler a)
        {
            var loop = a.CreateLabel();
            a.mov(edi, (int)Data);
            a.mov(rax, 0x0504070601000302L);
            a.mov(__qword_ptr[rdi], rax);
            a.mov(rax, 0x0D0C0F0E09080B0AL);
            a.mov(__qword_ptr[rdi + 8], rax);
            a.movdqa(xmm7, __xmmword_ptr[rdi]);
            a.mov(eax, 0x6A09E667);
            a.movd(xmm0, eax);
            a.pshufd(xmm0, xmm0, 0x39);
            a.mov(ecx, 3000);
            a.Label(ref loop);
            a.paddd(xmm0, xmm1);
            a.pxor(xmm3, xmm0);
            a.pshufb(xmm3, xmm7);
            a.paddd(xmm2, xmm3);
            a.pxor(xmm1, xmm2);
            a.movdqa(xmm4, xmm1);
            a.psrld(xmm1, 12);
            a.pslld(xmm4, 20);
            a.por(xmm1, xmm4);
            a.pshufd(xmm0, xmm0, 0x93);
            a.movd(edx, xmm0);
            a.add(ebx, edx);
            a.movq(rsi, xmm1);
            a.xor(rbx, rsi);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        }

        using var first = Machine.Long64(Program, hypervisor: TestBackends.Interpreter());
        using var jit = Machine.Long64(Program, hypervisor: TestBackends.Jit(threshold));
        int steps = JitLockstep.RunInBudgetSlices(first, jit, new Random(7),
            rng => rng.Next(3) switch { 0 => rng.Next(1, 5), 1 => rng.Next(1, 40), _ => rng.Next(1, 3000) }, budgetSpent: true);
        Assert.True(steps > 20, $"only {steps} budget slices");
        var a = first.Vcpu.GetFpuState();
        var b = jit.Vcpu.GetFpuState();
        Assert.Equal(((ReadOnlySpan<byte>)a.Xmm).ToArray(), ((ReadOnlySpan<byte>)b.Xmm).ToArray());
    }
}
