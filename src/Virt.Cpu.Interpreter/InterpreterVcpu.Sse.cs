using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>SSE and x87 instructions.</summary>
internal sealed partial class InterpreterVcpu
{
    private void ExecSse(ref Op op, in Instruction ins)
    {
        _ = ins;
        _ = op;
        throw Fault(Vectors.UD, 0);
    }

    private void ExecX87(ref Op op, in Instruction ins)
    {
        _ = ins;
        _ = op;
        throw Fault(Vectors.UD, 0);
    }
}
