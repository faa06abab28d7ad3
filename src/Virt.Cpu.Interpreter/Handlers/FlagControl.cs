using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>Flag handlers: LAHF, SAHF, CLC/STC/CMC/CLD/STD, CLI, STI.</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Lahf(ref Op op, in Instruction _)
    {
        SetReg(16, 1, GetRflags() & 0xD7 | Fixed1);
        return op.Next;
    }

    internal ulong Sahf(ref Op op, in Instruction _)
    {
        Materialize();
        _cpu.Flags = (_cpu.Flags & ~0xD5UL) | (GetReg(16, 1) & 0xD5);
        return op.Next;
    }

    /// <summary>CLC, STC, CMC, CLD, STD (<see cref="Op.Sub"/> 0-4).</summary>
    internal ulong FlagOp(ref Op op, in Instruction _)
    {
        Materialize();
        switch (op.Sub)
        {
            case 0: _cpu.Flags &= ~CF; break;
            case 1: _cpu.Flags |= CF; break;
            case 2: _cpu.Flags ^= CF; break;
            case 3: _cpu.Flags &= ~DF; break;
            default: _cpu.Flags |= DF; break;
        }

        return op.Next;
    }

    internal ulong Cli(ref Op op, in Instruction _)
    {
        if (!IoplAllows())
        {
            throw Fault(Vectors.GP, 0);
        }

        _cpu.Flags &= ~IF;
        return op.Next;
    }

    internal ulong Sti(ref Op op, in Instruction _)
    {
        if (!IoplAllows())
        {
            throw Fault(Vectors.GP, 0);
        }

        if ((_cpu.Flags & IF) == 0)
        {
            _interruptShadow = true;
        }

        _cpu.Flags |= IF;
        _stop = true;
        return op.Next;
    }

    private bool IoplAllows()
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0)
        {
            return true;
        }

        return _cpu.Cpl <= (int)((_cpu.Flags & IoplMask) >> 12);
    }
}
