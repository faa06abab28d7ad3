using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// x87 loads, stores and basic arithmetic. Register values are kept in the 80-bit format of the FXSAVE area
/// (in stack order, ST0 first) but computed through binary64: results carry at most 53 significant bits and the
/// precision-control field is not applied. Stack overflow and underflow set IE and SF and, masked, produce the
/// indefinite NaN; the other x87 exception flags are not raised.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    // x87 status word bits.
    private const ushort FswIe = 1 << 0, FswSf = 1 << 6, FswC0 = 1 << 8, FswC1 = 1 << 9, FswC2 = 1 << 10, FswC3 = 1 << 14;
    private const int FswTopShift = 11;

    private int FpuTop => (_cpu.Fpu.StatusWord >> FswTopShift) & 7;

    private void SetFpuTop(int top) => _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(7 << FswTopShift)) | ((top & 7) << FswTopShift));

    private bool StValid(int i) => (_cpu.Fpu.AbridgedTagWord & (1 << ((FpuTop + i) & 7))) != 0;

    private static (ushort Se, ulong Mant) ToExtended(double d)
    {
        ulong bits = BitConverter.DoubleToUInt64Bits(d);
        ushort sign = (ushort)((bits >> 48) & 0x8000);
        int exp = (int)((bits >> 52) & 0x7FF);
        ulong frac = bits & 0xFFFFFFFFFFFFF;
        if (exp == 0x7FF)
        {
            return ((ushort)(sign | 0x7FFF), frac == 0 ? 0x8000000000000000 : 0x8000000000000000 | (frac << 11));
        }

        if (exp == 0)
        {
            if (frac == 0)
            {
                return (sign, 0);
            }

            int shift = System.Numerics.BitOperations.LeadingZeroCount(frac) - 11;
            return ((ushort)(sign | (16383 - 1022 - shift)), frac << (11 + shift));
        }

        return ((ushort)(sign | (exp - 1023 + 16383)), 0x8000000000000000 | (frac << 11));
    }

    private static double FromExtended(ushort se, ulong mant)
    {
        bool neg = (se & 0x8000) != 0;
        int exp = se & 0x7FFF;
        double v;
        if (exp == 0x7FFF)
        {
            v = (mant << 1) == 0 ? double.PositiveInfinity : BitConverter.UInt64BitsToDouble(0x7FF8000000000000 | ((mant >> 11) & 0xFFFFFFFFFFFFF));
        }
        else if (mant == 0)
        {
            v = 0;
        }
        else
        {
            v = Math.ScaleB((double)mant, Math.Max(exp, 1) - 16383 - 63);
        }

        return neg ? -v : v;
    }

    private ref byte StSlot(int i) => ref Unsafe.Add(ref Unsafe.As<X87RegisterFile, byte>(ref _cpu.Fpu.Registers), 16 * i);

    private double St(int i)
    {
        if (!StValid(i))
        {
            StackFault(false);
            return BitConverter.UInt64BitsToDouble(0xFFF8000000000000);
        }

        ref byte p = ref StSlot(i);
        return FromExtended(Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref p, 8)), Unsafe.ReadUnaligned<ulong>(ref p));
    }

    private void SetSt(int i, double v)
    {
        var (se, mant) = ToExtended(v);
        ref byte p = ref StSlot(i);
        Unsafe.WriteUnaligned(ref p, mant);
        Unsafe.WriteUnaligned(ref Unsafe.Add(ref p, 8), se);
        Unsafe.InitBlockUnaligned(ref Unsafe.Add(ref p, 10), 0, 6);
    }

    private void StackFault(bool overflow)
    {
        _cpu.Fpu.StatusWord |= (ushort)(FswIe | FswSf | (overflow ? FswC1 : 0));
        if ((_cpu.Fpu.ControlWord & 1) == 0)
        {
            throw Fault(Vectors.MF, 0);
        }
    }

    private void FpuPush(double v)
    {
        int top = (FpuTop - 1) & 7;
        _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1); // C1 reports an overflow of this push only
        if ((_cpu.Fpu.AbridgedTagWord & (1 << top)) != 0)
        {
            StackFault(true);
            v = BitConverter.UInt64BitsToDouble(0xFFF8000000000000);
        }

        Span<byte> regs = _cpu.Fpu.Registers;
        regs[..112].CopyTo(regs[16..]);
        SetFpuTop(top);
        _cpu.Fpu.AbridgedTagWord |= (byte)(1 << top);
        SetSt(0, v);
    }

    /// <summary>Pushes an 80-bit constant given as sign/exponent and significand (the indefinite NaN on stack overflow, as <see cref="FpuPush"/>).</summary>
    private void FpuPushConstant(ushort se, ulong mant)
    {
        bool overflow = (_cpu.Fpu.AbridgedTagWord & (1 << ((FpuTop - 1) & 7))) != 0;
        FpuPush(0.0);
        if (!overflow)
        {
            ref byte p = ref StSlot(0);
            Unsafe.WriteUnaligned(ref p, mant);
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref p, 8), se);
        }
    }

    private void FpuPop()
    {
        int top = FpuTop;
        _cpu.Fpu.AbridgedTagWord &= (byte)~(1 << top);
        // The popped register keeps its contents (it becomes ST7, tagged empty): MMX reads it through the aliasing.
        Span<byte> regs = _cpu.Fpu.Registers;
        Span<byte> old = stackalloc byte[16];
        regs[..16].CopyTo(old);
        regs[16..].CopyTo(regs);
        old.CopyTo(regs[112..]);
        SetFpuTop(top + 1);
    }

    private static int StIndex(Register r) => r - Register.ST0;

    private double FpuMemOperand(ref Op op, in Instruction ins)
    {
        ulong ea = Ea(ref op);
        return ins.MemorySize switch
        {
            MemorySize.Float32 => BitConverter.UInt32BitsToSingle((uint)Read(ea, 4)),
            MemorySize.Float64 => BitConverter.UInt64BitsToDouble(Read(ea, 8)),
            MemorySize.Float80 => FromExtended((ushort)Read(ea + 8, 2), Read(ea, 8)),
            MemorySize.Int16 => (short)Read(ea, 2),
            MemorySize.Int32 => (int)Read(ea, 4),
            MemorySize.Int64 => (long)Read(ea, 8),
            _ => throw Fault(Vectors.UD, 0),
        };
    }

    private void FpuStore(ref Op op, in Instruction ins, double v)
    {
        ulong ea = Ea(ref op);
        switch (ins.MemorySize)
        {
            case MemorySize.Float32: Write(ea, 4, BitConverter.SingleToUInt32Bits((float)v)); break;
            case MemorySize.Float64: Write(ea, 8, BitConverter.DoubleToUInt64Bits(v)); break;
            case MemorySize.Float80:
            {
                var (se, mant) = ToExtended(v);
                ProbeWrite(ea, 10);
                Write(ea, 8, mant);
                Write(ea + 8, 2, se);
                break;
            }

            default: throw Fault(Vectors.UD, 0);
        }
    }

    private long FpuToInt(double v, int bits, bool truncate)
    {
        double r = truncate ? Math.Truncate(v) : ((_cpu.Fpu.ControlWord >> 10) & 3) switch
        {
            1 => Math.Floor(v),
            2 => Math.Ceiling(v),
            3 => Math.Truncate(v),
            _ => Math.Round(v, MidpointRounding.ToEven),
        };
        double limit = Math.ScaleB(1.0, bits - 1);
        if (double.IsNaN(r) || r >= limit || r < -limit)
        {
            _cpu.Fpu.StatusWord |= FswIe;
            if ((_cpu.Fpu.ControlWord & 1) == 0)
            {
                throw Fault(Vectors.MF, 0);
            }

            return bits == 64 ? long.MinValue : bits == 32 ? int.MinValue : short.MinValue;
        }

        return (long)r;
    }

    private static double FpuBinary(int kind, double a, double b) => kind switch
    {
        0 => a + b,
        1 => a - b,
        2 => a * b,
        _ => a / b,
    };

    /// <summary>x87 loads, stores and arithmetic; returns false when <paramref name="ins"/> is not one of them.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per x87 instruction, each a line or two: the group's table in code form.")]
    private bool ExecX87Arith(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Fld:
                FpuPush(ins.Op0Kind == OpKind.Memory ? FpuMemOperand(ref op, in ins) : St(StIndex(ins.Op0Register)));
                return true;
            case Mnemonic.Fild:
                FpuPush(FpuMemOperand(ref op, in ins));
                return true;
            case Mnemonic.Fld1: FpuPush(1.0); return true;
            case Mnemonic.Fldz: FpuPush(0.0); return true;
            // The other constants are loaded with their full 64-bit significands, rounded to nearest (SDM, FLD1/FLDL2T/...).
            case Mnemonic.Fldl2t: FpuPushConstant(0x4000, 0xD49A784BCD1B8AFE); return true;
            case Mnemonic.Fldl2e: FpuPushConstant(0x3FFF, 0xB8AA3B295C17F0BC); return true;
            case Mnemonic.Fldpi: FpuPushConstant(0x4000, 0xC90FDAA22168C235); return true;
            case Mnemonic.Fldlg2: FpuPushConstant(0x3FFD, 0x9A209A84FBCFF799); return true;
            case Mnemonic.Fldln2: FpuPushConstant(0x3FFE, 0xB17217F7D1CF79AC); return true;
            case Mnemonic.Fst:
            case Mnemonic.Fstp:
            {
                double v = St(0);
                if (ins.Op0Kind == OpKind.Memory)
                {
                    FpuStore(ref op, in ins, v);
                }
                else
                {
                    int i = StIndex(ins.Op0Register);
                    SetSt(i, v);
                    _cpu.Fpu.AbridgedTagWord |= (byte)(1 << ((FpuTop + i) & 7));
                }

                if (m == Mnemonic.Fstp)
                {
                    FpuPop();
                }

                return true;
            }

            case Mnemonic.Fist:
            case Mnemonic.Fistp:
            case Mnemonic.Fisttp:
            {
                int size = ins.MemorySize.GetSize();
                long v = FpuToInt(St(0), size * 8, m == Mnemonic.Fisttp);
                Write(Ea(ref op), size, (ulong)v);
                if (m != Mnemonic.Fist)
                {
                    FpuPop();
                }

                return true;
            }

            case Mnemonic.Fadd: case Mnemonic.Faddp: case Mnemonic.Fiadd:
            case Mnemonic.Fsub: case Mnemonic.Fsubp: case Mnemonic.Fisub:
            case Mnemonic.Fsubr: case Mnemonic.Fsubrp: case Mnemonic.Fisubr:
            case Mnemonic.Fmul: case Mnemonic.Fmulp: case Mnemonic.Fimul:
            case Mnemonic.Fdiv: case Mnemonic.Fdivp: case Mnemonic.Fidiv:
            case Mnemonic.Fdivr: case Mnemonic.Fdivrp: case Mnemonic.Fidivr:
            {
                int kind = m switch
                {
                    Mnemonic.Fadd or Mnemonic.Faddp or Mnemonic.Fiadd => 0,
                    Mnemonic.Fsub or Mnemonic.Fsubp or Mnemonic.Fisub or Mnemonic.Fsubr or Mnemonic.Fsubrp or Mnemonic.Fisubr => 1,
                    Mnemonic.Fmul or Mnemonic.Fmulp or Mnemonic.Fimul => 2,
                    _ => 3,
                };
                bool reverse = m is Mnemonic.Fsubr or Mnemonic.Fsubrp or Mnemonic.Fisubr or Mnemonic.Fdivr or Mnemonic.Fdivrp or Mnemonic.Fidivr;
                bool pop = m is Mnemonic.Faddp or Mnemonic.Fsubp or Mnemonic.Fsubrp or Mnemonic.Fmulp or Mnemonic.Fdivp or Mnemonic.Fdivrp;
                int dest;
                double src;
                if (ins.OpCount == 1 && ins.Op0Kind == OpKind.Memory)
                {
                    dest = 0;
                    src = FpuMemOperand(ref op, in ins);
                }
                else if (ins.OpCount == 0)
                {
                    dest = 1; // FADDP with no operands: ST(1) op= ST(0), pop
                    src = St(0);
                }
                else
                {
                    dest = StIndex(ins.Op0Register);
                    src = St(StIndex(ins.Op1Register));
                }

                double d = St(dest);
                SetSt(dest, reverse ? FpuBinary(kind, src, d) : FpuBinary(kind, d, src));
                if (pop)
                {
                    FpuPop();
                }

                return true;
            }

            case Mnemonic.Fchs: SetSt(0, -St(0)); return true;
            case Mnemonic.Fabs: SetSt(0, Math.Abs(St(0))); return true;
            case Mnemonic.Fsqrt:
            {
                double v = St(0);
                SetSt(0, v < 0 ? BitConverter.UInt64BitsToDouble(0xFFF8000000000000) : Math.Sqrt(v));
                return true;
            }

            case Mnemonic.Fxch:
            {
                int i = ins.OpCount == 2 ? StIndex(ins.Op1Register) : 1;
                double a = St(0), b = St(i);
                SetSt(0, b);
                SetSt(i, a);
                return true;
            }

            case Mnemonic.Fcom: case Mnemonic.Fcomp: case Mnemonic.Fcompp:
            case Mnemonic.Fucom: case Mnemonic.Fucomp: case Mnemonic.Fucompp:
            case Mnemonic.Ficom: case Mnemonic.Ficomp:
            {
                double b = ins.Op0Kind == OpKind.Memory && ins.OpCount >= 1 ? FpuMemOperand(ref op, in ins)
                    : St(ins.OpCount == 2 ? StIndex(ins.Op1Register) : ins.OpCount == 1 ? StIndex(ins.Op0Register) : 1);
                double a = St(0);
                ushort cc = double.IsNaN(a) || double.IsNaN(b) ? (ushort)(FswC0 | FswC2 | FswC3) : a > b ? (ushort)0 : a < b ? FswC0 : FswC3;
                _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(FswC0 | FswC1 | FswC2 | FswC3)) | cc);
                if (m is Mnemonic.Fcomp or Mnemonic.Fucomp or Mnemonic.Fcompp or Mnemonic.Fucompp or Mnemonic.Ficomp)
                {
                    FpuPop();
                }

                if (m is Mnemonic.Fcompp or Mnemonic.Fucompp)
                {
                    FpuPop();
                }

                return true;
            }

            case Mnemonic.Fcomi: case Mnemonic.Fcomip: case Mnemonic.Fucomi: case Mnemonic.Fucomip:
            {
                double a = St(0), b = St(StIndex(ins.Op1Register));
                ulong f = double.IsNaN(a) || double.IsNaN(b) ? ZF | PF | CF : a > b ? 0 : a < b ? CF : ZF;
                _cpu.LzOp = LzNone;
                _cpu.Flags = (_cpu.Flags & ~ArithFlags) | f;
                _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
                if (m is Mnemonic.Fcomip or Mnemonic.Fucomip)
                {
                    FpuPop();
                }

                return true;
            }

            default:
                return false;
        }
    }
}
