using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Double-precision shift handlers: SHLD, SHRD (shifts and rotates by one register run inline).</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Shld(ref Op op, in Instruction ins)
    {
        ExecShiftDouble(ref op, in ins);
        return op.Next;
    }

    internal ulong Shrd(ref Op op, in Instruction ins)
    {
        ExecShiftDouble(ref op, in ins);
        return op.Next;
    }
}
