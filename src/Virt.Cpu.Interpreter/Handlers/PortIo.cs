using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Port I/O handlers: IN, OUT, INS, OUTS.</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong In(ref Op op, in Instruction _) => ExecPortIo(ref op, isOut: false);

    internal ulong Out(ref Op op, in Instruction _) => ExecPortIo(ref op, isOut: true);

    internal ulong Ins(ref Op op, in Instruction _) => ExecStringIo(ref op, isOuts: false);

    internal ulong Outs(ref Op op, in Instruction _) => ExecStringIo(ref op, isOuts: true);
}
