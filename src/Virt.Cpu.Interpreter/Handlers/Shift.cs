using System.Runtime.CompilerServices;
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong Shrd(ref Op op, in Instruction ins)
    {
        ExecShiftDouble(ref op, in ins);
        return op.Next;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecShift(ref Op op)
    {
        int size = op.Size;
        int bits = size * 8;
        ulong mask = Mask(size);
        ulong sign = SignBit(size);
        int count = (int)((op.K1 == OpKindX.Reg ? Gpr(1) : op.Imm) & (size == 8 ? 0x3FUL : 0x1FUL));
        ulong a = ReadOp0Rmw(ref op, out ulong ea);
        if (count == 0)
        {
            // No flags change; a 32-bit register destination is still written (upper half cleared).
            if (op.K0 == OpKindX.Reg && size == 4)
            {
                SetReg(op.R0, 4, a);
            }

            return;
        }

        ulong r;
        ulong cf;
        switch (op.Sub)
        {
            case 4: // SHL
            case 6: // SAL
            {
                r = count >= 64 ? 0 : (a << count) & mask;
                cf = count > bits ? 0 : (a >> (bits - count)) & 1;
                bool of = ((r & sign) != 0) ^ (cf != 0);
                WriteOp0(ref op, ea, r);
                SetLazyShift(a, r, size, cf | (of ? OF : 0));
                return;
            }

            case 5: // SHR
            {
                r = count >= 64 ? 0 : a >> count;
                cf = count > bits ? 0 : (a >> (count - 1)) & 1;
                WriteOp0(ref op, ea, r);
                SetLazyShift(a, r, size, cf | ((a & sign) != 0 ? OF : 0));
                return;
            }

            case 7: // SAR
            {
                long sa = SignExtend(a, size);
                int c = Math.Min(count, 63);
                r = (ulong)(sa >> c) & mask;
                cf = (ulong)(sa >> Math.Min(count - 1, 63)) & 1;
                WriteOp0(ref op, ea, r);
                SetLazyShift(a, r, size, cf);
                return;
            }
        }

        Rotate(ref op, a, ea, count);
    }

    /// <summary>ROL, ROR, RCL, RCR (<see cref="Op.Sub"/> 0-3) by a non-zero <paramref name="count"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Rotate(ref Op op, ulong a, ulong ea, int count)
    {
        int size = op.Size;
        int bits = size * 8;
        ulong mask = Mask(size);
        ulong sign = SignBit(size);
        ulong r;
        ulong cf;
        // Rotates change only CF and OF: start from the current flags.
        ulong f = GetRflags() & ArithFlags;
        switch (op.Sub)
        {
            case 0: // ROL
            {
                int c = count % bits;
                r = c == 0 ? a : ((a << c) | (a >> (bits - c))) & mask;
                cf = r & 1;
                bool of = ((r & sign) != 0) ^ (cf != 0);
                f = (f & ~(CF | OF)) | cf | (of ? OF : 0);
                break;
            }

            case 1: // ROR
            {
                int c = count % bits;
                r = c == 0 ? a : ((a >> c) | (a << (bits - c))) & mask;
                cf = (r & sign) != 0 ? 1UL : 0;
                bool of = ((r & sign) != 0) ^ ((r & (sign >> 1)) != 0);
                f = (f & ~(CF | OF)) | cf | (of ? OF : 0);
                break;
            }

            case 2: // RCL
            {
                int c = size == 1 ? count % 9 : size == 2 ? count % 17 : count;
                r = a;
                cf = f & CF;
                for (int k = 0; k < c; k++)
                {
                    ulong top = (r & sign) != 0 ? 1UL : 0;
                    r = ((r << 1) | cf) & mask;
                    cf = top;
                }

                // A count that is a multiple of the width still updates OF (as Intel hardware does).
                bool of = ((r & sign) != 0) ^ (cf != 0);
                f = (f & ~(CF | OF)) | cf | (of ? OF : 0);
                break;
            }

            case 3: // RCR
            {
                int c = size == 1 ? count % 9 : size == 2 ? count % 17 : count;
                r = a;
                cf = f & CF;
                for (int k = 0; k < c; k++)
                {
                    ulong low = r & 1;
                    r = (r >> 1) | (cf != 0 ? sign : 0);
                    cf = low;
                }

                // OF from the two top bits of the result (equal to MSB(dest) ^ CF for a count of 1).
                bool of = ((r & sign) != 0) ^ ((r & (sign >> 1)) != 0);
                f = (f & ~(CF | OF)) | cf | (of ? OF : 0);
                break;
            }

            default:
                throw new InvalidOperationException("unreachable shift kind");
        }

        WriteOp0(ref op, ea, r);
        SetArith(f);
    }

    /// <summary>Records a shift's flags lazily: SF, ZF and PF follow from <paramref name="r"/>; <paramref name="cfOf"/> holds CF and OF.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private void SetLazyShift(ulong a, ulong r, int size, ulong cfOf)
    {
        SetLazy(LzShift, a, 0, r, size);
        _cpu.LzCf = cfOf;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecShiftDouble(ref Op op, in Instruction ins)
    {
        int size = op.Size;
        int bits = size * 8;
        ulong mask = Mask(size);
        ulong sign = SignBit(size);
        int count = (int)((op.Sub == 1 ? Gpr(1) : op.Imm) & (size == 8 ? 0x3FUL : 0x1FUL));
        ulong a = ReadOp0Rmw(ref op, out ulong ea);
        ulong b = GetReg(op.R1, size);
        if (count == 0)
        {
            if (op.K0 == OpKindX.Reg && size == 4)
            {
                SetReg(op.R0, 4, a);
            }

            return;
        }

        ulong r, cf;
        if (size == 2)
        {
            // 16-bit operands shift the 32-bit (or, past 16, 48-bit) concatenation, as Intel hardware does.
            if (ins.Mnemonic == Mnemonic.Shld)
            {
                ulong wide = (a << 32) | (b << 16) | a;
                r = (wide << count >> 32) & mask;
                cf = (wide >> (48 - count)) & 1;
            }
            else
            {
                ulong wide = a | (b << 16) | (a << 32);
                r = (wide >> count) & mask;
                cf = (wide >> (count - 1)) & 1;
            }
        }
        else if (ins.Mnemonic == Mnemonic.Shld)
        {
            r = ((a << count) | (b >> (bits - count))) & mask;
            cf = (a >> (bits - count)) & 1;
        }
        else
        {
            r = ((a >> count) | (b << (bits - count))) & mask;
            cf = (a >> (count - 1)) & 1;
        }

        bool of = ((r ^ a) & sign) != 0;
        WriteOp0(ref op, ea, r);
        SetArith(Szp(r, size, cf | (of ? OF : 0)));
    }
}
