using Iced.Intel;
using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>
/// Underflow at the edge of the normal range against the processor: products and narrowings whose exact value
/// lies less than half a unit below the smallest normal round (to nearest) up to it in the destination format, but are
/// tiny by the processor's rule (rounded to the precision with an unbounded exponent) when they lie more than a quarter
/// unit below: then UE is raised and FTZ flushes them to zero. Operands are found by a seeded search, so each case sits
/// in that band (or, as a control, in the quarter unit just below the smallest normal). A quotient of two floating-point
/// numbers never lies less than half a unit below a power of two (the distance is a multiple of the dividend's unit over
/// the divisor), so divisions never meet this edge.
/// </summary>
public sealed class SseTininessTests
{
    private const double MinNormalD = 2.2250738585072014E-308;
    private const float MinNormalF = 1.17549435E-38f;

    /// <summary>Operands (a, b) whose exact product lies (lo, hi) units below the smallest normal double.</summary>
    private static (double A, double B) FindDouble(double lo, double hi, int seed)
    {
        var rng = new Random(seed);
        for (int i = 0; i < 1_000_000; i++)
        {
            // At 1.0 (exact scaling by powers of two): b * a aimed at 1 - m * 2^-52, m the band's middle.
            double a = 1 + rng.NextDouble();
            double b = (1 - (((lo + hi) / 2) * Math.ScaleB(1.0, -52))) / a;
            double q = a * b;
            double rest = Math.FusedMultiplyAdd(a, b, -q); // exact
            double d = ((1 - q) - rest) / Math.ScaleB(1.0, -52);
            if (d > lo && d < hi && rest != 0)
            {
                return (Math.ScaleB(a, -511), Math.ScaleB(b, -511));
            }
        }

        throw new InvalidOperationException("no operands found");
    }

    /// <summary>Operands (a, b) whose exact product lies (lo, hi) units below the smallest normal single.</summary>
    private static (float A, float B) FindSingle(double lo, double hi, int seed)
    {
        var rng = new Random(seed);
        for (int i = 0; i < 1_000_000; i++)
        {
            float a = 1 + (float)rng.NextDouble();
            float b = (float)((1 - (((lo + hi) / 2) * Math.ScaleB(1.0, -23))) / a);
            double exact = (double)a * b; // exact in a double
            double d = (1 - exact) / Math.ScaleB(1.0, -23);
            if (d > lo && d < hi)
            {
                return (MathF.ScaleB(a, -63), MathF.ScaleB(b, -63));
            }
        }

        throw new InvalidOperationException("no operands found");
    }

    /// <summary>Operation, case (band: tiny under round to nearest; control: not tiny; up: rounded up from the largest subnormal, tiny), FTZ.</summary>
    public static TheoryData<string, string, bool> Cases()
    {
        var data = new TheoryData<string, string, bool>();
        foreach (string op in new[] { "mulsd", "mulss", "cvtsd2ss" })
        {
            foreach (string band in new[] { "band", "control", "up" })
            {
                foreach (bool ftz in new[] { false, true })
                {
                    data.Add(op, band, ftz);
                }
            }
        }

        return data;
    }

    /// <summary>The result and MXCSR of <paramref name="op"/> on KVM and on the interpreter, compared.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void A_result_just_below_the_smallest_normal_underflows_as_on_the_processor(string op, string band, bool ftz)
    {
        HostRequirements.RequireKvm();
        // band: (0.25, 0.5) units below, tiny; control: (0, 0.25), not tiny; up: (0.5, 1), rounded up (RC = up).
        var (lo, hi) = band switch { "band" => (0.26, 0.49), "control" => (0.01, 0.24), _ => (0.51, 0.99) };
        ulong xa, xb;
        if (op == "mulsd")
        {
            var (a, b) = FindDouble(lo, hi, 11);
            (xa, xb) = (BitConverter.DoubleToUInt64Bits(a), BitConverter.DoubleToUInt64Bits(b));
        }
        else if (op == "mulss")
        {
            var (a, b) = FindSingle(lo, hi, 11);
            (xa, xb) = (BitConverter.SingleToUInt32Bits(a), BitConverter.SingleToUInt32Bits(b));
        }
        else
        {
            // A double just below the smallest normal single.
            double d = MinNormalF * (1 - (((lo + hi) / 2) * Math.ScaleB(1.0, -23)));
            (xa, xb) = (BitConverter.DoubleToUInt64Bits(d), 0);
        }

        uint mxcsr = 0x1F80 | (ftz ? 0x8000u : 0) | (band == "up" ? 0x4000u : 0);
        (SequenceResult Result, FpuState Fpu) Run(string backend) => SseHarness.Run(backend, a =>
        {
            switch (op)
            {
                case "mulsd": a.mulsd(xmm0, xmm1); break;
                case "mulss": a.mulss(xmm0, xmm1); break;
                default: a.cvtsd2ss(xmm0, xmm0); break;
            }
        }, init: s =>
        {
            s.Mxcsr = mxcsr;
            s.SetQ(0, xa, 0);
            s.SetQ(1, xb, 0);
        });

        var kvm = Run("kvm");
        var interp = Run("interpreter");
        Assert.Equal(-2, kvm.Result.Vector);
        Assert.Equal(-2, interp.Result.Vector);
        Assert.Equal(BitConverter.ToUInt64(kvm.Fpu.GetXmm(0)), BitConverter.ToUInt64(interp.Fpu.GetXmm(0)));
        Assert.Equal(kvm.Fpu.Mxcsr, interp.Fpu.Mxcsr);
        // The cases are what they claim: without FTZ the result is the smallest normal, and UE follows the band.
        if (!ftz)
        {
            bool single = op != "mulsd";
            Assert.Equal(single ? BitConverter.SingleToUInt32Bits(MinNormalF) : BitConverter.DoubleToUInt64Bits(MinNormalD),
                single ? BitConverter.ToUInt32(interp.Fpu.GetXmm(0)) : BitConverter.ToUInt64(interp.Fpu.GetXmm(0)));
            Assert.Equal(band != "control", (interp.Fpu.Mxcsr & 0x10) != 0);
        }
    }

    /// <summary>With UE unmasked, an exact tiny result (a product of two powers of two in the subnormal range) raises #XM, as on the processor.</summary>
    [Theory]
    [InlineData("mulsd")]
    [InlineData("mulss")]
    public void An_exact_tiny_result_underflows_with_ue_unmasked(string op)
    {
        HostRequirements.RequireKvm();
        (ulong A, ulong B) operands = op == "mulsd"
            ? (BitConverter.DoubleToUInt64Bits(Math.ScaleB(1.0, -1000)), BitConverter.DoubleToUInt64Bits(Math.ScaleB(1.0, -50)))
            : (BitConverter.SingleToUInt32Bits(MathF.ScaleB(1f, -100)), BitConverter.SingleToUInt32Bits(MathF.ScaleB(1f, -30)));
        int Vector(string backend) => SseHarness.Run(backend, a =>
        {
            if (op == "mulsd")
            {
                a.mulsd(xmm0, xmm1);
            }
            else
            {
                a.mulss(xmm0, xmm1);
            }
        }, init: s =>
        {
            s.Mxcsr = 0x1F80 & ~0x800u; // UM clear
            s.SetQ(0, operands.A, 0);
            s.SetQ(1, operands.B, 0);
        }).Result.Vector;

        Assert.Equal(Vector("kvm"), Vector("interpreter"));
        Assert.Equal(19, Vector("interpreter")); // #XM
    }
}
