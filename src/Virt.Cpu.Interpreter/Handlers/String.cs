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

        if (asz == 8 && op.Inline is InlineOp.Stos or InlineOp.Movs)
        {
            return RepInPages(ref op, size, down: delta < 0);
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
    /// REP STOS and REP MOVS with 64-bit addresses, upwards (memset, clear_page, copy_page, memmove) or downwards
    /// (<paramref name="down"/>, DF set: memmove to a higher address): the elements that lie in one page run as one fill
    /// or copy when the TLB already maps the pages for the access. Anything else (a page boundary inside an element, a
    /// TLB miss, MMIO, a fault, a copy whose destination lies less than one element past its source in the direction of
    /// the copy) takes one element through the ordinary path, which also refills the TLB. Overlapping copies keep the
    /// hardware's result (<see cref="CopyElements"/>). Returns false when RCX is not yet 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe bool RepInPages(ref Op op, int size, bool down)
    {
        long budget = RepChunk;
        bool movs = op.Inline == InlineOp.Movs;
        long delta = down ? -size : size;
        while (budget > 0)
        {
            ulong count = Gpr(1);
            if (count == 0)
            {
                return true;
            }

            ulong dst = StrLin(SegEs, Gpr(7));
            long n = Math.Min((long)Math.Min(count, (ulong)budget), ElementsInPage(dst, size, down));
            byte* d = n > 0 ? WritePtr(dst, size) : null;
            byte* s = null;
            if (d != null && movs)
            {
                ulong src = StrLin(op.Seg, Gpr(6));
                n = Math.Min(n, ElementsInPage(src, size, down));
                s = n > 0 ? ReadPtr(src, size) : null;
            }

            int bytes = (int)(n * size);
            if (down && d != null)
            {
                // The run's lowest element: the copy and the fill below work on the run from there up.
                d -= bytes - size;
                s = s == null ? null : s - (bytes - size);
            }

            // SAFETY: both pointers come from TLB entries for whole 4 KiB RAM pages (the destination writable, dirty,
            // without cached code) and each run lies inside its page.
            if (d == null || (movs && (s == null || !CopyElements(d, s, bytes, size, down))))
            {
                // Element by element: a miss, or a copy only the hardware's order reproduces.
                StringOnce(ref op, size, 8, delta);
                StrAdvance(1, 8, -1);
                budget--;
                continue;
            }

            if (movs)
            {
                Gpr(6) += (ulong)(down ? -bytes : bytes);
            }
            else
            {
                FillElements(d, (int)n, size, Gpr(0));
            }

            Gpr(7) += (ulong)(down ? -bytes : bytes);
            Gpr(1) -= (ulong)n;
            budget -= n;
        }

        return Gpr(1) == 0;
    }

    /// <summary>Elements of <paramref name="size"/> bytes from <paramref name="lin"/> to the end of its page in the direction of the copy.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long ElementsInPage(ulong lin, int size, bool down) =>
        down ? (long)(lin & 0xFFF) / size + 1 : (4096 - (long)(lin & 0xFFF)) / size;

    /// <summary>
    /// Copies the run of <paramref name="bytes"/> bytes at <paramref name="s"/> to the one at <paramref name="d"/> (both
    /// given by their lowest byte) with the result of REP MOVS with elements of <paramref name="size"/> bytes, upwards or
    /// (<paramref name="down"/>) downwards, which reads each element before writing it, in order, also where the runs
    /// overlap. With the destination behind the source in the direction of the copy (or equal to it), no element reads a
    /// byte already written: that is a move (<c>memmove</c>). With the destination at least one element ahead, each byte
    /// reads the byte written one distance before it, so the destination repeats the first distance bytes the copy
    /// reads (a pattern fill). Returns false, copying nothing, when the destination is less than one element ahead (an
    /// element then reads part of itself as written, which only an element-by-element copy reproduces).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe bool CopyElements(byte* d, byte* s, int bytes, int size, bool down)
    {
        long ahead = down ? s - d : d - s;
        if (ahead <= 0 || ahead >= bytes)
        {
            new ReadOnlySpan<byte>(s, bytes).CopyTo(new Span<byte>(d, bytes));
            return true;
        }

        if (ahead < size)
        {
            return false;
        }

        // The first period (the distance) comes from the source; every later byte equals the byte one period before it in
        // the direction of the copy, so the part written so far (whole periods) is copied after itself, doubling.
        int period = (int)ahead;
        if (!down)
        {
            new ReadOnlySpan<byte>(s, period).CopyTo(new Span<byte>(d, period));
            for (int done = period; done < bytes;)
            {
                int len = Math.Min(done, bytes - done);
                new ReadOnlySpan<byte>(d, len).CopyTo(new Span<byte>(d + done, len));
                done += len;
            }
        }
        else
        {
            int top = bytes - period;
            new ReadOnlySpan<byte>(s + top, period).CopyTo(new Span<byte>(d + top, period));
            for (int done = period; done < bytes;)
            {
                int len = Math.Min(done, bytes - done);
                new ReadOnlySpan<byte>(d + bytes - len, len).CopyTo(new Span<byte>(d + bytes - done - len, len));
                done += len;
            }
        }

        return true;
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
