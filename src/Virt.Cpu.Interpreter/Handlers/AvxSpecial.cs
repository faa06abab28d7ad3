using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>AVX instructions that are not an SSE instruction run per lane (and their AVX2 integer twins): 32-byte moves, broadcasts, 128-bit inserts, extracts and permutes, in-lane permutes by a vector, variable blends, masked moves, tests, and the 256-bit sign-mask and width-changing conversions.</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Runs <paramref name="ins"/> when it is one of this file's instructions; false otherwise. (Its many vector locals are not zeroed on entry: every case assigns what it reads.)</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per AVX instruction without an SSE counterpart, each a few lines: the group's table in code form.")]
    [SkipLocalsInit]
    private bool ExecAvxSpecial(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Vzeroupper:
            case Mnemonic.Vzeroall:
                // Outside 64-bit mode only YMM0-YMM7 are cleared; YMM8-YMM15 keep their values.
                for (int i = 0; i < (_cpu.Bitness == 64 ? 16 : 8); i++)
                {
                    Yh(i) = default;
                    if (m == Mnemonic.Vzeroall)
                    {
                        Xr(i) = default;
                    }
                }

                return true;
            case Mnemonic.Vmovaps or Mnemonic.Vmovapd or Mnemonic.Vmovdqa or Mnemonic.Vmovups or Mnemonic.Vmovupd or Mnemonic.Vmovdqu
                or Mnemonic.Vmovntps or Mnemonic.Vmovntpd or Mnemonic.Vmovntdq or Mnemonic.Vmovntdqa or Mnemonic.Vlddqu:
            {
                // Whole-register moves: 16 or 32 bytes, the aligned forms aligned to their size.
                int size = IsYmm(ins.Op0Kind == OpKind.Register ? ins.Op0Register : ins.Op1Register) ? 32 : 16;
                int align = m is Mnemonic.Vmovaps or Mnemonic.Vmovapd or Mnemonic.Vmovdqa or Mnemonic.Vmovntps or Mnemonic.Vmovntpd
                    or Mnemonic.Vmovntdq or Mnemonic.Vmovntdqa ? size : 1;
                if (ins.Op0Kind == OpKind.Register)
                {
                    var v = ins.Op1Kind == OpKind.Register ? GetY(VecIndex(ins.Op1Register)) : ReadVecMem(Ea(ref op), size, align);
                    SetVexDest(ins.Op0Register, size == 32 ? v : Vector256.Create(v.GetLower(), Vector128<byte>.Zero));
                }
                else
                {
                    WriteVecMem(Ea(ref op), size, GetY(VecIndex(ins.Op1Register)), align);
                }

                return true;
            }

            case Mnemonic.Vmovss or Mnemonic.Vmovsd:
            {
                int size = m == Mnemonic.Vmovss ? 4 : 8;
                if (ins.Op0Kind == OpKind.Memory)
                {
                    Write(Ea(ref op), size, Xr(VecIndex(ins.Op1Register)).AsUInt64().ToScalar() & (size == 4 ? 0xFFFF_FFFFUL : ulong.MaxValue));
                }
                else if (ins.Op1Kind == OpKind.Memory)
                {
                    SetVexDest(ins.Op0Register, Vector256.Create(Read(Ea(ref op), size), 0UL, 0UL, 0UL).AsByte());
                }
                else
                {
                    // Register form: the low element from the last operand, the rest of bits 127:0 from the first source.
                    var upper = Xr(VecIndex(ins.Op1Register));
                    var low = Xr(VecIndex(ins.Op2Register));
                    var r = size == 4 ? upper.AsUInt32().WithElement(0, low.AsUInt32().ToScalar()).AsByte() : upper.AsUInt64().WithElement(0, low.AsUInt64().ToScalar()).AsByte();
                    SetVexDest(ins.Op0Register, Vector256.Create(r, Vector128<byte>.Zero));
                }

                return true;
            }

            case Mnemonic.Vmovddup when IsYmm(ins.Op0Register):
            {
                var q = SrcY(ref op, in ins, 1).AsUInt64();
                SetY(VecIndex(ins.Op0Register), Vector256.Create(q.GetElement(0), q.GetElement(0), q.GetElement(2), q.GetElement(2)).AsByte());
                return true;
            }

            case Mnemonic.Vbroadcastss or Mnemonic.Vbroadcastsd or Mnemonic.Vbroadcastf128 or Mnemonic.Vpbroadcastb or Mnemonic.Vpbroadcastw
                or Mnemonic.Vpbroadcastd or Mnemonic.Vpbroadcastq or Mnemonic.Vbroadcasti128:
            {
                // AVX takes a memory source only; AVX2 adds the register forms of VBROADCASTSS/SD and the integer ones.
                var s = SrcY(ref op, in ins, 1).GetLower();
                Vector256<byte> v = m switch
                {
                    Mnemonic.Vpbroadcastb => Vector256.Create(s.ToScalar()),
                    Mnemonic.Vpbroadcastw => Vector256.Create(s.AsUInt16().ToScalar()).AsByte(),
                    Mnemonic.Vbroadcastss or Mnemonic.Vpbroadcastd => Vector256.Create(s.AsUInt32().ToScalar()).AsByte(),
                    Mnemonic.Vbroadcastsd or Mnemonic.Vpbroadcastq => Vector256.Create(s.AsUInt64().ToScalar()).AsByte(),
                    _ => Vector256.Create(s, s),
                };
                SetVexDest(ins.Op0Register, v);
                return true;
            }

            case Mnemonic.Vinsertf128 or Mnemonic.Vinserti128:
            {
                var a = GetY(VecIndex(ins.Op1Register));
                var b = SrcY(ref op, in ins, 2).GetLower();
                SetY(VecIndex(ins.Op0Register), (ins.Immediate8 & 1) == 0 ? a.WithLower(b) : a.WithUpper(b));
                return true;
            }

            case Mnemonic.Vextractf128 or Mnemonic.Vextracti128:
            {
                var s = GetY(VecIndex(ins.Op1Register));
                var half = Vector256.Create((ins.Immediate8 & 1) == 0 ? s.GetLower() : s.GetUpper(), Vector128<byte>.Zero);
                if (ins.Op0Kind == OpKind.Register)
                {
                    SetVexDest(ins.Op0Register, half);
                }
                else
                {
                    WriteVecMem(Ea(ref op), 16, half, 1);
                }

                return true;
            }

            case Mnemonic.Vperm2f128 or Mnemonic.Vperm2i128:
                SetY(VecIndex(ins.Op0Register), Permute2x128(GetY(VecIndex(ins.Op1Register)), SrcY(ref op, in ins, 2), ins.Immediate8));
                return true;
            case Mnemonic.Vpermilps or Mnemonic.Vpermilpd:
            {
                // Immediate form: operand 1 is the source, the immediate the selectors; vector form: operand 2 holds them.
                bool imm = ins.Op2Kind == OpKind.Immediate8;
                var src = imm ? SrcY(ref op, in ins, 1) : GetY(VecIndex(ins.Op1Register));
                var ctl = imm ? default : SrcY(ref op, in ins, 2);
                var r = default(Vector256<byte>);
                if (m == Mnemonic.Vpermilps)
                {
                    var s = src.AsUInt32();
                    var d = r.AsUInt32();
                    for (int i = 0; i < 8; i++)
                    {
                        int sel = imm ? (ins.Immediate8 >> (2 * (i & 3))) & 3 : (int)(ctl.AsUInt32().GetElement(i) & 3);
                        d = d.WithElement(i, s.GetElement((i & ~3) + sel));
                    }

                    r = d.AsByte();
                }
                else
                {
                    var s = src.AsUInt64();
                    var d = r.AsUInt64();
                    for (int i = 0; i < 4; i++)
                    {
                        int sel = imm ? (ins.Immediate8 >> i) & 1 : (int)((ctl.AsUInt64().GetElement(i) >> 1) & 1);
                        d = d.WithElement(i, s.GetElement((i & ~1) + sel));
                    }

                    r = d.AsByte();
                }

                SetVexDest(ins.Op0Register, r);
                return true;
            }

            case Mnemonic.Vblendvps or Mnemonic.Vblendvpd or Mnemonic.Vpblendvb:
            {
                var a = GetY(VecIndex(ins.Op1Register));
                var b = SrcY(ref op, in ins, 2);
                var mask = GetY(VecIndex(ins.Op3Register));
                // The selector is each element's top bit: spread it over the element.
                var sel = m switch
                {
                    Mnemonic.Vblendvps => Vector256.ShiftRightArithmetic(mask.AsInt32(), 31).AsByte(),
                    Mnemonic.Vblendvpd => Vector256.ShiftRightArithmetic(mask.AsInt64(), 63).AsByte(),
                    _ => Vector256.ShiftRightArithmetic(mask.AsSByte(), 7).AsByte(),
                };
                SetVexDest(ins.Op0Register, Vector256.ConditionalSelect(sel, b, a));
                return true;
            }

            case Mnemonic.Vtestps or Mnemonic.Vtestpd or Mnemonic.Vptest:
            {
                var a = SrcY(ref op, in ins, 0);
                var b = SrcY(ref op, in ins, 1);
                Vector256<byte> signs = m switch
                {
                    Mnemonic.Vtestps => Vector256.Create(0x80000000u).AsByte(),
                    Mnemonic.Vtestpd => Vector256.Create(0x8000000000000000UL).AsByte(),
                    _ => Vector256<byte>.AllBitsSet,
                };
                bool zf = ((a & b) & signs) == Vector256<byte>.Zero;
                bool cf = ((~a & b) & signs) == Vector256<byte>.Zero;
                SetLogicFlags(zf, cf);
                return true;
            }

            case Mnemonic.Vmovmskps or Mnemonic.Vmovmskpd or Mnemonic.Vpmovmskb when IsYmm(ins.Op1Register):
            {
                var s = GetY(VecIndex(ins.Op1Register));
                uint mask = m switch
                {
                    Mnemonic.Vmovmskps => s.AsSingle().ExtractMostSignificantBits(),
                    Mnemonic.Vmovmskpd => s.AsDouble().ExtractMostSignificantBits(),
                    _ => s.ExtractMostSignificantBits(),
                };
                SetReg(Translator.RegIndex(ins.Op0Register), ins.Op0Register.GetSize(), mask);
                return true;
            }

            case Mnemonic.Vmaskmovps or Mnemonic.Vmaskmovpd:
                MaskedMove(ref op, in ins, m == Mnemonic.Vmaskmovps ? 4 : 8);
                return true;
            case Mnemonic.Vcvtdq2pd or Mnemonic.Vcvtps2pd when IsYmm(ins.Op0Register):
            case Mnemonic.Vcvtpd2ps or Mnemonic.Vcvtpd2dq or Mnemonic.Vcvttpd2dq when ins.Op1Kind == OpKind.Register ? IsYmm(ins.Op1Register) : ins.MemorySize.GetSize() == 32:
                ConvertAcrossLanes(ref op, in ins);
                return true;
            default:
                return false;
        }
    }

    /// <summary>VPERM2F128/VPERM2I128: each 128-bit half of the result is one of the four source halves, or zero (bit 3 of its nibble).</summary>
    private static Vector256<byte> Permute2x128(Vector256<byte> a, Vector256<byte> b, byte imm)
    {
        Vector128<byte> Pick(int sel) => (sel & 8) != 0 ? default : (sel & 3) switch
        {
            0 => a.GetLower(),
            1 => a.GetUpper(),
            2 => b.GetLower(),
            _ => b.GetUpper(),
        };

        return Vector256.Create(Pick(imm & 0xF), Pick(imm >> 4));
    }

    /// <summary>ZF and CF of the test instructions (PTEST, VTESTPS, VTESTPD); OF, SF, AF and PF cleared.</summary>
    private void SetLogicFlags(bool zf, bool cf)
    {
        _cpu.LzOp = LzNone;
        _cpu.Flags = (_cpu.Flags & ~ArithFlags) | (zf ? ZF : 0) | (cf ? CF : 0);
    }

    /// <summary>
    /// VMASKMOVPS/PD (and AVX2's VPMASKMOVD/Q): a load takes the elements whose mask element has its top bit set and
    /// zeroes the others; a store writes only those elements. Elements not selected are not accessed, so they cannot fault.
    /// </summary>
    private void MaskedMove(ref Op op, in Instruction ins, int elem)
    {
        // The mask is operand 1 (VEX.vvvv) in both directions: load dest, mask, memory; store memory, mask, source.
        bool store = ins.Op0Kind == OpKind.Memory;
        int width = IsYmm(store ? ins.Op2Register : ins.Op0Register) ? 32 : 16;
        var mask = GetY(VecIndex(ins.Op1Register));
        ulong ea = Ea(ref op);
        int count = width / elem;
        Span<bool> on = stackalloc bool[8];
        for (int i = 0; i < count; i++)
        {
            on[i] = elem == 4 ? (mask.AsUInt32().GetElement(i) >> 31) != 0 : (mask.AsUInt64().GetElement(i) >> 63) != 0;
        }

        if (store)
        {
            var data = GetY(VecIndex(ins.Op2Register));
            for (int i = 0; i < count; i++)
            {
                if (on[i])
                {
                    ProbeWrite(ea + (ulong)(i * elem), elem);
                }
            }

            for (int i = 0; i < count; i++)
            {
                if (on[i])
                {
                    Write(ea + (ulong)(i * elem), elem, elem == 4 ? data.AsUInt32().GetElement(i) : data.AsUInt64().GetElement(i));
                }
            }

            return;
        }

        var r = default(Vector256<byte>);
        for (int i = 0; i < count; i++)
        {
            if (on[i])
            {
                ulong v = Read(ea + (ulong)(i * elem), elem);
                r = elem == 4 ? r.AsUInt32().WithElement(i, (uint)v).AsByte() : r.AsUInt64().WithElement(i, v).AsByte();
            }
        }

        SetVexDest(ins.Op0Register, r);
    }

    /// <summary>The 256-bit conversions whose source and destination differ in width: each element through the SSE conversion of one lane.</summary>
    private void ConvertAcrossLanes(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        var src = SrcY(ref op, in ins, 1);
        Vector256<byte> r;
        switch (m)
        {
            case Mnemonic.Vcvtdq2pd:
            {
                var s = src.AsInt32();
                r = Vector256.Create((double)s.GetElement(0), s.GetElement(1), s.GetElement(2), s.GetElement(3)).AsByte();
                break;
            }

            case Mnemonic.Vcvtps2pd:
            {
                // Through the SSE conversion, two elements at a time, so its NaN, denormal and flag rules apply.
                var lo = ConvertLane(Code.Cvtps2pd_xmm_xmmm64, src.GetLower());
                var hi = ConvertLane(Code.Cvtps2pd_xmm_xmmm64, Vector128.Create(src.AsUInt64().GetElement(1), 0UL).AsByte());
                r = Vector256.Create(lo, hi);
                break;
            }

            default:
            {
                var code = m switch
                {
                    Mnemonic.Vcvtpd2ps => Code.Cvtpd2ps_xmm_xmmm128,
                    Mnemonic.Vcvtpd2dq => Code.Cvtpd2dq_xmm_xmmm128,
                    _ => Code.Cvttpd2dq_xmm_xmmm128,
                };
                var lo = ConvertLane(code, src.GetLower());
                var hi = ConvertLane(code, src.GetUpper());
                r = Vector256.Create(Vector128.Create(lo.AsUInt64().GetElement(0), hi.AsUInt64().GetElement(0)).AsByte(), Vector128<byte>.Zero);
                break;
            }
        }

        CommitSseFlags();
        SetVexDest(ins.Op0Register, r);
    }

    /// <summary>Runs the SSE register-to-register conversion <paramref name="code"/> on <paramref name="value"/>, collecting its MXCSR flags without committing them.</summary>
    private Vector128<byte> ConvertLane(Code code, Vector128<byte> value)
    {
        // XMM0 is the stand-in for both operands; its value is put back.
        var saved = Xr(0);
        var li = default(Instruction);
        li.Code = code;
        li.Op0Register = Register.XMM0;
        li.Op1Register = Register.XMM0;
        li.Op0Kind = OpKind.Register;
        li.Op1Kind = OpKind.Register;
        var none = default(Op);
        _vexLane = true;
        try
        {
            Xr(0) = value;
            ExecSseBody(ref none, in li);
            return Xr(0);
        }
        finally
        {
            _vexLane = false;
            Xr(0) = saved;
        }
    }
}
