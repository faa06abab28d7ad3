using System.Runtime.CompilerServices;
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong Cmpxchg16b(ref Op op, in Instruction ins)
    {
        ExecCmpxchgWide(ref op, in ins);
        return op.Next;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecCmpxchg(ref Op op)
    {
        int size = op.Size;
        ulong acc = GetReg(0, size);
        ulong ea = 0;
        ulong dest;
        if (op.K0 == OpKindX.Reg)
        {
            dest = GetReg(op.R0, size);
        }
        else
        {
            ea = Ea(ref op);
            ProbeWrite(ea, size);
            dest = Read(ea, size);
        }

        AluOp(Translator.AluCmp, acc, dest, size);
        if (acc == dest)
        {
            WriteOp0(ref op, ea, GetReg(op.R1, size));
        }
        else
        {
            // The destination is written back unchanged (a locked read-modify-write on hardware).
            if (op.K0 == OpKindX.Mem)
            {
                Write(ea, size, dest);
            }

            SetReg(0, size, dest);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecCmpxchgWide(ref Op op, in Instruction ins)
    {
        ulong ea = Ea(ref op);
        if (ins.Mnemonic == Mnemonic.Cmpxchg16b)
        {
            if ((ea & 15) != 0)
            {
                throw Fault(Vectors.GP, 0);
            }

            ulong lo = Read(ea, 8), hi = Read(ea + 8, 8);
            ProbeWrite(ea, 16);
            Materialize();
            if (lo == Gpr(0) && hi == Gpr(2))
            {
                Write(ea, 8, Gpr(3));
                Write(ea + 8, 8, Gpr(1));
                _cpu.Flags |= ZF;
            }
            else
            {
                Write(ea, 8, lo);
                Write(ea + 8, 8, hi);
                Gpr(0) = lo;
                Gpr(2) = hi;
                _cpu.Flags &= ~ZF;
            }
        }
        else
        {
            ulong m = Read(ea, 8);
            ProbeWrite(ea, 8);
            Materialize();
            ulong cmp = ((ulong)(uint)Gpr(2) << 32) | (uint)Gpr(0);
            if (m == cmp)
            {
                Write(ea, 8, ((ulong)(uint)Gpr(1) << 32) | (uint)Gpr(3));
                _cpu.Flags |= ZF;
            }
            else
            {
                Write(ea, 8, m);
                SetReg(0, 4, (uint)m);
                SetReg(2, 4, m >> 32);
                _cpu.Flags &= ~ZF;
            }
        }
    }
}
