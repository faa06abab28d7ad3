using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// x87 transcendental, scaling, remainder and packed-BCD instructions, and FRNDINT, FTST, FXAM, FINCSTP, FDECSTP,
/// FFREE(P), FNOP and FCMOVcc. Like the rest of the x87 the arithmetic ones compute in
/// binary64 (see X87Arith): results carry at most 53 significant bits. FBLD and FBSTP convert between packed BCD
/// and the 80-bit register format exactly.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    private const double TwoTo63 = 9223372036854775808.0;

    private static double Indefinite => BitConverter.UInt64BitsToDouble(0xFFF8000000000000);

    private void SetC2(bool on) =>
        _cpu.Fpu.StatusWord = (ushort)(on ? _cpu.Fpu.StatusWord | FswC2 : _cpu.Fpu.StatusWord & ~FswC2);

    /// <summary>IE for an invalid operand; masked, the result is the indefinite NaN.</summary>
    private double X87Invalid()
    {
        _cpu.Fpu.StatusWord |= FswIe;
        if ((_cpu.Fpu.ControlWord & 1) == 0)
        {
            throw Fault(Vectors.MF, 0);
        }

        return Indefinite;
    }

    /// <summary>ln(1 + x) without the cancellation of forming 1 + x.</summary>
    private static double Log1p(double x)
    {
        double u = 1.0 + x;
        return u == 1.0 ? x : Math.Log(u) * x / (u - 1.0);
    }

    /// <summary>The 80-bit register value of an integer of magnitude below 2^64.</summary>
    private static (ushort Se, ulong Mant) IntegerToExtended(ulong magnitude, bool negative)
    {
        if (magnitude == 0)
        {
            return (negative ? (ushort)0x8000 : (ushort)0, 0);
        }

        int lz = System.Numerics.BitOperations.LeadingZeroCount(magnitude);
        return ((ushort)((negative ? 0x8000 : 0) | (16383 + 63 - lz)), magnitude << lz);
    }

    /// <summary>ST0 rounded to an integer by the rounding control, as a magnitude; false when it is not finite or not below 2^64.</summary>
    private bool St0ToIntegerMagnitude(out ulong magnitude, out bool negative)
    {
        ref byte p = ref StSlot(0);
        ulong mant = Unsafe.ReadUnaligned<ulong>(ref p);
        ushort se = Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref p, 8));
        negative = (se & 0x8000) != 0;
        int exp = se & 0x7FFF;
        magnitude = 0;
        if (exp == 0x7FFF)
        {
            return false;
        }

        if (mant == 0)
        {
            return true;
        }

        int e = exp - 16383;
        if (e > 63)
        {
            return false;
        }

        ulong integer, frac, half;
        bool fracAboveHalf, fracIsHalf, fracNonZero;
        if (e < 0)
        {
            integer = 0;
            fracNonZero = true;
            fracIsHalf = e == -1 && mant == 1UL << 63;
            fracAboveHalf = e == -1 && mant != 1UL << 63;
        }
        else
        {
            int shift = 63 - e;
            integer = shift == 0 ? mant : mant >> shift;
            frac = shift == 0 ? 0 : mant & ((1UL << shift) - 1);
            half = shift == 0 ? 0 : 1UL << (shift - 1);
            fracNonZero = frac != 0;
            fracIsHalf = shift != 0 && frac == half;
            fracAboveHalf = shift != 0 && frac > half;
        }

        int rc = (_cpu.Fpu.ControlWord >> 10) & 3;
        bool up = rc switch
        {
            0 => fracAboveHalf || (fracIsHalf && (integer & 1) != 0),
            1 => negative && fracNonZero,
            2 => !negative && fracNonZero,
            _ => false,
        };
        if (up)
        {
            if (integer == ulong.MaxValue)
            {
                return false;
            }

            integer++;
        }

        magnitude = integer;
        return true;
    }

    /// <summary>FCMOVcc: copies ST(i) to ST0 (all 80 bits) when condition <paramref name="cc"/> holds; either register empty is a stack underflow.</summary>
    private bool Fcmov(in Instruction ins, int cc)
    {
        int i = StIndex(ins.Op1Register);
        if (!StValid(0) || !StValid(i))
        {
            StackFault(false);
            SetSt(0, Indefinite);
            return true;
        }

        _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
        if (Cond(cc))
        {
            Unsafe.CopyBlockUnaligned(ref StSlot(0), ref StSlot(i), 16);
        }

        return true;
    }

    /// <summary>FXAM's class of ST0 in C3/C2/C0, with its sign in C1.</summary>
    private ushort Fxam()
    {
        ref byte p = ref StSlot(0);
        ulong mant = Unsafe.ReadUnaligned<ulong>(ref p);
        ushort se = Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref p, 8));
        ushort sign = (se & 0x8000) != 0 ? FswC1 : (ushort)0;
        int exp = se & 0x7FFF;
        ushort cls;
        if (!StValid(0))
        {
            cls = (ushort)(FswC3 | FswC0);
        }
        else if (exp == 0x7FFF)
        {
            cls = (mant >> 63) == 0 ? (ushort)0 : (mant << 1) == 0 ? (ushort)(FswC2 | FswC0) : FswC0;
        }
        else if (exp == 0)
        {
            cls = mant == 0 ? FswC3 : (ushort)(FswC3 | FswC2);
        }
        else
        {
            cls = (mant >> 63) == 0 ? (ushort)0 : FswC2;
        }

        return (ushort)(cls | sign);
    }

    private void Fbld(ulong ea)
    {
        ulong lo = Read(ea, 8);
        ulong hi = Read(ea + 8, 2);
        ulong v = 0;
        for (int i = 8; i >= 0; i--)
        {
            int b = (int)((i < 8 ? lo >> (i * 8) : hi) & 0xFF);
            v = (v * 100) + (ulong)((b >> 4) * 10) + (ulong)(b & 15);
        }

        var (se, mant) = IntegerToExtended(v, (hi & 0x8000) != 0);
        FpuPushConstant(se, mant);
    }

    private void Fbstp(ulong ea)
    {
        ProbeWrite(ea, 10);
        if (!StValid(0))
        {
            StackFault(false);
        }

        ulong lo, hi;
        if (StValid(0) && St0ToIntegerMagnitude(out ulong v, out bool neg) && v < 1_000_000_000_000_000_000UL)
        {
            lo = 0;
            for (int i = 0; i < 8; i++)
            {
                ulong pair = v % 100;
                v /= 100;
                lo |= (((pair / 10) << 4) | (pair % 10)) << (i * 8);
            }

            ulong last = v % 100;
            hi = ((last / 10) << 4) | (last % 10) | (neg ? 0x8000UL : 0);
        }
        else
        {
            X87Invalid();
            lo = 0xC000000000000000; // the packed-BCD indefinite value
            hi = 0xFFFF;
        }

        Write(ea, 8, lo);
        Write(ea + 8, 2, hi);
        FpuPop();
    }

    /// <summary>x87 transcendental and related instructions; returns false when <paramref name="ins"/> is not one of them.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per x87 instruction, each a few lines: the group's table in code form.")]
    private bool ExecX87Transcendental(ref Op op, in Instruction ins)
    {
        switch (ins.Mnemonic)
        {
            case Mnemonic.Fsin:
            case Mnemonic.Fcos:
            case Mnemonic.Fptan:
            case Mnemonic.Fsincos:
            {
                double x = St(0);
                if (Math.Abs(x) >= TwoTo63 && !double.IsInfinity(x))
                {
                    SetC2(true); // out of range: the operand stays, as an incomplete reduction
                    return true;
                }

                SetC2(false);
                if (double.IsInfinity(x))
                {
                    x = X87Invalid();
                }

                switch (ins.Mnemonic)
                {
                    case Mnemonic.Fsin: SetSt(0, Math.Sin(x)); break;
                    case Mnemonic.Fcos: SetSt(0, Math.Cos(x)); break;
                    case Mnemonic.Fptan:
                        SetSt(0, Math.Tan(x));
                        FpuPush(double.IsNaN(x) ? x : 1.0);
                        break;
                    default:
                        SetSt(0, Math.Sin(x));
                        FpuPush(Math.Cos(x));
                        break;
                }

                return true;
            }

            case Mnemonic.Fpatan:
                SetSt(1, Math.Atan2(St(1), St(0)));
                FpuPop();
                return true;
            case Mnemonic.F2xm1:
            {
                double x = St(0);
                SetSt(0, Math.Abs(x) < 1e-5 ? Math.Exp(x * Math.Log(2)) - 1.0 : Math.Pow(2, x) - 1.0);
                return true;
            }

            case Mnemonic.Fyl2x:
            {
                double x = St(0), y = St(1);
                SetSt(1, x < 0 && !double.IsNaN(x) ? X87Invalid() : y * Math.Log2(x));
                FpuPop();
                return true;
            }

            case Mnemonic.Fyl2xp1:
            {
                double x = St(0), y = St(1);
                SetSt(1, x < -1 ? X87Invalid() : y * Log1p(x) / Math.Log(2));
                FpuPop();
                return true;
            }

            case Mnemonic.Fscale:
            {
                double x = St(0), s = Math.Truncate(St(1));
                double r = double.IsNaN(s) ? s : double.IsInfinity(s) ? (x == 0 && s > 0) || (double.IsInfinity(x) && s < 0) ? X87Invalid() : s > 0 ? x * double.PositiveInfinity : x * 0.0
                    : Math.ScaleB(x, (int)Math.Clamp(s, -100000, 100000));
                SetSt(0, double.IsNaN(x) ? x : r);
                return true;
            }

            case Mnemonic.Fprem:
            case Mnemonic.Fprem1:
            {
                double a = St(0), b = St(1);
                if (double.IsNaN(a) || double.IsNaN(b) || double.IsInfinity(a) || b == 0)
                {
                    SetSt(0, double.IsNaN(a) ? a : double.IsNaN(b) ? b : X87Invalid());
                    SetC2(false);
                    return true;
                }

                if (a == 0 || double.IsInfinity(b))
                {
                    SetC2(false);
                    _cpu.Fpu.StatusWord &= unchecked((ushort)~(FswC0 | FswC1 | FswC3));
                    return true;
                }

                int d = Math.ILogB(a) - Math.ILogB(b);
                if (d >= 64)
                {
                    // Incomplete: reduce the exponent difference by up to 63 and report C2 for another round.
                    double y = Math.ScaleB(b, d - 63);
                    SetSt(0, a % y); // partial steps chop the quotient toward zero for FPREM1 too
                    SetC2(true);
                    return true;
                }

                double q = ins.Mnemonic == Mnemonic.Fprem ? Math.Truncate(a / b) : Math.Round(a / b, MidpointRounding.ToEven);
                double r = ins.Mnemonic == Mnemonic.Fprem ? a % b : Math.IEEERemainder(a, b);
                ulong qb = (ulong)Math.Abs(q % 8);
                ushort cc = (ushort)(((qb & 4) != 0 ? FswC0 : 0) | ((qb & 2) != 0 ? FswC3 : 0) | ((qb & 1) != 0 ? FswC1 : 0));
                _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(FswC0 | FswC1 | FswC2 | FswC3)) | cc);
                SetSt(0, r);
                return true;
            }

            case Mnemonic.Fxtract:
            {
                double x = St(0);
                if (double.IsNaN(x) || double.IsInfinity(x))
                {
                    SetSt(0, double.IsInfinity(x) ? double.PositiveInfinity : x); // the exponent of an infinity is +inf
                    FpuPush(x);
                    return true;
                }

                if (x == 0)
                {
                    // Divide-by-zero (not raised: the x87 raises only stack faults and IE here): exponent -inf.
                    SetSt(0, double.NegativeInfinity);
                    FpuPush(x);
                    return true;
                }

                int e = Math.ILogB(x);
                SetSt(0, e);
                FpuPush(Math.ScaleB(x, -e));
                return true;
            }

            case Mnemonic.Frndint:
            {
                double x = St(0);
                SetSt(0, ((_cpu.Fpu.ControlWord >> 10) & 3) switch
                {
                    0 => Math.Round(x, MidpointRounding.ToEven),
                    1 => Math.Floor(x),
                    2 => Math.Ceiling(x),
                    _ => Math.Truncate(x),
                });
                return true;
            }

            case Mnemonic.Ftst:
            {
                double a = St(0);
                ushort cc = double.IsNaN(a) ? (ushort)(FswC0 | FswC2 | FswC3) : a > 0 ? (ushort)0 : a < 0 ? FswC0 : FswC3;
                _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(FswC0 | FswC1 | FswC2 | FswC3)) | cc);
                return true;
            }

            case Mnemonic.Fxam:
                _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(FswC0 | FswC1 | FswC2 | FswC3)) | Fxam());
                return true;
            case Mnemonic.Fincstp:
            case Mnemonic.Fdecstp:
            {
                // The register file is kept in stack order: moving TOP rotates it, contents and tags stay.
                bool inc = ins.Mnemonic == Mnemonic.Fincstp;
                Span<byte> regs = _cpu.Fpu.Registers;
                Span<byte> copy = stackalloc byte[128];
                regs.CopyTo(copy);
                for (int i = 0; i < 8; i++)
                {
                    copy.Slice(((i + (inc ? 1 : 7)) & 7) * 16, 16).CopyTo(regs.Slice(i * 16, 16));
                }

                SetFpuTop(FpuTop + (inc ? 1 : -1));
                _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
                return true;
            }

            case Mnemonic.Ffree:
            case Mnemonic.Ffreep:
                _cpu.Fpu.AbridgedTagWord &= (byte)~(1 << ((FpuTop + StIndex(ins.Op0Register)) & 7));
                if (ins.Mnemonic == Mnemonic.Ffreep)
                {
                    FpuPop();
                }

                return true;
            case Mnemonic.Fnop:
                return true;
            case Mnemonic.Fcmovb: return Fcmov(in ins, 2);
            case Mnemonic.Fcmovnb: return Fcmov(in ins, 3);
            case Mnemonic.Fcmove: return Fcmov(in ins, 4);
            case Mnemonic.Fcmovne: return Fcmov(in ins, 5);
            case Mnemonic.Fcmovbe: return Fcmov(in ins, 6);
            case Mnemonic.Fcmovnbe: return Fcmov(in ins, 7);
            case Mnemonic.Fcmovu: return Fcmov(in ins, 10);
            case Mnemonic.Fcmovnu: return Fcmov(in ins, 11);
            case Mnemonic.Fbld:
                Fbld(Ea(ref op));
                return true;
            case Mnemonic.Fbstp:
                Fbstp(Ea(ref op));
                return true;
            default:
                return false;
        }
    }
}
