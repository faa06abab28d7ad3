using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// Locked read-modify-writes on partitions with several vCPUs: LOCK-prefixed instructions, XCHG with memory and
/// MFENCE. An operand inside one aligned 8-byte word of RAM is changed with a compare-and-exchange of that word on
/// the host memory, so it is atomic against every other vCPU thread (and against the host). An operand that spans two
/// words (a split lock), and CMPXCHG16B, take the partition's bus lock instead: the vCPU waits until no other vCPU is
/// inside an atomic access and keeps the others out until it is done. A locked access to MMIO or ROM goes to the
/// device as before (the device serializes it). On one-vCPU partitions none of this is used: the translator keeps the
/// plain forms.
/// </summary>
internal sealed unsafe partial class InterpreterVcpu
{
    /// <summary>Set while this vCPU is inside an atomic access on host memory; a bus-lock holder waits for it to clear.</summary>
    private int _inAtomic;

    /// <summary>Whether this vCPU is inside an atomic access (read by the bus-lock holder on another thread).</summary>
    internal bool InAtomic => Volatile.Read(ref _inAtomic) != 0;

    /// <summary>Runs a locked instruction (the translator gives these <see cref="InlineOp.Locked"/> on SMP partitions).</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per lockable instruction: the operand fetch, the atomic update and the flags of each.")]
    private ulong ExecLocked(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Mfence:
                // TSO allows a later load to pass an earlier store; MFENCE forbids it, and so does the host's fence.
                Interlocked.MemoryBarrier();
                return op.Next;
            case Mnemonic.Cmpxchg16b:
                return BusLocked(ref op, in ins);
            case Mnemonic.Cmpxchg8b:
                return LockedCmpxchg8b(ref op, in ins);
            default:
                break;
        }

        int size = op.Size;
        ulong ea;
        int bit = 0;
        if (m is Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc)
        {
            ea = BitStringAddress(ref op, out bit);
        }
        else
        {
            ea = Ea(ref op);
        }

        // The second input: the ALU source, the register XCHG/XADD/CMPXCHG take, the carry of ADC/SBB.
        ulong operand = m switch
        {
            Mnemonic.Xchg => GetReg(op.K0 == OpKindX.Reg ? op.R0 : op.R1, size),
            Mnemonic.Xadd or Mnemonic.Cmpxchg => GetReg(op.R1, size),
            Mnemonic.Inc or Mnemonic.Dec or Mnemonic.Neg or Mnemonic.Not or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc => 0,
            _ => op.K1 == OpKindX.Imm ? op.Imm : GetReg(op.R1, size),
        };
        ulong accumulator = m == Mnemonic.Cmpxchg ? GetReg(0, size) : CarryFlag();
        ulong old;
        if ((ea & 7) + (ulong)size > 8)
        {
            old = SplitLockedRmw(m, op.Sub, ea, size, operand, accumulator, bit);
        }
        else
        {
            byte* p = LockedTarget(ea, size);
            if (p == null)
            {
                // MMIO or ROM: the device sees a read and a write, as on one vCPU.
                old = PlainRmw(m, op.Sub, ea, size, operand, accumulator, bit);
            }
            else
            {
                old = AtomicRmw(p, m, op.Sub, size, operand, accumulator, bit);
            }
        }

        FinishLocked(ref op, m, size, old, operand, accumulator, bit);
        return op.Next;
    }

    /// <summary>The address of a BTS/BTR/BTC memory operand (a register offset addresses a bit string) and the bit in it.</summary>
    private ulong BitStringAddress(ref Op op, out int bit)
    {
        int size = op.Size;
        int bits = size * 8;
        if (op.K1 == OpKindX.Imm)
        {
            bit = (int)(op.Imm & (ulong)(bits - 1));
            return Ea(ref op);
        }

        long soff = SignExtend(GetReg(op.R1, size), size);
        long unit = soff >> (size == 8 ? 6 : size == 4 ? 5 : 4);
        ulong ea = Ea(ref op) + (ulong)(unit * size);
        if (_cpu.Bitness != 64)
        {
            ea &= 0xFFFFFFFF;
        }

        bit = (int)(soff & (bits - 1));
        return ea;
    }

    /// <summary>The new value of a locked operand; <paramref name="write"/> is false when nothing is stored (CMPXCHG that fails).</summary>
    private static ulong LockedResult(Mnemonic m, int sub, ulong old, ulong operand, ulong accumulator, int bit, int size, out bool write)
    {
        write = true;
        ulong mask = Mask(size);
        switch (m)
        {
            case Mnemonic.Xchg: return operand & mask;
            case Mnemonic.Xadd: return (old + operand) & mask;
            case Mnemonic.Inc: return (old + 1) & mask;
            case Mnemonic.Dec: return (old - 1) & mask;
            case Mnemonic.Neg: return (0 - old) & mask;
            case Mnemonic.Not: return ~old & mask;
            case Mnemonic.Bts: return old | (1UL << bit);
            case Mnemonic.Btr: return old & ~(1UL << bit);
            case Mnemonic.Btc: return old ^ (1UL << bit);
            case Mnemonic.Cmpxchg:
                write = old == accumulator;
                return operand;
            default:
                return sub switch
                {
                    Translator.AluAdd => (old + operand) & mask,
                    Translator.AluOr => old | operand,
                    Translator.AluAdc => (old + operand + accumulator) & mask,
                    Translator.AluSbb => (old - operand - accumulator) & mask,
                    Translator.AluAnd => old & operand,
                    Translator.AluXor => old ^ operand,
                    _ => (old - operand) & mask,
                };
        }
    }

    /// <summary>Sets the flags and registers of a locked instruction whose memory operand was <paramref name="old"/>.</summary>
    private void FinishLocked(ref Op op, Mnemonic m, int size, ulong old, ulong operand, ulong accumulator, int bit)
    {
        switch (m)
        {
            case Mnemonic.Xchg:
                SetReg(op.K0 == OpKindX.Reg ? op.R0 : op.R1, size, old);
                break;
            case Mnemonic.Xadd:
                AluOp(Translator.AluAdd, old, operand, size);
                SetReg(op.R1, size, old);
                break;
            case Mnemonic.Inc:
            case Mnemonic.Dec:
            {
                ulong r = (m == Mnemonic.Inc ? old + 1 : old - 1) & Mask(size);
                _cpu.LzCf = accumulator; // the carry, which INC and DEC keep
                SetLazy(m == Mnemonic.Inc ? LzInc : LzDec, old, 1, r, size);
                break;
            }

            case Mnemonic.Neg:
                SetLazy(LzSub, 0, old, (0 - old) & Mask(size), size);
                break;
            case Mnemonic.Not:
                break;
            case Mnemonic.Bts:
            case Mnemonic.Btr:
            case Mnemonic.Btc:
                Materialize();
                _cpu.Flags = (_cpu.Flags & ~CF) | ((old >> bit) & 1);
                break;
            case Mnemonic.Cmpxchg:
                AluOp(Translator.AluCmp, accumulator, old, size);
                if (old != accumulator)
                {
                    SetReg(0, size, old);
                }

                break;
            default:
                AluOp(op.Sub, old, operand, size);
                break;
        }
    }

    /// <summary>Host pointer of a locked operand in writable RAM (translated for writing), or null for MMIO and ROM.</summary>
    private byte* LockedTarget(ulong ea, int size)
    {
        byte* p = WritePtr(ea, size);
        if (p != null)
        {
            return p;
        }

        if (_segCheck)
        {
            CheckSegmentAccess(ea, size, write: true);
        }

        if (_alignCheck)
        {
            CheckCanonical(ea);
            CheckAlignment(ea, size);
        }

        nint host = TranslateWriteHost(ea, out _);
        return host == 0 ? null : (byte*)(host + (nint)(ea & 0xFFF));
    }

    /// <summary>Compare-and-exchange of the aligned 8-byte word holding the operand at <paramref name="p"/> until it takes.</summary>
    private ulong AtomicRmw(byte* p, Mnemonic m, int sub, int size, ulong operand, ulong accumulator, int bit)
    {
        ref long word = ref *(long*)((nint)p & ~7);
        int shift = (int)((nint)p & 7) * 8;
        ulong mask = Mask(size);
        EnterAtomic();
        ulong old;
        while (true)
        {
            ulong cur = (ulong)Volatile.Read(ref word);
            old = (cur >> shift) & mask;
            ulong r = LockedResult(m, sub, old, operand, accumulator, bit, size, out bool write);
            if (!write)
            {
                break;
            }

            ulong next = (cur & ~(mask << shift)) | ((r & mask) << shift);
            if ((ulong)Interlocked.CompareExchange(ref word, (long)next, (long)cur) == cur)
            {
                break;
            }
        }

        Volatile.Write(ref _inAtomic, 0);
        return old;
    }

    /// <summary>The read-modify-write through the ordinary accesses (write checked first, as the hardware does).</summary>
    private ulong PlainRmw(Mnemonic m, int sub, ulong ea, int size, ulong operand, ulong accumulator, int bit)
    {
        ProbeWrite(ea, size);
        ulong old = Read(ea, size);
        ulong r = LockedResult(m, sub, old, operand, accumulator, bit, size, out bool write);

        // A failing CMPXCHG writes the destination back unchanged (a locked read-modify-write on hardware).
        Write(ea, size, write ? r : old);
        return old;
    }

    /// <summary>A locked operand that spans two 8-byte words: the read-modify-write under the bus lock.</summary>
    private ulong SplitLockedRmw(Mnemonic m, int sub, ulong ea, int size, ulong operand, ulong accumulator, int bit)
    {
        AcquireBusLock();
        try
        {
            return PlainRmw(m, sub, ea, size, operand, accumulator, bit);
        }
        finally
        {
            _partition.ReleaseBusLock();
        }
    }

    private ulong LockedCmpxchg8b(ref Op op, in Instruction ins)
    {
        ulong ea = Ea(ref op);
        if ((ea & 7) != 0)
        {
            return BusLocked(ref op, in ins);
        }

        byte* p = LockedTarget(ea, 8);
        if (p == null)
        {
            return _handlers[op.Form](ref op, in ins);
        }

        ulong cmp = ((ulong)(uint)Gpr(2) << 32) | (uint)Gpr(0);
        ulong value = ((ulong)(uint)Gpr(1) << 32) | (uint)Gpr(3);
        EnterAtomic();
        ulong seen = (ulong)Interlocked.CompareExchange(ref *(long*)p, (long)value, (long)cmp);
        Volatile.Write(ref _inAtomic, 0);
        Materialize();
        if (seen == cmp)
        {
            _cpu.Flags |= ZF;
        }
        else
        {
            SetReg(0, 4, (uint)seen);
            SetReg(2, 4, seen >> 32);
            _cpu.Flags &= ~ZF;
        }

        return op.Next;
    }

    /// <summary>Runs the instruction's ordinary handler under the bus lock.</summary>
    private ulong BusLocked(ref Op op, in Instruction ins)
    {
        AcquireBusLock();
        try
        {
            return _handlers[op.Form](ref op, in ins);
        }
        finally
        {
            _partition.ReleaseBusLock();
        }
    }

    /// <summary>Marks this vCPU inside an atomic access, after any bus lock another vCPU holds is released.</summary>
    private void EnterAtomic()
    {
        while (true)
        {
            // The exchange is a full fence: the bus-lock holder sees the flag before this vCPU reads its lock.
            Interlocked.Exchange(ref _inAtomic, 1);
            if (!_partition.BusLockHeld)
            {
                return;
            }

            Volatile.Write(ref _inAtomic, 0);
            _partition.WaitForBusLock();
        }
    }

    private void AcquireBusLock() => _partition.AcquireBusLock(this);
}
