using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>
/// x87 environment and state save/restore, transcendental, remainder and BCD instructions against the known
/// answers and, where the results are exact, the host processor. The interpreter computes transcendental functions
/// in binary64, so those are compared within a relative tolerance.
/// </summary>
public sealed class X87ExtendedTests
{
    private const int Done = -2;

    public static TheoryData<string> Backends() => SseHarness.Backends();

    [Theory]
    [MemberData(nameof(Backends))]
    public void Fnstenv_writes_the_control_status_and_full_tag_words_in_both_formats(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fld1();
            a.fldz();
            a.fnstenv(__[rbx + 0x100]);
            a.db(0x66, 0xD9, 0xB3, 0x00, 0x02, 0x00, 0x00); // o16 fnstenv [rbx+0x200]: the 14-byte format
            a.fldcw(__word_ptr[rbx + 0x300]);
            a.db(0x66, 0xD9, 0xA3, 0x00, 0x02, 0x00, 0x00); // o16 fldenv [rbx+0x200]
            a.fnstcw(__word_ptr[rbx + 0x308]);
        }, SseHarness.Scratch(new ulong[0x300 / 8].Append(0x0C7FUL).ToArray()));
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x037F, BitConverter.ToUInt16(r.Scratch, 0x100));
        Assert.Equal(0x3000, BitConverter.ToUInt16(r.Scratch, 0x104) & 0x3800); // TOP 6
        Assert.Equal(0x1FFF, BitConverter.ToUInt16(r.Scratch, 0x108)); // R7 valid, R6 zero, the rest empty
        Assert.Equal(0x037F, BitConverter.ToUInt16(r.Scratch, 0x200));
        Assert.Equal(0x1FFF, BitConverter.ToUInt16(r.Scratch, 0x204));
        Assert.Equal(0x037F, BitConverter.ToUInt16(r.Scratch, 0x308)); // FLDENV restored the control word
    }

    [Fact]
    public void Fnstenv_matches_the_host_processor_outside_the_pointer_fields()
    {
        byte[] Run(string backend) => SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fldpi();
            a.fld1();
            a.fnstenv(__[rbx + 0x100]);
        }).Result.Scratch.AsSpan(0x100, 12).ToArray();

        var host = Run("kvm");
        Assert.Equal(host, Run("interpreter"));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Fnsave_initialises_the_state_and_frstor_brings_it_back(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fld1();
            a.fldpi();
            a.fnsave(__[rbx + 0x100]);
            a.fnstsw(ax);
            a.mov(r8, rax);
            a.fnstcw(__word_ptr[rbx + 0x300]);
            a.frstor(__[rbx + 0x100]);
            a.fstp(__qword_ptr[rbx + 0x308]);
            a.fstp(__qword_ptr[rbx + 0x310]);
            a.fnstsw(ax);
            a.mov(r9, rax);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0UL, r.Gprs[8] & 0xFFFF);
        Assert.Equal(0x037F, BitConverter.ToUInt16(r.Scratch, 0x300));
        Assert.Equal(Math.PI, BitConverter.ToDouble(r.Scratch, 0x308));
        Assert.Equal(1.0, BitConverter.ToDouble(r.Scratch, 0x310));
        Assert.Equal(0UL, r.Gprs[9] & 0x3800);
        Assert.Equal(0xC90FDAA22168C235UL, BitConverter.ToUInt64(r.Scratch, 0x100 + 28)); // ST0 = pi in the image
        Assert.Equal(0x4000, BitConverter.ToUInt16(r.Scratch, 0x100 + 28 + 8));
        Assert.Equal(0x3FFF, BitConverter.ToUInt16(r.Scratch, 0x100 + 28 + 10 + 8)); // ST1 = 1.0
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Transcendental_functions_give_their_values(string backend)
    {
        var scratch = SseHarness.Scratch(
            BitConverter.DoubleToUInt64Bits(1.0),
            BitConverter.DoubleToUInt64Bits(0.5),
            BitConverter.DoubleToUInt64Bits(3.0),
            BitConverter.DoubleToUInt64Bits(10.0),
            BitConverter.DoubleToUInt64Bits(-7.25),
            BitConverter.DoubleToUInt64Bits(0.001));
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fld(__qword_ptr[rbx]);
            a.fsin();
            a.fstp(__qword_ptr[rbx + 0x100]);
            a.fld(__qword_ptr[rbx]);
            a.fcos();
            a.fstp(__qword_ptr[rbx + 0x108]);
            a.fld(__qword_ptr[rbx + 8]);
            a.fptan();
            a.fstp(__qword_ptr[rbx + 0x110]); // the 1.0 FPTAN pushes
            a.fstp(__qword_ptr[rbx + 0x118]);
            a.fld(__qword_ptr[rbx]);
            a.fsincos();
            a.fstp(__qword_ptr[rbx + 0x120]); // cos
            a.fstp(__qword_ptr[rbx + 0x128]); // sin
            a.fld(__qword_ptr[rbx + 16]);
            a.fld(__qword_ptr[rbx]);
            a.fpatan(); // atan(3 / 1)
            a.fstp(__qword_ptr[rbx + 0x130]);
            a.fld(__qword_ptr[rbx + 8]);
            a.f2xm1();
            a.fstp(__qword_ptr[rbx + 0x138]);
            a.fld(__qword_ptr[rbx + 16]);
            a.fld(__qword_ptr[rbx + 24]);
            a.fyl2x(); // 3 * log2(10)
            a.fstp(__qword_ptr[rbx + 0x140]);
            a.fld(__qword_ptr[rbx + 16]);
            a.fld(__qword_ptr[rbx + 40]);
            a.fyl2xp1(); // 3 * log2(1.001)
            a.fstp(__qword_ptr[rbx + 0x148]);
            a.fld(__qword_ptr[rbx + 16]);
            a.fld(__qword_ptr[rbx + 32]);
            a.fscale(); // -7.25 * 2^3
            a.fstp(__qword_ptr[rbx + 0x150]);
            a.fstp(st0);
            a.fld(__qword_ptr[rbx + 16]);
            a.fld(__qword_ptr[rbx + 24]);
            a.fprem(); // 10 rem 3 (truncating) = 1, quotient 3
            a.fnstsw(ax);
            a.mov(r8, rax);
            a.fstp(__qword_ptr[rbx + 0x158]);
            a.fld(__qword_ptr[rbx + 24]);
            a.fprem1(); // 10 rem 3 (nearest) = 1 after the pop above left 3 in ST1
            a.fstp(__qword_ptr[rbx + 0x160]);
            a.fstp(st0);
            a.fld(__qword_ptr[rbx + 32]);
            a.fxtract();
            a.fstp(__qword_ptr[rbx + 0x168]); // significand -1.8125
            a.fstp(__qword_ptr[rbx + 0x170]); // exponent 2
        }, scratch);
        Assert.Equal(Done, r.Vector);
        double D(int o) => BitConverter.ToDouble(r.Scratch, o);
        static void Near(double expected, double actual) => Assert.True(Math.Abs(expected - actual) <= Math.Abs(expected) * 1e-15, $"expected {expected:R}, got {actual:R}");
        Near(Math.Sin(1), D(0x100));
        Near(Math.Cos(1), D(0x108));
        Assert.Equal(1.0, D(0x110));
        Near(Math.Tan(0.5), D(0x118));
        Near(Math.Cos(1), D(0x120));
        Near(Math.Sin(1), D(0x128));
        Near(Math.Atan(3), D(0x130));
        Near(Math.Sqrt(2) - 1, D(0x138));
        Near(3 * Math.Log2(10), D(0x140));
        const double x = 0.001; // ln(1 + x) by its series: forming 1 + x in binary64 would lose digits
        Near(3 * (x - (x * x / 2) + (x * x * x / 3) - (x * x * x * x / 4) + (x * x * x * x * x / 5)) / Math.Log(2), D(0x148));
        Assert.Equal(-58.0, D(0x150));
        Assert.Equal(1.0, D(0x158));
        Assert.Equal(0x4000UL | 0x0200UL, r.Gprs[8] & 0x4700); // C2 clear, quotient 3: C3 (Q1) and C1 (Q0)
        Assert.Equal(1.0, D(0x160));
        Assert.Equal(-1.8125, D(0x168));
        Assert.Equal(2.0, D(0x170));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Fxam_ftst_frndint_fcmov_and_stack_pointer_moves_match_the_sdm(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fxam(); // empty
            a.fnstsw(ax);
            a.mov(r8, rax);
            a.fld(__qword_ptr[rbx]);
            a.fchs();
            a.fxam(); // negative normal
            a.fnstsw(ax);
            a.mov(r9, rax);
            a.ftst(); // below zero
            a.fnstsw(ax);
            a.mov(r10, rax);
            a.frndint(); // -2.5 to even: -2
            a.cmp(rcx, rcx);
            a.fld1();
            a.fcmovne(st0, st1); // ZF set: not taken
            a.fstp(__qword_ptr[rbx + 0x100]);
            a.fld1();
            a.fcmove(st0, st1); // ZF set: ST0 = -2
            a.fstp(__qword_ptr[rbx + 0x108]);
            a.fdecstp();
            a.fincstp();
            a.fstp(__qword_ptr[rbx + 0x110]);
            a.fldz();
            a.ffree(st0);
            a.fxam();
            a.fnstsw(ax);
            a.mov(r11, rax);
        }, SseHarness.Scratch(BitConverter.DoubleToUInt64Bits(2.5)));
        Assert.Equal(Done, r.Vector);
        const ulong cc = 0x4700;
        Assert.Equal(0x4100UL, r.Gprs[8] & cc); // empty: C3 C0
        Assert.Equal(0x0600UL, r.Gprs[9] & cc); // normal (C2), negative (C1)
        Assert.Equal(0x0100UL, r.Gprs[10] & cc); // less than zero: C0
        Assert.Equal(1.0, BitConverter.ToDouble(r.Scratch, 0x100));
        Assert.Equal(-2.0, BitConverter.ToDouble(r.Scratch, 0x108));
        Assert.Equal(-2.0, BitConverter.ToDouble(r.Scratch, 0x110));
        Assert.Equal(0x4100UL, r.Gprs[11] & 0x4500); // freed: empty
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Fbld_and_fbstp_convert_packed_bcd_exactly(string backend)
    {
        var bcd = new byte[16];
        byte[] digits = [0x89, 0x67, 0x45, 0x23, 0x01, 0x89, 0x67, 0x45, 0x23, 0x80]; // -234567890123456789
        digits.CopyTo(bcd, 0);
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fbld(__tword_ptr[rbx]);
            a.fbstp(__tword_ptr[rbx + 0x100]);
            a.fld1();
            a.fld1();
            a.faddp(st1, st0);
            a.fld(__qword_ptr[rbx + 0x40]);
            a.fmulp(st1, st0); // 2.5: rounds to even
            a.fbstp(__tword_ptr[rbx + 0x110]);
        }, bcd.Concat(SseHarness.Scratch(0, 0, 0, 0, 0, 0, BitConverter.DoubleToUInt64Bits(1.25))).ToArray());
        Assert.Equal(Done, r.Vector);
        Assert.Equal(digits, r.Scratch.AsSpan(0x100, 10).ToArray());
        Assert.Equal(new byte[] { 2, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, r.Scratch.AsSpan(0x110, 10).ToArray());
    }
}
