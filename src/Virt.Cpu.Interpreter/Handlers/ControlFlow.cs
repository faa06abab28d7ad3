using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// Control-flow handlers: far JMP/CALL/RET, software interrupts, IRET, SYSCALL/SYSRET, SYSENTER/SYSEXIT
/// (near branches, CALL, RET, LOOP and JCXZ run inline).
/// </summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong JmpFar(ref Op op, in Instruction _)
    {
        ExecFarTransfer(ref op, op.Next, call: false);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong CallFar(ref Op op, in Instruction _)
    {
        ExecFarTransfer(ref op, op.Next, call: true);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong RetFar(ref Op op, in Instruction _)
    {
        ExecRetFar(ref op);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Int(ref Op op, in Instruction _)
    {
        if ((_cpu.Flags & VM) != 0 && (_cpu.Flags & IoplMask) != IoplMask)
        {
            throw Fault(Vectors.GP, 0);
        }

        _cpu.Rip = op.Next;
        Deliver((int)op.Imm, false, 0, software: true);
        return _cpu.Rip;
    }

    internal ulong Int3(ref Op op, in Instruction _)
    {
        _cpu.Rip = op.Next;
        Deliver(Vectors.BP, false, 0, software: true);
        return _cpu.Rip;
    }

    internal ulong Into(ref Op op, in Instruction _)
    {
        if (_cpu.Bitness == 64)
        {
            throw Fault(Vectors.UD, 0);
        }

        if (Cond(0))
        {
            _cpu.Rip = op.Next;
            Deliver(Vectors.OF, false, 0, software: true);
            return _cpu.Rip;
        }

        return op.Next;
    }

    internal ulong Int1(ref Op op, in Instruction _)
    {
        _cpu.Rip = op.Next;
        Deliver(Vectors.DB, false, 0, software: false);
        return _cpu.Rip;
    }

    internal ulong Iret(ref Op op, in Instruction _)
    {
        ExecIret(op.Size);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Syscall(ref Op op, in Instruction _)
    {
        ExecSyscall(op.Next);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Sysret(ref Op op, in Instruction _)
    {
        ExecSysret(op.Size);
        _stop = true;
        return _cpu.Rip;
    }

    /// <summary>SYSENTER: not offered (CPUID.01H:EDX.SEP is clear), so #UD.</summary>
    internal ulong Sysenter(ref Op op, in Instruction _) => throw Fault(Vectors.UD, 0);

    /// <summary>SYSEXIT: not offered, so #UD.</summary>
    internal ulong Sysexit(ref Op op, in Instruction _) => throw Fault(Vectors.UD, 0);
}
