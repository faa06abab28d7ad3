using System.Numerics;
using System.Runtime.CompilerServices;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>Handlers for the less frequent instructions.</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Maximum iterations of a REP string instruction per step, so that exits and budgets stay responsive.</summary>
    private const int RepChunk = 16384;

    // ---- Stack ------------------------------------------------------------------------------------

    private int StackAddrSize => _cpu.Bitness == 64 ? 8 : _cpu.Seg[SegSs].DefaultBig ? 4 : 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Push(ulong v, int size)
    {
        if (_cpu.Bitness == 64)
        {
            ulong sp = Gpr(4) - (ulong)size;
            Write(sp, size, v);
            Gpr(4) = sp;
            return;
        }

        PushLegacy(v, size);
    }

    private void PushLegacy(ulong v, int size)
    {
        if (_cpu.Seg[SegSs].DefaultBig)
        {
            uint sp = (uint)Gpr(4) - (uint)size;
            Write((_cpu.SegBase[SegSs] + sp) & 0xFFFFFFFF, size, v);
            Gpr(4) = (Gpr(4) & ~0xFFFFFFFFUL) | sp;
        }
        else
        {
            ushort sp = (ushort)((ushort)Gpr(4) - size);
            Write((_cpu.SegBase[SegSs] + sp) & 0xFFFFFFFF, size, v);
            Gpr(4) = (Gpr(4) & ~0xFFFFUL) | sp;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Pop(int size)
    {
        if (_cpu.Bitness == 64)
        {
            ulong sp = Gpr(4);
            ulong v = Read(sp, size);
            Gpr(4) = sp + (ulong)size;
            return v;
        }

        ulong v2 = PeekLegacy(0, size);
        AdjustSp(size);
        return v2;
    }

    /// <summary>Reads the stack at SP + <paramref name="offset"/> without popping.</summary>
    private ulong Peek(ulong offset, int size) =>
        _cpu.Bitness == 64 ? Read(Gpr(4) + offset, size) : PeekLegacy(offset, size);

    private ulong PeekLegacy(ulong offset, int size)
    {
        ulong sp = _cpu.Seg[SegSs].DefaultBig ? (uint)(Gpr(4) + offset) : (ushort)(Gpr(4) + offset);
        return Read((_cpu.SegBase[SegSs] + sp) & 0xFFFFFFFF, size);
    }

    private void AdjustSp(long delta)
    {
        switch (StackAddrSize)
        {
            case 8: Gpr(4) += (ulong)delta; break;
            case 4: Gpr(4) = (Gpr(4) & ~0xFFFFFFFFUL) | (uint)(Gpr(4) + (ulong)delta); break;
            default: Gpr(4) = (Gpr(4) & ~0xFFFFUL) | (ushort)(Gpr(4) + (ulong)delta); break;
        }
    }

    private void ExecPop(ref Op op)
    {
        int size = op.Size;
        ulong v = Peek(0, size);
        if (op.K0 == OpKindX.Reg)
        {
            AdjustSp(size);
            SetReg(op.R0, size, v);
        }
        else
        {
            // POP m computes its address with the incremented stack pointer.
            ulong oldSp = Gpr(4);
            AdjustSp(size);
            try
            {
                Write(Ea(ref op), size, v);
            }
            catch
            {
                Gpr(4) = oldSp;
                throw;
            }
        }
    }

    // ---- Strings ----------------------------------------------------------------------------------

    private ulong StrReg(int r, int addrSize) => addrSize switch { 8 => Gpr(r), 4 => (uint)Gpr(r), _ => (ushort)Gpr(r) };

    private void StrAdvance(int r, int addrSize, long delta)
    {
        switch (addrSize)
        {
            case 8: Gpr(r) += (ulong)delta; break;
            case 4: Gpr(r) = (uint)(Gpr(r) + (ulong)delta); break;
            default: Gpr(r) = (Gpr(r) & ~0xFFFFUL) | (ushort)(Gpr(r) + (ulong)delta); break;
        }
    }

    private ulong StrLin(int seg, ulong offset) => _cpu.Bitness == 64 ? _cpu.SegBase[seg] + offset : (_cpu.SegBase[seg] + offset) & 0xFFFFFFFF;

    /// <summary>One step of a string instruction. Returns false when a REP form must continue.</summary>
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

    // ---- Everything else --------------------------------------------------------------------------

    private bool IoplAllows()
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0)
        {
            return true;
        }

        return _cpu.Cpl <= (int)((_cpu.Flags & IoplMask) >> 12);
    }

    private void ExecXchg(ref Op op)
    {
        int size = op.Size;
        if (op.K0 == OpKindX.Reg && op.K1 == OpKindX.Reg)
        {
            ulong a = GetReg(op.R0, size);
            ulong b = GetReg(op.R1, size);
            SetReg(op.R0, size, b);
            SetReg(op.R1, size, a);
            return;
        }

        // One operand is memory (Iced puts it first).
        ulong ea = Ea(ref op);
        int reg = op.K0 == OpKindX.Reg ? op.R0 : op.R1;
        ProbeWrite(ea, size);
        ulong m = Read(ea, size);
        Write(ea, size, GetReg(reg, size));
        SetReg(reg, size, m);
    }

    private void ExecCmpxchg(ref Op op)
    {
        int size = op.Size;
        ulong acc = GetReg(0, size);
        ulong ea = 0;
        ulong dest;
        if (op.K0 == OpKindX.Reg)
        {
            dest = GetReg(op.R0, size);
        }
        else
        {
            ea = Ea(ref op);
            ProbeWrite(ea, size);
            dest = Read(ea, size);
        }

        AluOp(Translator.AluCmp, acc, dest, size);
        if (acc == dest)
        {
            WriteOp0(ref op, ea, GetReg(op.R1, size));
        }
        else
        {
            // The destination is written back unchanged (a locked read-modify-write on hardware).
            if (op.K0 == OpKindX.Mem)
            {
                Write(ea, size, dest);
            }

            SetReg(0, size, dest);
        }
    }

    private void ExecCmpxchgWide(ref Op op, in Instruction ins)
    {
        ulong ea = Ea(ref op);
        if (ins.Mnemonic == Mnemonic.Cmpxchg16b)
        {
            if ((ea & 15) != 0)
            {
                throw Fault(Vectors.GP, 0);
            }

            ulong lo = Read(ea, 8), hi = Read(ea + 8, 8);
            ProbeWrite(ea, 16);
            Materialize();
            if (lo == Gpr(0) && hi == Gpr(2))
            {
                Write(ea, 8, Gpr(3));
                Write(ea + 8, 8, Gpr(1));
                _cpu.Flags |= ZF;
            }
            else
            {
                Write(ea, 8, lo);
                Write(ea + 8, 8, hi);
                Gpr(0) = lo;
                Gpr(2) = hi;
                _cpu.Flags &= ~ZF;
            }
        }
        else
        {
            ulong m = Read(ea, 8);
            ProbeWrite(ea, 8);
            Materialize();
            ulong cmp = ((ulong)(uint)Gpr(2) << 32) | (uint)Gpr(0);
            if (m == cmp)
            {
                Write(ea, 8, ((ulong)(uint)Gpr(1) << 32) | (uint)Gpr(3));
                _cpu.Flags |= ZF;
            }
            else
            {
                Write(ea, 8, m);
                SetReg(0, 4, (uint)m);
                SetReg(2, 4, m >> 32);
                _cpu.Flags &= ~ZF;
            }
        }
    }

    private void ExecPopf(int size)
    {
        ulong v = Peek(0, size);
        if ((_cpu.Flags & VM) != 0 && (_cpu.Flags & IoplMask) != IoplMask)
        {
            throw Fault(Vectors.GP, 0);
        }

        AdjustSp(size);
        Materialize();
        ulong changeable = CF | PF | AF | ZF | SF | TF | DF | OF | NT | AC | ID;
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || _cpu.Cpl == 0)
        {
            changeable |= IoplMask | IF;
        }
        else if (_cpu.Cpl <= (int)((_cpu.Flags & IoplMask) >> 12))
        {
            changeable |= IF;
        }

        if (size == 2)
        {
            changeable &= 0xFFFF;
        }

        bool wasIf = (_cpu.Flags & IF) != 0;
        _cpu.Flags = (_cpu.Flags & ~changeable) | (v & changeable) | Fixed1;
        if (!wasIf && (_cpu.Flags & IF) != 0)
        {
            _interruptShadow = false;
        }

        _stop = true;
    }

    private void ExecEnter(ref Op op)
    {
        int size = op.Size;
        ulong alloc = op.Imm;
        int level = (int)(op.Target & 31);
        int ss = StackAddrSize;
        ulong bp = GetReg(5, size);
        Push(bp, size);
        ulong frame = StrReg(4, ss);
        for (int l = 1; l < level; l++)
        {
            ulong ebp = StrReg(5, ss) - (ulong)(l * size);
            ulong v = _cpu.Bitness == 64 ? Read(ebp & Mask(ss), size) : Read((_cpu.SegBase[SegSs] + (ebp & Mask(ss))) & 0xFFFFFFFF, size);
            Push(v, size);
        }

        if (level > 0)
        {
            Push(frame, size);
        }

        ulong newSp = StrReg(4, ss) - alloc;
        // Touch the new top of stack so a fault leaves no partial frame (hardware checks the final RSP).
        ulong lin = _cpu.Bitness == 64 ? newSp : (_cpu.SegBase[SegSs] + (newSp & Mask(ss))) & 0xFFFFFFFF;
        if (alloc != 0)
        {
            ProbeWrite(lin, 1);
        }

        SetReg(5, size, frame);
        SetReg(4, ss, newSp);
    }

    private void ExecMulDiv(ref Op op, in Instruction ins)
    {
        int size = op.Size;
        ulong src = ReadOp0(ref op, out _);
        switch (ins.Mnemonic)
        {
            case Mnemonic.Mul:
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

            case Mnemonic.Imul:
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

            case Mnemonic.Div:
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

    private ulong ReadThird(ref Op op, int size) =>
        op.K2 == OpKindX.Mem ? Read(Ea(ref op), size) : GetReg(op.R2, size);
}
