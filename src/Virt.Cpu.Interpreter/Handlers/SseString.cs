using System.Numerics;
using System.Runtime.Intrinsics;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// SSE4.2: the packed string compares PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM (every source format, aggregation
/// operation, polarity and output selection of the immediate) and CRC32.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Crc32(ref Op op, in Instruction ins)
    {
        CheckIsa(ins.Code);
        int size = ins.Op1Kind == OpKind.Register ? ins.Op1Register.GetSize() : ins.MemorySize.GetSize();
        ulong src = GprOperand(ref op, in ins, 1, size);
        int dst = Translator.RegIndex(ins.Op0Register);
        uint crc = (uint)GetReg(dst, 4);
        crc = size switch
        {
            1 => BitOperations.Crc32C(crc, (byte)src),
            2 => BitOperations.Crc32C(crc, (ushort)src),
            4 => BitOperations.Crc32C(crc, (uint)src),
            _ => BitOperations.Crc32C(crc, src),
        };
        SetReg(dst, ins.Op0Register.GetSize(), crc);
        return op.Next;
    }

    /// <summary>Element <paramref name="i"/> of <paramref name="v"/> in the source format (bits 1:0 of the immediate), sign- or zero-extended.</summary>
    private static int StringElement(Vector128<byte> v, int i, int format) => format switch
    {
        0 => v.GetElement(i),
        1 => v.AsUInt16().GetElement(i),
        2 => v.AsSByte().GetElement(i),
        _ => v.AsInt16().GetElement(i),
    };

    /// <summary>The length of an implicit-length string: the index of its first zero element, or the element count.</summary>
    private static int ImplicitLength(Vector128<byte> v, int n, int format)
    {
        for (int i = 0; i < n; i++)
        {
            if (StringElement(v, i, format) == 0)
            {
                return i;
            }
        }

        return n;
    }

    /// <summary>An explicit length from RAX/RDX (64-bit forms) or EAX/EDX: its absolute value, saturated to the element count.</summary>
    private static int ExplicitLength(long v, int n)
    {
        if (v < 0)
        {
            v = v == long.MinValue ? long.MaxValue : -v;
        }

        return v > n ? n : (int)v;
    }

    /// <summary>The aggregated and polarity-applied result (IntRes2) of a packed string compare, one bit per element.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The four aggregation operations and four polarities of the SDM's PCMPxSTRx definition, each a few lines.")]
    private static int StringCompare(Vector128<byte> a, int la, Vector128<byte> b, int lb, int imm, int n)
    {
        int format = imm & 3;
        int aggregation = (imm >> 2) & 3;
        int res = 0;
        switch (aggregation)
        {
            case 0: // equal any: is element j of b in the set a?
                for (int j = 0; j < lb; j++)
                {
                    int bj = StringElement(b, j, format);
                    for (int i = 0; i < la; i++)
                    {
                        if (StringElement(a, i, format) == bj)
                        {
                            res |= 1 << j;
                            break;
                        }
                    }
                }

                break;
            case 1: // ranges: is element j of b inside one of the pairs [a(2k), a(2k+1)]?
                for (int j = 0; j < lb; j++)
                {
                    int bj = StringElement(b, j, format);
                    for (int i = 0; i + 1 < la; i += 2)
                    {
                        if (StringElement(a, i, format) <= bj && bj <= StringElement(a, i + 1, format))
                        {
                            res |= 1 << j;
                            break;
                        }
                    }
                }

                break;
            case 2: // equal each: both invalid compares true, one invalid false
                for (int i = 0; i < n; i++)
                {
                    bool va = i < la, vb = i < lb;
                    bool eq = va && vb ? StringElement(a, i, format) == StringElement(b, i, format) : !va && !vb;
                    res |= eq ? 1 << i : 0;
                }

                break;
            default: // equal ordered: does the substring a start at element j of b? (invalid a elements match anything)
                for (int j = 0; j < n; j++)
                {
                    bool match = true;
                    for (int k = 0; k < n - j && match; k++)
                    {
                        if (k >= la)
                        {
                            break;
                        }

                        match = j + k < lb && StringElement(a, k, format) == StringElement(b, j + k, format);
                    }

                    res |= match ? 1 << j : 0;
                }

                break;
        }

        int all = (1 << n) - 1;
        return ((imm >> 4) & 3) switch
        {
            1 => ~res & all,
            3 => (res ^ ((1 << lb) - 1)) & all,
            _ => res,
        };
    }

    /// <summary>PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM; returns false when <paramref name="ins"/> is not one.</summary>
    private bool ExecSseString(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        bool explicitLength = m is Mnemonic.Pcmpestri or Mnemonic.Pcmpestri64 or Mnemonic.Pcmpestrm or Mnemonic.Pcmpestrm64;
        bool index = m is Mnemonic.Pcmpestri or Mnemonic.Pcmpestri64 or Mnemonic.Pcmpistri;
        if (!explicitLength && !index && m != Mnemonic.Pcmpistrm)
        {
            return false;
        }

        int imm = ins.Immediate8;
        int n = (imm & 1) != 0 ? 8 : 16;
        var a = Xr(XmmIndex(ins.Op0Register));
        var b = SrcX(ref op, in ins, 1);
        int la, lb;
        if (explicitLength)
        {
            bool wide = m is Mnemonic.Pcmpestri64 or Mnemonic.Pcmpestrm64;
            la = ExplicitLength(wide ? (long)Gpr(0) : (int)Gpr(0), n);
            lb = ExplicitLength(wide ? (long)Gpr(2) : (int)Gpr(2), n);
        }
        else
        {
            la = ImplicitLength(a, n, imm & 3);
            lb = ImplicitLength(b, n, imm & 3);
        }

        int res = StringCompare(a, la, b, lb, imm, n);
        if (index)
        {
            int idx = res == 0 ? n : (imm & 0x40) != 0 ? 31 - BitOperations.LeadingZeroCount((uint)res) : BitOperations.TrailingZeroCount(res);
            SetReg(1, 4, (ulong)idx);
        }
        else if ((imm & 0x40) == 0)
        {
            Xr(0) = Vector128.Create((uint)res, 0u, 0u, 0u).AsByte();
        }
        else
        {
            var mask = Vector128<byte>.Zero;
            int w = 16 / n;
            for (int i = 0; i < n; i++)
            {
                if ((res & (1 << i)) != 0)
                {
                    for (int k = 0; k < w; k++)
                    {
                        mask = mask.WithElement((i * w) + k, (byte)0xFF);
                    }
                }
            }

            Xr(0) = mask;
        }

        ulong f = (res != 0 ? CF : 0) | (lb < n ? ZF : 0) | (la < n ? Rflags.Sign : 0) | ((res & 1) != 0 ? Rflags.Overflow : 0);
        _cpu.LzOp = LzNone;
        _cpu.Flags = (_cpu.Flags & ~ArithFlags) | f;
        return true;
    }
}
