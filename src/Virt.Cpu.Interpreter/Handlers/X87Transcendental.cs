using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// x87 transcendental, scaling, remainder and packed-BCD instructions, and FRNDINT, FTST, FXAM, FINCSTP, FDECSTP,
/// FFREE(P), FNOP and FCMOVcc. FSCALE, FXTRACT, FPREM, FPREM1, FRNDINT, FTST, FBLD and FBSTP are exact on the
/// 80-bit format (<see cref="X87Float"/>); the transcendental functions are rounded from double-double results
/// (<see cref="X87Math"/>), within one unit in the last place.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    private void SetC2(bool on) =>
        _cpu.Fpu.StatusWord = (ushort)(on ? _cpu.Fpu.StatusWord | FswC2 : _cpu.Fpu.StatusWord & ~FswC2);

    /// <summary>Commits the flags of an exact operation on ST0 and writes its result there.</summary>
    private void X87SetSt0(Ext80 r, in X87Float.Context c, bool setC1 = true)
    {
        X87Commit(in c, setC1);
        SetStX(0, r);
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
        if (!StValid(0) || !StValid(1))
        {
            _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC2); // also when an unmasked IE ends the instruction here
            StackFault(false);
            SetStX(0, Ext80.Indefinite);
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
        if (X87Float.Special(v, v, ref c, out var special))
        {
            exponent = significand = special;
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

            var (e, m) = X87Float.Unpack(v);
            exponent = X87Float.FromInteger(e);
            significand = new Ext80(m, (ushort)((v.Se & 0x8000) | Ext80.Bias));
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

        FpuPushX(X87Float.FromMagnitude(v, (hi & 0x8000) != 0));
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

    /// <summary>FSIN, FCOS, FPTAN (which then pushes 1) and FSINCOS (ST1 the sine, ST0 the cosine); C2 and the operand kept for |x| of 2^63 or more.</summary>
    private void SinCos(Mnemonic m)
    {
        bool pushes = m is Mnemonic.Fptan or Mnemonic.Fsincos;
        if (X87Empty(0, 0))
        {
            SetStX(0, Ext80.Indefinite);
            if (pushes)
            {
                FpuPushX(Ext80.Indefinite);
            }

            return;
        }

        var x = StX(0);
        if (x.Exp != 0x7FFF && !x.IsUnsupported && x.Exp - Ext80.Bias >= 63)
        {
            SetC2(true); // out of range: the operand stays, as an incomplete reduction
            return;
        }

        var c = FpuContext();
        Ext80 first, second;
        if (x.IsUnsupported || x.IsInfinity || x.IsNaN)
        {
            first = x.IsNaN ? X87Float.PropagateNaN(x, x, ref c) : Ext80.Indefinite;
            if (!x.IsNaN)
            {
                c.Flags |= X87Float.Ie;
            }

            second = m == Mnemonic.Fptan && !x.IsNaN ? Ext80.Indefinite : first;
        }
        else if (X87Float.DenormalCheck(x, x, ref c))
        {
            first = second = x;
        }
        else
        {
            var sc = c;
            var cc = c;
            var tc = c;
            var (sin, cos, tan) = X87Math.SinCosTan(x, ref sc, ref cc, ref tc);
            (first, second, c) = m switch
            {
                Mnemonic.Fsin => (sin, default, sc),
                Mnemonic.Fcos => (cos, default, cc),
                Mnemonic.Fptan => (tan, new Ext80(0x8000000000000000, 0x3FFF), tc),
                _ => (sin, cos, cc),
            };
            if (m == Mnemonic.Fsincos)
            {
                c.Flags |= sc.Flags;
            }
        }

        if (pushes && X87Full)
        {
            FpuPushX(Ext80.Indefinite); // a stack overflow: nothing else is reported
            return;
        }

        X87Commit(in c);
        SetC2(false);
        SetStX(0, first);
        if (pushes)
        {
            FpuPushX(second);
            if (c.RoundedUp)
            {
                _cpu.Fpu.StatusWord |= FswC1;
            }
        }
    }

    /// <summary>For the instructions that leave their result in ST1 and pop: a stack underflow (masked, ST1 becomes the indefinite NaN and the pop happens).</summary>
    private bool BinaryPopUnderflow()
    {
        if (!X87Empty(0, 1))
        {
            return false;
        }

        SetStX(1, Ext80.Indefinite);
        FpuPop();
        return true;
    }

    /// <summary>FPATAN: ST1 becomes the angle of (ST0, ST1), then a pop; zeros and infinities give the SDM's exact angles.</summary>
    private void Fpatan()
    {
        if (BinaryPopUnderflow())
        {
            return;
        }

        var x = StX(0);
        var y = StX(1);
        var c = FpuContext();
        var r = X87Float.Special(x, y, ref c, out var special) ? special : FpatanOperands(x, y, ref c);
        X87Commit(in c);
        SetStX(1, r);
        FpuPop();
    }

    /// <summary>FPATAN on operands that are numbers: zeros and infinities give the SDM's exact angles, the rest computed.</summary>
    private static Ext80 FpatanOperands(Ext80 x, Ext80 y, ref X87Float.Context c)
    {
        if (X87Float.DenormalCheck(x, y, ref c))
        {
            return y;
        }

        if (y.IsZero)
        {
            return x.Negative ? X87Math.Angle(4, y.Negative, ref c) : y;
        }

        if (y.IsInfinity)
        {
            return X87Math.Angle(x.IsInfinity ? (x.Negative ? 3 : 1) : 2, y.Negative, ref c);
        }

        if (x.IsZero)
        {
            return X87Math.Angle(2, y.Negative, ref c);
        }

        if (x.IsInfinity)
        {
            return x.Negative ? X87Math.Angle(4, y.Negative, ref c) : Ext80.Zero(y.Negative);
        }

        return X87Math.Atan2(y, x, ref c);
    }

    /// <summary>F2XM1: ST0 becomes 2^ST0 - 1.</summary>
    private void F2xm1()
    {
        if (X87Empty(0, 0))
        {
            SetStX(0, Ext80.Indefinite);
            return;
        }

        var x = StX(0);
        var c = FpuContext();
        Ext80 r;
        if (x.IsUnsupported)
        {
            c.Flags |= X87Float.Ie;
            r = Ext80.Indefinite;
        }
        else if (x.IsNaN)
        {
            r = X87Float.PropagateNaN(x, x, ref c);
        }
        else if (X87Float.DenormalCheck(x, x, ref c) || x.IsZero)
        {
            r = x;
        }
        else if (x.IsInfinity)
        {
            r = x.Negative ? new Ext80(0x8000000000000000, 0xBFFF) : x;
        }
        else
        {
            r = X87Math.Exp2M1(x, ref c);
        }

        X87Commit(in c);
        SetStX(0, r);
    }

    /// <summary>FYL2X (ST1 × log2 ST0) and FYL2XP1 (ST1 × log2(ST0 + 1)): the result in ST1, then a pop.</summary>
    private void Fyl2x(bool plusOne)
    {
        if (BinaryPopUnderflow())
        {
            return;
        }

        var x = StX(0);
        var y = StX(1);
        var c = FpuContext();
        var r = X87Float.Special(x, y, ref c, out var special) ? special : Fyl2xOperands(x, y, plusOne, ref c);
        X87Commit(in c);
        SetStX(1, r);
        FpuPop();
    }

    /// <summary>FYL2X and FYL2XP1 on operands that are numbers: zeros and infinities by the SDM's table, the rest computed.</summary>
    private static Ext80 Fyl2xOperands(Ext80 x, Ext80 y, bool plusOne, ref X87Float.Context c)
    {
        var one = new Ext80(0x8000000000000000, 0x3FFF);
        if (plusOne ? X87Float.Compare(x, one.WithSign(true), true, ref c) < 0 : x.Negative && !x.IsZero)
        {
            return Invalid(ref c); // the logarithm of a negative number
        }

        // The logarithm's sign and class: log2 x is -inf at 0, 0 at 1, +inf at +inf.
        bool logZero = plusOne ? x.IsZero : X87Float.Compare(x, one, true, ref c) == 0;
        bool logInfinite = x.IsInfinity || (plusOne ? X87Float.Compare(x, one.WithSign(true), true, ref c) == 0 : x.IsZero);
        bool logNegative = plusOne ? x.Negative : X87Float.Compare(x, one, true, ref c) < 0;
        bool negative = y.Negative ^ logNegative;
        if (logZero && y.IsInfinity)
        {
            return Invalid(ref c);
        }

        if (logInfinite)
        {
            if (y.IsZero)
            {
                return Invalid(ref c);
            }

            if (!x.IsInfinity && !y.IsInfinity)
            {
                c.Flags |= X87Float.Ze; // the logarithm of zero, ahead of a denormal operand
                return Ext80.Infinity(negative);
            }
        }

        if (X87Float.DenormalCheck(x, y, ref c))
        {
            return y;
        }

        if (logZero)
        {
            return Ext80.Zero(negative);
        }

        if (logInfinite || y.IsInfinity || y.IsZero)
        {
            return logInfinite || y.IsInfinity ? Ext80.Infinity(negative) : Ext80.Zero(negative);
        }

        return plusOne ? X87Math.YLog2XPlus1(y, x, ref c) : X87Math.YLog2X(y, x, ref c);
    }

    private static Ext80 Invalid(ref X87Float.Context c)
    {
        c.Flags |= X87Float.Ie;
        return Ext80.Indefinite;
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
                SinCos(ins.Mnemonic);
                return true;
            case Mnemonic.Fpatan:
                Fpatan();
                return true;
            case Mnemonic.F2xm1:
                F2xm1();
                return true;
            case Mnemonic.Fyl2x:
            case Mnemonic.Fyl2xp1:
                Fyl2x(ins.Mnemonic == Mnemonic.Fyl2xp1);
                return true;
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
