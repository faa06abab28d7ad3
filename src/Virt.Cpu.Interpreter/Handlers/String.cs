using System.Runtime.CompilerServices;

namespace Virt.Cpu.Interpreter;

/// <summary>String instructions: MOVS, STOS, LODS, CMPS, SCAS with and without REP (run inline; the page-at-a-time fast paths live here).</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Maximum iterations of a REP string instruction per step, so that exits and budgets stay responsive.</summary>
    private const int RepChunk = 16384;

    private ulong StrReg(int r, int addrSize) => addrSize switch { 8 => Gpr(r), 4 => (uint)Gpr(r), _ => (ushort)Gpr(r) };

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void StrAdvance(int r, int addrSize, long delta)
    {
        switch (addrSize)
        {
            case 8: Gpr(r) += (ulong)delta; break;
            case 4: Gpr(r) = (uint)(Gpr(r) + (ulong)delta); break;
            default: Gpr(r) = (Gpr(r) & ~0xFFFFUL) | (ushort)(Gpr(r) + (ulong)delta); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong StrLin(int seg, ulong offset)
    {
        if (_cpu.Bitness == 64)
        {
            return _cpu.SegBase[seg] + offset;
        }

        UseSegment(seg);
        return (_cpu.SegBase[seg] + offset) & 0xFFFFFFFF;
    }

    /// <summary>One step of a string instruction. Returns false when a REP form must continue.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool ExecString(ref Op op)
    {
        int size = op.Size;
        int asz = op.AddrSize;
        long delta = (_cpu.Flags & DF) != 0 ? -size : size;
        bool rep = (op.Pfx & (Pfx.Rep | Pfx.Repne)) != 0;
        if (!rep)
        {
            StringOnce(ref op, size, asz, delta);
            return true;
        }

        if (delta > 0 && asz == 8 && op.Inline is InlineOp.Stos or InlineOp.Movs)
        {
            return RepForwardInPages(ref op, size);
        }

        for (int k = 0; k < RepChunk; k++)
        {
            ulong count = StrReg(1, asz);
            if (count == 0)
            {
                return true;
            }

            StringOnce(ref op, size, asz, delta);
            StrAdvance(1, asz, -1);
            if (op.Inline is InlineOp.Cmps or InlineOp.Scas)
            {
                bool zf = Cond(4);
                if ((op.Pfx & Pfx.Repne) != 0 ? zf : !zf)
                {
                    return true;
                }
            }
        }

        return StrReg(1, asz) == 0;
    }

    /// <summary>
    /// REP STOS and REP MOVS upwards with 64-bit addresses (memset, clear_page, copy_page): the elements that lie in
    /// one page run as one fill or copy when the TLB already maps the pages for the access. Anything else (a
    /// page boundary inside an element, a TLB miss, MMIO, a fault, source and destination overlapping) takes
    /// one element through the ordinary path, which also refills the TLB. Returns false when RCX is not yet 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe bool RepForwardInPages(ref Op op, int size)
    {
        long budget = RepChunk;
        bool movs = op.Inline == InlineOp.Movs;
        while (budget > 0)
        {
            ulong count = Gpr(1);
            if (count == 0)
            {
                return true;
            }

            ulong dst = StrLin(SegEs, Gpr(7));
            long n = Math.Min((long)Math.Min(count, (ulong)budget), (4096 - (long)(dst & 0xFFF)) / size);
            byte* d = n > 0 ? WritePtr(dst, size) : null;
            byte* s = null;
            if (d != null && movs)
            {
                ulong src = StrLin(op.Seg, Gpr(6));
                n = Math.Min(n, (4096 - (long)(src & 0xFFF)) / size);
                s = n > 0 ? ReadPtr(src, size) : null;
                if (s != null && Math.Abs(d - s) < n * size)
                {
                    s = null; // overlapping: element by element, as the hardware copies
                }
            }

            if (d == null || (movs && s == null))
            {
                StringOnce(ref op, size, 8, size);
                StrAdvance(1, 8, -1);
                budget--;
                continue;
            }

            int bytes = (int)(n * size);
            // SAFETY: both pointers come from TLB entries for whole 4 KiB RAM pages (the destination writable, dirty,
            // without cached code) and each range ends inside its page.
            if (movs)
            {
                new ReadOnlySpan<byte>(s, bytes).CopyTo(new Span<byte>(d, bytes));
                Gpr(6) += (ulong)bytes;
            }
            else
            {
                FillElements(d, (int)n, size, Gpr(0));
            }

            Gpr(7) += (ulong)bytes;
            Gpr(1) -= (ulong)n;
            budget -= n;
        }

        return Gpr(1) == 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void FillElements(byte* d, int n, int size, ulong value)
    {
        switch (size)
        {
            case 1: new Span<byte>(d, n).Fill((byte)value); break;
            case 2: new Span<ushort>(d, n).Fill((ushort)value); break;
            case 4: new Span<uint>(d, n).Fill((uint)value); break;
            default: new Span<ulong>(d, n).Fill(value); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void StringOnce(ref Op op, int size, int asz, long delta)
    {
        switch (op.Inline)
        {
            case InlineOp.Movs:
            {
                ulong v = Read(StrLin(op.Seg, StrReg(6, asz)), size);
                Write(StrLin(SegEs, StrReg(7, asz)), size, v);
                StrAdvance(6, asz, delta);
                StrAdvance(7, asz, delta);
                break;
            }

            case InlineOp.Stos:
                Write(StrLin(SegEs, StrReg(7, asz)), size, GetReg(0, size));
                StrAdvance(7, asz, delta);
                break;
            case InlineOp.Lods:
                SetReg(0, size, Read(StrLin(op.Seg, StrReg(6, asz)), size));
                StrAdvance(6, asz, delta);
                break;
            case InlineOp.Cmps:
            {
                ulong a = Read(StrLin(op.Seg, StrReg(6, asz)), size);
                ulong b = Read(StrLin(SegEs, StrReg(7, asz)), size);
                AluOp(Translator.AluCmp, a, b, size);
                StrAdvance(6, asz, delta);
                StrAdvance(7, asz, delta);
                break;
            }

            default:
            {
                ulong b = Read(StrLin(SegEs, StrReg(7, asz)), size);
                AluOp(Translator.AluCmp, GetReg(0, size), b, size);
                StrAdvance(7, asz, delta);
                break;
            }
        }
    }
}
