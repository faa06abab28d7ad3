using System.Numerics;
using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// SSE floating-point arithmetic in software with x86 semantics: NaN propagation (first source wins,
/// signalling NaNs are quietened), the default NaN for invalid operations, MIN/MAX returning the second
/// operand on NaN or equal zeros, rounding per MXCSR.RC and the MXCSR exception flags. Results are computed
/// at the target precision with round-to-nearest; the exact rounding error is recovered with error-free
/// transformations (TwoSum, fused multiply-add residuals) and the result stepped one ulp for directed modes.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    // MXCSR bits.
    private const uint MxIe = 1u << 0, MxDe = 1u << 1, MxZe = 1u << 2, MxOe = 1u << 3, MxUe = 1u << 4, MxPe = 1u << 5;
    private const uint MxDaz = 1u << 6, MxFz = 1u << 15;

    /// <summary>MXCSR bits a guest may set (DAZ supported); the value FXSAVE stores as MXCSR_MASK.</summary>
    internal const uint MxcsrMask = 0xFFFF;

    private const int RcNearest = 0, RcDown = 1, RcUp = 2, RcZero = 3;

    // Arithmetic kinds.
    private const int FAdd = 0, FSub = 1, FMul = 2, FDiv = 3, FMin = 4, FMax = 5, FSqrt = 6;

    /// <summary>Exception flags raised by the SSE instruction being executed.</summary>
    private uint _sseFlags;

    private int Rc => (int)((_cpu.Fpu.Mxcsr >> 13) & 3);

    private static bool IsSnan<T>(T v)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
        {
            uint b = BitConverter.SingleToUInt32Bits(Unsafe.As<T, float>(ref v));
            return (b & 0x7F800000) == 0x7F800000 && (b & 0x007FFFFF) != 0 && (b & 0x00400000) == 0;
        }

        ulong d = BitConverter.DoubleToUInt64Bits(Unsafe.As<T, double>(ref v));
        return (d & 0x7FF0000000000000) == 0x7FF0000000000000 && (d & 0x000FFFFFFFFFFFFF) != 0 && (d & 0x0008000000000000) == 0;
    }

    private static T Quiet<T>(T v)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
        {
            float f = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(Unsafe.As<T, float>(ref v)) | 0x00400000);
            return Unsafe.As<float, T>(ref f);
        }

        double d = BitConverter.UInt64BitsToDouble(BitConverter.DoubleToUInt64Bits(Unsafe.As<T, double>(ref v)) | 0x0008000000000000);
        return Unsafe.As<double, T>(ref d);
    }

    /// <summary>The x86 "real indefinite" QNaN: sign set, quiet bit set, zero payload.</summary>
    private static T DefaultNaN<T>()
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
        {
            float f = BitConverter.UInt32BitsToSingle(0xFFC00000);
            return Unsafe.As<float, T>(ref f);
        }

        double d = BitConverter.UInt64BitsToDouble(0xFFF8000000000000);
        return Unsafe.As<double, T>(ref d);
    }

    /// <summary>Applies DAZ and raises DE for a denormal operand.</summary>
    private T Operand<T>(T v)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if (T.IsSubnormal(v))
        {
            if ((_cpu.Fpu.Mxcsr & MxDaz) != 0)
            {
                return T.IsNegative(v) ? T.NegativeZero : T.Zero;
            }

            _sseFlags |= MxDe;
        }

        return v;
    }

    /// <summary>The smallest normal magnitude of T.</summary>
    private static T MinNormal<T>()
        where T : unmanaged, IBinaryFloatingPointIeee754<T> => typeof(T) == typeof(float) ? T.CreateTruncating(1.17549435E-38f) : T.CreateTruncating(2.2250738585072014E-308);

    /// <summary>A power of two that lifts any tiny result of T into the normal range without overflow.</summary>
    private static T Scale<T>()
        where T : unmanaged, IBinaryFloatingPointIeee754<T> => typeof(T) == typeof(float) ? T.CreateTruncating(18446744073709551616f) : T.CreateTruncating(Math.ScaleB(1.0, 600));

    private static int Sign<T>(T v)
        where T : unmanaged, IBinaryFloatingPointIeee754<T> => v > T.Zero ? 1 : v < T.Zero ? -1 : 0;

    /// <summary>
    /// Finishes a round-to-nearest result <paramref name="r"/> whose exact value is r + (something of sign
    /// <paramref name="err"/>): directed rounding, overflow, underflow and precision flags, FTZ.
    /// </summary>
    private T Round<T>(T r, int err, bool tinyAtMinNormal = false)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        int rc = Rc;

        // Tininess is judged as the processor does, on the exact result rounded to the precision with an unbounded
        // exponent: a result the denormal format rounds up to the smallest normal is still tiny when the exact value
        // lies more than a quarter unit below it (the caller works that out: tinyAtMinNormal).
        bool edge = tinyAtMinNormal && rc == RcNearest && T.Abs(r) == MinNormal<T>();
        if (T.IsInfinity(r))
        {
            return RoundOverflow(r, err, rc);
        }

        if (err != 0)
        {
            // A directed rounding that carries the largest subnormal up to the smallest normal leaves a tiny result
            // (at full precision the exact value, at least half a unit below, rounds below the smallest normal).
            bool fromSubnormal = T.IsSubnormal(r);
            r = StepDirected(r, err, rc);

            _sseFlags |= T.IsInfinity(r) ? MxOe | MxPe : MxPe;
            edge |= fromSubnormal && T.Abs(r) == MinNormal<T>();

            if (T.IsSubnormal(r) || T.IsZero(r) || edge)
            {
                _sseFlags |= MxUe;
            }
        }

        if (err == 0 && T.IsSubnormal(r) && (_cpu.Fpu.Mxcsr & (MxUe << 7)) == 0)
        {
            _sseFlags |= MxUe; // with UE unmasked a tiny result underflows even when exact
        }

        if ((T.IsSubnormal(r) || edge) && (_cpu.Fpu.Mxcsr & MxFz) != 0 && (_cpu.Fpu.Mxcsr & (MxUe << 7)) != 0)
        {
            _sseFlags |= MxUe | MxPe;
            return T.IsNegative(r) ? T.NegativeZero : T.Zero;
        }

        return r;
    }

    /// <summary>The round-to-nearest result <paramref name="r"/> moved one unit where the rounding direction <paramref name="rc"/> takes an exact value on the side <paramref name="err"/> gives.</summary>
    private static T StepDirected<T>(T r, int err, int rc)
        where T : unmanaged, IBinaryFloatingPointIeee754<T> => rc switch
        {
            RcDown when err < 0 => T.BitDecrement(r),
            RcUp when err > 0 => T.BitIncrement(r),
            RcZero when (err < 0 && r > T.Zero) || (err > 0 && r < T.Zero) => r > T.Zero ? T.BitDecrement(r) : T.BitIncrement(r),
            _ => r,
        };

    /// <summary>
    /// An overflowed round-to-nearest result: the infinity, or the largest finite value where the rounding direction is
    /// towards zero. When the exact value is known to lie below the next binade (<paramref name="belowNextBinade"/>),
    /// its rounding towards zero with an unbounded exponent stays finite: the largest finite value with PE, no overflow.
    /// </summary>
    private T RoundOverflow<T>(T r, int err, int rc, bool belowNextBinade = false)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        bool neg = T.IsNegative(r);
        bool towardZero = rc == RcZero || (rc == RcDown && !neg) || (rc == RcUp && neg);
        T max = neg ? -T.BitDecrement(T.PositiveInfinity) : T.BitDecrement(T.PositiveInfinity);
        if (towardZero && belowNextBinade)
        {
            _sseFlags |= MxPe;
            return max;
        }

        // With OE unmasked nothing is stored, and PE says whether the exact result (with an unbounded exponent) was
        // inexact, which err gives here; masked, the stored infinity or maximum is always inexact.
        _sseFlags |= MxOe | (err == 0 && (_cpu.Fpu.Mxcsr & (MxOe << 7)) == 0 ? 0 : MxPe);
        return towardZero ? max : r;
    }

    /// <summary>Whether a single result <paramref name="r"/> of ±the smallest normal comes from <paramref name="exact"/> (a double holding the exact value, or within 2^-53 of it) more than a quarter unit below it in magnitude.</summary>
    private static bool SingleTinyAtMinNormal(float r, double exact) =>
        Math.Abs(r) == MinNormal<float>() && Math.Abs((double)r) - Math.Abs(exact) > Math.ScaleB(1.0, -151);

    /// <summary>
    /// Whether a double result <paramref name="r"/> of ±the smallest normal comes from an exact value more than a quarter
    /// unit below it in magnitude, given that value times 2^600 as <paramref name="scaled"/> plus (approximately)
    /// <paramref name="rest"/>.
    /// </summary>
    private static bool DoubleTinyAtMinNormal(double r, double scaled, double rest)
    {
        if (Math.Abs(r) != MinNormal<double>())
        {
            return false;
        }

        double s = Math.Sign(r);
        return (s * (Math.ScaleB(r, 600) - scaled)) - (s * rest) > Math.ScaleB(1.0, -1074 + 600 - 2);
    }

    /// <summary>
    /// Finishes an ADD/SUB, MUL or DIV whose round-to-nearest result <paramref name="r"/> overflowed, from the exact
    /// result worked out on operands scaled into range: x = (<paramref name="s"/> + something of sign <paramref name="e"/>)
    /// * 2^<paramref name="k"/>. Rounding towards zero gives the largest finite value, without overflow, when x is below
    /// the next binade (its rounding with an unbounded exponent stays finite there); otherwise it is an overflow, whose PE
    /// says (when OE is unmasked) whether x has more significant bits than T holds.
    /// </summary>
    private T Overflowed<T>(T r, double s, int e, int k)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        double limit = Math.ScaleB(1.0, (typeof(T) == typeof(float) ? 128 : 1024) - k);
        bool below = Math.Abs(s) < limit || (Math.Abs(s) == limit && e * Math.Sign(s) < 0);
        bool inexact = e != 0 || (typeof(T) == typeof(float) && (BitConverter.DoubleToUInt64Bits(s) & 0x1FFFFFFF) != 0);
        return RoundOverflow(r, inexact ? 1 : 0, Rc, below);
    }

    /// <summary><see cref="Overflowed"/> for a product (<paramref name="divide"/> false) or quotient of finite operands.</summary>
    private T OverflowedProduct<T>(T r, T a, T b, bool divide)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        double x = double.CreateTruncating(a), y = double.CreateTruncating(b);
        if (typeof(T) == typeof(float))
        {
            // A product of singles is exact in a double; a quotient's error has the sign of its remainder.
            double d = divide ? x / y : x * y;
            return Overflowed(r, d, divide ? Math.Sign(Math.FusedMultiplyAdd(-d, y, x)) * Math.Sign(y) : 0, 0);
        }

        if (divide)
        {
            // An overflowing quotient has a >= 2^-50 and b <= 1: both scaled stay normal and the quotient finite.
            double sa = Math.ScaleB(x, -500), sb = Math.ScaleB(y, 600), q = sa / sb;
            return Overflowed(r, q, Math.Sign(Math.FusedMultiplyAdd(-q, sb, sa)) * Math.Sign(sb), 1100);
        }

        // An overflowing product has both factors of at least 1.
        double sx = Math.ScaleB(x, -520), sy = Math.ScaleB(y, -520), p = sx * sy;
        return Overflowed(r, p, Math.Sign(Math.FusedMultiplyAdd(sx, sy, -p)), 1040);
    }

    /// <summary>One lane of ADD/SUB/MUL/DIV/MIN/MAX/SQRT (SQRT uses <paramref name="b"/> only).</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One lane of the seven SSE arithmetic operations with their IEEE special cases (NaN propagation, denormals, invalid and divide-by-zero flags) in the order the SDM gives them.")]
    private T FpArith<T>(int kind, T a, T b)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if (kind == FSqrt)
        {
            if (T.IsNaN(b))
            {
                _sseFlags |= IsSnan(b) ? MxIe : 0;
                return Quiet(b);
            }

            if (b < T.Zero && !(T.IsSubnormal(b) && (_cpu.Fpu.Mxcsr & MxDaz) != 0))
            {
                _sseFlags |= MxIe;
                return DefaultNaN<T>();
            }

            b = Operand(b);

            if (T.IsZero(b) || T.IsInfinity(b))
            {
                return b;
            }

            T s = T.Sqrt(b);
            if (typeof(T) == typeof(float))
            {
                double bd = double.CreateTruncating(b), sd = double.CreateTruncating(s);
                return Round(s, Math.Sign(bd - (sd * sd)));
            }

            if (b < T.One)
            {
                // The residual of a tiny operand is below the subnormal range; an even power of two scales it exactly.
                T bs = b * Scale<T>();
                T ss = T.Sqrt(bs);
                return Round(s, Sign(T.FusedMultiplyAdd(-ss, ss, bs)));
            }

            return Round(s, Sign(T.FusedMultiplyAdd(-s, s, b)));
        }

        bool an = T.IsNaN(a), bn = T.IsNaN(b);
        if (kind is FMin or FMax)
        {
            if (an || bn)
            {
                _sseFlags |= MxIe;
                return b;
            }

            a = Operand(a);
            b = Operand(b);
            return kind == FMin ? (a < b ? a : b) : (a > b ? a : b);
        }

        if (an || bn)
        {
            if (IsSnan(a) || IsSnan(b))
            {
                _sseFlags |= MxIe;
            }

            return an ? Quiet(a) : Quiet(b);
        }

        if (kind == FDiv && T.IsZero(b) && !T.IsZero(a) && !(T.IsSubnormal(a) && (_cpu.Fpu.Mxcsr & MxDaz) != 0))
        {
            // Division by zero reports ZE alone, without DE for a denormal dividend.
            _sseFlags |= T.IsInfinity(a) ? 0 : MxZe;
            return a / b;
        }

        a = Operand(a);
        b = Operand(b);
        T r;
        int err = 0;
        bool tiny = false;
        switch (kind)
        {
            case FAdd:
            case FSub:
            {
                if (kind == FSub)
                {
                    b = -b;
                }

                r = a + b;
                if (T.IsNaN(r))
                {
                    _sseFlags |= MxIe;
                    return DefaultNaN<T>();
                }

                if (T.IsInfinity(a) || T.IsInfinity(b))
                {
                    return r;
                }

                if (!T.IsInfinity(r))
                {
                    T bb = r - a;
                    T e = (a - (r - bb)) + (b - bb);
                    err = Sign(e);
                }
                else
                {
                    // Overflow: the halved sum and its rounding error (halving is exact for operands this large).
                    T two = T.One + T.One;
                    T ha = a / two, hb = b / two, hs = ha + hb, hbb = hs - ha;
                    return Overflowed(r, double.CreateTruncating(hs), Sign((ha - (hs - hbb)) + (hb - hbb)), 1);
                }

                if (T.IsZero(r) && err == 0)
                {
                    bool sameSignZeros = T.IsZero(a) && T.IsZero(b) && T.IsNegative(a) == T.IsNegative(b);
                    if (!sameSignZeros)
                    {
                        r = Rc == RcDown ? T.NegativeZero : T.Zero;
                    }
                }

                break;
            }

            case FMul:
                r = a * b;
                if (T.IsNaN(r))
                {
                    _sseFlags |= MxIe;
                    return DefaultNaN<T>();
                }

                if (T.IsInfinity(a) || T.IsInfinity(b))
                {
                    return r;
                }

                if (typeof(T) == typeof(float) && !T.IsInfinity(r))
                {
                    double product = double.CreateTruncating(a) * double.CreateTruncating(b);
                    err = Math.Sign(product - double.CreateTruncating(r));
                    tiny = SingleTinyAtMinNormal(float.CreateTruncating(r), product);
                }
                else if (!T.IsInfinity(r))
                {
                    err = Sign(T.FusedMultiplyAdd(a, b, -r));
                    if (T.Abs(r) < MinNormal<T>() * Scale<T>() || T.IsSubnormal(a) || T.IsSubnormal(b))
                    {
                        // A small product, or a denormal factor: the exact residual may have bits below the subnormal
                        // range, so the one above may have rounded away. Product and residual scaled up by an even
                        // power of two, through the smaller factor (the denormal one, if any), so nothing overflows.
                        var (x, y) = T.Abs(b) < T.Abs(a) ? (b, a) : (a, b);
                        T sa = x * Scale<T>();
                        T rs = sa * y;
                        T diff = rs - (r * Scale<T>());
                        T res = T.FusedMultiplyAdd(sa, y, -rs);
                        err = T.Abs(rs) < MinNormal<T>() ? Sign(a) * Sign(b) : !T.IsZero(diff) ? Sign(diff) : Sign(res);
                        tiny = DoubleTinyAtMinNormal(double.CreateTruncating(r), double.CreateTruncating(rs), double.CreateTruncating(res));
                    }
                }
                else
                {
                    return OverflowedProduct(r, a, b, divide: false);
                }

                break;
            default:
                if (T.IsZero(b))
                {
                    if (T.IsZero(a))
                    {
                        _sseFlags |= MxIe;
                        return DefaultNaN<T>();
                    }

                    if (!T.IsInfinity(a))
                    {
                        _sseFlags |= MxZe;
                    }

                    return a / b;
                }

                r = a / b;
                if (T.IsNaN(r))
                {
                    _sseFlags |= MxIe;
                    return DefaultNaN<T>();
                }

                if (T.IsInfinity(a) || T.IsInfinity(b))
                {
                    return r;
                }

                if (typeof(T) == typeof(float) && !T.IsInfinity(r))
                {
                    // A quotient of two singles is never within a double rounding of a single it does not equal.
                    // (A quotient never lies less than half a unit below a power of two, so it never meets the
                    // tininess edge that products and narrowings can.)
                    err = Math.Sign((double.CreateTruncating(a) / double.CreateTruncating(b)) - double.CreateTruncating(r));
                }
                else if (!T.IsInfinity(r))
                {
                    err = Sign(T.FusedMultiplyAdd(-r, b, a)) * Sign(b);
                    if (T.IsSubnormal(b) || T.Abs(a) < MinNormal<T>() * Scale<T>())
                    {
                        // Scale so that the remainder a - r * b stays representable: a, and whichever of r and b cannot
                        // overflow (b when the quotient is 1 or more, so b is at most a; r otherwise).
                        T sa = a * Scale<T>();
                        T rem = T.Abs(r) >= T.One ? T.FusedMultiplyAdd(-r, b * Scale<T>(), sa) : T.FusedMultiplyAdd(-(r * Scale<T>()), b, sa);
                        if (!T.IsInfinity(sa) && !T.IsNaN(rem))
                        {
                            err = Sign(rem) * Sign(b);
                        }
                    }

                    if (T.Abs(r) < MinNormal<T>())
                    {
                        T sa = a * Scale<T>();
                        T qs = sa / b;
                        T diff = qs - (r * Scale<T>());
                        err = T.Abs(qs) < MinNormal<T>() ? Sign(a) * Sign(b) : !T.IsZero(diff) ? Sign(diff) : Sign(T.FusedMultiplyAdd(-qs, b, sa)) * Sign(b);
                    }
                }
                else
                {
                    return OverflowedProduct(r, a, b, divide: true);
                }

                break;
        }

        return Round(r, err, tiny);
    }

    /// <summary>CMPPS/CMPSS predicate 0-7 on one lane; signalling predicates raise IE on any NaN.</summary>
    private bool FpCompare<T>(int pred, T a, T b)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        // Predicates 0-7 are SSE's; AVX adds 8-15 and, as 16-31, all of them with the QNaN signalling toggled.
        bool unordered = T.IsNaN(a) || T.IsNaN(b);
        if (unordered)
        {
            bool signalling = ((pred & 0xF) is 1 or 2 or 5 or 6 or 9 or 10 or 13 or 14) ^ ((pred & 0x10) != 0);
            if (IsSnan(a) || IsSnan(b) || signalling)
            {
                _sseFlags |= MxIe;
            }
        }
        else
        {
            a = Operand(a);
            b = Operand(b);
        }

        return (pred & 0xF) switch
        {
            0 => !unordered && a == b,
            1 => !unordered && a < b,
            2 => !unordered && a <= b,
            3 => unordered,
            4 => unordered || a != b,
            5 => unordered || !(a < b),
            6 => unordered || !(a <= b),
            7 => !unordered,
            8 => unordered || a == b,
            9 => unordered || !(a >= b),
            10 => unordered || !(a > b),
            11 => false,
            12 => !unordered && a != b,
            13 => !unordered && a >= b,
            14 => !unordered && a > b,
            _ => true,
        };
    }

    /// <summary>COMIS/UCOMIS: ZF, PF, CF as the hardware sets them; OF, AF, SF cleared.</summary>
    private ulong FpCompareFlags<T>(T a, T b, bool signalQuiet)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if (T.IsNaN(a) || T.IsNaN(b))
        {
            if (signalQuiet || IsSnan(a) || IsSnan(b))
            {
                _sseFlags |= MxIe;
            }

            return ZF | PF | CF;
        }

        a = Operand(a);
        b = Operand(b);
        return a > b ? 0 : a < b ? CF : ZF;
    }

    /// <summary>Converts to a signed integer of <paramref name="bits"/> bits, rounding per MXCSR or truncating; out of range gives the integer indefinite value.</summary>
    private long FpToInt<T>(T v, int bits, bool truncate)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        long indefinite = bits == 64 ? long.MinValue : int.MinValue;
        if (T.IsNaN(v))
        {
            _sseFlags |= MxIe;
            return indefinite;
        }

        // Conversions to integer do not report denormal operands; DAZ still reads them as zero.
        if (T.IsSubnormal(v) && (_cpu.Fpu.Mxcsr & MxDaz) != 0)
        {
            v = T.Zero;
        }

        double d = double.CreateTruncating(v);
        int rc = truncate ? RcZero : Rc;
        double r = rc switch
        {
            RcDown => Math.Floor(d),
            RcUp => Math.Ceiling(d),
            RcZero => Math.Truncate(d),
            _ => Math.Round(d, MidpointRounding.ToEven),
        };

        // A double holds every float exactly, and a double above 2^52 is already integral, so d == r tests exactness.
        double limit = bits == 64 ? 9223372036854775808.0 : 2147483648.0;
        if (r >= limit || r < -limit)
        {
            _sseFlags |= MxIe;
            return indefinite;
        }

        if (r != d)
        {
            _sseFlags |= MxPe;
        }

        return (long)r;
    }

    /// <summary>Converts a signed integer to a float lane, rounding per MXCSR.</summary>
    private T IntToFp<T>(long x)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        T r = T.CreateTruncating(x);
        Int128 back = Int128.CreateTruncating(r);
        int err = ((Int128)x).CompareTo(back);
        return Round(r, err);
    }

    /// <summary>CVTSD2SS and CVTPD2PS on one lane.</summary>
    private float NarrowToSingle(double d)
    {
        if (double.IsNaN(d))
        {
            _sseFlags |= IsSnan(d) ? MxIe : 0;
            ulong b = BitConverter.DoubleToUInt64Bits(d);
            return BitConverter.UInt32BitsToSingle((uint)((b >> 63) << 31) | 0x7FC00000 | (uint)((b >> 29) & 0x003FFFFF));
        }

        d = Operand(d);
        float r = (float)d;
        if (double.IsInfinity(d) || d == 0)
        {
            return r;
        }

        if (float.IsInfinity(r))
        {
            return Overflowed(r, d, 0, 0);
        }

        return Round(r, (d - r) > 0 ? 1 : (d - r) < 0 ? -1 : 0, SingleTinyAtMinNormal(r, d));
    }

    /// <summary>CVTSS2SD and CVTPS2PD on one lane (exact).</summary>
    private double WidenToDouble(float f)
    {
        if (float.IsNaN(f))
        {
            _sseFlags |= IsSnan(f) ? MxIe : 0;
            uint b = BitConverter.SingleToUInt32Bits(f);
            return BitConverter.UInt64BitsToDouble(((ulong)(b >> 31) << 63) | 0x7FF8000000000000 | ((ulong)(b & 0x003FFFFF) << 29));
        }

        return Operand(f);
    }
}
