using System.Runtime.CompilerServices;
using System.Numerics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Bit handlers: BT/BTS/BTR/BTC, BSF/BSR, TZCNT/LZCNT/POPCNT and the BMI1 and BMI2 groups.</summary>
internal sealed partial class InterpreterVcpu
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong Bt(ref Op op, in Instruction _)
    {
        ExecBt(ref op);
        return op.Next;
    }

    internal ulong Bsf(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Bsr(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Tzcnt(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Lzcnt(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Popcnt(ref Op op, in Instruction ins) => BitCount(ref op, in ins);

    internal ulong Andn(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Bextr(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Blsi(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Blsmsk(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    internal ulong Blsr(ref Op op, in Instruction ins) => Bmi(ref op, in ins);

    private ulong BitCount(ref Op op, in Instruction ins)
    {
        ExecBitCount(ref op, in ins);
        return op.Next;
    }

    private ulong Bmi(ref Op op, in Instruction ins)
    {
        ExecBmi(ref op, in ins);
        return op.Next;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecBt(ref Op op)
    {
        int size = op.Size;
        int bits = size * 8;
        ulong ea = 0;
        ulong a;
        int bit;
        if (op.K1 == OpKindX.Imm)
        {
            bit = (int)(op.Imm & (ulong)(bits - 1));
            a = op.Sub == 0 ? ReadOp0(ref op, out ea) : ReadOp0Rmw(ref op, out ea);
        }
        else
        {
            ulong off = GetReg(op.R1, size);
            if (op.K0 == OpKindX.Reg)
            {
                bit = (int)(off & (ulong)(bits - 1));
                a = GetReg(op.R0, size);
            }
            else
            {
                // Register bit offsets address a bit string: signed, beyond the operand.
                long soff = SignExtend(off, size);
                long unit = soff >> (size == 8 ? 6 : size == 4 ? 5 : 4);
                ea = Ea(ref op) + (ulong)(unit * size);
                if (_cpu.Bitness != 64)
                {
                    ea &= 0xFFFFFFFF;
                }

                bit = (int)(soff & (bits - 1));
                if (op.Sub != 0)
                {
                    ProbeWrite(ea, size);
                }

                a = Read(ea, size);
            }
        }

        Materialize();
        ulong cf = (a >> bit) & 1;
        _cpu.Flags = (_cpu.Flags & ~CF) | cf;
        if (op.Sub == 0)
        {
            return;
        }

        ulong r = op.Sub switch
        {
            1 => a | (1UL << bit),
            2 => a & ~(1UL << bit),
            _ => a ^ (1UL << bit),
        };
        WriteOp0(ref op, ea, r);
    }

    private void ExecBitCount(ref Op op, in Instruction ins)
    {
        int size = op.Size;
        ulong src = ReadOp1(ref op, size);
        int bits = size * 8;
        Materialize();
        switch (ins.Mnemonic)
        {
            case Mnemonic.Bsf:
            case Mnemonic.Bsr:
                if (src == 0)
                {
                    // Zero source: the destination keeps all 64 bits (Intel and AMD hardware).
                    _cpu.Flags |= ZF;
                    return;
                }

                _cpu.Flags &= ~ZF;
                SetReg(op.R0, size, (ulong)(ins.Mnemonic == Mnemonic.Bsf ? BitOperations.TrailingZeroCount(src) : 63 - BitOperations.LeadingZeroCount(src)));
                return;
            case Mnemonic.Tzcnt:
            {
                ulong r = src == 0 ? (ulong)bits : (ulong)BitOperations.TrailingZeroCount(src);
                SetReg(op.R0, size, r);
                _cpu.Flags = (_cpu.Flags & ~(CF | ZF)) | (src == 0 ? CF : 0) | (r == 0 ? ZF : 0);
                return;
            }

            case Mnemonic.Lzcnt:
            {
                ulong r = (ulong)(BitOperations.LeadingZeroCount(src) - (64 - bits));
                SetReg(op.R0, size, r);
                _cpu.Flags = (_cpu.Flags & ~(CF | ZF)) | (src == 0 ? CF : 0) | (r == 0 ? ZF : 0);
                return;
            }

            default:
            {
                ulong r = (ulong)BitOperations.PopCount(src);
                SetReg(op.R0, size, r);
                _cpu.Flags = (_cpu.Flags & ~ArithFlags) | (src == 0 ? ZF : 0);
                return;
            }
        }
    }

    private void ExecBmi(ref Op op, in Instruction ins)
    {
        int size = op.Size;
        ulong mask = Mask(size);
        ulong r;
        ulong f;
        switch (ins.Mnemonic)
        {
            case Mnemonic.Andn:
            {
                ulong a = GetReg(op.R1, size);
                ulong b = ReadThird(ref op, size);
                r = ~a & b & mask;
                f = Szp(r, size, 0) & ~PF;
                break;
            }

            case Mnemonic.Bextr:
            {
                ulong src = ReadOp1(ref op, size);
                ulong ctl = GetReg(op.R2, size);
                int start = (int)(ctl & 0xFF), len = (int)((ctl >> 8) & 0xFF);
                r = start >= 64 ? 0 : src >> start;
                if (len < 64)
                {
                    r &= (1UL << len) - 1;
                }

                r &= mask;
                f = r == 0 ? ZF : 0;
                break;
            }

            default:
            {
                ulong src = ReadOp1(ref op, size);
                r = ins.Mnemonic switch
                {
                    Mnemonic.Blsi => (0 - src) & src,
                    Mnemonic.Blsmsk => (src - 1) ^ src,
                    _ => (src - 1) & src,
                } & mask;
                ulong cf = ins.Mnemonic == Mnemonic.Blsr || ins.Mnemonic == Mnemonic.Blsmsk ? (src == 0 ? CF : 0) : (src != 0 ? CF : 0);
                f = (Szp(r, size, cf) & ~PF) & (ins.Mnemonic == Mnemonic.Blsmsk ? ~ZF : ~0UL);
                break;
            }
        }

        SetReg(op.R0, size, r);
        Materialize();
        _cpu.Flags = (_cpu.Flags & ~ArithFlags) | f;
    }

    /// <summary>BMI2 (VEX-encoded general-register forms): BZHI, MULX, PDEP, PEXT, RORX, SARX, SHLX, SHRX.</summary>
    internal ulong Bmi2(ref Op op, in Instruction ins)
    {
        CheckIsa(ins.Code);
        int size = ins.Op0Register.GetSize();
        int bits = size * 8;
        ulong mask = Mask(size);
        int dst = Translator.RegIndex(ins.Op0Register);
        switch (ins.Mnemonic)
        {
            case Mnemonic.Bzhi:
            {
                ulong src = GprOperand(ref op, in ins, 1, size);
                int n = (int)(GetReg(Translator.RegIndex(ins.Op2Register), size) & 0xFF);
                ulong r = n < bits ? src & ((1UL << n) - 1) : src;
                SetReg(dst, size, r);
                Materialize();
                _cpu.Flags = (_cpu.Flags & ~ArithFlags) | Szp(r & mask, size, n > bits - 1 ? CF : 0);
                break;
            }

            case Mnemonic.Mulx:
            {
                ulong a = GetReg(2, size);
                ulong b = GprOperand(ref op, in ins, 2, size);
                ulong hi, lo;
                if (size == 8)
                {
                    hi = Math.BigMul(a, b, out lo);
                }
                else
                {
                    ulong p = a * b;
                    hi = p >> 32;
                    lo = p & 0xFFFFFFFF;
                }

                SetReg(Translator.RegIndex(ins.Op1Register), size, lo);
                SetReg(dst, size, hi);
                break;
            }

            case Mnemonic.Pdep:
            case Mnemonic.Pext:
            {
                ulong src = GetReg(Translator.RegIndex(ins.Op1Register), size);
                ulong sel = GprOperand(ref op, in ins, 2, size);
                ulong r = 0;
                int k = 0;
                for (int i = 0; i < bits; i++)
                {
                    if ((sel & (1UL << i)) == 0)
                    {
                        continue;
                    }

                    if (ins.Mnemonic == Mnemonic.Pdep)
                    {
                        r |= ((src >> k) & 1) << i;
                    }
                    else
                    {
                        r |= ((src >> i) & 1) << k;
                    }

                    k++;
                }

                SetReg(dst, size, r);
                break;
            }

            case Mnemonic.Rorx:
            {
                ulong src = GprOperand(ref op, in ins, 1, size);
                int c = ins.Immediate8 & (bits - 1);
                ulong r = c == 0 ? src : ((src >> c) | (src << (bits - c))) & mask;
                SetReg(dst, size, r);
                break;
            }

            default:
            {
                ulong src = GprOperand(ref op, in ins, 1, size);
                int c = (int)(GetReg(Translator.RegIndex(ins.Op2Register), size) & (ulong)(bits - 1));
                ulong r = ins.Mnemonic switch
                {
                    Mnemonic.Shlx => src << c,
                    Mnemonic.Shrx => src >> c,
                    _ => (ulong)(SignExtend(src, size) >> c),
                };
                SetReg(dst, size, r & mask);
                break;
            }
        }

        return op.Next;
    }

    private ulong ReadThird(ref Op op, int size) =>
        op.K2 == OpKindX.Mem ? Read(Ea(ref op), size) : GetReg(op.R2, size);
}
