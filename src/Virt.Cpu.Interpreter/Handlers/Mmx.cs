using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// MMX: the MMX instructions, EMMS, and the MMX (64-bit) forms of the SSE, SSE2 and SSSE3 integer instructions and
/// conversions. MMn is the significand of the physical x87 register Rn; every MMX instruction sets TOP to 0 and
/// tags all eight registers valid (EMMS: empty), and a write sets the register's sign and exponent to all ones.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Mmx(ref Op op, in Instruction ins)
    {
        ExecMmx(ref op, in ins);
        return op.Next;
    }

    private static int MmIndex(Register r) => r - Register.MM0;

    /// <summary>MMn, read before the instruction changes TOP: physical register n is ST((n - TOP) mod 8).</summary>
    private ulong ReadMm(int n) => Unsafe.ReadUnaligned<ulong>(ref StSlot((n - FpuTop) & 7));

    /// <summary>The x87 state transition of an MMX instruction: TOP = 0 (the registers rotate into physical order), all tags valid.</summary>
    private void EnterMmx()
    {
        ResetFpuTop();
        _cpu.Fpu.AbridgedTagWord = 0xFF;
    }

    /// <summary>Sets TOP to 0 keeping every physical register's contents (the register file is kept in stack order).</summary>
    private void ResetFpuTop()
    {
        int top = FpuTop;
        if (top != 0)
        {
            Span<byte> regs = _cpu.Fpu.Registers;
            Span<byte> copy = stackalloc byte[128];
            regs.CopyTo(copy);
            for (int j = 0; j < 8; j++)
            {
                copy.Slice(((j - top) & 7) * 16, 16).CopyTo(regs.Slice(j * 16, 16));
            }

            SetFpuTop(0);
        }
    }

    /// <summary>Writes MMn (after <see cref="EnterMmx"/>): the significand, with sign and exponent all ones.</summary>
    private void WriteMm(int n, ulong v)
    {
        ref byte p = ref StSlot(n);
        Unsafe.WriteUnaligned(ref p, v);
        Unsafe.WriteUnaligned(ref Unsafe.Add(ref p, 8), (ushort)0xFFFF);
    }

    /// <summary>Operand <paramref name="i"/> as 64 bits: an MMX register, or 64-bit memory (no alignment requirement).</summary>
    private ulong SrcMm(ref Op op, in Instruction ins, int i)
    {
        if (ins.GetOpKind(i) == OpKind.Register)
        {
            var r = ins.GetOpRegister(i);
            return r.IsMM() ? ReadMm(MmIndex(r)) : Xr(XmmIndex(r)).AsUInt64().GetElement(0);
        }

        return Read(Ea(ref op), ins.MemorySize.GetSize());
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per MMX-form instruction family, each a line or two: the group's table in code form.")]
    private void ExecMmx(ref Op op, in Instruction ins)
    {
        CheckIsa(ins.Code);
        if ((_isaEnabled & IsaMmx) == 0 || (_cpu.Cr0 & Cr0.Emulation) != 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        bool xmm = false;
        for (int i = 0; i < ins.OpCount; i++)
        {
            xmm |= ins.GetOpKind(i) == OpKind.Register && ins.GetOpRegister(i).IsXMM();
        }

        if (xmm && (_cpu.Cr4 & Cr4.OsFxsr) == 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        if ((_cpu.Cr0 & Cr0.TaskSwitched) != 0)
        {
            throw Fault(Vectors.NM, 0);
        }

        // An unmasked x87 exception still pending is reported first, as by a waiting x87 instruction.
        ReportPendingX87Exception();

        var m = ins.Mnemonic;
        if (m == Mnemonic.Emms)
        {
            // EMMS empties every tag; processors also set TOP to 0 (measured on the host processor the
            // differential suite runs on), so the registers are left in physical order.
            EnterMmx();
            _cpu.Fpu.AbridgedTagWord = 0;
            return;
        }

        _sseFlags = 0;
        switch (m)
        {
            case Mnemonic.Movd:
            case Mnemonic.Movq:
                if (ins.Op0Kind == OpKind.Register && ins.Op0Register.IsMM())
                {
                    ulong v = ins.Op1Kind == OpKind.Register && !ins.Op1Register.IsMM() ? GprOperand(ref op, in ins, 1, ins.Op1Register.GetSize()) : SrcMm(ref op, in ins, 1);
                    EnterMmx();
                    WriteMm(MmIndex(ins.Op0Register), v);
                }
                else
                {
                    ulong v = ReadMm(MmIndex(ins.Op1Register));
                    if (ins.Op0Kind == OpKind.Register)
                    {
                        SetReg(Translator.RegIndex(ins.Op0Register), ins.Op0Register.GetSize(), v);
                    }
                    else
                    {
                        Write(Ea(ref op), ins.MemorySize.GetSize(), v);
                    }

                    EnterMmx();
                }

                return;
            case Mnemonic.Movntq:
                Write(Ea(ref op), 8, ReadMm(MmIndex(ins.Op1Register)));
                EnterMmx();
                return;
            case Mnemonic.Movq2dq:
            {
                ulong v = ReadMm(MmIndex(ins.Op1Register));
                EnterMmx();
                Xr(XmmIndex(ins.Op0Register)) = Vector128.Create(v, 0UL).AsByte();
                return;
            }

            case Mnemonic.Movdq2q:
                EnterMmx();
                WriteMm(MmIndex(ins.Op0Register), Xr(XmmIndex(ins.Op1Register)).AsUInt64().GetElement(0));
                return;
            case Mnemonic.Maskmovq:
            {
                var data = Vector128.Create(ReadMm(MmIndex(ins.Op1Register)), 0UL).AsByte();
                var mask = Vector128.Create(ReadMm(MmIndex(ins.Op2Register)), 0UL).AsByte();
                EnterMmx();
                MaskedStore(in ins, data, mask, 8);
                return;
            }

            case Mnemonic.Pmovmskb:
            {
                ulong mask = Vector128.Create(ReadMm(MmIndex(ins.Op1Register)), 0UL).AsByte().ExtractMostSignificantBits() & 0xFF;
                EnterMmx();
                SetReg(Translator.RegIndex(ins.Op0Register), ins.Op0Register.GetSize(), mask);
                return;
            }

            case Mnemonic.Pextrw:
            {
                ulong w = (ReadMm(MmIndex(ins.Op1Register)) >> ((ins.Immediate8 & 3) * 16)) & 0xFFFF;
                EnterMmx();
                SetReg(Translator.RegIndex(ins.Op0Register), ins.Op0Register.GetSize(), w);
                return;
            }

            case Mnemonic.Pinsrw:
            {
                ulong w = GprOperand(ref op, in ins, 1, 2) & 0xFFFF;
                int n = MmIndex(ins.Op0Register);
                int shift = (ins.Immediate8 & 3) * 16;
                ulong v = (ReadMm(n) & ~(0xFFFFUL << shift)) | (w << shift);
                EnterMmx();
                WriteMm(n, v);
                return;
            }

            case Mnemonic.Cvtps2pi:
            case Mnemonic.Cvttps2pi:
            case Mnemonic.Cvtpd2pi:
            case Mnemonic.Cvttpd2pi:
            {
                var s = ins.Op1Kind == OpKind.Register ? Xr(XmmIndex(ins.Op1Register)) : ReadXmmMem(Ea(ref op), ins.MemorySize.GetSize(), m is Mnemonic.Cvtpd2pi or Mnemonic.Cvttpd2pi);
                bool t = m is Mnemonic.Cvttps2pi or Mnemonic.Cvttpd2pi;
                long lo, hi;
                if (m is Mnemonic.Cvtps2pi or Mnemonic.Cvttps2pi)
                {
                    lo = FpToInt(s.AsSingle().GetElement(0), 32, t);
                    hi = FpToInt(s.AsSingle().GetElement(1), 32, t);
                }
                else
                {
                    lo = FpToInt(s.AsDouble().GetElement(0), 32, t);
                    hi = FpToInt(s.AsDouble().GetElement(1), 32, t);
                }

                CommitSseFlags();
                EnterMmx();
                WriteMm(MmIndex(ins.Op0Register), (uint)lo | ((ulong)(uint)hi << 32));
                return;
            }

            case Mnemonic.Cvtpi2ps:
            case Mnemonic.Cvtpi2pd:
            {
                ulong v = SrcMm(ref op, in ins, 1);
                int lo = (int)v, hi = (int)(v >> 32);
                ref var d = ref Xr(XmmIndex(ins.Op0Register));
                var r = m == Mnemonic.Cvtpi2ps
                    ? d.AsSingle().WithElement(0, IntToFp<float>(lo)).WithElement(1, IntToFp<float>(hi)).AsByte()
                    : Vector128.Create((double)lo, hi).AsByte();
                CommitSseFlags();
                if (ins.Op1Kind == OpKind.Register)
                {
                    EnterMmx(); // a memory source leaves the x87 state alone
                }

                d = r;
                return;
            }

            default:
                break;
        }

        int dst = MmIndex(ins.Op0Register);
        ulong a = ReadMm(dst);
        ulong b = ins.OpCount > 1 && ins.Op1Kind != OpKind.Immediate8 ? SrcMm(ref op, in ins, 1) : 0;
        EnterMmx();
        WriteMm(dst, MmxResult(m, a, b, ins));
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per MMX operation whose 64-bit form is not the low half of its 128-bit form.")]
    private ulong MmxResult(Mnemonic m, ulong a, ulong b, in Instruction ins)
    {
        var x = Vector128.Create(a, 0UL).AsByte();
        var s = Vector128.Create(b, 0UL).AsByte();
        Vector128<byte> r;
        switch (m)
        {
            case Mnemonic.Psllw: case Mnemonic.Pslld: case Mnemonic.Psllq:
            case Mnemonic.Psrlw: case Mnemonic.Psrld: case Mnemonic.Psrlq:
            case Mnemonic.Psraw: case Mnemonic.Psrad:
            {
                ulong count = ins.Op1Kind == OpKind.Immediate8 ? ins.Immediate8 : b;
                int width = m is Mnemonic.Psllw or Mnemonic.Psrlw or Mnemonic.Psraw ? 16 : m is Mnemonic.Psllq or Mnemonic.Psrlq ? 64 : 32;
                int kind = m is Mnemonic.Psllw or Mnemonic.Pslld or Mnemonic.Psllq ? 0 : m is Mnemonic.Psraw or Mnemonic.Psrad ? 2 : 1;
                r = Shift(x, width, count, kind);
                break;
            }

            case Mnemonic.Packsswb: case Mnemonic.Packuswb: case Mnemonic.Packssdw:
            {
                var both = Vector128.Create(a, b).AsByte();
                r = IntegerLanes(m, both, both);
                break;
            }

            case Mnemonic.Punpckhbw: case Mnemonic.Punpckhwd: case Mnemonic.Punpckhdq:
            {
                var hiA = Vector128.Create(a >> 32, 0UL).AsByte();
                var hiB = Vector128.Create(b >> 32, 0UL).AsByte();
                var low = m == Mnemonic.Punpckhbw ? Mnemonic.Punpcklbw : m == Mnemonic.Punpckhwd ? Mnemonic.Punpcklwd : Mnemonic.Punpckldq;
                r = IntegerLanes(low, hiA, hiB);
                break;
            }

            case Mnemonic.Pshufw: r = Shuffle16(s, ins.Immediate8, false); break;
            case Mnemonic.Pshufb:
            {
                ulong res = 0;
                for (int i = 0; i < 8; i++)
                {
                    int sel = (int)(b >> (i * 8)) & 0xFF;
                    res |= (sel & 0x80) != 0 ? 0 : ((a >> ((sel & 7) * 8)) & 0xFF) << (i * 8);
                }

                return res;
            }

            case Mnemonic.Palignr:
            {
                int c = ins.Immediate8;
                var cat = Vector128.Create(b, a).AsByte(); // destination is the high half
                return c >= 16 ? 0 : ByteShift(cat, c, false).AsUInt64().GetElement(0);
            }

            case Mnemonic.Phaddw: case Mnemonic.Phaddd: case Mnemonic.Phaddsw:
            case Mnemonic.Phsubw: case Mnemonic.Phsubd: case Mnemonic.Phsubsw:
            {
                var both = Vector128.Create(a, b).AsByte();
                r = m switch
                {
                    Mnemonic.Phaddw => Horizontal<ushort>(both, both, static (p, q) => (ushort)(p + q)),
                    Mnemonic.Phaddd => Horizontal<uint>(both, both, static (p, q) => p + q),
                    Mnemonic.Phaddsw => Horizontal<short>(both, both, static (p, q) => (short)Math.Clamp(p + q, short.MinValue, short.MaxValue)),
                    Mnemonic.Phsubw => Horizontal<ushort>(both, both, static (p, q) => (ushort)(p - q)),
                    Mnemonic.Phsubd => Horizontal<uint>(both, both, static (p, q) => p - q),
                    _ => Horizontal<short>(both, both, static (p, q) => (short)Math.Clamp(p - q, short.MinValue, short.MaxValue)),
                };
                break;
            }

            case Mnemonic.Pabsb: r = Lanes<sbyte>(s, default, static (p, _) => (sbyte)Math.Abs((int)p)); break;
            case Mnemonic.Pabsw: r = Lanes<short>(s, default, static (p, _) => (short)Math.Abs((int)p)); break;
            case Mnemonic.Pabsd: r = Lanes<int>(s, default, static (p, _) => (int)Math.Abs((long)p)); break;
            case Mnemonic.Psignb: r = Lanes<sbyte>(x, s, static (p, q) => q < 0 ? (sbyte)-p : q == 0 ? (sbyte)0 : p); break;
            case Mnemonic.Psignw: r = Lanes<short>(x, s, static (p, q) => q < 0 ? (short)-p : q == 0 ? (short)0 : p); break;
            case Mnemonic.Psignd: r = Lanes<int>(x, s, static (p, q) => q < 0 ? unchecked(-p) : q == 0 ? 0 : p); break;
            case Mnemonic.Pmaddubsw: r = Pmaddubsw(x, s); break;
            case Mnemonic.Pmulhrsw: r = Lanes<short>(x, s, static (p, q) => (short)((((p * q) >> 14) + 1) >> 1)); break;
            default:
                if (!IntegerLaneOps[(int)m])
                {
                    throw Fault(Vectors.UD, 0);
                }

                r = IntegerLanes(m, x, s);
                break;
        }

        return r.AsUInt64().GetElement(0);
    }
}
