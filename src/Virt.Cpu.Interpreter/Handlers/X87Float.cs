using System.Numerics;

namespace Virt.Cpu.Interpreter;

/// <summary>An x87 register value: a 64-bit significand with its explicit integer bit, and sign and 15-bit exponent.</summary>
internal readonly struct Ext80(ulong mant, ushort se)
{
    public const int Bias = 16383;

    public static readonly Ext80 Indefinite = new(0xC000000000000000, 0xFFFF);

    public readonly ulong Mant = mant;

    public readonly ushort Se = se;

    public bool Negative => (Se & 0x8000) != 0;

    public int Exp => Se & 0x7FFF;

    public bool IsZero => Exp == 0 && Mant == 0;

    /// <summary>A denormal or pseudo-denormal (exponent field 0, significand not 0).</summary>
    public bool IsDenormal => Exp == 0 && Mant != 0;

    public bool IsInfinity => Exp == 0x7FFF && Mant == 0x8000000000000000;

    public bool IsNaN => Exp == 0x7FFF && (Mant >> 63) != 0 && (Mant << 1) != 0;

    public bool IsSignaling => IsNaN && (Mant & 0x4000000000000000) == 0;

    /// <summary>Unnormals, pseudo-NaNs and pseudo-infinities: a non-zero exponent without the integer bit. The x87 rejects them as operands (IE).</summary>
    public bool IsUnsupported => Exp != 0 && (Mant >> 63) == 0;

    public Ext80 Quiet => new(Mant | 0x4000000000000000, Se);

    public Ext80 WithSign(bool negative) => new(Mant, (ushort)((Se & 0x7FFF) | (negative ? 0x8000 : 0)));

    public static Ext80 Zero(bool negative) => new(0, negative ? (ushort)0x8000 : (ushort)0);

    public static Ext80 Infinity(bool negative) => new(0x8000000000000000, negative ? (ushort)0xFFFF : (ushort)0x7FFF);
}

/// <summary>
/// The x87's arithmetic on its 80-bit format, bit for bit: every result is rounded once, from the exact value, to the
/// precision control's 24, 53 or 64 bits (or the destination's format) under the rounding control, with the
/// exponent range of the destination, and reports the exception flags the instruction sets (SDM Vol. 1, 4.9 and 8.5).
/// Tininess is judged after rounding with an unbounded exponent; a masked underflow is reported only when the
/// denormal result is inexact, an unmasked one always, with the x87's bias adjustment of 24,576 on register
/// destinations.
/// </summary>
internal static class X87Float
{
    // Exception flags, at their status and control word positions.
    public const int Ie = 1, De = 2, Ze = 4, Oe = 8, Ue = 16, Pe = 32;

    private const int BiasAdjust = 24576;

    /// <summary>The extended format's exponent range (unbiased exponent of the integer bit).</summary>
    public const int ExtMin = 1 - Ext80.Bias, ExtMax = 0x7FFE - Ext80.Bias;

    /// <summary>What an operation reports besides its value: exception flags and whether the significand was rounded up (C1).</summary>
    public struct Context(int control)
    {
        /// <summary>The control word: masks in bits 0-5, precision control in bits 8-9, rounding control in bits 10-11.</summary>
        public readonly int Control = control;

        public int Flags;

        public bool RoundedUp;

        /// <summary>An unmasked overflow or underflow on a memory destination: nothing is to be stored.</summary>
        public bool Suppressed;

        /// <summary>A memory operand was a denormal (its conversion normalised it): DE, unless a higher-priority exception comes first.</summary>
        public bool DenormalOperand;

        public readonly int Rounding => (Control >> 10) & 3;

        /// <summary>The precision control's significand width; the reserved setting behaves as 64 bits.</summary>
        public readonly int Precision => ((Control >> 8) & 3) switch { 0 => 24, 2 => 53, _ => 64 };

        public readonly bool Masked(int flag) => (Control & flag) != 0;
    }

    /// <summary>The destination a result is rounded for.</summary>
    public enum Format
    {
        /// <summary>A register, at the precision given with the call.</summary>
        Register,

        /// <summary>A 64-bit float in memory.</summary>
        Double,

        /// <summary>A 32-bit float in memory.</summary>
        Single,
    }

    /// <summary>Splits a finite non-zero value into its normalised significand and the unbiased exponent of its top bit.</summary>
    public static (int E, ulong Sig) Unpack(Ext80 v)
    {
        if (v.Exp == 0)
        {
            int lz = BitOperations.LeadingZeroCount(v.Mant);
            return (ExtMin - lz, v.Mant << lz);
        }

        return (v.Exp - Ext80.Bias, v.Mant);
    }

    /// <summary>
    /// Whether rounding by <paramref name="rounding"/> (the rounding control: nearest even, down, up, toward zero) adds
    /// one unit to the magnitude kept: <paramref name="versusHalf"/> compares what is dropped with half a unit (-1, 0
    /// or 1, sticky bits counted), <paramref name="odd"/> is the kept part's last bit.
    /// </summary>
    private static bool RoundsUp(int rounding, bool negative, int versusHalf, bool inexact, bool odd) => rounding switch
    {
        0 => versusHalf > 0 || (versusHalf == 0 && odd),
        1 => inexact && negative,
        2 => inexact && !negative,
        _ => false,
    };

    /// <summary>Rounds a 128-bit significand (top bit weighted 2^e, <paramref name="sticky"/> for bits below it) to <paramref name="bits"/> bits.</summary>
    private static UInt128 RoundBits(UInt128 sig, bool sticky, int bits, bool negative, int rounding, out bool carry, out bool inexact, out bool up)
    {
        int drop = 128 - bits;
        UInt128 mask = (UInt128.One << drop) - 1;
        UInt128 rest = sig & mask;
        UInt128 kept = sig & ~mask;
        inexact = rest != 0 || sticky;
        UInt128 half = UInt128.One << (drop - 1);
        int versusHalf = rest > half || (rest == half && sticky) ? 1 : rest == half ? 0 : -1;
        up = RoundsUp(rounding, negative, versusHalf, inexact, ((kept >> drop) & 1) != 0);
        carry = false;
        if (up)
        {
            kept += UInt128.One << drop;
            if (kept == 0)
            {
                carry = true;
                kept = UInt128.One << 127;
            }
        }

        return kept;
    }

    /// <summary>
    /// Rounds the exact value sig × 2^(e - 127) (sig with its top bit set, or 0) for <paramref name="format"/> and
    /// encodes it: the register format as an <see cref="Ext80"/>, the memory formats in the low bits of its significand.
    /// </summary>
    public static Ext80 Round(bool negative, int e, UInt128 sig, bool sticky, Format format, int precision, ref Context c)
    {
        if (sig == 0)
        {
            return Encode(negative, 0, 0, format, denormal: true);
        }

        int lz = (int)UInt128.LeadingZeroCount(sig);
        sig <<= lz;
        e -= lz;
        if (format == Format.Register && precision == 64 && e >= ExtMin && e < ExtMax)
        {
            return RoundNormal64(negative, e, (ulong)(sig >> 64), (ulong)sig, sticky, ref c);
        }

        var (bits, emin, emax) = format switch
        {
            Format.Double => (53, -1022, 1023),
            Format.Single => (24, -126, 127),
            _ => (precision, ExtMin, ExtMax),
        };

        // With an unbounded exponent: decides tininess, and is the result of every case but the tiny and the overflowing.
        UInt128 r = RoundBits(sig, sticky, bits, negative, c.Rounding, out bool carry, out bool inexact, out bool roundedUp);
        int er = carry ? e + 1 : e;
        if (er < emin)
        {
            if (!c.Masked(Ue))
            {
                if (format != Format.Register)
                {
                    // Nothing is stored: UE alone, C1 clear.
                    c.Flags |= Ue;
                    c.RoundedUp = false;
                    c.Suppressed = true;
                    return default;
                }

                if (er + BiasAdjust < emin)
                {
                    // Beyond even the adjusted range (FSCALE): a zero, inexact.
                    c.Flags |= Ue | Pe;
                    c.RoundedUp = false;
                    return Ext80.Zero(negative);
                }

                c.Flags |= Ue | (inexact ? Pe : 0);
                c.RoundedUp = roundedUp;

                return Encode(negative, er + BiasAdjust, (ulong)(r >> 64), format, denormal: false);
            }

            // Denormalised: the bits below the format's smallest exponent go into the rounding.
            int shift = emin - e;
            bool lost;
            if (shift >= 128)
            {
                lost = true;
                sig = 0;
            }
            else
            {
                lost = (sig & ((UInt128.One << shift) - 1)) != 0;
                sig >>= shift;
            }

            UInt128 d = RoundBits(sig, sticky || lost, bits, negative, c.Rounding, out bool dcarry, out bool dinexact, out c.RoundedUp);
            bool normal = dcarry || (d >> 127) != 0;
            if (dcarry)
            {
                d = UInt128.One << 127;
            }

            if (dinexact)
            {
                c.Flags |= Ue | Pe;
            }

            return Encode(negative, emin, (ulong)(d >> 64), format, denormal: !normal);
        }

        c.RoundedUp = roundedUp;
        if (inexact)
        {
            c.Flags |= Pe;
        }

        if (er > emax)
        {
            if (!c.Masked(Oe))
            {
                c.Flags |= Oe;
                if (format != Format.Register)
                {
                    c.Flags &= ~Pe;
                    c.RoundedUp = false;
                    c.Suppressed = true;
                    return default;
                }

                if (er - BiasAdjust > emax)
                {
                    // Beyond even the adjusted range (FSCALE): an infinity, inexact and rounded up.
                    c.Flags |= Pe;
                    c.RoundedUp = true;
                    return Ext80.Infinity(negative);
                }

                return Encode(negative, er - BiasAdjust, (ulong)(r >> 64), format, denormal: false);
            }

            c.Flags |= Oe | Pe;
            bool toInfinity = c.Rounding switch { 0 => true, 1 => negative, 2 => !negative, _ => false };
            c.RoundedUp = toInfinity;
            if (toInfinity)
            {
                return format switch
                {
                    Format.Double => new(negative ? 0xFFF0000000000000 : 0x7FF0000000000000, 0),
                    Format.Single => new(negative ? 0xFF800000UL : 0x7F800000UL, 0),
                    _ => Ext80.Infinity(negative),
                };
            }

            ulong largest = ulong.MaxValue << (64 - bits);
            return Encode(negative, emax, largest, format, denormal: false);
        }

        return Encode(negative, er, (ulong)(r >> 64), format, denormal: false);
    }

    /// <summary>
    /// The common case of <see cref="Round"/>: a register result at 64-bit precision whose exponent is inside the
    /// range even after rounding up, in 64-bit arithmetic.
    /// </summary>
    private static Ext80 RoundNormal64(bool negative, int e, ulong hi, ulong lo, bool sticky, ref Context c)
    {
        ushort sign = negative ? (ushort)0x8000 : (ushort)0;
        if (lo == 0 && !sticky)
        {
            c.RoundedUp = false;
            return new Ext80(hi, (ushort)(sign | (e + Ext80.Bias)));
        }

        c.Flags |= Pe;
        int versusHalf = lo > 0x8000000000000000 || (lo == 0x8000000000000000 && sticky) ? 1 : lo == 0x8000000000000000 ? 0 : -1;
        bool up = RoundsUp(c.Rounding, negative, versusHalf, inexact: true, (hi & 1) != 0);
        c.RoundedUp = up;
        if (up && ++hi == 0)
        {
            hi = 0x8000000000000000;
            e++;
        }

        return new Ext80(hi, (ushort)(sign | (e + Ext80.Bias)));
    }

    /// <summary>Encodes a rounded significand (integer bit at bit 63) with the unbiased exponent <paramref name="e"/>.</summary>
    private static Ext80 Encode(bool negative, int e, ulong mant, Format format, bool denormal)
    {
        switch (format)
        {
            case Format.Double:
            {
                ulong bits = (negative ? 1UL << 63 : 0) | (denormal ? 0 : (ulong)(e + 1023) << 52) | ((mant >> 11) & 0xFFFFFFFFFFFFF);
                return new(bits, 0);
            }

            case Format.Single:
            {
                ulong bits = (negative ? 1UL << 31 : 0) | (denormal ? 0 : (ulong)(e + 127) << 23) | ((mant >> 40) & 0x7FFFFF);
                return new(bits, 0);
            }

            default:
                return new(mant, (ushort)((negative ? 0x8000 : 0) | (denormal ? 0 : e + Ext80.Bias)));
        }
    }

    /// <summary>The NaN an operation on <paramref name="a"/> and <paramref name="b"/> returns when either is one (SDM Vol. 1, Table 4-7); IE for a signaling one.</summary>
    public static Ext80 PropagateNaN(Ext80 a, Ext80 b, ref Context c)
    {
        if (a.IsSignaling || b.IsSignaling)
        {
            c.Flags |= Ie;
        }

        if (!a.IsNaN)
        {
            return b.Quiet;
        }

        if (!b.IsNaN)
        {
            return a.Quiet;
        }

        if (a.IsSignaling != b.IsSignaling)
        {
            return a.IsSignaling ? b : a; // the quiet one
        }

        // Two of a kind: the larger significand, the positive one of equal significands.
        ulong ma = a.Mant | 0x4000000000000000, mb = b.Mant | 0x4000000000000000;
        return ma > mb ? a.Quiet : mb > ma ? b.Quiet : a.Se <= b.Se ? a.Quiet : b.Quiet;
    }

    private static Ext80 Invalid(ref Context c)
    {
        c.Flags |= Ie;
        return Ext80.Indefinite;
    }

    /// <summary>The operand checks every operation starts with: an unsupported encoding is invalid (IE), a NaN propagates.</summary>
    public static bool Special(Ext80 a, Ext80 b, ref Context c, out Ext80 result)
    {
        if (a.IsUnsupported || b.IsUnsupported)
        {
            result = Invalid(ref c);
            return true;
        }

        if (a.IsNaN || b.IsNaN)
        {
            result = PropagateNaN(a, b, ref c);
            return true;
        }

        result = default;
        return false;
    }

    /// <summary>
    /// DE for a denormal operand: after invalid operations, NaN operands and division by zero, which take precedence
    /// (SDM Vol. 1, 4.9.2). True when DE is unmasked: the operation stops there, and nothing else is reported.
    /// </summary>
    public static bool DenormalCheck(Ext80 a, Ext80 b, ref Context c)
    {
        if (a.IsDenormal || b.IsDenormal || c.DenormalOperand)
        {
            c.Flags |= De;
            return !c.Masked(De);
        }

        return false;
    }

    /// <summary>a + b, or a - b when <paramref name="subtract"/>.</summary>
    public static Ext80 Add(Ext80 a, Ext80 b, bool subtract, ref Context c)
    {
        if (Special(a, b, ref c, out var special))
        {
            return special;
        }

        bool sa = a.Negative, sb = b.Negative ^ subtract;
        if (a.IsInfinity && b.IsInfinity && sa != sb)
        {
            return Invalid(ref c);
        }

        if (DenormalCheck(a, b, ref c))
        {
            return a;
        }

        if (a.IsInfinity || b.IsInfinity)
        {
            return a.IsInfinity ? a : Ext80.Infinity(sb);
        }

        if (a.IsZero && b.IsZero)
        {
            return Ext80.Zero(sa == sb ? sa : c.Rounding == 1);
        }

        if (a.IsZero || b.IsZero)
        {
            var (e1, s1) = Unpack(a.IsZero ? b : a);
            return Round(a.IsZero ? sb : sa, e1 + 1, (UInt128)s1 << 63, false, Format.Register, c.Precision, ref c);
        }

        var (ea, ma) = Unpack(a);
        var (eb, mb) = Unpack(b);
        if (eb > ea || (eb == ea && mb > ma))
        {
            (ea, eb) = (eb, ea);
            (ma, mb) = (mb, ma);
            (sa, sb) = (sb, sa);
        }

        // The larger operand's top bit at bit 126 (room for a carry), the smaller one shifted by the exponent difference.
        UInt128 x = (UInt128)ma << 63;
        UInt128 y = (UInt128)mb << 63;
        int d = ea - eb;
        bool sticky = false;
        if (d >= 127)
        {
            sticky = true;
            y = 0;
        }
        else if (d > 0)
        {
            sticky = (y & ((UInt128.One << d) - 1)) != 0;
            y >>= d;
        }

        UInt128 sum;
        if (sa == sb)
        {
            sum = x + y;
        }
        else
        {
            sum = x - y - (sticky ? UInt128.One : UInt128.Zero);
            if (sum == 0 && !sticky)
            {
                return Ext80.Zero(c.Rounding == 1);
            }
        }

        return Round(sa, ea + 1, sum, sticky, Format.Register, c.Precision, ref c);
    }

    public static Ext80 Multiply(Ext80 a, Ext80 b, ref Context c)
    {
        if (Special(a, b, ref c, out var special))
        {
            return special;
        }

        bool neg = a.Negative ^ b.Negative;
        if ((a.IsInfinity && b.IsZero) || (a.IsZero && b.IsInfinity))
        {
            return Invalid(ref c);
        }

        if (DenormalCheck(a, b, ref c))
        {
            return a;
        }

        if (a.IsInfinity || b.IsInfinity)
        {
            return Ext80.Infinity(neg);
        }

        if (a.IsZero || b.IsZero)
        {
            return Ext80.Zero(neg);
        }

        var (ea, ma) = Unpack(a);
        var (eb, mb) = Unpack(b);
        ulong hi = Math.BigMul(ma, mb, out ulong lo);
        return Round(neg, ea + eb + 1, new UInt128(hi, lo), false, Format.Register, c.Precision, ref c);
    }

    public static Ext80 Divide(Ext80 a, Ext80 b, ref Context c)
    {
        if (Special(a, b, ref c, out var special))
        {
            return special;
        }

        bool neg = a.Negative ^ b.Negative;
        if ((a.IsInfinity && b.IsInfinity) || (a.IsZero && b.IsZero))
        {
            return Invalid(ref c);
        }

        if (b.IsZero && !a.IsInfinity)
        {
            c.Flags |= Ze;
            return Ext80.Infinity(neg);
        }

        if (DenormalCheck(a, b, ref c))
        {
            return a;
        }

        if (a.IsInfinity)
        {
            return Ext80.Infinity(neg);
        }

        if (b.IsInfinity)
        {
            return Ext80.Zero(neg);
        }

        if (a.IsZero)
        {
            return Ext80.Zero(neg);
        }

        var (ea, ma) = Unpack(a);
        var (eb, mb) = Unpack(b);

        // The quotient's 64 or 65 bits, then what the remainder says about the rest: zero, exactly a half, or below or
        // above it (a half and a sticky bit below the quotient), which is all that rounding at any position needs.
        var (q1, r1) = DivideWide(ma, mb);
        UInt128 r2 = (UInt128)r1 << 1;
        ulong rest = r1 == 0 ? 0 : r2 == mb ? 2UL : r2 > mb ? 3UL : 1UL; // half bit, sticky bit
        if ((q1 >> 64) != 0)
        {
            return Round(neg, ea - eb, (q1 << 63) | ((UInt128)rest << 61), false, Format.Register, c.Precision, ref c);
        }

        return Round(neg, ea - eb - 1, (q1 << 64) | ((UInt128)rest << 62), false, Format.Register, c.Precision, ref c);
    }

    /// <summary>(<paramref name="high"/> × 2^64) / <paramref name="divisor"/> (a normalised divisor): the quotient, of up to 65 bits, and the remainder.</summary>
    private static (UInt128 Quotient, ulong Remainder) DivideWide(ulong high, ulong divisor)
    {
        UInt128 top = 0;
        if (high >= divisor)
        {
            // The divisor's top bit is set, so the dividend's high half is below twice the divisor.
            top = (UInt128)1 << 64;
            high -= divisor;
        }

        ulong q = DivideNormalized(high, 0, divisor, out ulong r);
        return (top + q, r);
    }

    /// <summary>
    /// (u1 × 2^64 + u0) / v for a divisor with its top bit set and u1 below it: two steps of long division in 32-bit
    /// digits, each quotient digit estimated from the divisor's top digit and corrected at most twice.
    /// </summary>
    private static ulong DivideNormalized(ulong u1, ulong u0, ulong v, out ulong remainder)
    {
        const ulong B = 1UL << 32;
        ulong vn1 = v >> 32, vn0 = v & 0xFFFFFFFF;
        ulong un1 = u0 >> 32, un0 = u0 & 0xFFFFFFFF;
        ulong q1 = u1 / vn1;
        ulong rhat = u1 - (q1 * vn1);
        while (q1 >= B || q1 * vn0 > (B * rhat) + un1)
        {
            q1--;
            rhat += vn1;
            if (rhat >= B)
            {
                break;
            }
        }

        ulong un21 = unchecked((u1 * B) + un1 - (q1 * v));
        ulong q0 = un21 / vn1;
        rhat = un21 - (q0 * vn1);
        while (q0 >= B || q0 * vn0 > (B * rhat) + un0)
        {
            q0--;
            rhat += vn1;
            if (rhat >= B)
            {
                break;
            }
        }

        remainder = unchecked((un21 * B) + un0 - (q0 * v));
        return (q1 * B) + q0;
    }

    public static Ext80 Sqrt(Ext80 a, ref Context c)
    {
        if (Special(a, a, ref c, out var special))
        {
            return special;
        }

        if (a.IsZero)
        {
            return a;
        }

        if (a.Negative)
        {
            return Invalid(ref c);
        }

        if (DenormalCheck(a, a, ref c))
        {
            return a;
        }

        if (a.IsInfinity)
        {
            return a;
        }

        var (e, m) = Unpack(a);
        UInt128 radicand = (e & 1) == 0 ? (UInt128)m << 63 : (UInt128)m << 64;
        ulong root = ISqrt(radicand, out UInt128 rem);

        // One more bit: the root's next bit is 1 exactly when the remainder exceeds the root (never a tie).
        bool next = rem > root;
        UInt128 sig = ((UInt128)root << 64) | (next ? (UInt128)1 << 63 : 0);
        return Round(false, e >> 1, sig, next || rem != 0, Format.Register, c.Precision, ref c);
    }

    /// <summary>The integer square root of <paramref name="x"/> (at least 2^126) and its remainder.</summary>
    private static ulong ISqrt(UInt128 x, out UInt128 rem)
    {
        // A floating-point estimate, one Newton step (error below one), then the exact floor.
        ulong r = (ulong)Math.Sqrt((double)x);
        r = (ulong)UInt128.Min(((UInt128)r + (x / r)) >> 1, ulong.MaxValue);
        while ((UInt128)r * r > x)
        {
            r--;
        }

        while (r != ulong.MaxValue && (UInt128)(r + 1) * (r + 1) <= x)
        {
            r++;
        }

        rem = x - ((UInt128)r * r);
        return r;
    }

    /// <summary>Compares two values: -1, 0 or 1, or 2 when they are unordered; IE for a signaling NaN, or any NaN when <paramref name="ordered"/>.</summary>
    public static int Compare(Ext80 a, Ext80 b, bool ordered, ref Context c)
    {
        if (a.IsUnsupported || b.IsUnsupported)
        {
            c.Flags |= Ie;
            return 2;
        }

        if (a.IsNaN || b.IsNaN)
        {
            if (ordered || a.IsSignaling || b.IsSignaling)
            {
                c.Flags |= Ie;
            }

            return 2;
        }

        if (DenormalCheck(a, b, ref c))
        {
            return 2;
        }

        if (a.IsZero && b.IsZero)
        {
            return 0;
        }

        if (a.Negative != b.Negative)
        {
            return a.Negative ? -1 : 1;
        }

        int mag = CompareMagnitude(a, b);
        return a.Negative ? -mag : mag;
    }

    private static int CompareMagnitude(Ext80 a, Ext80 b)
    {
        if (a.IsZero || b.IsZero)
        {
            return a.IsZero ? (b.IsZero ? 0 : -1) : 1;
        }

        if (a.IsInfinity || b.IsInfinity)
        {
            return a.IsInfinity ? (b.IsInfinity ? 0 : 1) : -1;
        }

        var (ea, ma) = Unpack(a);
        var (eb, mb) = Unpack(b);
        return ea != eb ? (ea > eb ? 1 : -1) : ma.CompareTo(mb);
    }

    /// <summary>A 32-bit float converted exactly (a signaling NaN stays signaling); <see cref="Context.DenormalOperand"/> for a denormal.</summary>
    public static Ext80 FromSingle(uint bits, ref Context c)
    {
        bool neg = (bits >> 31) != 0;
        int exp = (int)((bits >> 23) & 0xFF);
        ulong frac = bits & 0x7FFFFF;
        return FromBinary(neg, exp, frac, 0xFF, 127, 23, ref c);
    }

    /// <summary>A 64-bit float converted exactly (a signaling NaN stays signaling); <see cref="Context.DenormalOperand"/> for a denormal.</summary>
    public static Ext80 FromDouble(ulong bits, ref Context c)
    {
        bool neg = (bits >> 63) != 0;
        int exp = (int)((bits >> 52) & 0x7FF);
        ulong frac = bits & 0xFFFFFFFFFFFFF;
        return FromBinary(neg, exp, frac, 0x7FF, 1023, 52, ref c);
    }

    private static Ext80 FromBinary(bool neg, int exp, ulong frac, int maxExp, int bias, int fracBits, ref Context c)
    {
        ushort sign = neg ? (ushort)0x8000 : (ushort)0;
        if (exp == maxExp)
        {
            if (frac == 0)
            {
                return Ext80.Infinity(neg);
            }

            return new Ext80(0x8000000000000000 | (frac << (63 - fracBits)), (ushort)(sign | 0x7FFF));
        }

        if (exp == 0)
        {
            if (frac == 0)
            {
                return Ext80.Zero(neg);
            }

            c.DenormalOperand = true;
            int lz = BitOperations.LeadingZeroCount(frac);
            // frac × 2^(1 - bias - fracBits); its top bit is at 63 - lz.
            return new Ext80(frac << lz, (ushort)(sign | (1 - bias - fracBits + (63 - lz) + Ext80.Bias)));
        }

        return new Ext80(0x8000000000000000 | (frac << (63 - fracBits)), (ushort)(sign | (exp - bias + Ext80.Bias)));
    }

    /// <summary>An integer loaded exactly.</summary>
    public static Ext80 FromInteger(long v) => FromMagnitude(v < 0 ? (ulong)(-(v + 1)) + 1 : (ulong)v, v < 0);

    /// <summary>The integer of <paramref name="magnitude"/> and sign <paramref name="negative"/>, exactly (a zero keeps its sign).</summary>
    public static Ext80 FromMagnitude(ulong magnitude, bool negative)
    {
        if (magnitude == 0)
        {
            return Ext80.Zero(negative);
        }

        int lz = BitOperations.LeadingZeroCount(magnitude);
        return new Ext80(magnitude << lz, (ushort)((negative ? 0x8000 : 0) | (Ext80.Bias + 63 - lz)));
    }

    /// <summary>
    /// ST0 stored as a 32- or 64-bit float (the bits in the low part of the result's significand); IE for a signaling
    /// NaN or an unsupported encoding. <see cref="Context.Suppressed"/> when an unmasked exception leaves memory alone.
    /// </summary>
    public static ulong ToBinary(Ext80 v, Format format, ref Context c)
    {
        bool isDouble = format == Format.Double;
        ulong sign = v.Negative ? (isDouble ? 1UL << 63 : 1UL << 31) : 0;
        if (v.IsUnsupported || v.IsNaN)
        {
            if (v.IsUnsupported || v.IsSignaling)
            {
                c.Flags |= Ie;
                if (!c.Masked(Ie))
                {
                    c.Suppressed = true;
                    return 0;
                }
            }

            if (v.IsUnsupported)
            {
                return isDouble ? 0xFFF8000000000000 : 0xFFC00000;
            }

            ulong payload = (v.Mant | 0x4000000000000000) & 0x7FFFFFFFFFFFFFFF;
            return isDouble ? sign | 0x7FF0000000000000 | (payload >> 11) : sign | 0x7F800000 | (payload >> 40);
        }

        if (v.IsInfinity)
        {
            return isDouble ? sign | 0x7FF0000000000000 : sign | 0x7F800000;
        }

        if (v.IsZero)
        {
            return sign;
        }

        // A denormal source raises no DE here (SDM Vol. 2, FST/FSTP): the rounding reports what it loses.
        var (e, m) = Unpack(v);
        var r = Round(v.Negative, e, (UInt128)m << 64, false, format, 64, ref c);
        return r.Mant;
    }

    /// <summary>
    /// <paramref name="v"/> rounded to an integer by the rounding control (toward zero when <paramref name="truncate"/>),
    /// as a sign and magnitude; false when it is not finite or its magnitude is 2^64 or more. PE when inexact, C1 when rounded up.
    /// </summary>
    public static bool ToIntegerMagnitude(Ext80 v, bool truncate, ref Context c, out ulong magnitude, out bool inexact)
    {
        magnitude = 0;
        inexact = false;
        if (v.Exp == 0x7FFF || v.IsUnsupported)
        {
            return false;
        }

        if (v.IsZero)
        {
            return true;
        }

        var (e, m) = Unpack(v);
        if (e > 63)
        {
            return false;
        }

        int s = 63 - e; // fraction bits in m
        ulong ip, frac;
        bool sticky = false;
        if (s == 0)
        {
            ip = m;
            frac = 0;
        }
        else if (s < 64)
        {
            ip = m >> s;
            frac = m << (64 - s);
        }
        else if (s == 64)
        {
            ip = 0;
            frac = m;
        }
        else
        {
            ip = 0;
            frac = s >= 128 ? 0 : m >> (s - 64);
            sticky = s >= 128 || (m << (128 - s)) != 0;
        }

        inexact = frac != 0 || sticky;
        int versusHalf = frac > 0x8000000000000000 || (frac == 0x8000000000000000 && sticky) ? 1 : frac == 0x8000000000000000 ? 0 : -1;
        bool up = RoundsUp(truncate ? 3 : c.Rounding, v.Negative, versusHalf, inexact, (ip & 1) != 0);
        if (up)
        {
            if (ip == ulong.MaxValue)
            {
                return false;
            }

            ip++;
        }

        c.RoundedUp = up;
        magnitude = ip;
        return true;
    }

    /// <summary>FRNDINT: <paramref name="v"/> rounded to an integer in the register format (PE when inexact, C1 when rounded up).</summary>
    public static Ext80 RoundToInteger(Ext80 v, ref Context c)
    {
        if (Special(v, v, ref c, out var special))
        {
            return special;
        }

        if (v.IsInfinity || v.IsZero)
        {
            return v;
        }

        if (v.IsDenormal)
        {
            c.Flags |= De;
        }

        var (e, _) = Unpack(v);
        if (e >= 63)
        {
            return v;
        }

        ToIntegerMagnitude(v, false, ref c, out ulong mag, out bool inexact);
        if (inexact)
        {
            c.Flags |= Pe;
        }

        return FromMagnitude(mag, v.Negative);
    }

    /// <summary>FSCALE: <paramref name="a"/> × 2^trunc(<paramref name="b"/>).</summary>
    public static Ext80 Scale(Ext80 a, Ext80 b, ref Context c)
    {
        if (Special(a, b, ref c, out var special))
        {
            return special;
        }

        if (b.IsInfinity && (b.Negative ? a.IsInfinity : a.IsZero))
        {
            return Invalid(ref c);
        }

        if (DenormalCheck(a, b, ref c))
        {
            return a;
        }

        if (b.IsInfinity)
        {
            return b.Negative ? Ext80.Zero(a.Negative) : Ext80.Infinity(a.Negative);
        }

        if (a.IsInfinity || a.IsZero)
        {
            return a;
        }

        // trunc(b), clamped far beyond any reachable result.
        int n;
        if (b.IsZero)
        {
            n = 0;
        }
        else
        {
            var (eb, mb) = Unpack(b);
            long t = eb < 0 ? 0 : eb > 30 ? 1 << 30 : (long)(mb >> (63 - eb));
            n = (int)Math.Min(t, 1 << 20) * (b.Negative ? -1 : 1);
        }

        var (ea, ma) = Unpack(a);
        return Round(a.Negative, ea + n, (UInt128)ma << 64, false, Format.Register, 64, ref c);
    }

    /// <summary>
    /// FPREM (quotient truncated) or FPREM1 (rounded to nearest) of <paramref name="a"/> by <paramref name="b"/>, exactly.
    /// An exponent difference of 64 or more gives a partial remainder: the difference reduced by 32 to 63, the
    /// quotient truncated.
    /// </summary>
    public static Ext80 Remainder(Ext80 a, Ext80 b, bool ieee, ref Context c, out ulong quotient, out bool partial)
    {
        quotient = 0;
        partial = false;
        if (Special(a, b, ref c, out var special))
        {
            return special;
        }

        if (a.IsInfinity || b.IsZero)
        {
            return Invalid(ref c);
        }

        if (DenormalCheck(a, b, ref c))
        {
            return a;
        }

        if (a.IsZero)
        {
            return a;
        }

        var (ea, ma) = Unpack(a);
        if (b.IsInfinity)
        {
            // The remainder is a itself, delivered as a result: a pseudo-denormal comes back normal, a tiny value reports an unmasked underflow.
            return Round(a.Negative, ea, (UInt128)ma << 64, false, Format.Register, 64, ref c);
        }

        var (eb, mb) = Unpack(b);
        int d = ea - eb;
        partial = d >= 64;
        int shift = partial ? 32 + ((d - 64) % 32) : d;
        bool negative = a.Negative;
        UInt128 r;
        if (shift < 0)
        {
            r = ma;
            // FPREM1 rounds to nearest: a little over half of b gives a quotient of one.
            if (ieee && shift == -1 && ma > mb)
            {
                quotient = 1;
                r = ((UInt128)mb << 1) - ma; // in units of a's last place, half of b's
                negative = !negative;
            }
        }
        else
        {
            UInt128 n = (UInt128)ma << shift;
            UInt128 q = n / mb;
            r = n - (q * mb);
            if (ieee && !partial && ((r << 1) > mb || ((r << 1) == mb && (q & 1) != 0)))
            {
                q++;
                r = mb - r;
                negative = !negative;
            }

            quotient = (ulong)q;
        }

        // r counts units of b's last place; of a's when a is the smaller, and of b's scaled by the step when partial.
        int unit = (shift < 0 ? ea : partial ? ea - shift : eb) - 63;
        return r == 0 ? Ext80.Zero(a.Negative) : Round(negative, unit + 127, r, false, Format.Register, 64, ref c);
    }
}
