using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Multiply and divide handlers: MUL, one-operand IMUL, DIV, IDIV (two- and three-operand IMUL run inline).</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Mul(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, MulDivMul);
        return op.Next;
    }

    internal ulong Imul1(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, MulDivImul);
        return op.Next;
    }

    internal ulong Div(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, MulDivDiv);
        return op.Next;
    }

    internal ulong Idiv(ref Op op, in Instruction ins)
    {
        ExecMulDiv(ref op, MulDivIdiv);
        return op.Next;
    }

    /// <summary>The operation <see cref="ExecMulDiv"/> runs (<see cref="InlineOp.MulDiv"/>'s <see cref="Op.Sub"/>).</summary>
    private const int MulDivMul = 0, MulDivImul = 1, MulDivDiv = 2, MulDivIdiv = 3;

    private void ExecMulDiv(ref Op op, int kind)
    {
        int size = op.Size;
        ulong src = ReadOp0(ref op, out _);
        switch (kind)
        {
            case MulDivMul:
            {
                ulong lo, hi;
                if (size == 8)
                {
                    hi = Math.BigMul(Gpr(0), src, out lo);
                }
                else
                {
                    ulong p = GetReg(0, size) * src;
                    lo = p & Mask(size);
                    hi = (p >> (size * 8)) & Mask(size);
                }

                StoreMulResult(size, lo, hi);
                SetArith(Szp(lo, size, hi != 0 ? CF | OF : 0));
                break;
            }

            case MulDivImul:
            {
                ulong lo, hi;
                bool overflow;
                if (size == 8)
                {
                    long h = Math.BigMul((long)Gpr(0), (long)src, out long l);
                    lo = (ulong)l;
                    hi = (ulong)h;
                    overflow = h != (l >> 63);
                }
                else
                {
                    long p = SignExtend(GetReg(0, size), size) * SignExtend(src, size);
                    lo = (ulong)p & Mask(size);
                    hi = ((ulong)p >> (size * 8)) & Mask(size);
                    overflow = p != SignExtend(lo, size);
                }

                StoreMulResult(size, lo, hi);
                SetArith(Szp(lo, size, overflow ? CF | OF : 0));
                break;
            }

            default:
            {
                // DIV (MulDivDiv) and IDIV: the dividend is DX:AX, EDX:EAX or RDX:RAX, or AX for bytes.
                ulong lo = size == 1 ? GetReg(0, 2) : GetReg(0, size);
                ulong hi = size == 1 ? 0 : GetReg(2, size);
                if (!Divide(lo, hi, src, size, kind != MulDivDiv, out ulong q, out ulong r))
                {
                    throw Fault(Vectors.DE, 0);
                }

                StoreDivResult(size, q, r);
                break;
            }
        }
    }

    /// <summary>
    /// DIV or IDIV (<paramref name="signed"/>) of <paramref name="size"/> bytes as the interpreter computes it: the dividend
    /// is <paramref name="hi"/>:<paramref name="lo"/> (bytes: AX in <paramref name="lo"/>). False, with nothing computed,
    /// when the divisor is 0 or the quotient does not fit (#DE).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static bool Divide(ulong lo, ulong hi, ulong src, int size, bool signed, out ulong q, out ulong r)
    {
        q = r = 0;
        if (src == 0)
        {
            return false;
        }

        if (!signed)
        {
            if (size == 8)
            {
                if (hi >= src)
                {
                    return false;
                }

                if (hi == 0)
                {
                    // The common case (a 64-bit dividend): one host division, without the 128-bit routine.
                    q = lo / src;
                    r = lo % src;
                    return true;
                }

                UInt128 n = ((UInt128)hi << 64) | lo;
                q = (ulong)(n / src);
                r = (ulong)(n % src);
                return true;
            }

            ulong un = size == 1 ? lo : (hi << (size * 8)) | lo;
            ulong uq = un / src;
            if (uq > Mask(size))
            {
                return false;
            }

            q = uq;
            r = un % src;
            return true;
        }

        if (size == 8 && hi == (ulong)((long)lo >> 63))
        {
            // A sign-extended 64-bit dividend: one host division; only long.MinValue / -1 overflows.
            if ((long)lo == long.MinValue && (long)src == -1)
            {
                return false;
            }

            q = (ulong)((long)lo / (long)src);
            r = (ulong)((long)lo % (long)src);
            return true;
        }

        if (size == 8)
        {
            Int128 n = (Int128)(((UInt128)hi << 64) | lo);
            Int128 d = (long)src;
            if (n == Int128.MinValue && d == -1)
            {
                return false;
            }

            Int128 sq = n / d;
            if (sq > long.MaxValue || sq < long.MinValue)
            {
                return false;
            }

            q = (ulong)(long)sq;
            r = (ulong)(long)(n % d);
            return true;
        }

        long sn = size == 1 ? (short)lo : SignExtend((hi << (size * 8)) | lo, size * 2);
        long sd = SignExtend(src, size);
        if (sn == long.MinValue && sd == -1)
        {
            return false;
        }

        long lq = sn / sd;
        long max = (long)(SignBit(size) - 1);
        if (lq > max || lq < -max - 1)
        {
            return false;
        }

        q = (ulong)lq & Mask(size);
        r = (ulong)(sn % sd) & Mask(size);
        return true;
    }

    private void StoreMulResult(int size, ulong lo, ulong hi)
    {
        if (size == 1)
        {
            SetReg(0, 2, lo | (hi << 8));
        }
        else
        {
            SetReg(0, size, lo);
            SetReg(2, size, hi);
        }
    }

    private void StoreDivResult(int size, ulong q, ulong r)
    {
        if (size == 1)
        {
            SetReg(0, 1, q);
            SetReg(16, 1, r);
        }
        else
        {
            SetReg(0, size, q);
            SetReg(2, size, r);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecImul2(ref Op op)
    {
        int size = op.Size;
        ulong a, b;
        if (op.Size2 == 0xFF)
        {
            // IMUL r, r/m, imm
            a = ReadOp1(ref op, size);
            b = op.Imm;
        }
        else
        {
            a = GetReg(op.R0, size);
            b = ReadOp1(ref op, size);
        }

        ulong lo;
        bool overflow;
        if (size == 8)
        {
            long h = Math.BigMul((long)a, (long)b, out long l);
            lo = (ulong)l;
            overflow = h != (l >> 63);
        }
        else
        {
            long p = SignExtend(a, size) * SignExtend(b, size);
            lo = (ulong)p & Mask(size);
            overflow = p != SignExtend(lo, size);
        }

        SetReg(op.R0, size, lo);
        SetArith(Szp(lo, size, overflow ? CF | OF : 0));
    }
}
