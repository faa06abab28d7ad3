using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Integer ALU handlers: NEG, NOT, CMPXCHG, XADD, CMPXCHG8B/16B (ADD ... CMP, INC and DEC run inline).</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Neg(ref Op op, in Instruction _)
    {
        ulong a = ReadOp0Rmw(ref op, out ulong ea);
        ulong r = (0 - a) & Mask(op.Size);
        WriteOp0(ref op, ea, r);
        SetLazy(LzSub, 0, a, r, op.Size);
        return op.Next;
    }

    internal ulong Not(ref Op op, in Instruction _)
    {
        ulong a = ReadOp0Rmw(ref op, out ulong ea);
        WriteOp0(ref op, ea, ~a & Mask(op.Size));
        return op.Next;
    }

    internal ulong Cmpxchg(ref Op op, in Instruction _)
    {
        ExecCmpxchg(ref op);
        return op.Next;
    }

    internal ulong Xadd(ref Op op, in Instruction _)
    {
        ulong a = ReadOp0Rmw(ref op, out ulong ea);
        ulong b = GetReg(op.R1, op.Size);
        ulong r = AluOp(Translator.AluAdd, a, b, op.Size);
        if (op.K0 == OpKindX.Mem)
        {
            WriteOp0(ref op, ea, r);
            SetReg(op.R1, op.Size, a);
        }
        else
        {
            // With the same register on both sides the sum wins.
            SetReg(op.R1, op.Size, a);
            WriteOp0(ref op, ea, r);
        }

        return op.Next;
    }

    internal ulong Cmpxchg8b(ref Op op, in Instruction ins)
    {
        ExecCmpxchgWide(ref op, in ins);
        return op.Next;
    }

    internal ulong Cmpxchg16b(ref Op op, in Instruction ins)
    {
        ExecCmpxchgWide(ref op, in ins);
        return op.Next;
    }
}
