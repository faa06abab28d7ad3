using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>SSE3, SSSE3 and SSE4.1 instructions (legacy encodings over XMM registers).</summary>
internal sealed partial class InterpreterVcpu
{
    private static Vector128<byte> Horizontal<T>(Vector128<byte> a, Vector128<byte> b, Func<T, T, T> f)
        where T : unmanaged
    {
        int n = 16 / Unsafe.SizeOf<T>();
        Vector128<byte> r = default;
        ref T pa = ref Unsafe.As<Vector128<byte>, T>(ref a);
        ref T pb = ref Unsafe.As<Vector128<byte>, T>(ref b);
        ref T pr = ref Unsafe.As<Vector128<byte>, T>(ref r);
        for (int i = 0; i < n / 2; i++)
        {
            Unsafe.Add(ref pr, i) = f(Unsafe.Add(ref pa, 2 * i), Unsafe.Add(ref pa, (2 * i) + 1));
            Unsafe.Add(ref pr, (n / 2) + i) = f(Unsafe.Add(ref pb, 2 * i), Unsafe.Add(ref pb, (2 * i) + 1));
        }

        return r;
    }

    /// <summary>PMOVSX/PMOVZX: the low elements of <paramref name="s"/> (<paramref name="from"/> bytes each) widened to <paramref name="to"/> bytes.</summary>
    private static Vector128<byte> Widen(Vector128<byte> s, int from, int to, bool signed)
    {
        var q = s.AsUInt64();
        ulong src = q.GetElement(0);
        int n = 16 / to;
        Span<byte> r = stackalloc byte[16];
        for (int i = 0; i < n; i++)
        {
            ulong v = (src >> (i * from * 8)) & Mask(from);
            if (signed)
            {
                v = (ulong)SignExtend(v, from);
            }

            for (int k = 0; k < to; k++)
            {
                r[(i * to) + k] = (byte)(v >> (k * 8));
            }
        }

        return Vector128.Create((ReadOnlySpan<byte>)r);
    }

    internal static Vector128<byte> Pshufb(Vector128<byte> a, Vector128<byte> b)
    {
        Vector128<byte> r = default;
        for (int i = 0; i < 16; i++)
        {
            byte sel = b.GetElement(i);
            r = r.WithElement(i, (sel & 0x80) != 0 ? (byte)0 : a.GetElement(sel & 15));
        }

        return r;
    }

    private static Vector128<byte> Palignr(Vector128<byte> hi, Vector128<byte> lo, int count)
    {
        Vector128<byte> r = default;
        for (int i = 0; i < 16; i++)
        {
            int k = i + count;
            r = r.WithElement(i, k < 16 ? lo.GetElement(k) : k < 32 ? hi.GetElement(k - 16) : (byte)0);
        }

        return r;
    }

    private static Vector128<byte> Pmaddubsw(Vector128<byte> a, Vector128<byte> b)
    {
        Vector128<short> r = default;
        var sb = b.AsSByte();
        for (int i = 0; i < 8; i++)
        {
            int v = (a.GetElement(2 * i) * sb.GetElement(2 * i)) + (a.GetElement((2 * i) + 1) * sb.GetElement((2 * i) + 1));
            r = r.WithElement(i, (short)Math.Clamp(v, short.MinValue, short.MaxValue));
        }

        return r.AsByte();
    }

    private static Vector128<byte> Mpsadbw(Vector128<byte> a, Vector128<byte> b, int imm)
    {
        int ao = (imm & 4) != 0 ? 4 : 0;
        int bo = (imm & 3) * 4;
        Vector128<ushort> r = default;
        for (int i = 0; i < 8; i++)
        {
            int sum = 0;
            for (int j = 0; j < 4; j++)
            {
                sum += Math.Abs(a.GetElement(ao + i + j) - b.GetElement(bo + j));
            }

            r = r.WithElement(i, (ushort)sum);
        }

        return r.AsByte();
    }

    private static Vector128<byte> Phminposuw(Vector128<byte> s)
    {
        var w = s.AsUInt16();
        int index = 0;
        for (int i = 1; i < 8; i++)
        {
            if (w.GetElement(i) < w.GetElement(index))
            {
                index = i;
            }
        }

        return Vector128.Create((uint)w.GetElement(index) | ((uint)index << 16), 0u, 0u, 0u).AsByte();
    }

    private static Vector128<byte> Packusdw(Vector128<byte> a, Vector128<byte> b)
    {
        Vector128<ushort> r = default;
        for (int i = 0; i < 8; i++)
        {
            int v = (i < 4 ? a : b).AsInt32().GetElement(i & 3);
            r = r.WithElement(i, (ushort)Math.Clamp(v, 0, 65535));
        }

        return r.AsByte();
    }

    /// <summary>Selects, per element of T, <paramref name="b"/> where the mask element's top bit is set, else <paramref name="a"/>.</summary>
    private static Vector128<byte> BlendBySign<T>(Vector128<byte> a, Vector128<byte> b, Vector128<byte> mask)
        where T : unmanaged
    {
        int w = Unsafe.SizeOf<T>();
        Vector128<byte> r = a;
        for (int i = 0; i < 16 / w; i++)
        {
            if ((mask.GetElement((i * w) + w - 1) & 0x80) != 0)
            {
                for (int k = 0; k < w; k++)
                {
                    r = r.WithElement((i * w) + k, b.GetElement((i * w) + k));
                }
            }
        }

        return r;
    }

    /// <summary>Selects element i of <paramref name="b"/> (elements of <paramref name="width"/> bytes) where bit i of <paramref name="imm"/> is set.</summary>
    private static Vector128<byte> BlendByImmediate(Vector128<byte> a, Vector128<byte> b, int imm, int width)
    {
        Vector128<byte> r = a;
        for (int i = 0; i < 16 / width; i++)
        {
            if ((imm & (1 << i)) != 0)
            {
                for (int k = 0; k < width; k++)
                {
                    r = r.WithElement((i * width) + k, b.GetElement((i * width) + k));
                }
            }
        }

        return r;
    }

    /// <summary>ROUNDxx on one lane: immediate bits 1:0 the mode unless bit 2 selects MXCSR.RC; bit 3 suppresses PE.</summary>
    private T RoundToIntegral<T>(T v, int imm)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if (T.IsNaN(v))
        {
            _sseFlags |= IsSnan(v) ? MxIe : 0;
            return Quiet(v);
        }

        if (T.IsSubnormal(v) && (_cpu.Fpu.Mxcsr & MxDaz) != 0)
        {
            return T.IsNegative(v) ? T.NegativeZero : T.Zero;
        }

        int mode = (imm & 4) != 0 ? Rc : imm & 3;
        T r = mode switch
        {
            RcNearest => T.Round(v, MidpointRounding.ToEven),
            RcDown => T.Floor(v),
            RcUp => T.Ceiling(v),
            _ => T.Truncate(v),
        };
        if (r != v && (imm & 8) == 0)
        {
            _sseFlags |= MxPe;
        }

        return r;
    }

    private Vector128<byte> Dpps(Vector128<byte> a, Vector128<byte> b, int imm)
    {
        var x = a.AsSingle();
        var y = b.AsSingle();
        Span<float> t = stackalloc float[4];
        for (int i = 0; i < 4; i++)
        {
            t[i] = (imm & (0x10 << i)) != 0 ? FpArith(FMul, x.GetElement(i), y.GetElement(i)) : 0f;
        }

        // Hardware sums each lane in its own order: lane i is (t[i^1] + t[i]) + (t[i^3] + t[i^2]). The values are the
        // same in every lane; which NaN a lane returns when several products are NaN follows that order.
        Span<float> pair = stackalloc float[4];
        for (int i = 0; i < 4; i++)
        {
            pair[i] = FpArith(FAdd, t[i ^ 1], t[i]);
        }

        var r = Vector128<float>.Zero;
        for (int i = 0; i < 4; i++)
        {
            float sum = FpArith(FAdd, pair[i], pair[i ^ 2]);
            r = r.WithElement(i, (imm & (1 << i)) != 0 ? sum : 0f);
        }

        return r.AsByte();
    }

    private Vector128<byte> Dppd(Vector128<byte> a, Vector128<byte> b, int imm)
    {
        var x = a.AsDouble();
        var y = b.AsDouble();
        double t0 = (imm & 0x10) != 0 ? FpArith(FMul, x.GetElement(0), y.GetElement(0)) : 0d;
        double t1 = (imm & 0x20) != 0 ? FpArith(FMul, x.GetElement(1), y.GetElement(1)) : 0d;
        // Lane 0 is t0 + t1 and lane 1 is t1 + t0 (the same value; the order decides which of two NaNs each returns).
        double s0 = FpArith(FAdd, t0, t1);
        double s1 = FpArith(FAdd, t1, t0);
        return Vector128.Create((imm & 1) != 0 ? s0 : 0d, (imm & 2) != 0 ? s1 : 0d).AsByte();
    }

    /// <summary>The SSE3 horizontal and alternating float operations.</summary>
    private Vector128<byte> Sse3Float(Mnemonic m, Vector128<byte> a, Vector128<byte> b)
    {
        if (m is Mnemonic.Haddpd or Mnemonic.Hsubpd or Mnemonic.Addsubpd)
        {
            var x = a.AsDouble();
            var y = b.AsDouble();
            return (m switch
            {
                Mnemonic.Haddpd => Vector128.Create(FpArith(FAdd, x[0], x[1]), FpArith(FAdd, y[0], y[1])),
                Mnemonic.Hsubpd => Vector128.Create(FpArith(FSub, x[0], x[1]), FpArith(FSub, y[0], y[1])),
                _ => Vector128.Create(FpArith(FSub, x[0], y[0]), FpArith(FAdd, x[1], y[1])),
            }).AsByte();
        }

        var f = a.AsSingle();
        var g = b.AsSingle();
        return (m switch
        {
            Mnemonic.Haddps => Vector128.Create(FpArith(FAdd, f[0], f[1]), FpArith(FAdd, f[2], f[3]), FpArith(FAdd, g[0], g[1]), FpArith(FAdd, g[2], g[3])),
            Mnemonic.Hsubps => Vector128.Create(FpArith(FSub, f[0], f[1]), FpArith(FSub, f[2], f[3]), FpArith(FSub, g[0], g[1]), FpArith(FSub, g[2], g[3])),
            _ => Vector128.Create(FpArith(FSub, f[0], g[0]), FpArith(FAdd, f[1], g[1]), FpArith(FSub, f[2], g[2]), FpArith(FAdd, f[3], g[3])),
        }).AsByte();
    }

    /// <summary>PEXTRB/PEXTRW/PEXTRD/PEXTRQ/EXTRACTPS: an element to a general register (zero-extended) or to memory.</summary>
    private void ExtractElement(ref Op op, in Instruction ins, int width)
    {
        var s = Xr(XmmIndex(ins.Op1Register)).AsByte();
        int n = 16 / width;
        int lane = ins.Immediate8 & (n - 1);
        ulong v = s.AsUInt64().GetElement(lane * width / 8);
        if (width < 8)
        {
            v = (v >> (lane * width * 8 % 64)) & Mask(width);
        }

        if (ins.Op0Kind == OpKind.Register)
        {
            SetReg(Translator.RegIndex(ins.Op0Register), Math.Max(4, ins.Op0Register.GetSize()), v);
        }
        else
        {
            Write(Ea(ref op), width, v);
        }
    }

    /// <summary>SSE3/SSSE3/SSE4.1 instructions; returns false when <paramref name="ins"/> is not one.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per SSE3/SSSE3/SSE4.1 instruction, each a line or two: the groups' table in code form.")]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1505:Avoid unmaintainable code", Justification = "The same table: one case per instruction.")]
    private bool ExecSse4(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Pextrb: ExtractElement(ref op, in ins, 1); return true;
            case Mnemonic.Pextrd: case Mnemonic.Extractps: ExtractElement(ref op, in ins, 4); return true;
            case Mnemonic.Pextrq: ExtractElement(ref op, in ins, 8); return true;
            case Mnemonic.Pinsrb:
            case Mnemonic.Pinsrd:
            case Mnemonic.Pinsrq:
            {
                int width = m == Mnemonic.Pinsrb ? 1 : m == Mnemonic.Pinsrd ? 4 : 8;
                ulong v = GprOperand(ref op, in ins, 1, ins.Op1Kind == OpKind.Register ? Math.Min(width == 8 ? 8 : 4, ins.Op1Register.GetSize()) : width) & Mask(width);
                ref var dst = ref Xr(XmmIndex(ins.Op0Register));
                int lane = ins.Immediate8 & ((16 / width) - 1);
                dst = width switch
                {
                    1 => dst.WithElement(lane, (byte)v),
                    4 => dst.AsUInt32().WithElement(lane, (uint)v).AsByte(),
                    _ => dst.AsUInt64().WithElement(lane, v).AsByte(),
                };
                return true;
            }

            case Mnemonic.Ptest:
            {
                var a = Xr(XmmIndex(ins.Op0Register));
                var b = SrcX(ref op, in ins, 1);
                ulong f = ((a & b) == Vector128<byte>.Zero ? ZF : 0) | ((~a & b) == Vector128<byte>.Zero ? CF : 0);
                _cpu.LzOp = LzNone;
                _cpu.Flags = (_cpu.Flags & ~ArithFlags) | f;
                return true;
            }

            case Mnemonic.Lddqu:
            case Mnemonic.Movntdqa:
                Xr(XmmIndex(ins.Op0Register)) = ReadXmmMem(Ea(ref op), 16, m == Mnemonic.Movntdqa);
                return true;
            default:
                break;
        }

        if (ins.Op0Kind != OpKind.Register || !ins.Op0Register.IsXMM())
        {
            return false;
        }

        int d = XmmIndex(ins.Op0Register);
        var x = Xr(d);
        Vector128<byte> r;
        switch (m)
        {
            // SSE3
            case Mnemonic.Addsubps: case Mnemonic.Addsubpd: case Mnemonic.Haddps: case Mnemonic.Haddpd: case Mnemonic.Hsubps: case Mnemonic.Hsubpd:
                r = Sse3Float(m, x, SrcX(ref op, in ins, 1));
                CommitSseFlags();
                break;
            case Mnemonic.Movshdup: { var s = SrcX(ref op, in ins, 1).AsUInt32(); r = Vector128.Create(s[1], s[1], s[3], s[3]).AsByte(); break; }
            case Mnemonic.Movsldup: { var s = SrcX(ref op, in ins, 1).AsUInt32(); r = Vector128.Create(s[0], s[0], s[2], s[2]).AsByte(); break; }
            case Mnemonic.Movddup: { ulong s = SrcX(ref op, in ins, 1).AsUInt64()[0]; r = Vector128.Create(s, s).AsByte(); break; }

            // SSSE3
            case Mnemonic.Pshufb: r = Pshufb(x, SrcX(ref op, in ins, 1)); break;
            case Mnemonic.Palignr: r = Palignr(x, SrcX(ref op, in ins, 1), ins.Immediate8); break;
            case Mnemonic.Phaddw: r = Horizontal<ushort>(x, SrcX(ref op, in ins, 1), static (a, b) => (ushort)(a + b)); break;
            case Mnemonic.Phaddd: r = Horizontal<uint>(x, SrcX(ref op, in ins, 1), static (a, b) => a + b); break;
            case Mnemonic.Phaddsw: r = Horizontal<short>(x, SrcX(ref op, in ins, 1), static (a, b) => (short)Math.Clamp(a + b, short.MinValue, short.MaxValue)); break;
            case Mnemonic.Phsubw: r = Horizontal<ushort>(x, SrcX(ref op, in ins, 1), static (a, b) => (ushort)(a - b)); break;
            case Mnemonic.Phsubd: r = Horizontal<uint>(x, SrcX(ref op, in ins, 1), static (a, b) => a - b); break;
            case Mnemonic.Phsubsw: r = Horizontal<short>(x, SrcX(ref op, in ins, 1), static (a, b) => (short)Math.Clamp(a - b, short.MinValue, short.MaxValue)); break;
            case Mnemonic.Pabsb: r = Lanes<sbyte>(SrcX(ref op, in ins, 1), default, static (a, _) => (sbyte)Math.Abs((int)a)); break;
            case Mnemonic.Pabsw: r = Lanes<short>(SrcX(ref op, in ins, 1), default, static (a, _) => (short)Math.Abs((int)a)); break;
            case Mnemonic.Pabsd: r = Lanes<int>(SrcX(ref op, in ins, 1), default, static (a, _) => (int)Math.Abs((long)a)); break;
            case Mnemonic.Psignb: r = Lanes<sbyte>(x, SrcX(ref op, in ins, 1), static (a, b) => b < 0 ? (sbyte)-a : b == 0 ? (sbyte)0 : a); break;
            case Mnemonic.Psignw: r = Lanes<short>(x, SrcX(ref op, in ins, 1), static (a, b) => b < 0 ? (short)-a : b == 0 ? (short)0 : a); break;
            case Mnemonic.Psignd: r = Lanes<int>(x, SrcX(ref op, in ins, 1), static (a, b) => b < 0 ? unchecked(-a) : b == 0 ? 0 : a); break;
            case Mnemonic.Pmaddubsw: r = Pmaddubsw(x, SrcX(ref op, in ins, 1)); break;
            case Mnemonic.Pmulhrsw: r = Lanes<short>(x, SrcX(ref op, in ins, 1), static (a, b) => (short)((((a * b) >> 14) + 1) >> 1)); break;

            // SSE4.1
            case Mnemonic.Pmulld: r = Lanes<int>(x, SrcX(ref op, in ins, 1), static (a, b) => unchecked(a * b)); break;
            case Mnemonic.Pmuldq:
            {
                var s = SrcX(ref op, in ins, 1).AsInt32();
                var t = x.AsInt32();
                r = Vector128.Create((long)t[0] * s[0], (long)t[2] * s[2]).AsByte();
                break;
            }

            case Mnemonic.Pminsb: r = Lanes<sbyte>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Min(a, b)); break;
            case Mnemonic.Pminsd: r = Lanes<int>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Min(a, b)); break;
            case Mnemonic.Pminuw: r = Lanes<ushort>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Min(a, b)); break;
            case Mnemonic.Pminud: r = Lanes<uint>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Min(a, b)); break;
            case Mnemonic.Pmaxsb: r = Lanes<sbyte>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Max(a, b)); break;
            case Mnemonic.Pmaxsd: r = Lanes<int>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Max(a, b)); break;
            case Mnemonic.Pmaxuw: r = Lanes<ushort>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Max(a, b)); break;
            case Mnemonic.Pmaxud: r = Lanes<uint>(x, SrcX(ref op, in ins, 1), static (a, b) => Math.Max(a, b)); break;
            case Mnemonic.Pcmpeqq: r = Mask<ulong>(x, SrcX(ref op, in ins, 1), static (a, b) => a == b); break;
            case Mnemonic.Packusdw: r = Packusdw(x, SrcX(ref op, in ins, 1)); break;
            case Mnemonic.Pblendw: r = BlendByImmediate(x, SrcX(ref op, in ins, 1), ins.Immediate8, 2); break;
            case Mnemonic.Blendps: r = BlendByImmediate(x, SrcX(ref op, in ins, 1), ins.Immediate8 & 15, 4); break;
            case Mnemonic.Blendpd: r = BlendByImmediate(x, SrcX(ref op, in ins, 1), ins.Immediate8 & 3, 8); break;
            case Mnemonic.Pblendvb: r = BlendBySign<byte>(x, SrcX(ref op, in ins, 1), Xr(0)); break;
            case Mnemonic.Blendvps: r = BlendBySign<uint>(x, SrcX(ref op, in ins, 1), Xr(0)); break;
            case Mnemonic.Blendvpd: r = BlendBySign<ulong>(x, SrcX(ref op, in ins, 1), Xr(0)); break;
            case Mnemonic.Pmovsxbw: r = Widen(SrcX(ref op, in ins, 1), 1, 2, true); break;
            case Mnemonic.Pmovsxbd: r = Widen(SrcX(ref op, in ins, 1), 1, 4, true); break;
            case Mnemonic.Pmovsxbq: r = Widen(SrcX(ref op, in ins, 1), 1, 8, true); break;
            case Mnemonic.Pmovsxwd: r = Widen(SrcX(ref op, in ins, 1), 2, 4, true); break;
            case Mnemonic.Pmovsxwq: r = Widen(SrcX(ref op, in ins, 1), 2, 8, true); break;
            case Mnemonic.Pmovsxdq: r = Widen(SrcX(ref op, in ins, 1), 4, 8, true); break;
            case Mnemonic.Pmovzxbw: r = Widen(SrcX(ref op, in ins, 1), 1, 2, false); break;
            case Mnemonic.Pmovzxbd: r = Widen(SrcX(ref op, in ins, 1), 1, 4, false); break;
            case Mnemonic.Pmovzxbq: r = Widen(SrcX(ref op, in ins, 1), 1, 8, false); break;
            case Mnemonic.Pmovzxwd: r = Widen(SrcX(ref op, in ins, 1), 2, 4, false); break;
            case Mnemonic.Pmovzxwq: r = Widen(SrcX(ref op, in ins, 1), 2, 8, false); break;
            case Mnemonic.Pmovzxdq: r = Widen(SrcX(ref op, in ins, 1), 4, 8, false); break;
            case Mnemonic.Mpsadbw: r = Mpsadbw(x, SrcX(ref op, in ins, 1), ins.Immediate8); break;
            case Mnemonic.Phminposuw: r = Phminposuw(SrcX(ref op, in ins, 1)); break;
            case Mnemonic.Insertps:
            {
                int imm = ins.Immediate8;
                uint v = ins.Op1Kind == OpKind.Register ? Xr(XmmIndex(ins.Op1Register)).AsUInt32().GetElement(imm >> 6) : (uint)Read(Ea(ref op), 4);
                var t = x.AsUInt32().WithElement((imm >> 4) & 3, v);
                for (int i = 0; i < 4; i++)
                {
                    if ((imm & (1 << i)) != 0)
                    {
                        t = t.WithElement(i, 0u);
                    }
                }

                r = t.AsByte();
                break;
            }

            case Mnemonic.Roundps:
            {
                var s = SrcX(ref op, in ins, 1).AsSingle();
                var t = Vector128<float>.Zero;
                for (int i = 0; i < 4; i++)
                {
                    t = t.WithElement(i, RoundToIntegral(s.GetElement(i), ins.Immediate8));
                }

                r = t.AsByte();
                CommitSseFlags();
                break;
            }

            case Mnemonic.Roundpd:
            {
                var s = SrcX(ref op, in ins, 1).AsDouble();
                r = Vector128.Create(RoundToIntegral(s.GetElement(0), ins.Immediate8), RoundToIntegral(s.GetElement(1), ins.Immediate8)).AsByte();
                CommitSseFlags();
                break;
            }

            case Mnemonic.Roundss:
                r = x.AsSingle().WithElement(0, RoundToIntegral(SrcX(ref op, in ins, 1).AsSingle().GetElement(0), ins.Immediate8)).AsByte();
                CommitSseFlags();
                break;
            case Mnemonic.Roundsd:
                r = x.AsDouble().WithElement(0, RoundToIntegral(SrcX(ref op, in ins, 1).AsDouble().GetElement(0), ins.Immediate8)).AsByte();
                CommitSseFlags();
                break;
            case Mnemonic.Dpps:
                r = Dpps(x, SrcX(ref op, in ins, 1), ins.Immediate8);
                CommitSseFlags();
                break;
            case Mnemonic.Dppd:
                r = Dppd(x, SrcX(ref op, in ins, 1), ins.Immediate8);
                CommitSseFlags();
                break;

            // SSE4.2 (the packed compare; the string compares are in SseString)
            case Mnemonic.Pcmpgtq: r = Mask<long>(x, SrcX(ref op, in ins, 1), static (a, b) => a > b); break;
            default:
                return false;
        }

        Xr(d) = r;
        return true;
    }
}
