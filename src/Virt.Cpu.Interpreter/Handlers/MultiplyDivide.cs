using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Multiply and divide handlers: MUL, one-operand IMUL, DIV, IDIV (two- and three-operand IMUL run inline).</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Mul(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, in ins);
        return op.Next;
    }

    internal ulong Imul1(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, in ins);
        return op.Next;
    }

    internal ulong Div(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, in ins);
        return op.Next;
    }

    internal ulong Idiv(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, in ins);
        return op.Next;
    }
}
