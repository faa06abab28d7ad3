using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using Virt.Cpu.Interpreter.Tests.Differential;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>
/// Known answers for SSE3/SSSE3/SSE4.1/SSE4.2 and BMI2 on both backends, and the faults the random suites do not
/// reach (misalignment, CR0.TS, features hidden from CPUID) on the interpreter.
/// </summary>
public sealed class Sse4SemanticsTests
{
    private const int Done = -2;
    private const ulong Cf = 1, Zf = 0x40, Sf = 0x80, Of = 0x800;

    public static TheoryData<string> Backends() => SseHarness.Backends();

    private static byte[] Text(string s, int size = 64)
    {
        var b = new byte[size];
        System.Text.Encoding.ASCII.GetBytes(s).CopyTo(b, 0);
        return b;
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Pcmpistri_finds_a_character_of_a_set_and_the_string_end(string backend)
    {
        var scratch = Text("hello, world");
        System.Text.Encoding.ASCII.GetBytes(",w").CopyTo(scratch, 32);
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.movdqu(xmm1, __xmmword_ptr[rbx + 32]);
            a.pcmpistri(xmm1, __xmmword_ptr[rbx], 0x00); // equal any, unsigned bytes, least significant index
            a.pushfq();
            a.pop(rax);
            a.mov(r8, rcx);
            a.pxor(xmm2, xmm2);
            a.pcmpistri(xmm2, __xmmword_ptr[rbx], 0x08); // equal each against an empty string: the first NUL
            a.mov(r9, rcx);
            a.pcmpistrm(xmm1, __xmmword_ptr[rbx], 0x40); // byte mask of the matches into XMM0
            a.movq(r10, xmm0);
        }, scratch);
        Assert.Equal(Done, r.Vector);
        Assert.Equal(5UL, r.Gprs[8]);
        Assert.Equal(Cf | Zf | Sf, r.Gprs[0] & (Cf | Zf | Sf | Of | 0x14));
        Assert.Equal(12UL, r.Gprs[9]);
        Assert.Equal(0xFF00_FF00_0000_0000UL, r.Gprs[10]);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Pcmpestri_ranges_and_ordered_search_work_on_unaligned_memory(string backend)
    {
        var scratch = Text(" az09AZ substring sub");
        System.Text.Encoding.ASCII.GetBytes("azAZ").CopyTo(scratch, 40);
        System.Text.Encoding.ASCII.GetBytes("sub").CopyTo(scratch, 48);
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.movdqu(xmm1, __xmmword_ptr[rbx + 40]);
            a.mov(eax, 4);
            a.mov(edx, 16);
            a.pcmpestri(xmm1, __xmmword_ptr[rbx + 1], 0x44); // ranges a-z, A-Z; most significant index
            a.mov(r8, rcx);
            a.movdqu(xmm1, __xmmword_ptr[rbx + 48]);
            a.mov(eax, 3);
            a.mov(edx, -16);
            a.pcmpestri(xmm1, __xmmword_ptr[rbx + 1], 0x0C); // equal ordered: where "sub" starts
            a.mov(r9, rcx);
        }, scratch);
        Assert.Equal(Done, r.Vector);
        Assert.Equal(15UL, r.Gprs[8]); // the last letter: the 'g' of "substring"
        Assert.Equal(7UL, r.Gprs[9]);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Crc32_pdep_pext_and_shifts_give_known_values(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.mov(eax, -1);
            for (int i = 0; i < 9; i++)
            {
                a.crc32(eax, __byte_ptr[rbx + i]);
            }

            a.not(eax);
            a.mov(rcx, 0x12345678);
            a.mov(rdx, 0xFF00FF00);
            a.pdep(r8, rcx, rdx);
            a.pext(r9, rcx, rdx);
            a.mov(rdx, 0x1_0000_0001);
            a.mulx(r11, r10, rcx);
            a.rorx(r12d, ecx, 8);
            a.mov(edx, 65);
            a.shlx(r13, rcx, rdx);
            a.bzhi(r14, rcx, rdx);
        }, Text("123456789"));
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0xE3069283UL, r.Gprs[0]); // the CRC-32C check value
        Assert.Equal(0x5600_7800UL, r.Gprs[8]);
        Assert.Equal(0x1256UL, r.Gprs[9]);
        Assert.Equal(0x12345678_12345678UL, r.Gprs[10]);
        Assert.Equal(0UL, r.Gprs[11]);
        Assert.Equal(0x78123456UL, r.Gprs[12]);
        Assert.Equal(0x2468ACF0UL, r.Gprs[13]);
        Assert.Equal(0x12345678UL, r.Gprs[14]);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Shuffles_blends_rounds_and_horizontal_adds_compute_expected_lanes(string backend)
    {
        var (r, s) = SseHarness.Run(backend, a =>
        {
            a.pshufb(xmm0, xmm1);
            a.palignr(xmm2, xmm3, 4);
            a.roundps(xmm4, xmm4, 0x09); // toward -inf, precision exception suppressed
            a.haddps(xmm5, xmm5);
            a.phminposuw(xmm6, xmm7);
        }, init: f =>
        {
            f.SetQ(0, 0x0706050403020100, 0x0F0E0D0C0B0A0908);
            f.SetQ(1, 0x80_00_01_02_03_04_05_0F, 0x0000000000000000);
            f.SetQ(2, 0x2222222222222222, 0x2222222222222222);
            f.SetQ(3, 0x1111111111111111, 0x3333333344444444);
            f.SetS(4, 1.5f, -1.5f, 2.99f, -0.25f);
            f.SetS(5, 1f, 2f, 3f, 4f);
            f.SetQ(7, 0x0003_0009_0002_0007, 0x0002_0004_0005_0006);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x0000_0102_0304_050FUL, SseHarness.Double(s, 0, 0));
        Assert.Equal(0UL, SseHarness.Double(s, 0, 1));
        Assert.Equal(0x4444444411111111UL, SseHarness.Double(s, 2, 0));
        Assert.Equal(0x2222222233333333UL, SseHarness.Double(s, 2, 1));
        Assert.Equal(BitConverter.SingleToUInt32Bits(1f), SseHarness.Single(s, 4, 0));
        Assert.Equal(BitConverter.SingleToUInt32Bits(-2f), SseHarness.Single(s, 4, 1));
        Assert.Equal(BitConverter.SingleToUInt32Bits(2f), SseHarness.Single(s, 4, 2));
        Assert.Equal(BitConverter.SingleToUInt32Bits(-1f), SseHarness.Single(s, 4, 3));
        Assert.Equal(0u, s.Mxcsr & 0x3F);
        Assert.Equal(BitConverter.SingleToUInt32Bits(3f), SseHarness.Single(s, 5, 0));
        Assert.Equal(BitConverter.SingleToUInt32Bits(7f), SseHarness.Single(s, 5, 3));
        Assert.Equal(0x0001_0002UL, SseHarness.Double(s, 6, 0));
    }

    // Interpreter only: the CI host's KVM reports #UD instead of #GP for a misaligned arithmetic operand at CPL 3.
    [Fact]
    public void Misaligned_sixteen_byte_operands_fault_except_for_the_string_compares()
    {
        var (r, _) = SseHarness.Run("interpreter", a => a.pshufb(xmm0, __xmmword_ptr[rbx + 4]));
        Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));
        (r, _) = SseHarness.Run("interpreter", a => a.ptest(xmm0, __xmmword_ptr[rbx + 8]));
        Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));
        (r, _) = SseHarness.Run("interpreter", a => a.movntdqa(xmm0, __xmmword_ptr[rbx + 8]));
        Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));
        (r, _) = SseHarness.Run("interpreter", a => a.pcmpistri(xmm0, __xmmword_ptr[rbx + 3], 0));
        Assert.Equal(Done, r.Vector);
        (r, _) = SseHarness.Run("interpreter", a => a.lddqu(xmm0, __xmmword_ptr[rbx + 3]));
        Assert.Equal(Done, r.Vector);
        (r, _) = SseHarness.Run("interpreter", a => a.pmovzxbw(xmm0, __qword_ptr[rbx + 3]));
        Assert.Equal(Done, r.Vector);
    }

    [Theory]
    [InlineData("sse41")]
    [InlineData("ssse3")]
    [InlineData("sse42")]
    [InlineData("bmi2")]
    [InlineData("sse3")]
    public void An_extension_hidden_from_cpuid_is_undefined(string feature)
    {
        var (masked, emit) = feature switch
        {
            "sse41" => (CpuidFeature.Sse41, (Action<Assembler>)(a => a.pmulld(xmm0, xmm1))),
            "ssse3" => (CpuidFeature.Ssse3, a => a.pshufb(xmm0, xmm1)),
            "sse42" => (CpuidFeature.Sse42, a => a.crc32(eax, ecx)),
            "bmi2" => (CpuidFeature.Bmi2, a => a.pdep(eax, ecx, edx)),
            _ => (CpuidFeature.Sse3, a => a.haddps(xmm0, xmm1)),
        };
        Assert.Equal(Done, Machine.VectorRaisedAtCpl0(emit, null));
        Assert.Equal(6, Machine.VectorRaisedAtCpl0(emit, new PartitionOptions { MaskedCpuidFeatures = [masked] }));
    }

    [Fact]
    public void New_sse_instructions_raise_device_not_available_with_cr0_ts()
    {
        Assert.Equal(7, Machine.VectorRaisedAtCpl0(a => a.ptest(xmm0, xmm1), null, cr0Set: 1UL << 3));
        Assert.Equal(7, Machine.VectorRaisedAtCpl0(a => a.pcmpistri(xmm0, xmm1, 0), null, cr0Set: 1UL << 3));
        // CRC32 and BMI2 work on general registers: CR0.TS does not concern them.
        Assert.Equal(Done, Machine.VectorRaisedAtCpl0(a => a.crc32(eax, ecx), null, cr0Set: 1UL << 3));
    }
}
