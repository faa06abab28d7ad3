using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>MMX register aliasing and tag-word effects on both backends, and MMX faults on the interpreter.</summary>
public sealed class MmxSemanticsTests
{
    private const int Done = -2;

    public static TheoryData<string> Backends() => SseHarness.Backends();

    [Theory]
    [MemberData(nameof(Backends))]
    public void Mmx_registers_alias_the_x87_significands_and_move_top_and_tags(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fld1();                     // TOP = 7, R7 = 1.0
            a.movq(rax, mm7);             // MM7 is R7's significand; TOP becomes 0, every tag valid
            a.fnstsw(ax);
            a.mov(r8, rax);
            a.movq(r9, mm7);
            a.mov(rcx, 0x1122334455667788);
            a.movq(mm3, rcx);             // sign and exponent of R3 become all ones
            a.fxsave(__[rbx + 0x200]);
            a.emms();                     // every tag empty, TOP 0
            a.fxsave(__[rbx + 0x400]);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0UL, r.Gprs[8] & 0x3800);
        Assert.Equal(0x8000_0000_0000_0000UL, r.Gprs[9]);
        Assert.Equal(0xFF, r.Scratch[0x204]);
        Assert.Equal(0x1122334455667788UL, BitConverter.ToUInt64(r.Scratch, 0x200 + 32 + (3 * 16)));
        Assert.Equal(0xFFFF, BitConverter.ToUInt16(r.Scratch, 0x200 + 40 + (3 * 16)));
        Assert.Equal(0x3FFF, BitConverter.ToUInt16(r.Scratch, 0x200 + 40 + (7 * 16)));
        Assert.Equal(0, r.Scratch[0x404]);
        Assert.Equal(0, BitConverter.ToUInt16(r.Scratch, 0x402) & 0x3800);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Mmx_forms_of_packs_unpacks_and_ssse3_use_64_bit_lanes(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.mov(rax, 0x0004_0003_0002_0001);
            a.movq(mm0, rax);
            a.mov(rax, 0x0008_0007_0006_0005);
            a.movq(mm1, rax);
            a.movq(mm2, mm0);
            a.packsswb(mm2, mm1);
            a.movq(r8, mm2);
            a.movq(mm2, mm0);
            a.punpckhwd(mm2, mm1);
            a.movq(r9, mm2);
            a.movq(mm2, mm0);
            a.phaddw(mm2, mm1);
            a.movq(r10, mm2);
            a.movq(mm2, mm0);
            a.palignr(mm2, mm1, 2);
            a.movq(r11, mm2);
            a.emms();
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x0807060504030201UL, r.Gprs[8]);
        Assert.Equal(0x0008_0004_0007_0003UL, r.Gprs[9]);
        Assert.Equal(0x000F_000B_0007_0003UL, r.Gprs[10]);
        Assert.Equal(0x0001_0008_0007_0006UL, r.Gprs[11]);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Maskmovq_and_maskmovdqu_store_only_the_bytes_whose_mask_byte_has_its_top_bit_set(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.mov(rax, 0xEEEE_EEEE_EEEE_EEEEUL);
            a.mov(__[rbx + 0x600], rax);
            a.mov(__[rbx + 0x700], rax);
            a.mov(__[rbx + 0x708], rax);
            a.mov(rax, 0x8877_6655_4433_2211UL);
            a.movq(mm0, rax);
            a.mov(rax, 0x8000_FF7F_0081_0080UL);
            a.movq(mm1, rax);
            a.lea(rdi, __[rbx + 0x600]);
            a.maskmovq(mm0, mm1);
            a.emms();
            a.movq(xmm0, rax);                    // mask low half: the same pattern
            a.mov(rax, 0x0101_0101_FFFF_0000UL);
            a.movq(xmm2, rax);
            a.movlhps(xmm0, xmm2);                // mask: low 8 bytes as above, high 8 bytes 00 00 FF FF 01 01 01 01
            a.mov(rax, 0x0F0E_0D0C_0B0A_0908UL);
            a.movq(xmm3, rax);
            a.mov(rax, 0x0706_0504_0302_0100UL);
            a.movq(xmm4, rax);
            a.punpcklqdq(xmm4, xmm3);             // data: bytes 00..0F
            a.lea(rdi, __[rbx + 0x700]);
            a.maskmovdqu(xmm4, xmm0);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x88EE_66EE_EE33_EE11UL, BitConverter.ToUInt64(r.Scratch, 0x600));
        Assert.Equal(0x07EE_05EE_EE02_EE00UL, BitConverter.ToUInt64(r.Scratch, 0x700));
        Assert.Equal(0xEEEE_EEEE_0B0A_EEEEUL, BitConverter.ToUInt64(r.Scratch, 0x708));
    }

    [Fact]
    public void Mmx_faults_with_cr0_em_and_ts_and_when_hidden_from_cpuid()
    {
        Assert.Equal(Done, Machine.VectorRaisedAtCpl0(a => a.paddb(mm0, mm1), null));
        Assert.Equal(6, Machine.VectorRaisedAtCpl0(a => a.paddb(mm0, mm1), null, cr0Set: 1UL << 2));
        Assert.Equal(7, Machine.VectorRaisedAtCpl0(a => a.paddb(mm0, mm1), null, cr0Set: 1UL << 3));
        Assert.Equal(7, Machine.VectorRaisedAtCpl0(a => a.emms(), null, cr0Set: 1UL << 3));
        Assert.Equal(6, Machine.VectorRaisedAtCpl0(a => a.paddb(mm0, mm1), new PartitionOptions { MaskedCpuidFeatures = [new CpuidFeature(1, 0, CpuidRegister.Edx, 23)] }));
    }
}
