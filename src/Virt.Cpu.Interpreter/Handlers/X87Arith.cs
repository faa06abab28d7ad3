using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// x87 loads, stores and basic arithmetic, on the 80-bit format bit for bit (<see cref="X87Float"/>): the precision
/// and rounding controls apply, and the exception flags are raised as the SDM specifies. A masked exception gives the
/// architected default result. An unmasked one sets ES and B and, for invalid operations, denormal operands and
/// division by zero, leaves the destination and the stack as they were; the #MF is raised by the next waiting x87
/// instruction (or WAIT), as on the hardware. Register values are kept in the FXSAVE area's format, in stack order.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    // x87 status word bits.
    private const ushort FswIe = 1 << 0, FswSf = 1 << 6, FswEs = 1 << 7, FswC0 = 1 << 8, FswC1 = 1 << 9, FswC2 = 1 << 10, FswC3 = 1 << 14, FswB = 1 << 15;
    private const int FswTopShift = 11;

    /// <summary>Ends an x87 instruction that met an unmasked exception before writing its result.</summary>
    private sealed class X87Abort : Exception
    {
        public static readonly X87Abort Instance = new();
    }

    private int FpuTop => (_cpu.Fpu.StatusWord >> FswTopShift) & 7;

    private void SetFpuTop(int top) => _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(7 << FswTopShift)) | ((top & 7) << FswTopShift));

    private bool StValid(int i) => (_cpu.Fpu.AbridgedTagWord & (1 << ((FpuTop + i) & 7))) != 0;

    private ref byte StSlot(int i) => ref Unsafe.Add(ref Unsafe.As<X87RegisterFile, byte>(ref _cpu.Fpu.Registers), 16 * i);

    /// <summary>ST(i) as stored; a stack underflow (masked: the indefinite NaN) when it is empty.</summary>
    private Ext80 StX(int i)
    {
        if (!StValid(i))
        {
            StackFault(false);
            return Ext80.Indefinite;
        }

        ref byte p = ref StSlot(i);
        return new Ext80(Unsafe.ReadUnaligned<ulong>(ref p), Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref p, 8)));
    }

    /// <summary>Writes ST(i) and tags it valid.</summary>
    private void SetStX(int i, Ext80 v)
    {
        _cpu.Fpu.AbridgedTagWord |= (byte)(1 << ((FpuTop + i) & 7));
        ref byte p = ref StSlot(i);
        Unsafe.WriteUnaligned(ref p, v.Mant);
        Unsafe.WriteUnaligned(ref Unsafe.Add(ref p, 8), v.Se);
        Unsafe.InitBlockUnaligned(ref Unsafe.Add(ref p, 10), 0, 6);
    }

    private X87Float.Context FpuContext() => new(_cpu.Fpu.ControlWord);

    /// <summary>
    /// A stack underflow when ST(i) or ST(j) is empty: IE and SF, and the instruction ends here when IE is unmasked.
    /// True when it happened: the masked result is the indefinite NaN, whatever the operands.
    /// </summary>
    private bool X87Empty(int i, int j)
    {
        if (StValid(i) && StValid(j))
        {
            return false;
        }

        StackFault(false);
        return true;
    }

    /// <summary>Whether a push would overflow the stack (ST7 in use).</summary>
    private bool X87Full => (_cpu.Fpu.AbridgedTagWord & (1 << ((FpuTop - 1) & 7))) != 0;

    /// <summary>#MF when an unmasked x87 exception is pending (ES set): what WAIT, waiting x87 instructions and MMX instructions do first.</summary>
    private void ReportPendingX87Exception()
    {
        if ((_cpu.Fpu.StatusWord & FswEs) != 0)
        {
            throw Fault(Vectors.MF, 0);
        }
    }

    /// <summary>Sets ES and B when an exception flag is set whose mask is clear, and clears them otherwise.</summary>
    private void UpdateFpuErrorSummary()
    {
        ushort sw = _cpu.Fpu.StatusWord;
        bool pending = (sw & ~_cpu.Fpu.ControlWord & 0x3F) != 0;
        _cpu.Fpu.StatusWord = (ushort)(pending ? sw | FswEs | FswB : sw & ~(FswEs | FswB));
    }

    /// <summary>Whether the operation of <paramref name="c"/> writes its result: not after an unmasked invalid operation, denormal operand or division by zero, nor a suppressed store.</summary>
    private static bool X87Writes(in X87Float.Context c) =>
        !c.Suppressed && (c.Flags & ~c.Control & (X87Float.Ie | X87Float.De | X87Float.Ze)) == 0;

    /// <summary>
    /// Merges the flags of <paramref name="c"/> into the status word (C1 the round-up bit when <paramref name="setC1"/>) and
    /// ends the instruction when it must not write its result.
    /// </summary>
    private void X87Commit(in X87Float.Context c, bool setC1 = true, bool clearC1OnAbort = true)
    {
        bool writes = X87Writes(in c);
        ushort sw = (ushort)(_cpu.Fpu.StatusWord | (c.Flags & 0x3F));
        if (setC1 && (writes || c.Suppressed))
        {
            sw = (ushort)(c.RoundedUp ? sw | FswC1 : sw & ~FswC1);
        }
        else if (!writes && clearC1OnAbort)
        {
            sw = (ushort)(sw & ~FswC1); // an unmasked invalid operation, denormal or division by zero clears C1
        }

        _cpu.Fpu.StatusWord = sw;
        if ((c.Flags & ~c.Control & 0x3F) != 0)
        {
            UpdateFpuErrorSummary();
        }

        if (!writes)
        {
            throw X87Abort.Instance;
        }
    }

    /// <summary>A stack overflow or underflow: IE and SF, C1 telling which. Unmasked, the instruction ends here.</summary>
    private void StackFault(bool overflow)
    {
        _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~FswC1) | FswIe | FswSf | (overflow ? FswC1 : 0));
        if ((_cpu.Fpu.ControlWord & 1) == 0)
        {
            UpdateFpuErrorSummary();
            throw X87Abort.Instance;
        }
    }

    private void FpuPushX(Ext80 v)
    {
        int top = (FpuTop - 1) & 7;
        _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1); // C1 reports an overflow of this push only
        if ((_cpu.Fpu.AbridgedTagWord & (1 << top)) != 0)
        {
            StackFault(true);
            v = Ext80.Indefinite;
        }

        // The register file is kept in stack order: the registers move up one slot, the last one comes round to ST0.
        ref byte regs = ref StSlot(0);
        var last = Unsafe.ReadUnaligned<System.Runtime.Intrinsics.Vector128<byte>>(ref Unsafe.Add(ref regs, 112));
        for (int i = 112; i > 0; i -= 16)
        {
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref regs, i), Unsafe.ReadUnaligned<System.Runtime.Intrinsics.Vector128<byte>>(ref Unsafe.Add(ref regs, i - 16)));
        }

        Unsafe.WriteUnaligned(ref regs, last);
        SetFpuTop(top);
        _cpu.Fpu.AbridgedTagWord |= (byte)(1 << top);
        SetStX(0, v);
    }

    /// <summary>
    /// Pushes one of FLDL2T, FLDL2E, FLDPI, FLDLG2 and FLDLN2: the constant's 64-bit significand rounded by the rounding
    /// control; <paramref name="roundsUpToNearest"/> tells whether rounding to nearest took the larger of the two neighbours.
    /// </summary>
    private void FpuPushRoundedConstant(ushort se, ulong nearest, bool roundsUpToNearest)
    {
        int rc = (_cpu.Fpu.ControlWord >> 10) & 3;
        bool up = rc == 2 || (rc == 0 && roundsUpToNearest); // positive constants: up is away from zero
        ulong mant = up == roundsUpToNearest ? nearest : up ? nearest + 1 : nearest - 1;
        FpuPushX(new Ext80(mant, se));
    }

    private void FpuPop()
    {
        int top = FpuTop;
        _cpu.Fpu.AbridgedTagWord &= (byte)~(1 << top);
        // The popped register keeps its contents (it becomes ST7, tagged empty): MMX reads it through the aliasing.
        ref byte regs = ref StSlot(0);
        var first = Unsafe.ReadUnaligned<System.Runtime.Intrinsics.Vector128<byte>>(ref regs);
        for (int i = 0; i < 112; i += 16)
        {
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref regs, i), Unsafe.ReadUnaligned<System.Runtime.Intrinsics.Vector128<byte>>(ref Unsafe.Add(ref regs, i + 16)));
        }

        Unsafe.WriteUnaligned(ref Unsafe.Add(ref regs, 112), first);
        SetFpuTop(top + 1);
    }

    private static int StIndex(Register r) => r - Register.ST0;

    /// <summary>A memory operand in the register format: floats converted exactly (IE for a signaling NaN, DE for a denormal), integers exactly.</summary>
    private Ext80 FpuMemOperand(ref Op op, in Instruction ins, ref X87Float.Context c)
    {
        ulong ea = Ea(ref op);
        return ins.MemorySize switch
        {
            MemorySize.Float32 => X87Float.FromSingle((uint)Read(ea, 4), ref c),
            MemorySize.Float64 => X87Float.FromDouble(Read(ea, 8), ref c),
            MemorySize.Float80 => new Ext80(Read(ea, 8), (ushort)Read(ea + 8, 2)),
            MemorySize.Int16 => X87Float.FromInteger((short)Read(ea, 2)),
            MemorySize.Int32 => X87Float.FromInteger((int)Read(ea, 4)),
            MemorySize.Int64 => X87Float.FromInteger((long)Read(ea, 8)),
            _ => throw Fault(Vectors.UD, 0),
        };
    }

    /// <summary>FST/FSTP to memory: the 80-bit format as it is, the others rounded; nothing is written after an unmasked exception.</summary>
    private void FpuStore(ref Op op, in Instruction ins, Ext80 v)
    {
        ulong ea = Ea(ref op);
        if (ins.MemorySize == MemorySize.Float80)
        {
            ProbeWrite(ea, 10);
            Write(ea, 8, v.Mant);
            Write(ea + 8, 2, v.Se);
            _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
            return;
        }

        var c = FpuContext();
        var format = ins.MemorySize == MemorySize.Float32 ? X87Float.Format.Single : X87Float.Format.Double;
        ulong bits = X87Float.ToBinary(v, format, ref c);
        if (X87Writes(in c))
        {
            Write(ea, format == X87Float.Format.Single ? 4 : 8, bits);
        }

        X87Commit(in c);
    }

    /// <summary>FIST/FISTP/FISTTP: ST0 as a signed integer of <paramref name="bits"/> bits; out of range or not finite is IE (masked: the integer indefinite).</summary>
    private void FpuStoreInteger(ulong ea, int bits, bool truncate)
    {
        var v = StX(0);
        var c = FpuContext();
        long result;
        if (X87Float.ToIntegerMagnitude(v, truncate, ref c, out ulong mag, out bool inexact)
            && (v.Negative ? mag <= 1UL << (bits - 1) : mag < 1UL << (bits - 1)))
        {
            result = v.Negative ? (long)(0 - mag) : (long)mag;
            if (inexact)
            {
                c.Flags |= X87Float.Pe;
            }
        }
        else
        {
            c.Flags |= X87Float.Ie;
            c.RoundedUp = false;
            result = bits == 64 ? long.MinValue : bits == 32 ? int.MinValue : short.MinValue;
        }

        if (X87Writes(in c))
        {
            Write(ea, bits / 8, (ulong)result);
        }

        X87Commit(in c);
    }

    /// <summary>Sets C3, C2 and C0 from a comparison's result (C1 cleared).</summary>
    private void SetFpuCompare(int r)
    {
        ushort cc = r switch { 2 => (ushort)(FswC0 | FswC2 | FswC3), 1 => 0, -1 => FswC0, _ => FswC3 };
        _cpu.Fpu.StatusWord = (ushort)((_cpu.Fpu.StatusWord & ~(FswC0 | FswC1 | FswC2 | FswC3)) | cc);
    }

    /// <summary>x87 loads, stores and arithmetic; returns false when <paramref name="ins"/> is not one of them.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per x87 instruction, each a line or two: the group's table in code form.")]
    private bool ExecX87Arith(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Fld:
            case Mnemonic.Fild:
            {
                if (ins.Op0Kind != OpKind.Memory)
                {
                    bool underflow = !StValid(StIndex(ins.Op0Register));
                    FpuPushX(StX(StIndex(ins.Op0Register)));
                    if (underflow)
                    {
                        _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1); // the source's underflow is what C1 reports
                    }

                    return true;
                }

                if (X87Full)
                {
                    FpuPushX(Ext80.Indefinite); // a stack overflow takes precedence over the operand's own exceptions
                    return true;
                }

                var c = FpuContext();
                var v = FpuMemOperand(ref op, in ins, ref c);
                if (ins.MemorySize == MemorySize.Float80)
                {
                    // The register format is loaded as it is: no exception, a signaling NaN stays signaling.
                }
                else if (v.IsSignaling)
                {
                    c.Flags |= X87Float.Ie;
                    v = v.Quiet;
                }
                else if (c.DenormalOperand)
                {
                    c.Flags |= X87Float.De;
                }

                X87Commit(in c, setC1: false);
                FpuPushX(v);
                return true;
            }

            case Mnemonic.Fld1: FpuPushX(new Ext80(0x8000000000000000, 0x3FFF)); return true;
            case Mnemonic.Fldz: FpuPushX(Ext80.Zero(false)); return true;
            // The other constants are their 64-bit significands rounded by the rounding control (SDM, FLD1/FLDL2T/...).
            case Mnemonic.Fldl2t: FpuPushRoundedConstant(0x4000, 0xD49A784BCD1B8AFE, false); return true;
            case Mnemonic.Fldl2e: FpuPushRoundedConstant(0x3FFF, 0xB8AA3B295C17F0BC, true); return true;
            case Mnemonic.Fldpi: FpuPushRoundedConstant(0x4000, 0xC90FDAA22168C235, true); return true;
            case Mnemonic.Fldlg2: FpuPushRoundedConstant(0x3FFD, 0x9A209A84FBCFF799, true); return true;
            case Mnemonic.Fldln2: FpuPushRoundedConstant(0x3FFE, 0xB17217F7D1CF79AC, true); return true;
            case Mnemonic.Fst:
            case Mnemonic.Fstp:
            {
                var v = StX(0);
                if (ins.Op0Kind == OpKind.Memory)
                {
                    FpuStore(ref op, in ins, v);
                }
                else
                {
                    int i = StIndex(ins.Op0Register);
                    SetStX(i, v);
                    _cpu.Fpu.AbridgedTagWord |= (byte)(1 << ((FpuTop + i) & 7));
                    _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
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
                FpuStoreInteger(Ea(ref op), ins.MemorySize.GetSize() * 8, m == Mnemonic.Fisttp);
                if (m != Mnemonic.Fist)
                {
                    FpuPop();
                }

                return true;

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
                var c = FpuContext();
                bool memory = ins.OpCount == 1 && ins.Op0Kind == OpKind.Memory;
                // FADDP with no operands: ST(1) op= ST(0), pop.
                int dest = memory ? 0 : ins.OpCount == 0 ? 1 : StIndex(ins.Op0Register);
                int srcIndex = memory || ins.OpCount == 0 ? 0 : StIndex(ins.Op1Register);
                if (X87Empty(dest, srcIndex))
                {
                    SetStX(dest, Ext80.Indefinite);
                    if (pop)
                    {
                        FpuPop();
                    }

                    return true;
                }

                var src = memory ? FpuMemOperand(ref op, in ins, ref c) : StX(srcIndex);
                var d = StX(dest);
                var (x, y) = reverse ? (src, d) : (d, src);
                var r = kind switch
                {
                    0 => X87Float.Add(x, y, false, ref c),
                    1 => X87Float.Add(x, y, true, ref c),
                    2 => X87Float.Multiply(x, y, ref c),
                    _ => X87Float.Divide(x, y, ref c),
                };
                X87Commit(in c);
                SetStX(dest, r);
                if (pop)
                {
                    FpuPop();
                }

                return true;
            }

            case Mnemonic.Fchs:
            case Mnemonic.Fabs:
            {
                if (X87Empty(0, 0))
                {
                    SetStX(0, Ext80.Indefinite);
                    return true;
                }

                var v = StX(0);
                SetStX(0, v.WithSign(m == Mnemonic.Fchs ? !v.Negative : false));
                _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
                return true;
            }

            case Mnemonic.Fsqrt:
            {
                if (X87Empty(0, 0))
                {
                    SetStX(0, Ext80.Indefinite);
                    return true;
                }

                var c = FpuContext();
                var r = X87Float.Sqrt(StX(0), ref c);
                X87Commit(in c);
                SetStX(0, r);
                return true;
            }

            case Mnemonic.Fxch:
            {
                int i = ins.OpCount == 2 ? StIndex(ins.Op1Register) : 1;
                bool valid = StValid(0) && StValid(i);
                if (!valid)
                {
                    StackFault(false);
                }

                var a = StValid(0) ? StX(0) : Ext80.Indefinite;
                var b = StValid(i) ? StX(i) : Ext80.Indefinite;
                SetStX(0, b);
                SetStX(i, a);
                _cpu.Fpu.AbridgedTagWord |= (byte)((1 << FpuTop) | (1 << ((FpuTop + i) & 7)));
                if (valid)
                {
                    _cpu.Fpu.StatusWord &= unchecked((ushort)~FswC1);
                }

                return true;
            }

            case Mnemonic.Fcom: case Mnemonic.Fcomp: case Mnemonic.Fcompp:
            case Mnemonic.Fucom: case Mnemonic.Fucomp: case Mnemonic.Fucompp:
            case Mnemonic.Ficom: case Mnemonic.Ficomp:
            {
                var c = FpuContext();
                bool memory = ins.Op0Kind == OpKind.Memory && ins.OpCount >= 1;
                int other = memory ? 0 : ins.OpCount == 2 ? StIndex(ins.Op1Register) : ins.OpCount == 1 ? StIndex(ins.Op0Register) : 1;
                if (!StValid(0) || !StValid(other))
                {
                    SetFpuCompare(2); // unordered, also when an unmasked IE ends the instruction before its pops
                    StackFault(false);
                }
                else
                {
                    var b = memory ? FpuMemOperand(ref op, in ins, ref c) : StX(other);
                    bool ordered = m is not (Mnemonic.Fucom or Mnemonic.Fucomp or Mnemonic.Fucompp);
                    int r = X87Float.Compare(StX(0), b, ordered, ref c);
                    SetFpuCompare(r); // set also when an unmasked IE ends the instruction before its pops
                    X87Commit(in c, setC1: false);
                }

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
                var c = FpuContext();
                int other = StIndex(ins.Op1Register);
                bool empty = !StValid(0) || !StValid(other);
                int r = empty ? 2 : X87Float.Compare(StX(0), StX(other), m is Mnemonic.Fcomi or Mnemonic.Fcomip, ref c);

                // The flags are set also when an unmasked IE ends the instruction before its pop.
                ulong f = r switch { 2 => ZF | PF | CF, 1 => 0, -1 => CF, _ => ZF };
                _cpu.LzOp = LzNone;
                _cpu.Flags = (_cpu.Flags & ~ArithFlags) | f;
                if (empty)
                {
                    StackFault(false);
                }

                X87Commit(in c, setC1: false, clearC1OnAbort: false); // an unmasked IE leaves C1 as it was
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
