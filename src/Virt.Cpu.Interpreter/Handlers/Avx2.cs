using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>AVX2 instructions without an SSE or AVX counterpart: permutes across lanes, blends of dwords, variable shifts, masked moves, 256-bit sign and zero extensions, gathers (the integer broadcasts, inserts, extracts and VPERM2I128 share AVX's cases in AvxSpecial.cs).</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Runs <paramref name="ins"/> when it is one of this file's instructions; false otherwise.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per AVX2 instruction without an SSE counterpart, each a few lines: the group's table in code form.")]
    private bool ExecAvx2(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Vpermq or Mnemonic.Vpermpd:
            {
                var s = SrcY(ref op, in ins, 1).AsUInt64();
                int imm = ins.Immediate8;
                var r = Vector256.Create(s.GetElement(imm & 3), s.GetElement((imm >> 2) & 3), s.GetElement((imm >> 4) & 3), s.GetElement((imm >> 6) & 3));
                SetY(VecIndex(ins.Op0Register), r.AsByte());
                return true;
            }

            case Mnemonic.Vpermd or Mnemonic.Vpermps:
            {
                // Operand 1 holds the indices, operand 2 the table.
                var idx = GetY(VecIndex(ins.Op1Register)).AsUInt32();
                var s = SrcY(ref op, in ins, 2).AsUInt32();
                var r = default(Vector256<uint>);
                for (int i = 0; i < 8; i++)
                {
                    r = r.WithElement(i, s.GetElement((int)(idx.GetElement(i) & 7)));
                }

                SetY(VecIndex(ins.Op0Register), r.AsByte());
                return true;
            }

            case Mnemonic.Vpblendd:
            {
                var a = GetY(VecIndex(ins.Op1Register)).AsUInt32();
                var b = SrcY(ref op, in ins, 2).AsUInt32();
                var sel = default(Vector256<uint>);
                for (int i = 0; i < 8; i++)
                {
                    sel = sel.WithElement(i, ((ins.Immediate8 >> i) & 1) != 0 ? uint.MaxValue : 0);
                }

                SetVexDest(ins.Op0Register, Vector256.ConditionalSelect(sel, b, a).AsByte());
                return true;
            }

            case Mnemonic.Vpsllvd or Mnemonic.Vpsllvq or Mnemonic.Vpsrlvd or Mnemonic.Vpsrlvq or Mnemonic.Vpsravd:
                SetVexDest(ins.Op0Register, VariableShift(m, GetY(VecIndex(ins.Op1Register)), SrcY(ref op, in ins, 2)));
                return true;
            case Mnemonic.Vpmaskmovd or Mnemonic.Vpmaskmovq:
                MaskedMove(ref op, in ins, m == Mnemonic.Vpmaskmovd ? 4 : 8);
                return true;
            case Mnemonic.Vpmovsxbw or Mnemonic.Vpmovsxbd or Mnemonic.Vpmovsxbq or Mnemonic.Vpmovsxwd or Mnemonic.Vpmovsxwq or Mnemonic.Vpmovsxdq
                or Mnemonic.Vpmovzxbw or Mnemonic.Vpmovzxbd or Mnemonic.Vpmovzxbq or Mnemonic.Vpmovzxwd or Mnemonic.Vpmovzxwq or Mnemonic.Vpmovzxdq
                when IsYmm(ins.Op0Register):
                SetY(VecIndex(ins.Op0Register), Extend256(m, SrcY(ref op, in ins, 1).GetLower()));
                return true;
            case Mnemonic.Vgatherdps or Mnemonic.Vgatherdpd or Mnemonic.Vgatherqps or Mnemonic.Vgatherqpd
                or Mnemonic.Vpgatherdd or Mnemonic.Vpgatherdq or Mnemonic.Vpgatherqd or Mnemonic.Vpgatherqq:
                Gather(ref op, in ins);
                return true;
            default:
                return false;
        }
    }

    /// <summary>VPSLLVD/Q, VPSRLVD/Q, VPSRAVD: each element of <paramref name="a"/> shifted by the unsigned count in the same element of <paramref name="counts"/>; a count of the element width or more gives zero, or the sign for VPSRAVD.</summary>
    private static Vector256<byte> VariableShift(Mnemonic m, Vector256<byte> a, Vector256<byte> counts)
    {
        if (m is Mnemonic.Vpsllvq or Mnemonic.Vpsrlvq)
        {
            var x = a.AsUInt64();
            var c = counts.AsUInt64();
            var r = default(Vector256<ulong>);
            for (int i = 0; i < 4; i++)
            {
                ulong n = c.GetElement(i);
                ulong v = x.GetElement(i);
                r = r.WithElement(i, n > 63 ? 0 : m == Mnemonic.Vpsllvq ? v << (int)n : v >> (int)n);
            }

            return r.AsByte();
        }

        var xd = a.AsUInt32();
        var cd = counts.AsUInt32();
        var rd = default(Vector256<uint>);
        for (int i = 0; i < 8; i++)
        {
            uint n = cd.GetElement(i);
            uint v = xd.GetElement(i);
            uint e = m switch
            {
                Mnemonic.Vpsravd => (uint)((int)v >> (int)Math.Min(n, 31u)),
                _ when n > 31 => 0,
                Mnemonic.Vpsllvd => v << (int)n,
                _ => v >> (int)n,
            };
            rd = rd.WithElement(i, e);
        }

        return rd.AsByte();
    }

    /// <summary>The 256-bit VPMOVSX/VPMOVZX: the low elements of <paramref name="src"/> sign- or zero-extended to fill 32 bytes.</summary>
    private static Vector256<byte> Extend256(Mnemonic m, Vector128<byte> src)
    {
        (int from, int to, bool signed) = m switch
        {
            Mnemonic.Vpmovsxbw => (1, 2, true),
            Mnemonic.Vpmovsxbd => (1, 4, true),
            Mnemonic.Vpmovsxbq => (1, 8, true),
            Mnemonic.Vpmovsxwd => (2, 4, true),
            Mnemonic.Vpmovsxwq => (2, 8, true),
            Mnemonic.Vpmovsxdq => (4, 8, true),
            Mnemonic.Vpmovzxbw => (1, 2, false),
            Mnemonic.Vpmovzxbd => (1, 4, false),
            Mnemonic.Vpmovzxbq => (1, 8, false),
            Mnemonic.Vpmovzxwd => (2, 4, false),
            Mnemonic.Vpmovzxwq => (2, 8, false),
            _ => (4, 8, false),
        };
        Span<byte> s = stackalloc byte[16];
        Span<byte> d = stackalloc byte[32];
        src.CopyTo(s);
        for (int i = 0; i < 32 / to; i++)
        {
            ulong v = ReadElement(s, i, from);
            if (signed)
            {
                int shift = 64 - (8 * from);
                v = (ulong)((long)(v << shift) >> shift);
            }

            WriteElement(d, i, to, v);
        }

        return Vector256.Create<byte>(d);
    }

    /// <summary>Element <paramref name="i"/> of <paramref name="size"/> bytes (1, 2, 4 or 8) of <paramref name="s"/>, zero-extended.</summary>
    private static ulong ReadElement(ReadOnlySpan<byte> s, int i, int size) => size switch
    {
        1 => s[i],
        2 => BinaryPrimitives.ReadUInt16LittleEndian(s[(2 * i)..]),
        4 => BinaryPrimitives.ReadUInt32LittleEndian(s[(4 * i)..]),
        _ => BinaryPrimitives.ReadUInt64LittleEndian(s[(8 * i)..]),
    };

    /// <summary>Stores the low <paramref name="size"/> bytes (1, 2, 4 or 8) of <paramref name="v"/> as element <paramref name="i"/> of <paramref name="d"/>.</summary>
    private static void WriteElement(Span<byte> d, int i, int size, ulong v)
    {
        switch (size)
        {
            case 1: d[i] = (byte)v; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(d[(2 * i)..], (ushort)v); break;
            case 4: BinaryPrimitives.WriteUInt32LittleEndian(d[(4 * i)..], (uint)v); break;
            default: BinaryPrimitives.WriteUInt64LittleEndian(d[(8 * i)..], v); break;
        }
    }

    /// <summary>
    /// VGATHERDPS/DPD/QPS/QPD, VPGATHERDD/DQ/QD/QQ: operand 0 is the destination, the memory operand a VSIB address
    /// (base + each element of the index register * scale + displacement), operand 2 the mask. The elements are taken
    /// in order: one whose mask element has its top bit set is loaded into the destination, and each element's mask
    /// element is cleared once it is done. A fault therefore leaves the elements before the faulting one loaded (or
    /// skipped) with their mask elements clear, and the rest of the destination and mask as they were (the mask's
    /// remaining elements keep their values, and nothing beyond the instruction's elements is cleared yet), so the
    /// instruction can be restarted (as the AMD processors KVM was compared on do; the SDM's pseudo-code would first
    /// make each mask element all ones or zero). Done, the whole mask register is zero and the destination's bits beyond its
    /// elements are cleared (bits 255:128 of a 128-bit form, and bits 127:64 of VGATHERQPS/VPGATHERQD with XMM indices).
    /// </summary>
    private void Gather(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        int data = m is Mnemonic.Vgatherdps or Mnemonic.Vgatherqps or Mnemonic.Vpgatherdd or Mnemonic.Vpgatherqd ? 4 : 8;
        int index = m is Mnemonic.Vgatherdps or Mnemonic.Vgatherdpd or Mnemonic.Vpgatherdd or Mnemonic.Vpgatherdq ? 4 : 8;
        var dest = ins.Op0Register;
        int d = VecIndex(dest), x = VecIndex(ins.MemoryIndex), k = VecIndex(ins.Op2Register);
        if (d == x || d == k || x == k)
        {
            throw Fault(Vectors.UD, 0);
        }

        var lane = op;
        lane.Index = 0xFF;
        lane.AddrSize = (byte)VsibAddressSize(in ins);
        int count = Math.Min((IsYmm(dest) ? 32 : 16) / data, (IsYmm(ins.MemoryIndex) ? 32 : 16) / index);
        int used = count * data;

        Span<byte> idx = stackalloc byte[32];
        Span<byte> dv = stackalloc byte[32];
        Span<byte> mv = stackalloc byte[32];
        GetY(x).CopyTo(idx);
        GetY(d).CopyTo(dv);
        GetY(k).CopyTo(mv);
        for (int i = 0; i < count; i++)
        {
            if ((mv[((i + 1) * data) - 1] & 0x80) != 0)
            {
                // The elements before this one are done: their mask elements are clear should this load fault.
                SetY(k, Vector256.Create<byte>(mv));
                long offset = index == 4 ? BinaryPrimitives.ReadInt32LittleEndian(idx[(4 * i)..]) : BinaryPrimitives.ReadInt64LittleEndian(idx[(8 * i)..]);
                lane.Disp = op.Disp + (offset * ins.MemoryIndexScale);
                WriteElement(dv, i, data, Read(Ea(ref lane), data));
                SetY(d, Vector256.Create<byte>(dv));
            }

            WriteElement(mv, i, data, 0);
        }

        dv[used..].Clear();
        SetY(d, Vector256.Create<byte>(dv));
        SetY(k, default);
    }

    /// <summary>The address size of a VSIB operand: the base register's, else the mode's (64-bit mode: 32 bits with an address-size prefix, which Iced shows as a 4-byte displacement); #UD for 16-bit addressing, which has no SIB byte.</summary>
    private int VsibAddressSize(in Instruction ins)
    {
        int size = ins.MemoryBase != Register.None
            ? ins.MemoryBase.GetSize()
            : _cpu.Bitness == 64 ? (ins.MemoryDisplSize == 4 ? 4 : 8) : (ins.MemoryDisplSize == 2 ? 2 : 4);
        if (size == 2)
        {
            throw Fault(Vectors.UD, 0);
        }

        return size;
    }
}
