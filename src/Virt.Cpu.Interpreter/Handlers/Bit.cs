using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Bit handlers: BT/BTS/BTR/BTC, BSF/BSR, TZCNT/LZCNT/POPCNT and the BMI1 group.</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Bt(ref Op op, in Instruction _)
    {
        ExecBt(ref op);
        return op.Next;
    }

    internal ulong Bsf(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Bsr(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Tzcnt(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Lzcnt(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Popcnt(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Andn(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Bextr(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Blsi(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Blsmsk(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Blsr(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    private ulong BitCount(ref Op op, in Instruction ins)
    {
        ExecBitCount(ref op, in ins);
        return op.Next;
    }

    private ulong Bmi(ref Op op, in Instruction ins)
    {
        ExecBmi(ref op, in ins);
        return op.Next;
    }
}
