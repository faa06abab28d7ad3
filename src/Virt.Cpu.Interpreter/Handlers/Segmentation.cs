using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Segmentation handlers: MOV to and from segment registers, PUSH/POP of segment registers, LAR, LSL, VERR, VERW.</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong MovToSreg(ref Op op, in Instruction _)
    {
        if (op.Sub == SegCs)
        {
            throw Fault(Vectors.UD, 0);
        }

        ushort sel = (ushort)ReadOp1(ref op, 2);
        LoadDataSegment(op.Sub, sel);
        if (op.Sub == SegSs)
        {
            _interruptShadow = true;
        }

        _stop = true;
        return op.Next;
    }

    internal ulong MovFromSreg(ref Op op, in Instruction _)
    {
        ushort sel = _cpu.Seg[op.Sub].Selector;
        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, op.Size, sel);
        }
        else
        {
            Write(Ea(ref op), 2, sel);
        }

        return op.Next;
    }

    internal ulong PushSeg(ref Op op, in Instruction _)
    {
        Push(_cpu.Seg[op.Sub].Selector, op.Size);
        return op.Next;
    }

    internal ulong PopSeg(ref Op op, in Instruction _)
    {
        ushort sel = (ushort)Peek(0, op.Size);
        LoadDataSegment(op.Sub, sel);
        AdjustSp(op.Size);
        if (op.Sub == SegSs)
        {
            _interruptShadow = true;
        }

        _stop = true;
        return op.Next;
    }

    internal ulong Lar(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    internal ulong Lsl(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    internal ulong Verr(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    internal ulong Verw(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    private ulong SegmentQuery(ref Op op, in Instruction ins)
    {
        ExecSegmentQuery(ref op, in ins);
        return op.Next;
    }
}
