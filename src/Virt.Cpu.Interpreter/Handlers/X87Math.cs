using System.Numerics;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The x87's transcendental functions to its 64-bit precision: the results are computed in double-double arithmetic
/// (about 106 bits) and rounded once to the register format by the rounding control, within one unit in the last
/// place of the exact value. The argument of FSIN, FCOS, FSINCOS and FPTAN is reduced exactly by the processors'
/// 66-bit value of pi (SDM Vol. 1, 8.3.10), so results near multiples of pi/2 agree with the hardware's.
/// </summary>
internal static class X87Math
{
    /// <summary>pi/2 as the processors' 66-bit value of pi: P × 2^-65.</summary>
    private static readonly BigInteger PiOver2Numerator = (new BigInteger(0xC90FDAA22168C234UL) << 2) + 3;

    private static readonly DD Ln2 = new(0.6931471805599453, 2.3190468138462996e-17);
    private static readonly DD Pi = new(3.141592653589793, 1.2246467991473532e-16);
    private static readonly DD PiOver2 = new(1.5707963267948966, 6.123233995736766e-17);
    private static readonly DD PiOver4 = new(0.7853981633974483, 3.061616997868383e-17);
    private static readonly DD ThreePiOver4 = new(2.356194490192345, 9.184850993605148e-17);
    private static readonly DD Sqrt2 = new(1.4142135623730951, -9.667293313452913e-17);

    /// <summary>A double-double: the unevaluated sum of two doubles, |Lo| at most half an ulp of Hi.</summary>
    private readonly struct DD(double hi, double lo)
    {
        public readonly double Hi = hi;
        public readonly double Lo = lo;

        public static DD operator +(DD a, DD b)
        {
            DD s = TwoSum(a.Hi, b.Hi);
            DD t = TwoSum(a.Lo, b.Lo);
            DD u = QuickTwoSum(s.Hi, s.Lo + t.Hi);
            return QuickTwoSum(u.Hi, u.Lo + t.Lo);
        }

        public static DD operator -(DD a) => new(-a.Hi, -a.Lo);

        /// <summary>This value times 2^n (exact while both parts stay in the binary64 range).</summary>
        public DD ScaleB(int n) => new(Math.ScaleB(Hi, n), Math.ScaleB(Lo, n));

        public static DD operator -(DD a, DD b) => a + (-b);

        public static DD operator *(DD a, DD b)
        {
            double p = a.Hi * b.Hi;
            double e = Math.FusedMultiplyAdd(a.Hi, b.Hi, -p) + (a.Hi * b.Lo) + (a.Lo * b.Hi);
            return QuickTwoSum(p, e);
        }

        public static DD operator /(DD a, DD b)
        {
            double q1 = a.Hi / b.Hi;
            DD r = a - (b * new DD(q1, 0));
            double q2 = r.Hi / b.Hi;
            r -= b * new DD(q2, 0);
            double q3 = r.Hi / b.Hi;
            return QuickTwoSum(q1, q2) + new DD(q3, 0);
        }

        public static DD QuickTwoSum(double a, double b)
        {
            double s = a + b;
            return new(s, b - (s - a));
        }

        public static DD TwoSum(double a, double b)
        {
            double s = a + b;
            double bb = s - a;
            return new(s, (a - (s - bb)) + (b - bb));
        }

        public static DD Sqrt(DD a)
        {
            if (a.Hi <= 0)
            {
                return default;
            }

            double x = Math.Sqrt(a.Hi);
            double xx = x * x;
            DD r = a - new DD(xx, Math.FusedMultiplyAdd(x, x, -xx));
            return QuickTwoSum(x, r.Hi / (2 * x));
        }
    }

    /// <summary>The significand of a finite non-zero value as a double-double in [1, 2), and its exponent.</summary>
    private static (DD M, int E) Split(Ext80 v)
    {
        var (e, m) = X87Float.Unpack(v);
        var d = DD.QuickTwoSum(Math.ScaleB((double)(m & 0xFFFFFFFFFFFFF800), -63), Math.ScaleB((double)(m & 0x7FF), -63));
        return (v.Negative ? -d : d, e);
    }

    /// <summary>v × 2^scale rounded to the register format (64 bits, the rounding control).</summary>
    private static Ext80 Round(DD v, int scale, ref X87Float.Context c)
    {
        if (v.Hi == 0)
        {
            return Ext80.Zero(double.IsNegative(v.Hi));
        }

        bool negative = v.Hi < 0;
        var (mh, eh) = Bits(v.Hi);
        UInt128 sig = (UInt128)mh << 74; // top bit at 126, units of 2^(eh - 126)
        bool sticky = false;
        if (v.Lo != 0)
        {
            var (ml, el) = Bits(v.Lo);
            int shift = el - eh + 74;
            UInt128 lo;
            bool lost = false;
            if (shift >= 0)
            {
                lo = (UInt128)ml << shift;
            }
            else if (shift > -64)
            {
                lo = ml >> -shift;
                lost = (ml << (64 + shift)) != 0;
            }
            else
            {
                lo = 0;
                lost = true;
            }

            if ((v.Lo < 0) == negative)
            {
                sig += lo;
                sticky = lost;
            }
            else
            {
                sig -= lo + (lost ? UInt128.One : UInt128.Zero);
                sticky = lost;
            }
        }

        return X87Float.Round(negative, eh + 1 + scale, sig, sticky, X87Float.Format.Register, 64, ref c);
    }

    /// <summary>A non-zero finite double as its 53-bit integer significand and the exponent of its top bit.</summary>
    private static (ulong M, int E) Bits(double d)
    {
        ulong b = BitConverter.DoubleToUInt64Bits(d);
        int exp = (int)((b >> 52) & 0x7FF);
        ulong frac = b & 0xFFFFFFFFFFFFF;
        if (exp == 0)
        {
            int lz = BitOperations.LeadingZeroCount(frac) - 11;
            return (frac << lz, -1022 - lz);
        }

        return (frac | (1UL << 52), exp - 1023);
    }

    /// <summary>
    /// x - k × pi/2 with pi the processors' 66-bit value, computed exactly, for |x| below 2^63; k rounded to nearest.
    /// </summary>
    private static (DD R, long K) Reduce(Ext80 x)
    {
        ulong m = x.Mant;
        int q = x.Exp - Ext80.Bias - 63;
        if (x.Exp == 0)
        {
            q = X87Float.ExtMin - 63;
        }

        var bigM = new BigInteger(m);
        int s = q + 65;
        BigInteger n = s >= 0 ? bigM << s : bigM;
        BigInteger d = s >= 0 ? PiOver2Numerator : PiOver2Numerator << -s;
        BigInteger k = BigInteger.DivRem(n, d, out BigInteger rem);
        if (rem * 2 >= d)
        {
            k += 1;
        }

        int e = Math.Min(q, -65);
        BigInteger r = (bigM << (q - e)) - (k * PiOver2Numerator << (-65 - e));
        if (x.Negative)
        {
            r = -r;
            k = -k;
        }

        return (FromBig(r, e), (long)k);
    }

    /// <summary>The big integer <paramref name="r"/> × 2^e as a double-double (its top 106 bits).</summary>
    private static DD FromBig(BigInteger r, int e)
    {
        if (r.IsZero)
        {
            return default;
        }

        bool negative = r.Sign < 0;
        BigInteger a = BigInteger.Abs(r);
        int length = (int)a.GetBitLength();
        int drop = Math.Max(0, length - 106);
        BigInteger t = a >> drop;
        ulong th = (ulong)(t >> 53);
        ulong tl = (ulong)(t & ((BigInteger.One << 53) - 1));
        var v = DD.QuickTwoSum(Math.ScaleB((double)th, 53 + drop + e), Math.ScaleB((double)tl, drop + e));
        return negative ? -v : v;
    }

    private static DD SinSeries(DD r)
    {
        DD r2 = r * r;
        DD term = r;
        DD sum = r;
        for (int i = 1; i < 30 && Math.Abs(term.Hi) > Math.Abs(sum.Hi) * 1e-34; i++)
        {
            term = -(term * r2) / new DD((2.0 * i) * ((2.0 * i) + 1), 0);
            sum += term;
        }

        return sum;
    }

    private static DD CosSeries(DD r)
    {
        DD r2 = r * r;
        DD term = new(1, 0);
        DD sum = term;
        for (int i = 1; i < 30 && Math.Abs(term.Hi) > 1e-34; i++)
        {
            term = -(term * r2) / new DD(((2.0 * i) - 1) * (2.0 * i), 0);
            sum += term;
        }

        return sum;
    }

    /// <summary>FSIN, FCOS, FSINCOS and FPTAN of a finite <paramref name="x"/> below 2^63 in magnitude: sine and cosine, rounded.</summary>
    public static (Ext80 Sin, Ext80 Cos, Ext80 Tan) SinCosTan(Ext80 x, ref X87Float.Context sinContext, ref X87Float.Context cosContext, ref X87Float.Context tanContext)
    {
        if (x.IsZero)
        {
            return (x, new Ext80(0x8000000000000000, 0x3FFF), x);
        }

        var (e, m) = X87Float.Unpack(x);
        if (e < -1000)
        {
            // sin x = x - x^3/6 and tan x = x + x^3/3 lie just inside and just outside x, cos x = 1 - x^2/2 just below 1:
            // far below the last place, they round like those neighbours.
            var tinySin = X87Float.Round(x.Negative, e, ((UInt128)m << 64) - 1, true, X87Float.Format.Register, 64, ref sinContext);
            var tinyTan = X87Float.Round(x.Negative, e, (UInt128)m << 64, true, X87Float.Format.Register, 64, ref tanContext);
            var tinyCos = X87Float.Round(false, -1, UInt128.MaxValue, true, X87Float.Format.Register, 64, ref cosContext);
            return (tinySin, tinyCos, tinyTan);
        }

        var (r, k) = Reduce(x);
        DD s = SinSeries(r), co = CosSeries(r);
        (DD sin, DD cos) = (k & 3) switch
        {
            0 => (s, co),
            1 => (co, -s),
            2 => (-s, -co),
            _ => (-co, s),
        };
        return (Round(sin, 0, ref sinContext), Round(cos, 0, ref cosContext), Round(sin / cos, 0, ref tanContext));
    }

    /// <summary>F2XM1: 2^x - 1 for a finite non-zero x (the SDM defines it for |x| at most 1).</summary>
    public static Ext80 Exp2M1(Ext80 x, ref X87Float.Context c)
    {
        var (m, e) = Split(x);
        if (e < -1000)
        {
            // 2^x - 1 = x ln 2 (1 + x ln 2 / 2 + ...), the rest far below the last place.
            c.Flags |= X87Float.Pe;
            return Round(m * Ln2, e, ref c);
        }

        if (e > 10)
        {
            return x.Negative ? new Ext80(0x8000000000000000, 0xBFFF) : Ext80.Infinity(false);
        }

        DD t = m.ScaleB(e) * Ln2;
        if (e >= 0)
        {
            // |x| of 1 or more (outside the SDM's range): 2^x - 1 through e^t.
            DD half = Exp(t * new DD(0.5, 0));
            return Round((half * half) - new DD(1, 0), 0, ref c);
        }

        return Round(ExpM1Series(t), 0, ref c);
    }

    private static DD ExpM1Series(DD t)
    {
        DD term = t;
        DD sum = t;
        for (int i = 2; i < 60 && Math.Abs(term.Hi) > Math.Abs(sum.Hi) * 1e-34; i++)
        {
            term = term * t / new DD(i, 0);
            sum += term;
        }

        return sum;
    }

    private static DD Exp(DD t) => ExpM1Series(t) + new DD(1, 0);

    /// <summary>ln(m) for m in [1, 2) as a double-double, and the power of two taken out to keep the series short.</summary>
    private static DD LogSignificand(DD m, ref int e)
    {
        if (m.Hi > Sqrt2.Hi)
        {
            m *= new DD(0.5, 0);
            e++;
        }

        return Atanh2((m - new DD(1, 0)) / (m + new DD(1, 0)));
    }

    /// <summary>2 atanh(s) = ln((1 + s) / (1 - s)) for |s| up to about 0.2.</summary>
    private static DD Atanh2(DD s)
    {
        DD s2 = s * s;
        DD power = s;
        DD sum = s;
        for (int k = 3; k < 200 && Math.Abs(power.Hi) > Math.Abs(sum.Hi) * 1e-34; k += 2)
        {
            power *= s2;
            sum += power / new DD(k, 0);
        }

        return sum * new DD(2, 0);
    }

    /// <summary>FYL2X: y × log2 x for finite non-zero y and a finite positive x.</summary>
    public static Ext80 YLog2X(Ext80 y, Ext80 x, ref X87Float.Context c)
    {
        var (mx, ex) = Split(x);
        var (my, ey) = Split(y);
        int e = ex;
        DD ln = LogSignificand(mx, ref e);
        DD log2 = (ln / Ln2) + new DD(e, 0);
        return Round(my * log2, ey, ref c);
    }

    /// <summary>FYL2XP1: y × log2(1 + x) for finite non-zero y and x (the SDM defines it for |x| below 1 - sqrt(2)/2).</summary>
    public static Ext80 YLog2XPlus1(Ext80 y, Ext80 x, ref X87Float.Context c)
    {
        var (mx, ex) = Split(x);
        var (my, ey) = Split(y);
        if (ex < -1000)
        {
            // log2(1 + x) = x / ln 2 (1 - x/2 + ...).
            c.Flags |= X87Float.Pe;
            return Round(my * (mx / Ln2), ey + ex, ref c);
        }

        if (ex > 1000)
        {
            return Round(my * (new DD(ex, 0) + (LogSignificandAbs(mx) / Ln2)), ey, ref c);
        }

        DD xv = mx.ScaleB(ex);
        DD ln;
        if (Math.Abs(xv.Hi) < 0.5)
        {
            ln = Atanh2(xv / (new DD(2, 0) + xv));
        }
        else
        {
            // Outside the SDM's range: ln(1 + x) of the sum, its significand and exponent.
            DD sum = xv + new DD(1, 0);
            int e = Math.ILogB(sum.Hi);
            ln = LogSignificand(sum.ScaleB(-e), ref e) + (new DD(e, 0) * Ln2);
        }

        return Round(my * (ln / Ln2), ey, ref c);
    }

    private static DD LogSignificandAbs(DD m)
    {
        int e = 0;
        DD abs = m.Hi < 0 ? -m : m;
        return LogSignificand(abs, ref e) + (new DD(e, 0) * Ln2);
    }

    /// <summary>FPATAN: the angle of (x, y) for finite non-zero x and y, in (-pi, pi].</summary>
    public static Ext80 Atan2(Ext80 y, Ext80 x, ref X87Float.Context c)
    {
        var (my, ey) = Split(y);
        var (mx, ex) = Split(x);
        DD ay = my.Hi < 0 ? -my : my;
        DD ax = mx.Hi < 0 ? -mx : mx;
        bool swap = ey > ex || (ey == ex && ay.Hi > ax.Hi) || (ey == ex && ay.Hi == ax.Hi && ay.Lo > ax.Lo);
        // t = the smaller magnitude over the larger, at most 1, with its exponent apart.
        DD ratio = swap ? ax / ay : ay / ax;
        int scale = swap ? ex - ey : ey - ex;
        DD angle;
        if (scale < -1000)
        {
            // atan t = t for t far below the last place of a result near 0 or near pi/2.
            c.Flags |= X87Float.Pe;
            if (!swap && !x.Negative)
            {
                return Round(y.Negative ? -ratio : ratio, scale, ref c);
            }

            angle = default;
        }
        else
        {
            angle = Atan(ratio.ScaleB(scale));
        }

        if (swap)
        {
            angle = PiOver2 - angle;
        }

        if (x.Negative)
        {
            angle = Pi - angle;
        }

        return Round(y.Negative ? -angle : angle, 0, ref c);
    }

    /// <summary>atan t for 0 &lt;= t &lt;= 1: two halvings of the angle, then the series.</summary>
    private static DD Atan(DD t)
    {
        if (t.Hi == 1 && t.Lo == 0)
        {
            return PiOver4;
        }

        for (int i = 0; i < 2; i++)
        {
            t /= new DD(1, 0) + DD.Sqrt(new DD(1, 0) + (t * t));
        }

        DD t2 = t * t;
        DD power = t;
        DD sum = t;
        for (int k = 3; k < 200 && Math.Abs(power.Hi) > Math.Abs(sum.Hi) * 1e-34; k += 2)
        {
            power = -(power * t2);
            sum += power / new DD(k, 0);
        }

        return sum * new DD(4, 0);
    }

    /// <summary>±pi/4 or ±3pi/4, ±pi/2 and ±pi rounded by the rounding control: FPATAN's results for infinities and zeros.</summary>
    public static Ext80 Angle(int quarters, bool negative, ref X87Float.Context c)
    {
        DD v = quarters switch { 1 => PiOver4, 2 => PiOver2, 3 => ThreePiOver4, _ => Pi };
        return Round(negative ? -v : v, 0, ref c);
    }
}
