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

            case MulDivDiv:
            {
                if (src == 0)
                {
                    throw Fault(Vectors.DE, 0);
                }

                if (size == 8)
                {
                    UInt128 n = ((UInt128)Gpr(2) << 64) | Gpr(0);
                    UInt128 q = n / src;
                    if (q > ulong.MaxValue)
                    {
                        throw Fault(Vectors.DE, 0);
                    }

                    Gpr(0) = (ulong)q;
                    Gpr(2) = (ulong)(n % src);
                }
                else
                {
                    ulong n = size == 1 ? GetReg(0, 2) : (GetReg(2, size) << (size * 8)) | GetReg(0, size);
                    ulong q = n / src;
                    if (q > Mask(size))
                    {
                        throw Fault(Vectors.DE, 0);
                    }

                    StoreDivResult(size, q, n % src);
                }

                break;
            }

            default:
            {
                if (src == 0)
                {
                    throw Fault(Vectors.DE, 0);
                }

                if (size == 8)
                {
                    Int128 n = (Int128)(((UInt128)Gpr(2) << 64) | Gpr(0));
                    Int128 d = (long)src;
                    if (n == Int128.MinValue && d == -1)
                    {
                        throw Fault(Vectors.DE, 0);
                    }

                    Int128 q = n / d;
                    if (q > long.MaxValue || q < long.MinValue)
                    {
                        throw Fault(Vectors.DE, 0);
                    }

                    Gpr(0) = (ulong)(long)q;
                    Gpr(2) = (ulong)(long)(n % d);
                }
                else
                {
                    long n = size == 1 ? (short)GetReg(0, 2) : SignExtend((GetReg(2, size) << (size * 8)) | GetReg(0, size), size * 2);
                    long d = SignExtend(src, size);
                    if (n == long.MinValue && d == -1)
                    {
                        // EDX:EAX of 0x80000000:00000000 by -1: the quotient overflows (and the host division would throw).
                        throw Fault(Vectors.DE, 0);
                    }

                    long q = n / d;
                    long max = (long)(SignBit(size) - 1);
                    if (q > max || q < -max - 1)
                    {
                        throw Fault(Vectors.DE, 0);
                    }

                    StoreDivResult(size, (ulong)q & Mask(size), (ulong)(n % d) & Mask(size));
                }

                break;
            }
        }
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
