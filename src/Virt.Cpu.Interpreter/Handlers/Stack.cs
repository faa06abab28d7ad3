using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Stack handlers: PUSHF, POPF, ENTER, LEAVE (PUSH and POP run inline).</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Pushf(ref Op op, in Instruction _)
    {
        if ((_cpu.Flags & VM) != 0 && (_cpu.Flags & IoplMask) != IoplMask)
        {
            throw Fault(Vectors.GP, 0);
        }

        Push(GetRflags() & 0xFCFFFF & Mask(op.Size), op.Size);
        return op.Next;
    }

    internal ulong Popf(ref Op op, in Instruction _)
    {
        ExecPopf(op.Size);
        return op.Next;
    }

    internal ulong Enter(ref Op op, in Instruction _)
    {
        ExecEnter(ref op);
        return op.Next;
    }

    internal ulong Leave(ref Op op, in Instruction _)
    {
        int ss = StackAddrSize;
        ulong bp = StrReg(5, ss);
        ulong v = _cpu.Bitness == 64 ? Read(bp, op.Size) : Read((_cpu.SegBase[SegSs] + bp) & 0xFFFFFFFF, op.Size);
        SetReg(4, ss == 2 ? 2 : ss, bp + (ulong)op.Size);
        SetReg(5, op.Size, v);
        return op.Next;
    }
}
