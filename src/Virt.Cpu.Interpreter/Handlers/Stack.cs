using System.Runtime.CompilerServices;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>Stack handlers: PUSHF, POPF, ENTER, LEAVE (PUSH and POP run inline).</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Pushf(ref Op op, in Instruction _)
    {
        if ((_cpu.Flags & VM) != 0 && (_cpu.Flags & IoplMask) != IoplMask)
        {
            throw Fault(Vectors.GP, 0);
        }

        Push(PushfImage() & Mask(op.Size), op.Size);
        return op.Next;
    }

    /// <summary>The RFLAGS image PUSHF pushes (before truncation to its size): the lazy flags materialized, VM and RF clear.</summary>
    internal ulong PushfImage() => GetRflags() & 0xFCFFFF;

    internal ulong Popf(ref Op op, in Instruction _)
    {
        ExecPopf(op.Size);
        return op.Next;
    }

    internal ulong Enter(ref Op op, in Instruction _)
    {
        ExecEnter(ref op);
        return op.Next;
    }

    internal ulong Leave(ref Op op, in Instruction _)
    {
        int ss = StackAddrSize;
        ulong bp = StrReg(5, ss);
        ulong v = _cpu.Bitness == 64 ? Read(bp, op.Size) : Read(StackLin(bp), op.Size);
        SetReg(4, ss == 2 ? 2 : ss, bp + (ulong)op.Size);
        SetReg(5, op.Size, v);
        return op.Next;
    }

    /// <summary>The linear address of stack offset <paramref name="offset"/> outside 64-bit mode (SS-relative: its accesses are checked against SS).</summary>
    private ulong StackLin(ulong offset)
    {
        UseSegment(SegSs);
        return (_cpu.SegBase[SegSs] + offset) & 0xFFFFFFFF;
    }

    private int StackAddrSize
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => _cpu.Bitness == 64 ? 8 : _cpu.Seg[SegSs].DefaultBig ? 4 : 2;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Push(ulong v, int size)
    {
        if (_cpu.Bitness == 64)
        {
            ulong sp = Gpr(4) - (ulong)size;
            Write(sp, size, v);
            Gpr(4) = sp;
            return;
        }

        PushLegacy(v, size);
    }

    private void PushLegacy(ulong v, int size)
    {
        if (_cpu.Seg[SegSs].DefaultBig)
        {
            uint sp = (uint)Gpr(4) - (uint)size;
            Write(StackLin(sp), size, v);
            Gpr(4) = (Gpr(4) & ~0xFFFFFFFFUL) | sp;
        }
        else
        {
            ushort sp = (ushort)((ushort)Gpr(4) - size);
            Write(StackLin(sp), size, v);
            Gpr(4) = (Gpr(4) & ~0xFFFFUL) | sp;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Pop(int size)
    {
        if (_cpu.Bitness == 64)
        {
            ulong sp = Gpr(4);
            ulong v = Read(sp, size);
            Gpr(4) = sp + (ulong)size;
            return v;
        }

        ulong v2 = PeekLegacy(0, size);
        AdjustSp(size);
        return v2;
    }

    /// <summary>Reads the stack at SP + <paramref name="offset"/> without popping.</summary>
    private ulong Peek(ulong offset, int size) =>
        _cpu.Bitness == 64 ? Read(Gpr(4) + offset, size) : PeekLegacy(offset, size);

    private ulong PeekLegacy(ulong offset, int size)
    {
        ulong sp = _cpu.Seg[SegSs].DefaultBig ? (uint)(Gpr(4) + offset) : (ushort)(Gpr(4) + offset);
        return Read(StackLin(sp), size);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void AdjustSp(long delta)
    {
        switch (StackAddrSize)
        {
            case 8: Gpr(4) += (ulong)delta; break;
            case 4: Gpr(4) = (Gpr(4) & ~0xFFFFFFFFUL) | (uint)(Gpr(4) + (ulong)delta); break;
            default: Gpr(4) = (Gpr(4) & ~0xFFFFUL) | (ushort)(Gpr(4) + (ulong)delta); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecPop(ref Op op)
    {
        int size = op.Size;
        ulong v = Peek(0, size);
        if (op.K0 == OpKindX.Reg)
        {
            AdjustSp(size);
            SetReg(op.R0, size, v);
        }
        else
        {
            // POP m computes its address with the incremented stack pointer.
            ulong oldSp = Gpr(4);
            AdjustSp(size);
            try
            {
                Write(Ea(ref op), size, v);
            }
            catch
            {
                Gpr(4) = oldSp;
                throw;
            }
        }
    }

    private void ExecPopf(int size)
    {
        ulong v = Peek(0, size);
        if ((_cpu.Flags & VM) != 0 && (_cpu.Flags & IoplMask) != IoplMask)
        {
            throw Fault(Vectors.GP, 0);
        }

        AdjustSp(size);
        Materialize();
        ulong changeable = CF | PF | AF | ZF | SF | TF | DF | OF | NT | AC | ID;
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || _cpu.Cpl == 0)
        {
            changeable |= IoplMask | IF;
        }
        else if (_cpu.Cpl <= (int)((_cpu.Flags & IoplMask) >> 12))
        {
            changeable |= IF;
        }

        if (size == 2)
        {
            changeable &= 0xFFFF;
        }

        bool wasIf = (_cpu.Flags & IF) != 0;
        _cpu.Flags = (_cpu.Flags & ~changeable) | (v & changeable) | Fixed1;
        if (!wasIf && (_cpu.Flags & IF) != 0)
        {
            _interruptShadow = false;
        }

        UpdateAlignmentCheck();

        _stop = true;
    }

    private void ExecEnter(ref Op op)
    {
        int size = op.Size;
        ulong alloc = op.Imm;
        int level = (int)(op.Target & 31);
        int ss = StackAddrSize;
        ulong bp = GetReg(5, size);
        Push(bp, size);
        ulong frame = StrReg(4, ss);
        for (int l = 1; l < level; l++)
        {
            ulong ebp = StrReg(5, ss) - (ulong)(l * size);
            ulong v = _cpu.Bitness == 64 ? Read(ebp & Mask(ss), size) : Read(StackLin(ebp & Mask(ss)), size);
            Push(v, size);
        }

        if (level > 0)
        {
            Push(frame, size);
        }

        ulong newSp = StrReg(4, ss) - alloc;
        // Touch the new top of stack so a fault leaves no partial frame (hardware checks the final RSP).
        ulong lin = _cpu.Bitness == 64 ? newSp : StackLin(newSp & Mask(ss));
        if (alloc != 0)
        {
            ProbeWrite(lin, 1);
        }

        SetReg(5, size, frame);
        SetReg(4, ss, newSp);
    }
}
