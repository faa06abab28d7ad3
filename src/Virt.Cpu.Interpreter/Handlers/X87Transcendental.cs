using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// x87 transcendental, scaling, remainder and packed-BCD instructions, and FRNDINT, FTST, FXAM, FINCSTP, FDECSTP,
/// FFREE(P), FNOP and FCMOVcc. FSCALE, FXTRACT, FPREM, FPREM1, FRNDINT, FTST, FBLD and FBSTP are exact on the
/// 80-bit format (<see cref="X87Float"/>); the transcendental functions are computed in binary64, so their results
/// carry at most 53 significant bits.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    private const double TwoTo63 = 9223372036854775808.0;

    private static double Indefinite => BitConverter.UInt64BitsToDouble(0xFFF8000000000000);

    private void SetC2(bool on) =>
        _cpu.Fpu.StatusWord = (ushort)(on ? _cpu.Fpu.StatusWord | FswC2 : _cpu.Fpu.StatusWord & ~FswC2);

    /// <summary>IE for an invalid operand; masked, the result is the indefinite NaN, unmasked the instruction ends here.</summary>
    private double X87Invalid()
    {
        var c = FpuContext();
        c.Flags = X87Float.Ie;
        X87Commit(in c, setC1: false);
        return Indefinite;
    }

    /// <summary>Commits the flags of an exact operation on ST0 and writes its result there.</summary>
    private void X87SetSt0(Ext80 r, in X87Float.Context c, bool setC1 = true)
    {
        X87Commit(in c, setC1);
        SetStX(0, r);
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

    /// <summary>ST0 rounded to an integer by the rounding control, as a magnitude; false when it is not finite or not below 2^64. PE when inexact.</summary>
    private bool St0ToIntegerMagnitude(ref X87Float.Context c, out ulong magnitude, out bool negative)
    {
        var v = StX(0);
        negative = v.Negative;
        if (!X87Float.ToIntegerMagnitude(v, false, ref c, out magnitude, out bool inexact))
        {
            return false;
        }

        if (inexact)
        {
            c.Flags |= X87Float.Pe;
        }

        return true;
    }

    /// <summary>FPREM/FPREM1 on ST0 and ST1: the last three quotient bits in C0, C3 and C1, and C2 set for a partial remainder.</summary>
    private void Fprem(bool ieee)
    {
        // A stack underflow, a NaN or an invalid operand leave C0 and C3 as they were and clear C1 and C2.
        if (X87Empty(0, 1))
        {
            SetStX(0, Ext80.Indefinite);
            _cpu.Fpu.StatusWord &= unchecked((ushort)~(FswC1 | FswC2));
            return;
        }

        var c = FpuContext();
        var a = StX(0);
        var b = StX(1);
        var r = X87Float.Remainder(a, b, ieee, ref c, out ulong q, out bool partial);
        if (!X87Writes(in c))
        {
            _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC2); // an unmasked exception: C2 clear (and C1, as the commit does)
        }

        X87Commit(in c, setC1: false);
        SetStX(0, r);
        if (r.IsNaN)
        {
            _cpu.Fpu.StatusWord &= unchecked((ushort)~(FswC1 | FswC2));
            return;
        }

        // A partial remainder reports C2 alone; a complete one the quotient's last three bits.
        ushort cc = partial ? FswC2 : (ushort)(((q & 4) != 0 ? FswC0 : 0) | ((q & 2) != 0 ? FswC3 : 0) | ((q & 1) != 0 ? FswC1 : 0));
        _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(FswC0 | FswC1 | FswC2 | FswC3)) | cc);
    }

    /// <summary>FXTRACT: ST0 becomes its exponent and its significand (exponent 0) is pushed; ZE for a zero, whose exponent is -inf.</summary>
    private void Fxtract()
    {
        if (X87Empty(0, 0))
        {
            // Underflow: C1 reports it (clear), also when the push overflows as well.
            SetStX(0, Ext80.Indefinite);
            FpuPushX(Ext80.Indefinite);
            _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
            return;
        }

        var v = StX(0);
        var c = FpuContext();
        Ext80 exponent, significand;
        if (v.IsUnsupported || v.IsNaN)
        {
            exponent = significand = v.IsNaN ? X87Float.PropagateNaN(v, v, ref c) : Ext80.Indefinite;
            if (v.IsUnsupported)
            {
                c.Flags |= X87Float.Ie;
            }
        }
        else if (v.IsInfinity)
        {
            exponent = Ext80.Infinity(false);
            significand = v;
        }
        else if (v.IsZero)
        {
            c.Flags |= X87Float.Ze;
            exponent = Ext80.Infinity(true);
            significand = v;
        }
        else
        {
            if (v.IsDenormal)
            {
                c.Flags |= X87Float.De;
            }

            int lz = v.Exp == 0 ? System.Numerics.BitOperations.LeadingZeroCount(v.Mant) : 0;
            int e = v.Exp == 0 ? X87Float.ExtMin - lz : v.Exp - Ext80.Bias;
            exponent = X87Float.FromInteger(e);
            significand = new Ext80(v.Mant << lz, (ushort)((v.Se & 0x8000) | Ext80.Bias));
        }

        if (X87Full)
        {
            // A stack overflow: masked, both ST0 and the pushed register hold the indefinite NaN.
            StackFault(true);
            SetStX(0, Ext80.Indefinite);
            FpuPushX(Ext80.Indefinite);
            return;
        }

        X87Commit(in c, setC1: false);
        SetStX(0, exponent);
        FpuPushX(significand);
    }

    /// <summary>FCMOVcc: copies ST(i) to ST0 (all 80 bits) when condition <paramref name="cc"/> holds; either register empty is a stack underflow.</summary>
    private bool Fcmov(in Instruction ins, int cc)
    {
        int i = StIndex(ins.Op1Register);
        if (!StValid(0) || !StValid(i))
        {
            StackFault(false);
            SetStX(0, Ext80.Indefinite);
            _cpu.Fpu.AbridgedTagWord |= (byte)(1 << FpuTop);
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
        var c = FpuContext();
        if (StValid(0) && St0ToIntegerMagnitude(ref c, out ulong v, out bool neg) && v < 1_000_000_000_000_000_000UL)
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
            c.Flags = X87Float.Ie;
            c.RoundedUp = false;
            lo = 0xC000000000000000; // the packed-BCD indefinite value
            hi = 0xFFFF;
        }

        if (X87Writes(in c))
        {
            Write(ea, 8, lo);
            Write(ea + 8, 2, hi);
        }

        X87Commit(in c);
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
                if (X87Empty(0, 1))
                {
                    SetStX(0, Ext80.Indefinite);
                    return true;
                }

                var c = FpuContext();
                var r = X87Float.Scale(StX(0), StX(1), ref c);
                X87SetSt0(r, in c);
                return true;
            }

            case Mnemonic.Fprem:
            case Mnemonic.Fprem1:
                Fprem(ins.Mnemonic == Mnemonic.Fprem1);
                return true;

            case Mnemonic.Fxtract:
                Fxtract();
                return true;

            case Mnemonic.Frndint:
            {
                if (X87Empty(0, 0))
                {
                    SetStX(0, Ext80.Indefinite);
                    return true;
                }

                var c = FpuContext();
                var r = X87Float.RoundToInteger(StX(0), ref c);
                X87SetSt0(r, in c);
                return true;
            }

            case Mnemonic.Ftst:
            {
                if (!StValid(0))
                {
                    SetFpuCompare(2);
                    StackFault(false);
                    return true;
                }

                var c = FpuContext();
                int r = X87Float.Compare(StX(0), Ext80.Zero(false), true, ref c);
                SetFpuCompare(r); // also when an unmasked IE follows
                X87Commit(in c, setC1: false);
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
                _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
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
