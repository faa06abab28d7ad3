using System.Runtime.CompilerServices;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>A cached linear-to-host translation of one 4 KiB page.</summary>
internal struct TlbEntry
{
    /// <summary>(linear page number &lt;&lt; 1) | user bit; <see cref="ulong.MaxValue"/> when empty.</summary>
    public ulong Tag;
    /// <summary>Host address of the page's first byte.</summary>
    public nint Host;
    /// <summary>Guest physical address of the page.</summary>
    public ulong Phys;
}

/// <summary>Thrown to stop the current instruction when it needs the host (MMIO); the instruction restarts.</summary>
internal sealed class ExitSignal : Exception
{
    public ExitSignal()
    {
    }

    public ExitSignal(string message) : base(message)
    {
    }

    public ExitSignal(string message, Exception inner) : base(message, inner)
    {
    }
}

/// <summary>Guest memory access: software TLB, page walks, physical RAM and MMIO.</summary>
internal sealed unsafe partial class InterpreterVcpu
{
    private const int TlbBits = 8;
    private const int TlbSize = 1 << TlbBits;
    private const ulong TlbMask = TlbSize - 1;
    private const int MmioLogSize = 8;

    // Page-table entry and #PF error code bits, short for the walker (values: Virt.X86).
    private const ulong PteP = (ulong)PageFlags.Present, PteRw = (ulong)PageFlags.Writable, PteUs = (ulong)PageFlags.User,
        PteA = (ulong)PageFlags.Accessed, PteD = (ulong)PageFlags.Dirty, PtePs = (ulong)PageFlags.PageSize, PteNx = (ulong)PageFlags.NoExecute;
    private const uint PfP = (uint)PageFaultErrorCode.Present, PfW = (uint)PageFaultErrorCode.Write, PfU = (uint)PageFaultErrorCode.User,
        PfRsvd = (uint)PageFaultErrorCode.ReservedBit, PfI = (uint)PageFaultErrorCode.InstructionFetch;

    private const int AccRead = 0, AccWrite = 1, AccExec = 2;

    private readonly PhysRegion[] _regions;
    private readonly TlbEntry[] _rtlb = new TlbEntry[TlbSize];
    private readonly TlbEntry[] _wtlb = new TlbEntry[TlbSize];
    private readonly ExitSignal _exitSignal = new();
    private ulong _userKey;
    private bool _nonCanonical;

    /// <summary>Alignment checking is on: see <see cref="UpdateAlignmentCheck"/>.</summary>
    private bool _alignCheck;

    /// <summary>The accesses being made are parts of a 16-byte SSE operand, which is not alignment-checked.</summary>
    private bool _alignExempt;

    private readonly ulong[] _mmioAddr = new ulong[MmioLogSize];
    private readonly ulong[] _mmioData = new ulong[MmioLogSize];
    private readonly int[] _mmioSize = new int[MmioLogSize];
    private readonly bool[] _mmioWrite = new bool[MmioLogSize];
    private int _mmioCount, _mmioPos;

    /// <summary>The last <see cref="Translate"/> went through a global leaf entry with CR4.PGE set (4-level paging only).</summary>
    private bool _walkGlobal;

    private static readonly ulong PhysAddrMask = ((1UL << Cpuid.PhysicalAddressBits) - 1) & ~0xFFFUL;

    private void InitTlb()
    {
        FlushTlb();
    }

    /// <summary>Drops every cached translation and every linear-address block lookup.</summary>
    internal void FlushTlb()
    {
        FlushDataTlb();
        FlushBlockLookup();
    }

    /// <summary>Drops every cached data translation (reads and writes), not the block lookups.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FlushDataTlb()
    {
        for (int i = 0; i < TlbSize; i++)
        {
            _rtlb[i].Tag = ulong.MaxValue;
            _wtlb[i].Tag = ulong.MaxValue;
        }
    }

    private void FlushWriteTlb()
    {
        for (int i = 0; i < TlbSize; i++)
        {
            _wtlb[i].Tag = ulong.MaxValue;
        }

        Interlocked.Increment(ref _writeTlbFlushes);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FlushTlbPage(ulong lin)
    {
        int i = (int)((lin >> 12) & TlbMask);
        _rtlb[i].Tag = ulong.MaxValue;
        _wtlb[i].Tag = ulong.MaxValue;
        FlushBlockLookupPage(lin);
    }

    /// <summary>
    /// A CR3 write: drops every cached data translation, and the block lookups except those made through global
    /// translations while CR4.PGE is set (the hardware may keep those; INVLPG or a CR4 write drops them).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal void FlushTlbForCr3()
    {
        FlushDataTlb();
        if ((_cpu.Cr4 & Cr4.PageGlobalEnable) != 0)
        {
            FlushBlockLookupNonGlobal();
        }
        else
        {
            FlushBlockLookup();
        }
    }

    private void FlushWriteTlbForPhysPage(ulong physPage)
    {
        for (int i = 0; i < TlbSize; i++)
        {
            if (_wtlb[i].Phys == physPage)
            {
                _wtlb[i].Tag = ulong.MaxValue;
            }
        }
    }

    // ---- Fast paths -------------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal byte Read8(ulong lin)
    {
        ref TlbEntry e = ref _rtlb[(int)((lin >> 12) & TlbMask)];
        if (e.Tag == (((lin >> 11) & ~1UL) | _userKey))
        {
            // SAFETY: the TLB entry maps a whole 4 KiB RAM page and the offset is below 4096.
            return *(byte*)(e.Host + (nint)(lin & 0xFFF));
        }

        return (byte)ReadSlow(lin, 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Read(ulong lin, int size)
    {
        ref TlbEntry e = ref _rtlb[(int)((lin >> 12) & TlbMask)];
        if (e.Tag == (((lin >> 11) & ~1UL) | _userKey) && (lin & 0xFFF) <= (ulong)(4096 - size))
        {
            // SAFETY: the TLB entry maps a whole 4 KiB RAM page and the access ends inside it.
            byte* p = (byte*)(e.Host + (nint)(lin & 0xFFF));
            return size switch
            {
                1 => *p,
                2 => Unsafe.ReadUnaligned<ushort>(p),
                4 => Unsafe.ReadUnaligned<uint>(p),
                _ => Unsafe.ReadUnaligned<ulong>(p),
            };
        }

        return ReadSlow(lin, size);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Write(ulong lin, int size, ulong value)
    {
        ref TlbEntry e = ref _wtlb[(int)((lin >> 12) & TlbMask)];
        if (e.Tag == (((lin >> 11) & ~1UL) | _userKey) && (lin & 0xFFF) <= (ulong)(4096 - size))
        {
            // SAFETY: the write TLB entry maps a whole writable 4 KiB RAM page without cached code; the access ends inside it.
            byte* p = (byte*)(e.Host + (nint)(lin & 0xFFF));
            switch (size)
            {
                case 1: *p = (byte)value; break;
                case 2: Unsafe.WriteUnaligned(p, (ushort)value); break;
                case 4: Unsafe.WriteUnaligned(p, (uint)value); break;
                default: Unsafe.WriteUnaligned(p, value); break;
            }

            return;
        }

        WriteSlow(lin, size, value);
    }

    /// <summary>Host pointer for a read of <paramref name="size"/> bytes at <paramref name="lin"/>, or null when the slow path is needed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* ReadPtr(ulong lin, int size)
    {
        ref TlbEntry e = ref _rtlb[(int)((lin >> 12) & TlbMask)];
        if (e.Tag == (((lin >> 11) & ~1UL) | _userKey) && (lin & 0xFFF) <= (ulong)(4096 - size))
        {
            return (byte*)(e.Host + (nint)(lin & 0xFFF));
        }

        return null;
    }

    /// <summary>Host pointer for a write of <paramref name="size"/> bytes at <paramref name="lin"/>, or null when the slow path is needed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* WritePtr(ulong lin, int size)
    {
        ref TlbEntry e = ref _wtlb[(int)((lin >> 12) & TlbMask)];
        if (e.Tag == (((lin >> 11) & ~1UL) | _userKey) && (lin & 0xFFF) <= (ulong)(4096 - size))
        {
            return (byte*)(e.Host + (nint)(lin & 0xFFF));
        }

        return null;
    }

    /// <summary>Checks that a write of <paramref name="size"/> bytes at <paramref name="lin"/> would not fault, without writing.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal void ProbeWrite(ulong lin, int size)
    {
        if (WritePtr(lin, size) != null)
        {
            return;
        }

        CheckCanonical(lin);
        if (_segCheck)
        {
            CheckSegmentAccess(lin, size, write: true);
        }

        if (_alignCheck)
        {
            CheckAlignment(lin, size);
        }

        Translate(lin, AccWrite, _cpu.Cpl == 3);
        if ((lin & 0xFFF) + (ulong)size > 4096)
        {
            Translate((lin | 0xFFF) + 1, AccWrite, _cpu.Cpl == 3);
        }
    }

    // ---- Slow paths -------------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private ulong ReadSlow(ulong lin, int size)
    {
        CheckCanonical(lin);
        if (_segCheck)
        {
            CheckSegmentAccess(lin, size, write: false);
        }

        if (_alignCheck)
        {
            CheckAlignment(lin, size);
        }

        if (_debugWatch)
        {
            CheckWatchpoints(lin, size, write: false);
        }

        bool user = _cpu.Cpl == 3;
        if ((lin & 0xFFF) + (ulong)size > 4096)
        {
            // Both pages must be accessible before anything is read.
            ulong p0 = Translate(lin, AccRead, user);
            ulong next = (lin | 0xFFF) + 1;
            if (_cpu.Bitness != 64)
            {
                next &= 0xFFFFFFFF;
            }

            ulong p1 = Translate(next, AccRead, user);
            int first = (int)(4096 - (lin & 0xFFF));
            ulong lo = ReadPhys(p0, first);
            ulong hi = ReadPhys(p1, size - first);
            return lo | (hi << (first * 8));
        }

        ulong phys = Translate(lin, AccRead, user);
        int region = FindRegion(phys);
        if (region < 0)
        {
            return Mmio(phys, size, false, 0);
        }

        ref readonly PhysRegion r = ref _regions[region];
        nint host = r.Host + (nint)((phys & ~0xFFFUL) - r.Start);
        if (!_debugWatch && !_alignCheck && !_segCheck)
        {
            // Watchpoints, alignment and segment checking keep every read on this slow path, where they are checked.
            ref TlbEntry e = ref _rtlb[(int)((lin >> 12) & TlbMask)];
            e.Tag = ((lin >> 11) & ~1UL) | _userKey;
            e.Host = host;
            e.Phys = phys & ~0xFFFUL;
        }

        return LoadHost((byte*)(host + (nint)(lin & 0xFFF)), size);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private void WriteSlow(ulong lin, int size, ulong value)
    {
        if (_segCheck)
        {
            CheckSegmentAccess(lin, size, write: true);
        }

        if (_alignCheck)
        {
            CheckCanonical(lin);
            CheckAlignment(lin, size);
        }

        if (_debugWatch)
        {
            CheckWatchpoints(lin, size, write: true);
        }

        if ((lin & 0xFFF) + (ulong)size > 4096)
        {
            if (_writeTlbFlushRequested)
            {
                _writeTlbFlushRequested = false;
                FlushWriteTlb();
            }

            CheckCanonical(lin);
            bool user = _cpu.Cpl == 3;
            ulong p0 = Translate(lin, AccWrite, user);
            ulong next = (lin | 0xFFF) + 1;
            if (_cpu.Bitness != 64)
            {
                next &= 0xFFFFFFFF;
            }

            ulong p1 = Translate(next, AccWrite, user);
            int first = (int)(4096 - (lin & 0xFFF));
            WritePhys(p0, first, value);
            WritePhys(p1, size - first, value >> (first * 8));
            return;
        }

        nint host = TranslateWriteHost(lin, out ulong phys, size);
        if (host == 0)
        {
            Mmio(phys, size, true, value);
            return;
        }

        StoreHost((byte*)(host + (nint)(lin & 0xFFF)), size, value);
    }

    /// <summary>
    /// Translates <paramref name="lin"/> for a write: the host address of its RAM page (0 for MMIO and ROM, with the
    /// physical address in <paramref name="phys"/>). Marks the page dirty, invalidates code decoded from it (on every
    /// vCPU) and caches the write translation when the page holds no code.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private nint TranslateWriteHost(ulong lin, out ulong phys, int size = 0)
    {
        if (_writeTlbFlushRequested)
        {
            _writeTlbFlushRequested = false;
            FlushWriteTlb();
        }

        CheckCanonical(lin);
        phys = Translate(lin, AccWrite, _cpu.Cpl == 3);
        int region = FindRegion(phys);
        if (region < 0 || _regions[region].IsReadOnly)
        {
            return 0;
        }

        ulong page = phys & ~0xFFFUL;
        ref readonly PhysRegion r = ref _regions[region];
        nint host = r.Host + (nint)(page - r.Start);
        _partition.MarkDirty(region, (page - r.Start) >> 12);
        if (!CodeWritten(region, page, (int)(phys & 0xFFF), size) && !_debugWatch && !_alignCheck && !_segCheck)
        {
            ref TlbEntry e = ref _wtlb[(int)((lin >> 12) & TlbMask)];
            e.Tag = ((lin >> 11) & ~1UL) | _userKey;
            e.Host = host;
            e.Phys = page;
        }

        return host;
    }

    /// <summary>
    /// A write to <paramref name="page"/> (in <paramref name="region"/>) is about to happen: drops the code decoded
    /// from it here and on the other vCPUs. Returns whether the page held code (then no write translation is cached).
    /// With the write's place in the page (<paramref name="size"/> bytes at <paramref name="offset"/>; 0 when not
    /// known) and a single vCPU, a write into the bytes of decoded blocks drops only those blocks
    /// (<see cref="InvalidateCodeBytes"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool CodeWritten(int region, ulong page, int offset = 0, int size = 0)
    {
        bool local = _codePages.TryGetValue(page >> 12, out var blocks);
        bool shared = _smp && _partition.TakeCodePage(region, (page - _regions[region].Start) >> 12);
        if (!local && !shared)
        {
            return false;
        }

        if (size > 0 && !_smp && InvalidateCodeBytes(page >> 12, blocks!, offset, size))
        {
            return true;
        }

        InvalidateCodePage(page >> 12);
        _partition.BroadcastCodeWrite(this, page);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static ulong LoadHost(byte* p, int size) => size switch
    {
        1 => *p,
        2 => Unsafe.ReadUnaligned<ushort>(p),
        4 => Unsafe.ReadUnaligned<uint>(p),
        8 => Unsafe.ReadUnaligned<ulong>(p),
        _ => LoadBytes(p, size),
    };

    private static ulong LoadBytes(byte* p, int size)
    {
        ulong v = 0;
        for (int i = 0; i < size; i++)
        {
            v |= (ulong)p[i] << (i * 8);
        }

        return v;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void StoreHost(byte* p, int size, ulong value)
    {
        switch (size)
        {
            case 1: *p = (byte)value; break;
            case 2: Unsafe.WriteUnaligned(p, (ushort)value); break;
            case 4: Unsafe.WriteUnaligned(p, (uint)value); break;
            case 8: Unsafe.WriteUnaligned(p, value); break;
            default:
                for (int i = 0; i < size; i++)
                {
                    p[i] = (byte)(value >> (i * 8));
                }

                break;
        }
    }

    /// <summary>
    /// Recomputes whether alignment checking is on (SDM Vol. 3, 6.15, interrupt 17): CR0.AM and RFLAGS.AC set and
    /// CPL 3 (virtual-8086 mode included). While it is on no translation is cached, so every data access takes the
    /// slow paths (interpreted and compiled code alike), which check it; called whenever CR0, RFLAGS or the CPL change.
    /// </summary>
    internal void UpdateAlignmentCheck()
    {
        bool on = _cpu.Cpl == 3 && (_cpu.Cr0 & Cr0.AlignmentMask) != 0 && (_cpu.Flags & AC) != 0;
        if (on != _alignCheck)
        {
            _alignCheck = on;
            if (on)
            {
                FlushTlb();
            }
        }
    }

    /// <summary>
    /// #AC(0) for a data access of <paramref name="size"/> bytes at <paramref name="lin"/> that is not aligned to its
    /// size (SDM Vol. 3, table 6-7: 80-bit x87 operands are made of an 8-byte and a 2-byte access, so they need 8; 16-byte SSE
    /// operands are exempt, as on hardware). Descriptor-table, TSS and
    /// event-delivery accesses are implicit supervisor accesses: they go through the physical paths and are not checked.
    /// </summary>
    private void CheckAlignment(ulong lin, int size)
    {
        ulong mask = size switch
        {
            2 => 1,
            4 => 3,
            8 => 7,
            _ => 0,
        };
        if ((lin & mask) != 0 && !_alignExempt)
        {
            throw Fault(Vectors.AC, 0);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckCanonical(ulong lin)
    {
        if (_cpu.Bitness == 64 && (ulong)(((long)lin << 16) >> 16) != lin)
        {
            var f = Fault(Vectors.GP, 0);
            _nonCanonical = true;
            throw f;
        }
    }

    /// <summary>Index of the RAM/ROM region holding <paramref name="phys"/>, or -1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal int FindRegion(ulong phys)
    {
        var regions = _regions;
        for (int i = 0; i < regions.Length; i++)
        {
            if (phys - regions[i].Start < regions[i].Size)
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Reads guest physical memory (within one page). Non-RAM goes to MMIO.</summary>
    internal ulong ReadPhys(ulong phys, int size)
    {
        int region = FindRegion(phys);
        if (region < 0)
        {
            return Mmio(phys, size, false, 0);
        }

        ref readonly PhysRegion r = ref _regions[region];
        if (phys - r.Start + (ulong)size > r.Size)
        {
            return Mmio(phys, size, false, 0);
        }

        // SAFETY: phys..phys+size lies inside the region's host mapping (checked above).
        return LoadHost((byte*)(r.Host + (nint)(phys - r.Start)), size);
    }

    /// <summary>Writes guest physical memory (within one page), keeping the code cache and dirty log coherent.</summary>
    internal void WritePhys(ulong phys, int size, ulong value)
    {
        int region = FindRegion(phys);
        if (region < 0 || _regions[region].IsReadOnly || phys - _regions[region].Start + (ulong)size > _regions[region].Size)
        {
            Mmio(phys, size, true, value);
            return;
        }

        ref readonly PhysRegion r = ref _regions[region];
        _partition.MarkDirty(region, (phys - r.Start) >> 12);
        CodeWritten(region, phys & ~0xFFFUL, (int)(phys & 0xFFF), size);

        // SAFETY: phys..phys+size lies inside the writable region's host mapping (checked above).
        StoreHost((byte*)(r.Host + (nint)(phys - r.Start)), size, value);
    }

    /// <summary>Host pointer to a RAM page for instruction fetch, or 0.</summary>
    private nint HostPage(ulong physPage)
    {
        int region = FindRegion(physPage);
        if (region < 0 || physPage - _regions[region].Start + 4096 > _regions[region].Size)
        {
            return 0;
        }

        return _regions[region].Host + (nint)(physPage - _regions[region].Start);
    }

    /// <summary>An MMIO access: replays the access log of a restarted instruction, or exits to the host.</summary>
    private ulong Mmio(ulong phys, int size, bool isWrite, ulong value)
    {
        if (_plat != null && TryPlatformMmio(phys, size, isWrite, ref value))
        {
            return isWrite ? 0 : value;
        }

        if (_mmioPos < _mmioCount)
        {
            int i = _mmioPos++;
            if (_mmioAddr[i] == phys && _mmioSize[i] == size && _mmioWrite[i] == isWrite)
            {
                return isWrite ? 0 : _mmioData[i];
            }

            // The restarted instruction took a different path (the guest changed memory meanwhile): start over.
            _mmioCount = _mmioPos = 0;
        }

        if (_mmioCount == MmioLogSize)
        {
            _mmioCount = _mmioPos = 0;
            throw Fault(Vectors.GP, 0);
        }

        int n = _mmioCount++;
        _mmioPos = _mmioCount;
        _mmioAddr[n] = phys;
        _mmioSize[n] = size;
        _mmioWrite[n] = isWrite;
        _mmioData[n] = value;
        _exit = VcpuExit.Mmio(new GuestAddress(phys), size, isWrite);
        _hasExit = true;
        _exitDataLength = size;
        var data = _exitBuffer.AsSpan(0, size);
        for (int b = 0; b < size; b++)
        {
            data[b] = isWrite ? (byte)(value >> (b * 8)) : (byte)0;
        }

        _pendingIo = new PendingIo { Kind = isWrite ? PendingIoKind.MmioWrite : PendingIoKind.MmioRead, Size = size };
        throw _exitSignal;
    }

    // ---- Page walk --------------------------------------------------------------------------------

    /// <summary>Translates a linear address, setting accessed/dirty bits, or throws #PF.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong Translate(ulong lin, int access, bool user)
    {
        _walkGlobal = false;
        if ((_cpu.Cr0 & Cr0.Paging) == 0)
        {
            return lin & 0xFFFFFFFF;
        }

        if ((_cpu.Efer & Efer.LongModeActive) != 0)
        {
            return Walk64(lin, access, user);
        }

        return (_cpu.Cr4 & Cr4.Pae) != 0 ? WalkPae(lin, access, user) : Walk32(lin, access, user);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong Walk64(ulong lin, int access, bool user)
    {
        bool nxe = (_cpu.Efer & Efer.NoExecuteEnable) != 0;
        ulong rsvdHigh = ~((1UL << Cpuid.PhysicalAddressBits) - 1) & ~PteNx & 0x000F_FFFF_FFFF_F000UL;
        ulong rsvdNx = nxe ? 0 : PteNx;
        ulong table = _cpu.Cr3 & PhysAddrMask;
        ulong allowed = PteRw | PteUs;
        bool nx = false;
        Span<ulong> entryAddr = stackalloc ulong[4];
        Span<ulong> entries = stackalloc ulong[4];
        int level = 0;
        ulong pageSize = 0;
        for (int shift = 39; ; shift -= 9, level++)
        {
            ulong ea = table + (((lin >> shift) & 511) * 8);
            ulong e = ReadPhysForWalk(ea);
            entryAddr[level] = ea;
            entries[level] = e;
            if ((e & PteP) == 0)
            {
                throw PageFault(lin, access, user, 0);
            }

            ulong rsvd = rsvdHigh | rsvdNx;
            if (shift == 39)
            {
                rsvd |= PtePs;
            }
            else if (shift == 30 && (e & PtePs) != 0)
            {
                rsvd |= 0x3FFFE000UL;
            }
            else if (shift == 21 && (e & PtePs) != 0)
            {
                rsvd |= 0x1FE000UL;
            }

            if ((e & rsvd) != 0)
            {
                throw PageFault(lin, access, user, PfRsvd | PfP);
            }

            allowed &= e;
            nx |= (e & PteNx) != 0 && nxe;
            if (shift == 12 || (e & PtePs) != 0)
            {
                pageSize = 1UL << shift;
                break;
            }

            table = e & PhysAddrMask;
        }

        CheckRights(lin, access, user, allowed, nx);
        if (!SetAccessedDirty(entryAddr[..(level + 1)], entries[..(level + 1)], access == AccWrite))
        {
            return Walk64(lin, access, user); // another vCPU changed an entry meanwhile: walk again
        }

        ulong leaf = entries[level];
        _walkGlobal = (leaf & (ulong)PageFlags.Global) != 0 && (_cpu.Cr4 & Cr4.PageGlobalEnable) != 0;
        ulong baseAddr = leaf & PhysAddrMask & ~(pageSize - 1);
        return baseAddr | (lin & (pageSize - 1));
    }

    private ulong WalkPae(ulong lin, int access, bool user)
    {
        bool nxe = (_cpu.Efer & Efer.NoExecuteEnable) != 0;
        ulong rsvdNx = nxe ? 0 : PteNx;
        ulong rsvdHigh = ~((1UL << Cpuid.PhysicalAddressBits) - 1) & ~PteNx & 0x000F_FFFF_FFFF_F000UL;
        ulong pdpte = ReadPhysForWalk((_cpu.Cr3 & 0xFFFFFFE0) + (((lin >> 30) & 3) * 8));
        if ((pdpte & PteP) == 0)
        {
            throw PageFault(lin, access, user, 0);
        }

        ulong allowed = PteRw | PteUs;
        bool nx = false;
        Span<ulong> entryAddr = stackalloc ulong[2];
        Span<ulong> entries = stackalloc ulong[2];
        ulong table = pdpte & PhysAddrMask;
        int level = 0;
        ulong pageSize = 0;
        for (int shift = 21; ; shift -= 9, level++)
        {
            ulong ea = table + (((lin >> shift) & 511) * 8);
            ulong e = ReadPhysForWalk(ea);
            entryAddr[level] = ea;
            entries[level] = e;
            if ((e & PteP) == 0)
            {
                throw PageFault(lin, access, user, 0);
            }

            ulong rsvd = rsvdHigh | rsvdNx | (shift == 21 && (e & PtePs) != 0 ? 0x1FE000UL : 0);
            if ((e & rsvd) != 0)
            {
                throw PageFault(lin, access, user, PfRsvd | PfP);
            }

            allowed &= e;
            nx |= (e & PteNx) != 0 && nxe;
            if (shift == 12 || (e & PtePs) != 0)
            {
                pageSize = 1UL << shift;
                break;
            }

            table = e & PhysAddrMask;
        }

        CheckRights(lin, access, user, allowed, nx);
        if (!SetAccessedDirty(entryAddr[..(level + 1)], entries[..(level + 1)], access == AccWrite))
        {
            return WalkPae(lin, access, user);
        }

        return (entries[level] & PhysAddrMask & ~(pageSize - 1)) | (lin & (pageSize - 1));
    }

    private ulong Walk32(ulong lin, int access, bool user)
    {
        lin &= 0xFFFFFFFF;
        ulong pdeAddr = (_cpu.Cr3 & 0xFFFFF000) + (((lin >> 22) & 1023) * 4);
        ulong pde = ReadPhysForWalk32(pdeAddr);
        if ((pde & PteP) == 0)
        {
            throw PageFault(lin, access, user, 0);
        }

        Span<ulong> entryAddr = stackalloc ulong[2];
        Span<ulong> entries = stackalloc ulong[2];
        entryAddr[0] = pdeAddr;
        entries[0] = pde;
        if ((pde & PtePs) != 0 && (_cpu.Cr4 & Cr4.Pse) != 0)
        {
            CheckRights(lin, access, user, pde, false);
            if (!SetAccessedDirty32(entryAddr[..1], entries[..1], access == AccWrite))
            {
                return Walk32(lin, access, user);
            }

            return (pde & 0xFFC00000) | (lin & 0x3FFFFF);
        }

        ulong pteAddr = (pde & 0xFFFFF000) + (((lin >> 12) & 1023) * 4);
        ulong pte = ReadPhysForWalk32(pteAddr);
        if ((pte & PteP) == 0)
        {
            throw PageFault(lin, access, user, 0);
        }

        entryAddr[1] = pteAddr;
        entries[1] = pte;
        CheckRights(lin, access, user, pde & pte, false);
        if (!SetAccessedDirty32(entryAddr, entries, access == AccWrite))
        {
            return Walk32(lin, access, user);
        }

        return (pte & 0xFFFFF000) | (lin & 0xFFF);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void CheckRights(ulong lin, int access, bool user, ulong allowed, bool nx)
    {
        bool ok = access switch
        {
            AccWrite => user ? (allowed & (PteRw | PteUs)) == (PteRw | PteUs) : ((allowed & PteRw) != 0 || (_cpu.Cr0 & Cr0.WriteProtect) == 0),
            AccExec => !nx && (!user || (allowed & PteUs) != 0),
            _ => !user || (allowed & PteUs) != 0,
        };
        if (!ok)
        {
            throw PageFault(lin, access, user, PfP);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool SetAccessedDirty(Span<ulong> addrs, Span<ulong> entries, bool write)
    {
        for (int i = 0; i < addrs.Length; i++)
        {
            ulong e = entries[i];
            ulong want = e | PteA;
            if (write && i == addrs.Length - 1)
            {
                want |= PteD;
            }

            if (want != e)
            {
                if (!UpdateEntry(addrs[i], e, want, 8))
                {
                    return false;
                }
            }
        }

        return true;
    }

    private bool SetAccessedDirty32(Span<ulong> addrs, Span<ulong> entries, bool write)
    {
        for (int i = 0; i < addrs.Length; i++)
        {
            ulong e = entries[i];
            ulong want = e | PteA;
            if (write && i == addrs.Length - 1)
            {
                want |= PteD;
            }

            if (want != e)
            {
                if (!UpdateEntry(addrs[i], e, want, 4))
                {
                    return false;
                }
            }
        }

        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong ReadPhysForWalk(ulong addr)
    {
        int region = FindRegion(addr);
        if (region < 0 || addr - _regions[region].Start + 8 > _regions[region].Size)
        {
            // Page tables outside RAM read as not present.
            return 0;
        }

        // SAFETY: addr..addr+8 lies inside the region's host mapping (checked above).
        return Unsafe.ReadUnaligned<ulong>((byte*)(_regions[region].Host + (nint)(addr - _regions[region].Start)));
    }

    private ulong ReadPhysForWalk32(ulong addr)
    {
        int region = FindRegion(addr);
        if (region < 0 || addr - _regions[region].Start + 4 > _regions[region].Size)
        {
            return 0;
        }

        // SAFETY: addr..addr+4 lies inside the region's host mapping (checked above).
        return Unsafe.ReadUnaligned<uint>((byte*)(_regions[region].Host + (nint)(addr - _regions[region].Start)));
    }

    /// <summary>
    /// Sets accessed/dirty bits in a paging entry. With several vCPUs the entry is changed with a compare-and-exchange
    /// (another processor may clear or replace it meanwhile, as a locked update on hardware); false when it changed.
    /// </summary>
    private bool UpdateEntry(ulong addr, ulong expected, ulong value, int size)
    {
        int region = FindRegion(addr);
        if (region < 0 || _regions[region].IsReadOnly)
        {
            return true;
        }

        if (!_smp || (addr & (ulong)(size - 1)) != 0 || addr - _regions[region].Start + (ulong)size > _regions[region].Size)
        {
            WritePhys(addr, size, value);
            return true;
        }

        ref readonly PhysRegion r = ref _regions[region];
        _partition.MarkDirty(region, (addr - r.Start) >> 12);
        CodeWritten(region, addr & ~0xFFFUL);

        // SAFETY: addr..addr+size lies inside the writable region's host mapping and is aligned to size (checked above).
        byte* p = (byte*)(r.Host + (nint)(addr - r.Start));
        return size == 8
            ? (ulong)Interlocked.CompareExchange(ref *(long*)p, (long)value, (long)expected) == expected
            : (uint)Interlocked.CompareExchange(ref *(int*)p, (int)(uint)value, (int)(uint)expected) == (uint)expected;
    }

    private GuestFault PageFault(ulong lin, int access, bool user, uint code)
    {
        if (access == AccWrite)
        {
            code |= PfW;
        }

        if (user)
        {
            code |= PfU;
        }

        if (access == AccExec && (_cpu.Efer & Efer.NoExecuteEnable) != 0)
        {
            code |= PfI;
        }

        _faultCr2 = lin;
        return Fault(Vectors.PF, code);
    }

    /// <summary>Invalidates the MMIO replay log after an instruction completed.</summary>
    private void ClearMmioLog() => _mmioCount = _mmioPos = 0;
}
