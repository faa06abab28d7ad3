using System.Numerics;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// Exact rounding for the fused multiply-add and the half-precision conversion: a finite product and addend are summed
/// as integers (the product's 106-bit significand and the addend aligned to it, with a sticky bit for what falls below
/// the 126-bit window, which only happens when no cancellation can reach it) and rounded once to the destination
/// format in the chosen direction, with the overflow, underflow and precision flags of MXCSR.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>A binary format: <paramref name="Precision"/> significand bits, the exponent of the smallest denormal's unit, and the largest exponent of a finite value's leading bit.</summary>
    private readonly record struct FloatFormat(int Precision, int MinUlp, int MaxLead);

    private static readonly FloatFormat HalfFormat = new(11, -24, 15);
    private static readonly FloatFormat SingleFormat = new(24, -149, 127);
    private static readonly FloatFormat DoubleFormat = new(53, -1074, 1023);

    /// <summary>The significand and exponent of a finite nonzero double: |d| = m · 2^e.</summary>
    private static (UInt128 M, int E) Decompose(double d)
    {
        ulong b = BitConverter.DoubleToUInt64Bits(d) & 0x7FFFFFFFFFFFFFFF;
        int be = (int)(b >> 52);
        ulong f = b & 0x000FFFFFFFFFFFFF;
        return be == 0 ? (f, -1074) : (f | 0x0010000000000000, be - 1075);
    }

    /// <summary>Shifts a nonzero significand so its leading bit is bit 125, adjusting the exponent.</summary>
    private static void Normalize(ref UInt128 m, ref int e)
    {
        int s = 125 - (127 - (int)UInt128.LeadingZeroCount(m));
        m <<= s;
        e -= s;
    }

    /// <summary>
    /// x · y + z for finite x, y, z (doubles holding values of the lane's format), rounded once to <paramref name="fmt"/> in
    /// direction <paramref name="rc"/>; raises PE, OE and UE. An exact zero sum of nonzero terms is +0 (−0 rounding down);
    /// a zero product and a zero addend are left to the caller.
    /// </summary>
    private double FusedExact(double x, double y, double z, FloatFormat fmt, int rc, bool flush)
    {
        bool pn = double.IsNegative(x) ^ double.IsNegative(y);
        bool zn = double.IsNegative(z);
        UInt128 pm = 0, zm = 0;
        int pe = 0, ze = 0;
        if (x != 0 && y != 0)
        {
            var (mx, ex) = Decompose(x);
            var (my, ey) = Decompose(y);
            pm = mx * my;
            pe = ex + ey;
        }

        if (z != 0)
        {
            (zm, ze) = Decompose(z);
        }

        if (pm == 0)
        {
            return RoundExact(zn, zm, ze, fmt, rc, flush);
        }

        if (zm == 0)
        {
            return RoundExact(pn, pm, pe, fmt, rc, flush);
        }

        Normalize(ref pm, ref pe);
        Normalize(ref zm, ref ze);
        bool productBigger = pe > ze || (pe == ze && pm >= zm);
        var (bm, be, bn) = productBigger ? (pm, pe, pn) : (zm, ze, zn);
        var (sm, se, sn) = productBigger ? (zm, ze, zn) : (pm, pe, pn);
        int d = be - se;
        UInt128 s = d switch
        {
            0 => sm,
            >= 127 => 1,
            _ => (sm >> d) | ((sm << (128 - d)) != 0 ? UInt128.One : UInt128.Zero),
        };
        UInt128 r = bn == sn ? bm + s : bm - s;
        if (r == 0)
        {
            return rc == RcDown ? -0.0 : 0.0;
        }

        return RoundExact(bn, r, be, fmt, rc, flush);
    }

    /// <summary>
    /// Rounds ±<paramref name="m"/> · 2^<paramref name="e"/> (m nonzero, below 2^127) to <paramref name="fmt"/> in direction
    /// <paramref name="rc"/> and returns it as a double (±infinity or the largest finite value on overflow, as the direction
    /// says). PE for an inexact result; OE when the result rounded with an unbounded exponent exceeds the largest finite
    /// value; UE when the result is tiny and inexact, or tiny at all while UE is unmasked (the value returned then is
    /// not stored: the instruction raises #XM; nor is it with OE unmasked). With <paramref name="flush"/>
    /// (MXCSR.FTZ) and UE masked, a tiny result is a zero of its sign with UE and PE, even one that the denormal format
    /// rounds up to the smallest normal.
    /// </summary>
    private double RoundExact(bool neg, UInt128 m, int e, FloatFormat fmt, int rc, bool flush)
    {
        int lead = 127 - (int)UInt128.LeadingZeroCount(m) + e;
        int ulp = Math.Max(lead - (fmt.Precision - 1), fmt.MinUlp);
        var (q, inexact) = RoundAt(neg, m, ulp - e, rc);

        int resultLead = q == 0 ? int.MinValue : 127 - (int)UInt128.LeadingZeroCount(q) + ulp;
        if (resultLead > fmt.MaxLead)
        {
            // Masked, the result is an infinity or the largest finite value, never exact; unmasked, PE says whether
            // the result rounded to the precision alone (what a handler would see scaled) is inexact.
            bool overflowMasked = (_cpu.Fpu.Mxcsr & (MxOe << 7)) != 0;
            _sseFlags |= MxOe | (overflowMasked || inexact ? MxPe : 0);
            bool toInfinity = rc == RcNearest || (rc == RcUp && !neg) || (rc == RcDown && neg);
            double max = Math.ScaleB((double)((1UL << fmt.Precision) - 1), fmt.MaxLead - fmt.Precision + 1);
            double big = toInfinity ? double.PositiveInfinity : max;
            return neg ? -big : big;
        }

        // Tiny: below the smallest normal after rounding to the precision with an unbounded exponent (a value just below
        // it that rounds up to it is not tiny, one that rounds to it only in the denormal format is).
        int minNormalLead = fmt.MinUlp + fmt.Precision - 1;
        bool tiny = lead < minNormalLead - 1
            || (lead == minNormalLead - 1 && 127 - (int)UInt128.LeadingZeroCount(RoundAt(neg, m, lead - (fmt.Precision - 1) - e, rc).Q) == fmt.Precision - 1);
        bool underflowMasked = (_cpu.Fpu.Mxcsr & (MxUe << 7)) != 0;
        if (tiny && flush && underflowMasked)
        {
            _sseFlags |= MxUe | MxPe;
            return neg ? -0.0 : 0.0;
        }

        if (tiny && !underflowMasked)
        {
            // Unmasked, UE is raised whether or not the result is exact, and PE (as for overflow) reflects the rounding
            // to the precision with an unbounded exponent, not to the denormal format.
            _sseFlags |= MxUe | (RoundAt(neg, m, lead - (fmt.Precision - 1) - e, rc).Inexact ? MxPe : 0);
            return 0;
        }

        if (tiny && inexact)
        {
            _sseFlags |= MxUe;
        }

        if (inexact)
        {
            _sseFlags |= MxPe;
        }

        double v = Math.ScaleB((double)(ulong)q, ulp);
        return neg ? -v : v;
    }

    /// <summary>The magnitude <paramref name="m"/> divided by 2^<paramref name="shift"/> and rounded in direction <paramref name="rc"/> (of a value of sign <paramref name="neg"/>), and whether that was inexact.</summary>
    private static (UInt128 Q, bool Inexact) RoundAt(bool neg, UInt128 m, int shift, int rc)
    {
        if (shift <= 0)
        {
            return (m << -shift, false);
        }

        UInt128 q, rem, half;
        if (shift >= 128)
        {
            (q, rem, half) = (0, m, UInt128.MaxValue); // below half a unit: m < 2^127 <= 2^(shift - 1)
        }
        else
        {
            q = m >> shift;
            rem = m & ((UInt128.One << shift) - 1);
            half = UInt128.One << (shift - 1);
        }

        bool up = rem != 0 && rc switch
        {
            RcNearest => rem > half || (rem == half && (q & 1) != 0),
            RcDown => neg,
            RcUp => !neg,
            _ => false,
        };
        return (up ? q + 1 : q, rem != 0);
    }
}
