using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Data transfer handlers: XCHG, BSWAP, CBW/CWDE/CDQE, CWD/CDQ/CQO, XLAT (MOV, MOVZX/MOVSX, LEA, CMOVcc, SETcc run inline).</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Xchg(ref Op op, in Instruction _)
    {
        ExecXchg(ref op);
        return op.Next;
    }

    internal ulong Bswap(ref Op op, in Instruction _)
    {
        if (op.Size == 8)
        {
            Gpr(op.R0) = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(Gpr(op.R0));
        }
        else if (op.Size == 4)
        {
            SetReg(op.R0, 4, System.Buffers.Binary.BinaryPrimitives.ReverseEndianness((uint)Gpr(op.R0)));
        }
        else
        {
            SetReg(op.R0, 2, 0); // BSWAP of a 16-bit register: undefined; zero as on Intel hardware
        }

        return op.Next;
    }

    internal ulong Cbw(ref Op op, in Instruction _)
    {
        SetReg(0, op.Size, (ulong)SignExtend(GetReg(0, op.Size / 2), op.Size / 2) & Mask(op.Size));
        return op.Next;
    }

    internal ulong Cwd(ref Op op, in Instruction _)
    {
        SetReg(2, op.Size, (GetReg(0, op.Size) & SignBit(op.Size)) != 0 ? Mask(op.Size) : 0);
        return op.Next;
    }

    internal ulong Xlat(ref Op op, in Instruction _)
    {
        ulong off = (StrReg(3, op.AddrSize) + GetReg(0, 1)) & Mask(op.AddrSize);
        SetReg(0, 1, Read(StrLin(op.Seg, off), 1));
        return op.Next;
    }

    private void ExecXchg(ref Op op)
    {
        int size = op.Size;
        if (op.K0 == OpKindX.Reg && op.K1 == OpKindX.Reg)
        {
            ulong a = GetReg(op.R0, size);
            ulong b = GetReg(op.R1, size);
            SetReg(op.R0, size, b);
            SetReg(op.R1, size, a);
            return;
        }

        // One operand is memory (Iced puts it first).
        ulong ea = Ea(ref op);
        int reg = op.K0 == OpKindX.Reg ? op.R0 : op.R1;
        ProbeWrite(ea, size);
        ulong m = Read(ea, size);
        Write(ea, size, GetReg(reg, size));
        SetReg(reg, size, m);
    }
}
