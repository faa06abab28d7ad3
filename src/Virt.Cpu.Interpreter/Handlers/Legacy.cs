using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The instructions of 16- and 32-bit code that 64-bit mode dropped (the decoder gives #UD there): the decimal
/// adjustments DAA, DAS, AAA, AAS, AAM and AAD, SALC, PUSHA/POPA, BOUND and ARPL; and the far-pointer loads LDS, LES,
/// LSS, LFS and LGS (the last three also in 64-bit mode). Flags the SDM leaves undefined: OF is cleared, and after AAA
/// and AAS SF, ZF and PF follow AL as the other adjustments define them; AAM and AAD clear OF, AF and CF.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>DAA, DAS, AAA, AAS (<see cref="Op.Sub"/> 0-3).</summary>
    internal ulong DecimalAdjust(ref Op op, in Instruction _)
    {
        Materialize();
        ulong flags = _cpu.Flags;
        bool cf = (flags & CF) != 0, af = (flags & AF) != 0;
        ulong ax = GetReg(0, 2);
        ulong al = ax & 0xFF;
        bool lowAdjust = (al & 0x0F) > 9 || af;
        switch (op.Sub)
        {
            case 0: // DAA
            {
                // The carry of the low adjustment is overwritten by the high one's decision (SDM, DAA).
                ulong r = lowAdjust ? (al + 6) & 0xFF : al;
                bool newCf = al > 0x99 || cf;
                if (newCf)
                {
                    r = (r + 0x60) & 0xFF;
                }

                SetReg(0, 1, r);
                SetDecimalFlags(r, newCf, lowAdjust);
                break;
            }

            case 1: // DAS
            {
                ulong r = al;
                bool newCf = false;
                if (lowAdjust)
                {
                    newCf = cf || al < 6;
                    r = (al - 6) & 0xFF;
                }

                if (al > 0x99 || cf)
                {
                    r = (r - 0x60) & 0xFF;
                    newCf = true;
                }

                SetReg(0, 1, r);
                SetDecimalFlags(r, newCf, lowAdjust);
                break;
            }

            default: // AAA, AAS: AX += 0x106 or AX -= 6, AH -= 1; then AL's high nibble is cleared
            {
                if (lowAdjust)
                {
                    ax = op.Sub == 2 ? ax + 0x106 : ((ax - 6) & 0xFFFF) - 0x100;
                }

                ax &= 0xFF0F;
                SetReg(0, 2, ax);
                SetDecimalFlags(ax & 0xFF, lowAdjust, lowAdjust);
                break;
            }
        }

        return op.Next;
    }

    private void SetDecimalFlags(ulong al, bool cf, bool af)
    {
        _cpu.LzOp = LzNone;
        _cpu.Flags = (_cpu.Flags & ~ArithFlags) | (cf ? CF : 0) | (af ? AF : 0) | (al == 0 ? ZF : 0) | (al & 0x80) | Parity(al);
    }

    /// <summary>AAM (<see cref="Op.Sub"/> 0: AH = AL / base, AL = AL mod base; #DE for base 0) and AAD (1: AL = AH × base + AL, AH = 0).</summary>
    internal ulong AsciiAdjust(ref Op op, in Instruction _)
    {
        ulong b = op.Imm & 0xFF;
        ulong ax = GetReg(0, 2);
        ulong al;
        if (op.Sub == 0)
        {
            if (b == 0)
            {
                throw Fault(Vectors.DE, 0);
            }

            ulong a = ax & 0xFF;
            al = a % b;
            SetReg(0, 2, ((a / b) << 8) | al);
        }
        else
        {
            al = ((ax & 0xFF) + ((ax >> 8) * b)) & 0xFF;
            SetReg(0, 2, al);
        }

        SetDecimalFlags(al, false, false); // every status flag is written: the lazy ones need not be computed first
        return op.Next;
    }

    /// <summary>SALC: AL = CF ? 0xFF : 0, flags unchanged.</summary>
    internal ulong Salc(ref Op op, in Instruction _)
    {
        SetReg(0, 1, CarryFlag() != 0 ? 0xFFUL : 0);
        return op.Next;
    }

    /// <summary>PUSHA/PUSHAD: AX, CX, DX, BX, the SP before the instruction, BP, SI, DI; nothing changes when a push faults.</summary>
    internal ulong Pusha(ref Op op, in Instruction _)
    {
        int size = op.Size;
        ulong rsp = Gpr(4);
        ulong sp = GetReg(4, size);
        try
        {
            for (int r = 0; r < 8; r++)
            {
                Push(r == 4 ? sp : GetReg(r, size), size);
            }
        }
        catch (GuestFault)
        {
            Gpr(4) = rsp;
            throw;
        }

        return op.Next;
    }

    /// <summary>POPA/POPAD: DI, SI, BP, (SP skipped), BX, DX, CX, AX; every value is read before any register changes.</summary>
    internal ulong Popa(ref Op op, in Instruction _)
    {
        int size = op.Size;
        Span<ulong> values = stackalloc ulong[8];
        for (int i = 0; i < 8; i++)
        {
            values[i] = Peek((ulong)(i * size), size);
        }

        for (int i = 0; i < 8; i++)
        {
            int r = 7 - i;
            if (r != 4)
            {
                SetReg(r, size, values[i]);
            }
        }

        AdjustSp(8 * size);
        return op.Next;
    }

    /// <summary>BOUND: #BR when the signed register is below the first bound or above the second (both in memory).</summary>
    internal ulong Bound(ref Op op, in Instruction _)
    {
        int size = op.Size;
        ulong ea = Ea(ref op);
        long lower = SignExtend(Read(ea, size), size);
        long upper = SignExtend(Read(ea + (ulong)size, size), size);
        long v = SignExtend(GetReg(op.R0, size), size);
        if (v < lower || v > upper)
        {
            throw Fault(Vectors.BR, 0);
        }

        return op.Next;
    }

    /// <summary>ARPL: raises the destination selector's RPL to the source's (ZF set) or leaves it (ZF clear); #UD outside protected mode.</summary>
    internal ulong Arpl(ref Op op, in Instruction _)
    {
        if ((_cpu.Cr0 & Virt.X86.Cr0.ProtectionEnable) == 0 || (_cpu.Flags & VM) != 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        ulong dest = ReadOp0Rmw(ref op, out ulong ea);
        ulong src = GetReg(op.R1, 2);
        Materialize();
        if ((dest & 3) < (src & 3))
        {
            WriteOp0(ref op, ea, (dest & ~3UL) | (src & 3));
            _cpu.Flags |= ZF;
        }
        else
        {
            _cpu.Flags &= ~ZF;
        }

        return op.Next;
    }

    /// <summary>LDS, LES, LSS, LFS, LGS: the offset and then the selector from memory; the segment is loaded (with its checks) before the register.</summary>
    internal ulong LoadFarPointer(ref Op op, in Instruction _)
    {
        int size = op.Size;
        ulong ea = Ea(ref op);
        ulong offset = Read(ea, size);
        ushort selector = (ushort)Read(ea + (ulong)size, 2);
        LoadDataSegment(op.Sub, selector);
        SetReg(op.R0, size, offset);
        _stop = true;
        return op.Next;
    }
}
