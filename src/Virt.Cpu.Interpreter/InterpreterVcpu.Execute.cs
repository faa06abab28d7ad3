using System.Numerics;
using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The instruction executor: a dense switch over pre-decoded <see cref="Op"/> records runs the common forms
/// inline (<see cref="InlineOp"/>); every other form calls the handler its <see cref="InstructionTable"/> row binds.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>The table's handlers bound to this vCPU, by row.</summary>
    private readonly Handler[] _handlers;

    private int _opIndex;
    private bool _notRetired;
    private Block? _lastBlock;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref ulong Gpr(int r) => ref Unsafe.Add(ref Unsafe.As<GprFile, ulong>(ref _cpu.Gpr), r);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong GetReg(int r, int size)
    {
        switch (size)
        {
            case 8: return Gpr(r);
            case 4: return (uint)Gpr(r);
            case 2: return (ushort)Gpr(r);
            default: return r < 16 ? (byte)Gpr(r) : (byte)(Gpr(r - 16) >> 8);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void SetReg(int r, int size, ulong v)
    {
        switch (size)
        {
            case 8: Gpr(r) = v; break;
            case 4: Gpr(r) = (uint)v; break;
            case 2: Gpr(r) = (Gpr(r) & ~0xFFFFUL) | (ushort)v; break;
            default:
                if (r < 16)
                {
                    Gpr(r) = (Gpr(r) & ~0xFFUL) | (byte)v;
                }
                else
                {
                    Gpr(r - 16) = (Gpr(r - 16) & ~0xFF00UL) | ((ulong)(byte)v << 8);
                }

                break;
        }
    }

    /// <summary>The linear address of the memory operand of <paramref name="op"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong Ea(ref Op op)
    {
        ulong ea = (ulong)op.Disp;
        if (op.Base != 0xFF)
        {
            ea += Gpr(op.Base);
        }

        if (op.Index != 0xFF)
        {
            ea += Gpr(op.Index) << op.Scale;
        }

        if (op.AddrSize == 8)
        {
            return ea + _cpu.SegBase[op.Seg];
        }

        return EaLegacy(ref op, ea);
    }

    private ulong EaLegacy(ref Op op, ulong ea)
    {
        ea &= op.AddrSize == 4 ? 0xFFFFFFFFUL : 0xFFFFUL;
        UseSegment(op.Seg);
        if (op.Seg == SegCs)
        {
            CheckCodeSegmentWrite(ref op);
        }

        ulong lin = ea + _cpu.SegBase[op.Seg];
        return _cpu.Bitness == 64 ? lin : lin & 0xFFFFFFFF;
    }

    /// <summary>The offset (before the segment base) of the memory operand.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong EaOffset(ref Op op)
    {
        ulong ea = (ulong)op.Disp;
        if (op.Base != 0xFF)
        {
            ea += Gpr(op.Base);
        }

        if (op.Index != 0xFF)
        {
            ea += Gpr(op.Index) << op.Scale;
        }

        return op.AddrSize switch { 8 => ea, 4 => ea & 0xFFFFFFFF, _ => ea & 0xFFFF };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong ReadOp0(ref Op op, out ulong ea)
    {
        if (op.K0 == OpKindX.Reg)
        {
            ea = 0;
            return GetReg(op.R0, op.Size);
        }

        ea = Ea(ref op);
        return Read(ea, op.Size);
    }

    /// <summary>Reads operand 0 of a read-modify-write instruction: a memory operand is checked for writing first, as the hardware does.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong ReadOp0Rmw(ref Op op, out ulong ea)
    {
        if (op.K0 == OpKindX.Reg)
        {
            ea = 0;
            return GetReg(op.R0, op.Size);
        }

        ea = Ea(ref op);
        ProbeWrite(ea, op.Size);
        return Read(ea, op.Size);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void WriteOp0(ref Op op, ulong ea, ulong v)
    {
        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, op.Size, v);
        }
        else
        {
            Write(ea, op.Size, v);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong ReadOp1(ref Op op, int size)
    {
        switch (op.K1)
        {
            case OpKindX.Reg: return GetReg(op.R1, size);
            case OpKindX.Imm: return op.Imm;
            default: return Read(Ea(ref op), size);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong AluOp(int sub, ulong a, ulong b, int size)
    {
        ulong mask = Mask(size);
        ulong r;
        switch (sub)
        {
            case Translator.AluAdd:
                r = (a + b) & mask;
                SetLazy(LzAdd, a, b, r, size);
                return r;
            case Translator.AluOr:
                r = a | b;
                SetLazy(LzLogic, r, 0, r, size);
                return r;
            case Translator.AluAdc:
            {
                ulong cin = CarryFlag();
                r = (a + b + cin) & mask;
                _cpu.LzCf = cin;
                SetLazy(LzAdc, a, b, r, size);
                return r;
            }

            case Translator.AluSbb:
            {
                ulong cin = CarryFlag();
                r = (a - b - cin) & mask;
                _cpu.LzCf = cin;
                SetLazy(LzSbb, a, b, r, size);
                return r;
            }

            case Translator.AluAnd:
            case Translator.AluTest:
                r = a & b;
                SetLazy(LzLogic, r, 0, r, size);
                return r;
            case Translator.AluXor:
                r = a ^ b;
                SetLazy(LzLogic, r, 0, r, size);
                return r;
            default:
                r = (a - b) & mask;
                SetLazy(LzSub, a, b, r, size);
                return r;
        }
    }

    /// <summary>Executes up to <paramref name="n"/> instructions of <paramref name="b"/>. Returns the number retired.</summary>
    private int ExecuteBlock(Block b, int n) => ExecuteOps(b, 0, n);

    /// <summary>
    /// Executes instructions <paramref name="start"/> up to (not including) <paramref name="end"/> of <paramref name="b"/>.
    /// Returns the index after the last instruction that retired (so, from 0, the number retired).
    /// </summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The hot dispatch: the common forms run inline in one switch (a jump table), measured faster than a handler call for them; every other form goes through its table row's handler.")]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal int ExecuteOps(Block b, int start, int end)
    {
        var ops = b.Ops;
        if (!ReferenceEquals(_lastBlock, b))
        {
            _lastBlock = b;
        }

        ulong next = _cpu.Rip;
        int i = start;
        _stop = false;
        _notRetired = false;
        for (; i < end; i++)
        {
            _opIndex = i;
            ref Op op = ref ops[i];
            next = op.Next;
            switch (op.Inline)
            {
                case InlineOp.Nop:
                    break;
                case InlineOp.AluRR:
                {
                    int size = op.Size;
                    ulong r = AluOp(op.Sub, GetReg(op.R0, size), GetReg(op.R1, size), size);
                    if (op.Sub < Translator.AluCmp)
                    {
                        SetReg(op.R0, size, r);
                    }

                    break;
                }

                case InlineOp.AluRR64:
                {
                    ref ulong d = ref Gpr(op.R0);
                    ulong r = AluOp(op.Sub, d, Gpr(op.R1), 8);
                    if (op.Sub < Translator.AluCmp)
                    {
                        d = r;
                    }

                    break;
                }

                case InlineOp.AluRI64:
                {
                    ref ulong d = ref Gpr(op.R0);
                    ulong r = AluOp(op.Sub, d, op.Imm, 8);
                    if (op.Sub < Translator.AluCmp)
                    {
                        d = r;
                    }

                    break;
                }

                case InlineOp.IncDecR64:
                {
                    ref ulong d = ref Gpr(op.R0);
                    ulong a = d;
                    _cpu.LzCf = CarryFlag();
                    ulong r = op.Sub == 0 ? a + 1 : a - 1;
                    d = r;
                    SetLazy(op.Sub == 0 ? LzInc : LzDec, a, 1, r, 8);
                    break;
                }

                case InlineOp.AluRI:
                {
                    int size = op.Size;
                    ulong r = AluOp(op.Sub, GetReg(op.R0, size), op.Imm, size);
                    if (op.Sub < Translator.AluCmp)
                    {
                        SetReg(op.R0, size, r);
                    }

                    break;
                }

                case InlineOp.Alu:
                {
                    int size = op.Size;
                    ulong a = op.Sub < Translator.AluCmp ? ReadOp0Rmw(ref op, out ulong ea) : ReadOp0(ref op, out ea);
                    ulong bv = ReadOp1(ref op, size);
                    ulong r = AluOp(op.Sub, a, bv, size);
                    if (op.Sub < Translator.AluCmp)
                    {
                        WriteOp0(ref op, ea, r);
                    }

                    break;
                }

                case InlineOp.MovRR:
                    SetReg(op.R0, op.Size, GetReg(op.R1, op.Size));
                    break;
                case InlineOp.MovRI:
                    SetReg(op.R0, op.Size, op.Imm);
                    break;
                case InlineOp.MovRM:
                    SetReg(op.R0, op.Size, Read(Ea(ref op), op.Size));
                    break;
                case InlineOp.MovMR:
                    Write(Ea(ref op), op.Size, GetReg(op.R1, op.Size));
                    break;
                case InlineOp.Mov:
                {
                    ulong v = ReadOp1(ref op, op.Size);
                    if (op.K0 == OpKindX.Reg)
                    {
                        SetReg(op.R0, op.Size, v);
                    }
                    else
                    {
                        Write(Ea(ref op), op.Size, v);
                    }

                    break;
                }

                case InlineOp.Lea:
                    SetReg(op.R0, op.Size, EaOffset(ref op));
                    break;
                case InlineOp.IncDec:
                {
                    int size = op.Size;
                    ulong a = ReadOp0Rmw(ref op, out ulong ea);
                    ulong cf = CarryFlag();
                    ulong r = (op.Sub == 0 ? a + 1 : a - 1) & Mask(size);
                    WriteOp0(ref op, ea, r);
                    _cpu.LzCf = cf;
                    SetLazy(op.Sub == 0 ? LzInc : LzDec, a, 1, r, size);
                    break;
                }

                case InlineOp.Jcc:
                    if (Cond(op.Sub))
                    {
                        next = op.Target;
                    }

                    break;
                case InlineOp.Jmp:
                    next = op.Target;
                    break;
                case InlineOp.Loop:
                {
                    ulong c = (GetReg(1, op.Size) - 1) & Mask(op.Size);
                    SetReg(1, op.Size, c);
                    bool take = c != 0 && (op.Sub == 0 || (op.Sub == 1 ? Cond(4) : Cond(5)));
                    if (take)
                    {
                        next = op.Target;
                    }

                    break;
                }

                case InlineOp.Jcxz:
                    if (GetReg(1, op.Size) == 0)
                    {
                        next = op.Target;
                    }

                    break;
                case InlineOp.Call:
                    Push(op.Next, op.Size2);
                    next = op.Target;
                    break;
                case InlineOp.Ret:
                {
                    ulong t = Pop(op.Size2);
                    if (op.Imm != 0)
                    {
                        AdjustSp((long)op.Imm);
                    }

                    next = t;
                    break;
                }

                case InlineOp.Push:
                {
                    ulong v = op.K0 switch
                    {
                        OpKindX.Reg => GetReg(op.R0, op.Size),
                        OpKindX.Imm => op.Imm,
                        _ => Read(Ea(ref op), op.Size),
                    };
                    Push(v, op.Size);
                    break;
                }

                case InlineOp.Pop:
                    ExecPop(ref op);
                    break;
                case InlineOp.Movzx:
                    SetReg(op.R0, op.Size, ReadOp1(ref op, op.Size2));
                    break;
                case InlineOp.Movsx:
                    SetReg(op.R0, op.Size, (ulong)SignExtend(ReadOp1(ref op, op.Size2), op.Size2) & Mask(op.Size));
                    break;
                case InlineOp.Cmovcc:
                {
                    ulong v = ReadOp1(ref op, op.Size);
                    if (Cond(op.Sub))
                    {
                        SetReg(op.R0, op.Size, v);
                    }
                    else if (op.Size == 4)
                    {
                        SetReg(op.R0, 4, GetReg(op.R0, 4));
                    }

                    break;
                }

                case InlineOp.Setcc:
                {
                    ulong v = Cond(op.Sub) ? 1UL : 0;
                    if (op.K0 == OpKindX.Reg)
                    {
                        SetReg(op.R0, 1, v);
                    }
                    else
                    {
                        Write(Ea(ref op), 1, v);
                    }

                    break;
                }

                case InlineOp.JmpInd:
                    next = ReadOp0(ref op, out _);
                    break;
                case InlineOp.CallInd:
                {
                    ulong t = ReadOp0(ref op, out _);
                    Push(op.Next, op.Size2);
                    next = t;
                    break;
                }

                case InlineOp.Shift:
                    ExecShift(ref op);
                    break;
                case InlineOp.Imul2:
                    ExecImul2(ref op);
                    break;
                case InlineOp.Movs:
                case InlineOp.Stos:
                case InlineOp.Lods:
                case InlineOp.Cmps:
                case InlineOp.Scas:
                    if (!ExecString(ref op))
                    {
                        next = op.Next - op.Len;
                        _notRetired = true;
                        _stop = true;
                    }

                    break;
                case InlineOp.Locked:
                    next = ExecLocked(ref op, in b.Instrs[i]);
                    break;
                default:
                    next = _handlers[op.Form](ref op, in b.Instrs[i]);
                    break;
            }

            if (_stop)
            {
                i++;
                break;
            }
        }

        _cpu.Rip = next;
        return _notRetired ? i - 1 : i;
    }
}
