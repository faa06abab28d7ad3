using System.Numerics;
using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// FMA (fused multiply-add) and F16C (half-precision conversions). VFMADD, VFMSUB, VFNMADD, VFNMSUB, VFMADDSUB and
/// VFMSUBADD in their 132, 213 and 231 orders compute ±(a · b) ± c exactly and round once under MXCSR (see FmaMath.cs).
/// As the processor does (an AMD EPYC under KVM was the reference): a NaN operand gives the first NaN of a, b, c,
/// quietened, with IE for any signalling one, where a and b are the multiplicands and c the addend as the order places
/// them (132: operand 1, operand 3, operand 2; 213: 2, 1, 3; 231: 2, 3, 1), not the encoding's operand order; an invalid
/// operation (∞ · 0, ∞ − ∞) raises IE alone, without DE for a denormal in the same element; and when an unmasked
/// invalid or denormal condition is found in any element, the elements are not rounded, so neither OE, UE nor PE is
/// set. Underflow is tininess after rounding (to the precision, with an unbounded exponent), and FTZ flushes every
/// tiny result, even one the denormal format would round up to the smallest normal. F16C's VCVTPH2PS is exact, raises
/// no DE and ignores DAZ; VCVTPS2PH reads with DAZ and raises DE, rounds per imm8 or MXCSR.RC, and never flushes.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    // FMA kinds: the signs of the product and the addend, alternating per element for ADDSUB and SUBADD.
    private const byte FmaAdd = 0, FmaSub = 1, FmaNegAdd = 2, FmaNegSub = 3, FmaAddSub = 4, FmaSubAdd = 5;


    /// <summary>An FMA mnemonic decoded.</summary>
    /// <param name="Kind">FmaAdd ... FmaSubAdd, or 0xFF for none.</param>
    /// <param name="Order">0, 1, 2 for 132, 213, 231: which operands are multiplied and which is added.</param>
    /// <param name="Double">Double-precision elements.</param>
    /// <param name="Scalar">Only element 0 is computed; the destination keeps the rest of bits 127:0.</param>
    private readonly record struct FmaForm(byte Kind, byte Order, bool Double, bool Scalar);

    /// <summary>Runs <paramref name="ins"/> when it is one of this file's instructions; false otherwise.</summary>
    private bool ExecFma(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        if (m == Mnemonic.Vcvtph2ps)
        {
            ExecCvtph2ps(ref op, in ins);
            return true;
        }

        if (m == Mnemonic.Vcvtps2ph)
        {
            ExecCvtps2ph(ref op, in ins);
            return true;
        }

        var form = AvxTables.FmaForms[(int)m];
        if (form.Kind == 0xFF)
        {
            return false;
        }

        var d = ins.Op0Register;
        var s1 = GetY(VecIndex(d));
        var s2 = SrcY(ref op, in ins, 1);
        var s3 = SrcY(ref op, in ins, 2);
        int bytes = form.Scalar ? 0 : IsYmm(d) ? 32 : 16;
        Vector256<byte> r = form.Double ? FmaLanes<double>(s1, s2, s3, form, bytes) : FmaLanes<float>(s1, s2, s3, form, bytes);
        CommitPreComputationFirst();
        SetVexDest(d, r);
        return true;
    }

    /// <summary>The elements of an FMA instruction: all <paramref name="bytes"/> of them, or element 0 alone when 0 (the others of the first operand kept).</summary>
    private Vector256<byte> FmaLanes<T>(Vector256<byte> s1, Vector256<byte> s2, Vector256<byte> s3, FmaForm form, int bytes)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        var a = s1.As<byte, T>();
        var b = s2.As<byte, T>();
        var c = s3.As<byte, T>();
        var r = a;
        int n = bytes == 0 ? 1 : bytes * Vector256<T>.Count / 32;
        for (int i = 0; i < n; i++)
        {
            bool odd = (i & 1) != 0;
            bool negMul = form.Kind is FmaNegAdd or FmaNegSub;
            bool negAdd = form.Kind switch
            {
                FmaSub or FmaNegSub => true,
                FmaAddSub => !odd,
                FmaSubAdd => odd,
                _ => false,
            };
            r = r.WithElement(i, FmaLane(a.GetElement(i), b.GetElement(i), c.GetElement(i), form.Order, negMul, negAdd));
        }

        return r.AsByte();
    }

    /// <summary>
    /// One element: <paramref name="s1"/>, <paramref name="s2"/>, <paramref name="s3"/> are the first operand (the
    /// destination), the second (VEX.vvvv) and the third (ModRM.rm); <paramref name="order"/> says which two are multiplied
    /// (x · y + z), and a NaN result is the first NaN of x, y, z.
    /// </summary>
    private T FmaLane<T>(T s1, T s2, T s3, int order, bool negMul, bool negAdd)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        var (x, y, z) = order switch
        {
            0 => (s1, s3, s2),
            1 => (s2, s1, s3),
            _ => (s2, s3, s1),
        };
        if (T.IsNaN(x) || T.IsNaN(y) || T.IsNaN(z))
        {
            if (IsSnan(x) || IsSnan(y) || IsSnan(z))
            {
                _sseFlags |= MxIe;
            }

            return Quiet(T.IsNaN(x) ? x : T.IsNaN(y) ? y : z);
        }

        // DAZ reads denormals as zeros; otherwise they raise DE, unless the element is an invalid operation.
        bool denormal = T.IsSubnormal(x) || T.IsSubnormal(y) || T.IsSubnormal(z);
        if ((_cpu.Fpu.Mxcsr & MxDaz) != 0)
        {
            (x, y, z) = (DenormalAsZero(x), DenormalAsZero(y), DenormalAsZero(z));
            denormal = false;
        }

        if (negMul)
        {
            x = -x;
        }

        if (negAdd)
        {
            z = -z;
        }

        if (FmaSpecial(x, y, z, out T special))
        {
            _sseFlags |= T.IsNaN(special) ? MxIe : denormal ? MxDe : 0;
            return special;
        }

        if (denormal)
        {
            _sseFlags |= MxDe;
        }

        var fmt = typeof(T) == typeof(float) ? SingleFormat : DoubleFormat;
        double r = FusedExact(double.CreateTruncating(x), double.CreateTruncating(y), double.CreateTruncating(z), fmt, Rc, (_cpu.Fpu.Mxcsr & MxFz) != 0);
        return T.CreateTruncating(r);
    }

    private static T DenormalAsZero<T>(T v)
        where T : unmanaged, IBinaryFloatingPointIeee754<T> => T.IsSubnormal(v) ? (T.IsNegative(v) ? T.NegativeZero : T.Zero) : v;

    /// <summary>The product x · y plus z (none of them NaN) when an infinity or zeros decide it, the default NaN for an invalid operation (∞ · 0, ∞ − ∞); false for finite operands that need the exact sum.</summary>
    private bool FmaSpecial<T>(T x, T y, T z, out T r)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
    {
        if ((T.IsInfinity(x) && T.IsZero(y)) || (T.IsZero(x) && T.IsInfinity(y)))
        {
            r = DefaultNaN<T>();
            return true;
        }

        if (T.IsInfinity(x) || T.IsInfinity(y))
        {
            T p = x * y;
            if (T.IsInfinity(z) && T.IsNegative(z) != T.IsNegative(p))
            {
                r = DefaultNaN<T>();
                return true;
            }

            r = p;
            return true;
        }

        if (T.IsInfinity(z))
        {
            r = z;
            return true;
        }

        if ((T.IsZero(x) || T.IsZero(y)) && T.IsZero(z))
        {
            // Zeros of one sign keep it; opposite signs give +0, or -0 rounding down.
            bool pn = T.IsNegative(x) ^ T.IsNegative(y);
            r = pn == T.IsNegative(z) ? z : Rc == RcDown ? T.NegativeZero : T.Zero;
            return true;
        }

        r = default;
        return false;
    }

    /// <summary>
    /// Commits the instruction's MXCSR flags; when an unmasked invalid, denormal or divide-by-zero condition was found in
    /// any element, the processor stops before the results are rounded, so only those pre-computation flags are set.
    /// </summary>
    private void CommitPreComputationFirst()
    {
        const uint pre = MxIe | MxDe | MxZe;
        if ((_sseFlags & pre & ~(_cpu.Fpu.Mxcsr >> 7)) != 0)
        {
            _sseFlags &= pre;
        }

        CommitSseFlags();
    }

    private static FmaForm[] BuildFmaForms()
    {
        var forms = new FmaForm[Enum.GetValues<Mnemonic>().Length];
        Array.Fill(forms, new FmaForm(0xFF, 0, false, false));
        foreach (var m in Enum.GetValues<Mnemonic>())
        {
            string name = m.ToString();
            if (!name.StartsWith("Vf", StringComparison.Ordinal) || name.Length < 9)
            {
                continue;
            }

            string suffix = name[^2..];
            string order = name[^5..^2];
            string kind = name[2..^5];
            byte k = kind switch
            {
                "madd" => FmaAdd,
                "msub" => FmaSub,
                "nmadd" => FmaNegAdd,
                "nmsub" => FmaNegSub,
                "maddsub" => FmaAddSub,
                "msubadd" => FmaSubAdd,
                _ => 0xFF,
            };
            int o = Array.IndexOf(["132", "213", "231"], order);
            if (k == 0xFF || o < 0 || suffix is not ("ps" or "pd" or "ss" or "sd") || (k >= FmaAddSub && suffix[0] == 's'))
            {
                continue;
            }

            forms[(int)m] = new FmaForm(k, (byte)o, suffix[1] == 'd', suffix[0] == 's');
        }

        return forms;
    }

    /// <summary>VCVTPH2PS: four or eight halves (the low 64 or 128 bits of the source) widened exactly; a signalling NaN raises IE and is quietened.</summary>
    private void ExecCvtph2ps(ref Op op, in Instruction ins)
    {
        var d = ins.Op0Register;
        var src = SrcY(ref op, in ins, 1).AsUInt16();
        int n = IsYmm(d) ? 8 : 4;
        var r = Vector256<uint>.Zero;
        for (int i = 0; i < n; i++)
        {
            r = r.WithElement(i, HalfToSingle(src.GetElement(i)));
        }

        CommitPreComputationFirst();
        SetVexDest(d, r.AsByte());
    }

    private uint HalfToSingle(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        int e = (h >> 10) & 0x1F;
        uint f = (uint)h & 0x3FF;
        if (e == 0x1F)
        {
            if (f != 0 && (f & 0x200) == 0)
            {
                _sseFlags |= MxIe;
            }

            return sign | 0x7F800000 | (f != 0 ? 0x00400000 | (f << 13) : 0);
        }

        return sign | BitConverter.SingleToUInt32Bits((float)BitConverter.UInt16BitsToHalf((ushort)(h & 0x7FFF)));
    }

    /// <summary>VCVTPS2PH: four or eight singles rounded to halves (imm8 bit 2 selects MXCSR.RC, else imm8[1:0] is the direction), to an XMM register (bits 255:64 or 255:128 cleared) or to memory.</summary>
    private void ExecCvtps2ph(ref Op op, in Instruction ins)
    {
        var s = SrcY(ref op, in ins, 1).AsSingle();
        int n = IsYmm(ins.Op1Register) ? 8 : 4;
        int rc = (ins.Immediate8 & 4) != 0 ? Rc : ins.Immediate8 & 3;
        var r = Vector256<ushort>.Zero;
        for (int i = 0; i < n; i++)
        {
            r = r.WithElement(i, SingleToHalf(s.GetElement(i), rc));
        }

        ulong ea = ins.Op0Kind == OpKind.Memory ? Ea(ref op) : 0;
        CommitPreComputationFirst();
        if (ins.Op0Kind == OpKind.Register)
        {
            SetVexDest(ins.Op0Register, r.AsByte());
        }
        else if (n == 4)
        {
            Write(ea, 8, r.AsUInt64().GetElement(0));
        }
        else
        {
            WriteVecMem(ea, 16, r.AsByte(), alignment: 1);
        }
    }

    private ushort SingleToHalf(float f, int rc)
    {
        uint b = BitConverter.SingleToUInt32Bits(f);
        ushort sign = (ushort)((b >> 16) & 0x8000);
        if (float.IsNaN(f))
        {
            if (IsSnan(f))
            {
                _sseFlags |= MxIe;
            }

            return (ushort)(sign | 0x7E00u | ((b >> 13) & 0x1FF));
        }

        f = Operand(f);
        if (float.IsInfinity(f))
        {
            return (ushort)(sign | 0x7C00);
        }

        if (f == 0)
        {
            return sign;
        }

        var (m, e) = Decompose(f);
        double v = RoundExact(f < 0, m, e, HalfFormat, rc, flush: false);
        return (ushort)(sign | (BitConverter.HalfToUInt16Bits((Half)Math.Abs(v)) & 0x7FFF));
    }
}
