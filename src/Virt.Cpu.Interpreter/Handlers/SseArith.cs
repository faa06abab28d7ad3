using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>SSE/SSE2 floating-point arithmetic, compares and conversions.</summary>
internal sealed partial class InterpreterVcpu
{
    private Vector128<byte> FloatLanes(Vector128<byte> a, Vector128<byte> b, int kind, bool dbl, bool scalar)
    {
        if (dbl)
        {
            var x = a.AsDouble();
            var y = b.AsDouble();
            for (int i = 0; i < (scalar ? 1 : 2); i++)
            {
                x = x.WithElement(i, FpArith(kind, x.GetElement(i), y.GetElement(i)));
            }

            return x.AsByte();
        }

        var f = a.AsSingle();
        var g = b.AsSingle();
        for (int i = 0; i < (scalar ? 1 : 4); i++)
        {
            f = f.WithElement(i, FpArith(kind, f.GetElement(i), g.GetElement(i)));
        }

        return f.AsByte();
    }

    private Vector128<byte> CompareLanes(Vector128<byte> a, Vector128<byte> b, int pred, bool dbl, bool scalar)
    {
        if (dbl)
        {
            var x = a.AsDouble();
            var y = b.AsDouble();
            var r = a.AsUInt64();
            for (int i = 0; i < (scalar ? 1 : 2); i++)
            {
                r = r.WithElement(i, FpCompare(pred, x.GetElement(i), y.GetElement(i)) ? ulong.MaxValue : 0);
            }

            return r.AsByte();
        }

        var f = a.AsSingle();
        var g = b.AsSingle();
        var s = a.AsUInt32();
        for (int i = 0; i < (scalar ? 1 : 4); i++)
        {
            s = s.WithElement(i, FpCompare(pred, f.GetElement(i), g.GetElement(i)) ? uint.MaxValue : 0);
        }

        return s.AsByte();
    }

    private static float Approximate(float v, bool sqrt)
    {
        if (float.IsNaN(v))
        {
            return BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(v) | 0x00400000);
        }

        return sqrt ? (v < 0 ? BitConverter.UInt32BitsToSingle(0xFFC00000) : 1f / MathF.Sqrt(v)) : 1f / v;
    }

    /// <summary>Floating-point SSE/SSE2 instructions; returns false when <paramref name="ins"/> is not one.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per SSE arithmetic instruction, each a line or two: the group's table in code form.")]
    private bool ExecSseFloat(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        int d = XmmIndex(ins.Op0Register);
        int kind;
        bool dbl, scalar;
        switch (m)
        {
            case Mnemonic.Addss: kind = FAdd; dbl = false; scalar = true; break;
            case Mnemonic.Addsd: kind = FAdd; dbl = true; scalar = true; break;
            case Mnemonic.Addps: kind = FAdd; dbl = false; scalar = false; break;
            case Mnemonic.Addpd: kind = FAdd; dbl = true; scalar = false; break;
            case Mnemonic.Subss: kind = FSub; dbl = false; scalar = true; break;
            case Mnemonic.Subsd: kind = FSub; dbl = true; scalar = true; break;
            case Mnemonic.Subps: kind = FSub; dbl = false; scalar = false; break;
            case Mnemonic.Subpd: kind = FSub; dbl = true; scalar = false; break;
            case Mnemonic.Mulss: kind = FMul; dbl = false; scalar = true; break;
            case Mnemonic.Mulsd: kind = FMul; dbl = true; scalar = true; break;
            case Mnemonic.Mulps: kind = FMul; dbl = false; scalar = false; break;
            case Mnemonic.Mulpd: kind = FMul; dbl = true; scalar = false; break;
            case Mnemonic.Divss: kind = FDiv; dbl = false; scalar = true; break;
            case Mnemonic.Divsd: kind = FDiv; dbl = true; scalar = true; break;
            case Mnemonic.Divps: kind = FDiv; dbl = false; scalar = false; break;
            case Mnemonic.Divpd: kind = FDiv; dbl = true; scalar = false; break;
            case Mnemonic.Minss: kind = FMin; dbl = false; scalar = true; break;
            case Mnemonic.Minsd: kind = FMin; dbl = true; scalar = true; break;
            case Mnemonic.Minps: kind = FMin; dbl = false; scalar = false; break;
            case Mnemonic.Minpd: kind = FMin; dbl = true; scalar = false; break;
            case Mnemonic.Maxss: kind = FMax; dbl = false; scalar = true; break;
            case Mnemonic.Maxsd: kind = FMax; dbl = true; scalar = true; break;
            case Mnemonic.Maxps: kind = FMax; dbl = false; scalar = false; break;
            case Mnemonic.Maxpd: kind = FMax; dbl = true; scalar = false; break;
            case Mnemonic.Sqrtss: kind = FSqrt; dbl = false; scalar = true; break;
            case Mnemonic.Sqrtsd: kind = FSqrt; dbl = true; scalar = true; break;
            case Mnemonic.Sqrtps: kind = FSqrt; dbl = false; scalar = false; break;
            case Mnemonic.Sqrtpd: kind = FSqrt; dbl = true; scalar = false; break;
            default: return ExecSseCompareConvert(ref op, in ins, d);
        }

        var res = FloatLanes(Xr(d), SrcX(ref op, in ins, 1), kind, dbl, scalar);
        CommitSseFlags();
        Xr(d) = res;
        return true;
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per compare or conversion instruction of the SSE group, each a line or two: the group's table in code form.")]
    private bool ExecSseCompareConvert(ref Op op, in Instruction ins, int d)
    {
        var m = ins.Mnemonic;
        Vector128<byte> res;
        switch (m)
        {
            case Mnemonic.Rcpss:
            case Mnemonic.Rsqrtss:
            case Mnemonic.Rcpps:
            case Mnemonic.Rsqrtps:
            {
                var s = SrcX(ref op, in ins, 1).AsSingle();
                var r = Xr(d).AsSingle();
                bool sq = m is Mnemonic.Rsqrtss or Mnemonic.Rsqrtps;
                int n = m is Mnemonic.Rcpss or Mnemonic.Rsqrtss ? 1 : 4;
                for (int i = 0; i < n; i++)
                {
                    r = r.WithElement(i, Approximate(s.GetElement(i), sq));
                }

                Xr(d) = r.AsByte();
                return true;
            }

            case Mnemonic.Cmpps:
            case Mnemonic.Cmppd:
            case Mnemonic.Cmpss:
            case Mnemonic.Cmpsd:
                res = CompareLanes(Xr(d), SrcX(ref op, in ins, 1), ins.Immediate8 & (_vexLane ? 0x1F : 7), // VEX: 32 predicates
                    m is Mnemonic.Cmppd or Mnemonic.Cmpsd, m is Mnemonic.Cmpss or Mnemonic.Cmpsd);
                break;
            case Mnemonic.Comiss:
            case Mnemonic.Ucomiss:
            case Mnemonic.Comisd:
            case Mnemonic.Ucomisd:
            {
                var a = Xr(d);
                var b = SrcX(ref op, in ins, 1);
                bool signal = m is Mnemonic.Comiss or Mnemonic.Comisd;
                ulong f = m is Mnemonic.Comiss or Mnemonic.Ucomiss
                    ? FpCompareFlags(a.AsSingle().GetElement(0), b.AsSingle().GetElement(0), signal)
                    : FpCompareFlags(a.AsDouble().GetElement(0), b.AsDouble().GetElement(0), signal);
                CommitSseFlags();
                _cpu.LzOp = LzNone;
                _cpu.Flags = (_cpu.Flags & ~ArithFlags) | f;
                return true;
            }

            case Mnemonic.Cvtsi2ss:
            case Mnemonic.Cvtsi2sd:
            {
                int size = ins.Op1Kind == OpKind.Register ? ins.Op1Register.GetSize() : ins.MemorySize.GetSize();
                long v = SignExtend(GprOperand(ref op, in ins, 1, size), size);
                res = m == Mnemonic.Cvtsi2ss
                    ? Xr(d).AsSingle().WithElement(0, IntToFp<float>(v)).AsByte()
                    : Xr(d).AsDouble().WithElement(0, IntToFp<double>(v)).AsByte();
                break;
            }

            case Mnemonic.Cvtss2si:
            case Mnemonic.Cvttss2si:
            case Mnemonic.Cvtsd2si:
            case Mnemonic.Cvttsd2si:
            {
                var s = SrcX(ref op, in ins, 1);
                int size = ins.Op0Register.GetSize();
                bool trunc = m is Mnemonic.Cvttss2si or Mnemonic.Cvttsd2si;
                long v = m is Mnemonic.Cvtss2si or Mnemonic.Cvttss2si
                    ? FpToInt(s.AsSingle().GetElement(0), size * 8, trunc)
                    : FpToInt(s.AsDouble().GetElement(0), size * 8, trunc);
                CommitSseFlags();
                SetReg(Translator.RegIndex(ins.Op0Register), size, (ulong)v);
                return true;
            }

            case Mnemonic.Cvtss2sd:
                res = Xr(d).AsDouble().WithElement(0, WidenToDouble(SrcX(ref op, in ins, 1).AsSingle().GetElement(0))).AsByte();
                break;
            case Mnemonic.Cvtsd2ss:
                res = Xr(d).AsSingle().WithElement(0, NarrowToSingle(SrcX(ref op, in ins, 1).AsDouble().GetElement(0))).AsByte();
                break;
            case Mnemonic.Cvtdq2ps:
            {
                var s = SrcX(ref op, in ins, 1).AsInt32();
                var r = Vector128<float>.Zero;
                for (int i = 0; i < 4; i++)
                {
                    r = r.WithElement(i, IntToFp<float>(s.GetElement(i)));
                }

                res = r.AsByte();
                break;
            }

            case Mnemonic.Cvtps2dq:
            case Mnemonic.Cvttps2dq:
            {
                var s = SrcX(ref op, in ins, 1).AsSingle();
                var r = Vector128<int>.Zero;
                for (int i = 0; i < 4; i++)
                {
                    r = r.WithElement(i, (int)FpToInt(s.GetElement(i), 32, m == Mnemonic.Cvttps2dq));
                }

                res = r.AsByte();
                break;
            }

            case Mnemonic.Cvtdq2pd:
            {
                var s = SrcX(ref op, in ins, 1).AsInt32();
                res = Vector128.Create((double)s.GetElement(0), s.GetElement(1)).AsByte();
                break;
            }

            case Mnemonic.Cvtpd2dq:
            case Mnemonic.Cvttpd2dq:
            {
                var s = SrcX(ref op, in ins, 1).AsDouble();
                bool t = m == Mnemonic.Cvttpd2dq;
                res = Vector128.Create((int)FpToInt(s.GetElement(0), 32, t), (int)FpToInt(s.GetElement(1), 32, t), 0, 0).AsByte();
                break;
            }

            case Mnemonic.Cvtps2pd:
            {
                var s = SrcX(ref op, in ins, 1).AsSingle();
                res = Vector128.Create(WidenToDouble(s.GetElement(0)), WidenToDouble(s.GetElement(1))).AsByte();
                break;
            }

            case Mnemonic.Cvtpd2ps:
            {
                var s = SrcX(ref op, in ins, 1).AsDouble();
                res = Vector128.Create(NarrowToSingle(s.GetElement(0)), NarrowToSingle(s.GetElement(1)), 0f, 0f).AsByte();
                break;
            }

            default:
                return false;
        }

        CommitSseFlags();
        Xr(d) = res;
        return true;
    }
}
