using Iced.Intel;
using Virt.Boot;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Avx;

/// <summary>AVX at CPL 0 on the interpreter: the OS enables it (CR4.OSXSAVE, XSETBV), then 256-bit instructions run.</summary>
public sealed class AvxSmokeTests
{
    private static Machine Run(Action<Assembler> body)
    {
        var m = Machine.Long64(a =>
        {
            a.mov(rax, cr4);
            a.or(rax, 1 << 18);
            a.mov(cr4, rax);
            a.xor(ecx, ecx);
            a.mov(eax, 7);
            a.xor(edx, edx);
            a.xsetbv();
            body(a);
            a.hlt();
        });
        m.InstallHaltingIdt();
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(-2, m.HaltedVector);
        return m;
    }

    [Fact]
    public void Vaddps_adds_all_eight_lanes_and_vextractf128_reads_the_upper_half()
    {
        using var m = Run(a =>
        {
            a.mov(eax, 0x3F800000); // 1.0f
            a.vmovd(xmm1, eax);
            a.vbroadcastss(ymm1, xmm1);
            a.vaddps(ymm2, ymm1, ymm1);
            a.vextractf128(xmm3, ymm2, 1);
            a.vmovd(ebx, xmm3);
            a.vxorps(xmm4, xmm4, xmm4);
            a.vptest(ymm2, ymm2);
            a.setnz(cl);
        });
        var r = m.Regs;
        Assert.Equal(0x40000000UL, r.Rbx);
        Assert.Equal(1UL, r.Rcx & 0xFF);
        var x = m.Vcpu.GetXsaveState();
        Assert.Equal(7UL, x.Xcr0);
    }

    [Fact]
    public void A_hot_loop_of_256_bit_integer_adds_gives_the_same_sums_once_compiled()
    {
        // 100,000 rounds: long enough for the compiled tier to take the loop over.
        using var m = Run(a =>
        {
            var loop = a.CreateLabel();
            a.mov(eax, 1);
            a.vmovd(xmm1, eax);
            a.vpshufd(xmm1, xmm1, 0);
            a.vinsertf128(ymm1, ymm1, xmm1, 1);
            a.vpxor(xmm0, xmm0, xmm0);
            a.mov(ecx, 100_000);
            a.Label(ref loop);
            a.vpaddd(ymm0, ymm0, ymm1);
            a.vpaddd(ymm1, ymm1, ymm1);
            a.vpsrld(ymm1, ymm1, 1);
            a.dec(ecx);
            a.jnz(loop);
            a.vextractf128(xmm2, ymm0, 1);
            a.vpextrd(ebx, xmm2, 3);
            a.vmovd(edx, xmm0);
        });
        Assert.Equal(100_000UL, m.Regs.Rbx);
        Assert.Equal(100_000UL, m.Regs.Rdx);
    }

    [Fact]
    public void A_vex_instruction_without_osxsave_is_undefined()
    {
        using var m = Machine.Long64(a =>
        {
            a.vaddps(ymm2, ymm1, ymm1);
            a.hlt();
        });
        m.InstallHaltingIdt();
        m.Run();
        Assert.Equal(6, m.HaltedVector);
    }
}
