using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Iced.Intel;
using Virt.Memory;

namespace Virt.Cpu.Interpreter;

/// <summary>Operand kinds of a decoded instruction.</summary>
internal static class OpKindX
{
    public const byte None = 0, Reg = 1, Mem = 2, Imm = 3;
}

/// <summary>Prefix bits of a decoded instruction.</summary>
internal static class Pfx
{
    public const byte Rep = 1, Repne = 2, Lock = 4;
}

/// <summary>One pre-decoded instruction: everything the executor needs, with no further decoding.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct Op
{
    /// <summary>The inline operation that runs this instruction, or <see cref="InlineOp.None"/>: the handler of row <see cref="Form"/> runs it.</summary>
    public InlineOp Inline;
    public byte Size;
    public byte Sub;
    public byte R0, R1, R2;
    public byte K0, K1, K2;
    public byte Base, Index, Scale, Seg;
    public byte AddrSize;
    public byte Len;
    public byte Size2;
    public byte Pfx;

    /// <summary>The instruction's row in <see cref="InstructionTable"/>.</summary>
    public ushort Form;
    public long Disp;
    public ulong Imm;
    public ulong Next;
    public ulong Target;
    public int Slot;
}

/// <summary>
/// A run of decoded instructions that starts at one guest address and lies in one page, or a single instruction whose
/// bytes run into the next page (<see cref="Straddles"/>).
/// </summary>
internal sealed class Block
{
    public Op[] Ops = [];
    public Instruction[] Instrs = [];
    public int Count;
    public ulong Lin;

    /// <summary>CS base the block was decoded under: its RIP values (next, branch targets) are offsets from it.</summary>
    public ulong CsBase;
    public ulong PhysPage;
    public int ModeKey;
    public bool Valid = true;

    /// <summary>
    /// The block is one instruction whose last bytes lie in the next page, at <see cref="TailLin"/> and
    /// <see cref="TailPage"/>. It is kept under both physical pages (a write into either drops it), a lookup through the
    /// physical address checks that the next page still translates to <see cref="TailPage"/>, and the lookups an INVLPG
    /// of either page drops include it. It is never part of a region.
    /// </summary>
    public bool Straddles;

    /// <summary>The linear address of the page a straddling block's last bytes lie in.</summary>
    public ulong TailLin;

    /// <summary>The physical page a straddling block's last bytes lie in.</summary>
    public ulong TailPage;

    /// <summary>The block compiled by the JIT tier, once published; null while it is interpreted.</summary>
    public Jit.CompiledBlock? Compiled;

    /// <summary>Interpreted executions counted towards the JIT threshold.</summary>
    public int Hits;

    /// <summary>Ran compiled since the code cache last looked (second-chance eviction).</summary>
    public bool Used;

    /// <summary>Waiting among the compiler's candidates.</summary>
    public bool Pending;

    /// <summary>
    /// How often the block reached the JIT threshold while it waited among the compiler's candidates (halved as the
    /// compiler takes blocks, so it measures how hot the block is now): the compiler takes the hottest first.
    /// </summary>
    public int Heat;

    /// <summary>The compiler declined the block (nothing in it would run inline).</summary>
    public bool Uncompilable;

    /// <summary>The root of the last region published with this block among its others (the compiler's: see <c>BlockCompiler.InPublishedRegion</c>).</summary>
    public Block? CoveredBy;

    /// <summary>
    /// Times compiled code left this block through <see cref="InterpreterVcpu.JitLinked"/>: at
    /// <see cref="Jit.JitCompilerThread.PromoteAfter"/> the block's method is compiled again with its exits' link checks
    /// inline, when the compiler has nothing else to do.
    /// </summary>
    public int SlowLinks;

    /// <summary>The block's method checks its exits' links inline (compiled so at once, or promoted).</summary>
    public bool InlineLinks;

    /// <summary>
    /// The blocks that followed the compiled code's exits last time (exit 0: the branch target, exit 1: the next
    /// instruction), with the vCPU's link generation they were seen under; compiled code calls such a block's
    /// compiled code directly while the generation holds and the block is valid.
    /// </summary>
    public Block? Link0, Link1;

    /// <inheritdoc cref="Link0"/>
    public long LinkGen0, LinkGen1;

    /// <summary>
    /// The block's lookup slot was last filled through a global translation: a CR3 write keeps the lookup and the
    /// links to the block (<see cref="InterpreterVcpu"/>'s link generations).
    /// </summary>
    public bool Global;
}

/// <summary>Decoding guest code into cached blocks.</summary>
internal sealed unsafe partial class InterpreterVcpu
{
    private const int MaxBlockInstructions = 64;
    private const int L1Bits = 14;
    private const int L1Mask = (1 << L1Bits) - 1;

    private readonly Block?[] _l1 = new Block?[1 << L1Bits];

    /// <summary>
    /// The <see cref="_l1"/> slots filled since the last flush that drops them, in two logs: fills through non-global
    /// translations (a CR3 write clears those slots) and fills through global translations (G set in the leaf entry,
    /// CR4.PGE on; a CR3 write keeps them, as the hardware keeps global TLB entries; INVLPG and full flushes drop
    /// them). A flush clears the logged slots instead of all 16,384 (a guest flushes on every CR3 write; clearing the
    /// whole table was about 1% of a Linux boot's vCPU time). Past <see cref="L1FillLogSize"/> fills a log's count
    /// stays at one more than it holds, and the flush looks at every slot instead, which the fills since the last one
    /// (each a page walk and a second-level lookup) far outweigh.
    /// </summary>
    private readonly FillLog _l1NonGlobalFills = new();

    /// <inheritdoc cref="_l1NonGlobalFills"/>
    private readonly FillLog _l1GlobalFills = new();

    private const int L1FillLogSize = 1024;

    /// <summary>One of the lookup's fill logs (<see cref="_l1NonGlobalFills"/>).</summary>
    private sealed class FillLog
    {
        public readonly int[] Slots = new int[L1FillLogSize];
        public int Count;

        public bool Overflowed => Count > L1FillLogSize;

        public void Add(int slot)
        {
            int n = Count;
            if (n < L1FillLogSize)
            {
                Slots[n] = slot;
            }
            else if (n > L1FillLogSize)
            {
                return;
            }

            Count = n + 1;
        }
    }

    private readonly Dictionary<ulong, Block> _l2 = [];

    /// <summary>The blocks this vCPU keeps for lookup, copied (for tests, while the vCPU does not run: which regions the compiler formed).</summary>
    internal Block[] CachedBlocks() => [.. _l2.Values];

    private readonly Dictionary<ulong, List<Block>> _codePages = [];

    /// <summary>Per code page, writes that overlapped none of its blocks since code was decoded from it (<see cref="InvalidateCodeBytes"/>).</summary>
    private readonly Dictionary<ulong, int> _codePageDataWrites = [];

    /// <summary>Writes beside a page's blocks after which the page is dropped whole, so that data kept on a code page is written at full speed again.</summary>
    private const int MaxCodePageDataWrites = 64;
    private readonly ConcurrentQueue<ulong> _remoteCodeWrites = new();
    private volatile bool _remoteCodeWritePending;
    private readonly byte[] _fetch = new byte[4096 + 16];
    private readonly Instruction[] _decodeTmp = new Instruction[MaxBlockInstructions];

    /// <summary>Reads <see cref="_fetch"/> for the decoders; repositioned for each block.</summary>
    private FetchReader? _fetchReader;

    /// <summary>One decoder per operand size (16, 32, 64 bits) over <see cref="_fetchReader"/>, kept for the vCPU's life.</summary>
    private readonly Iced.Intel.Decoder?[] _decoders = new Iced.Intel.Decoder?[3];

    /// <summary>The longest run of bytes a block decodes: <see cref="MaxBlockInstructions"/> instructions of at most 15 bytes.</summary>
    private const int MaxBlockBytes = MaxBlockInstructions * 15;

    /// <summary>
    /// A code reader over the fetched bytes that can be repositioned, so that decoding a block allocates no reader and no
    /// decoder (a boot decodes tens of thousands of blocks).
    /// </summary>
    private sealed class FetchReader(byte[] buffer) : CodeReader
    {
        private int _pos;
        private int _end;

        /// <summary>Reads from the start of the buffer again, up to <paramref name="end"/>.</summary>
        public void Reset(int end)
        {
            _pos = 0;
            _end = end;
        }

        public override int ReadByte() => _pos < _end ? buffer[_pos++] : -1;
    }

    /// <summary>The decoder for the current operand size, reading the first <paramref name="end"/> fetched bytes from RIP <paramref name="ip"/>.</summary>
    private Iced.Intel.Decoder FetchDecoder(int end, ulong ip)
    {
        var reader = _fetchReader ??= new FetchReader(_fetch);
        reader.Reset(end);
        int bitness = _cpu.Bitness;
        int k = bitness == 64 ? 2 : bitness == 32 ? 1 : 0;
        var decoder = _decoders[k] ??= Iced.Intel.Decoder.Create(bitness, reader, ip, DecoderOptions.None);
        decoder.IP = ip;
        return decoder;
    }

    private bool _stop;

    private void FlushBlockLookup()
    {
        var l1 = _l1;
        if (_l1NonGlobalFills.Overflowed || _l1GlobalFills.Overflowed)
        {
            Array.Clear(l1);
        }
        else
        {
            foreach (int f in _l1NonGlobalFills.Slots.AsSpan(0, _l1NonGlobalFills.Count))
            {
                l1[f] = null;
            }

            foreach (int f in _l1GlobalFills.Slots.AsSpan(0, _l1GlobalFills.Count))
            {
                l1[f] = null;
            }
        }

        _l1NonGlobalFills.Count = 0;
        _l1GlobalFills.Count = 0;
        InvalidateLinks(global: true);
    }

    /// <summary>A CR3 write: drops the lookups made through non-global translations and keeps the global ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FlushBlockLookupNonGlobal()
    {
        var l1 = _l1;
        if (_l1NonGlobalFills.Overflowed)
        {
            for (int i = 0; i < l1.Length; i++)
            {
                if (l1[i] is { Global: false })
                {
                    l1[i] = null;
                }
            }
        }
        else
        {
            // A logged slot refilled since through a global translation keeps its block.
            foreach (int f in _l1NonGlobalFills.Slots.AsSpan(0, _l1NonGlobalFills.Count))
            {
                if (l1[f] is { Global: false })
                {
                    l1[f] = null;
                }
            }
        }

        _l1NonGlobalFills.Count = 0;
        InvalidateLinks(global: false);
    }

    /// <summary>
    /// INVLPG: drops the lookups of blocks in the 1 GiB-aligned region of <paramref name="lin"/> (the largest page the
    /// invalidated translation can have), by their first or, for a straddling block, their last bytes, and keeps the
    /// others.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FlushBlockLookupPage(ulong lin)
    {
        ulong region = lin >> 30;
        var l1 = _l1;
        if (_l1NonGlobalFills.Overflowed || _l1GlobalFills.Overflowed)
        {
            for (int i = 0; i < l1.Length; i++)
            {
                if (l1[i] is { } b && InRegion(b, region))
                {
                    l1[i] = null;
                }
            }
        }
        else
        {
            ClearRegion(l1, _l1NonGlobalFills, region);
            ClearRegion(l1, _l1GlobalFills, region);
        }

        InvalidateLinks(global: true);

        static void ClearRegion(Block?[] l1, FillLog log, ulong region)
        {
            foreach (int f in log.Slots.AsSpan(0, log.Count))
            {
                if (l1[f] is { } b && InRegion(b, region))
                {
                    l1[f] = null;
                }
            }
        }

        static bool InRegion(Block b, ulong region) => b.Lin >> 30 == region || (b.Straddles && b.TailLin >> 30 == region);
    }

    /// <summary>
    /// Links between compiled blocks were made under the old translations: after a CR3 write (<paramref name="global"/>
    /// false) the links to blocks reached through global translations still hold; after any other flush none does.
    /// </summary>
    private void InvalidateLinks(bool global)
    {
        _linkGeneration++;
        if (global)
        {
            _globalLinkFloor = _linkGeneration;
        }
    }

    /// <summary>Called from any thread: a watched code page was written by the host or another vCPU.</summary>
    internal void NotifyCodePageWritten(ulong pageAddress)
    {
        _remoteCodeWrites.Enqueue(pageAddress >> 12);
        _remoteCodeWritePending = true;
        RaiseAttention();
    }

    private void DrainRemoteCodeWrites()
    {
        _remoteCodeWritePending = false;
        while (_remoteCodeWrites.TryDequeue(out ulong page))
        {
            InvalidateCodePage(page);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void InvalidateCodePage(ulong page)
    {
        _codePageDataWrites.Remove(page);
        if (_codePages.Remove(page, out var list))
        {
            foreach (var b in list)
            {
                b.Valid = false;
                ForgetBlock(b);
            }

            _stop = true;
        }
    }

    /// <summary>Takes an invalidated block out of the physical-address lookup when it is still the one stored there.</summary>
    private void ForgetBlock(Block b)
    {
        ulong key = b.PhysPage + (b.Lin & 0xFFF) | ((ulong)b.ModeKey << 56);
        if (_l2.TryGetValue(key, out var cur) && cur == b)
        {
            _l2.Remove(key);
        }
    }

    /// <summary>
    /// A write of <paramref name="size"/> bytes at <paramref name="offset"/> into code page <paramref name="page"/>
    /// (a single vCPU's): drops the blocks whose bytes it overlaps and the compiled regions that hold one of them (a
    /// region's method runs its blocks inline, entered at its root), and keeps the page's other blocks and their
    /// compiled code. A kernel patches its own text an instruction at a time (jump labels, alternatives, mostly in
    /// code not yet run), and each patch dropped every block of the page, compiled ones included. A write beside every
    /// block drops nothing, but each such write takes the slow path (the page holds code), so after
    /// <see cref="MaxCodePageDataWrites"/> of them (data kept on a code page) this returns false and the caller drops
    /// the whole page, after which writes to it run at full speed again.
    /// </summary>
    private bool InvalidateCodeBytes(ulong page, List<Block> blocks, int offset, int size)
    {
        int end = offset + size;
        List<Block>? hit = null;
        foreach (var b in blocks)
        {
            if (Overlaps(b, page, offset, end))
            {
                (hit ??= []).Add(b);
            }
        }

        if (hit == null)
        {
            ref int writes = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_codePageDataWrites, page, out _);
            return ++writes <= MaxCodePageDataWrites;
        }

        // Regions lie in one page, so their roots are in this list too. Under the compiler's lock: a region being
        // compiled meanwhile is published either before this (and found here) or not at all (JitCompilerThread.CodeLock).
        int direct = hit.Count;
        lock (Jit.JitCompilerThread.CodeLock)
        {
            foreach (var b in hit)
            {
                Volatile.Write(ref b.Valid, false);
            }

            foreach (var b in blocks)
            {
                if (Volatile.Read(ref b.Compiled)?.Target is Block[] { Length: > 1 } region && !hit.Contains(b)
                    && ContainsAny(region, hit, direct))
                {
                    Volatile.Write(ref b.Valid, false);
                    hit.Add(b);
                }
            }
        }

        foreach (var b in hit)
        {
            ForgetBlock(b);
        }

        blocks.RemoveAll(b => !b.Valid);
        if (blocks.Count == 0)
        {
            _codePages.Remove(page);
            _codePageDataWrites.Remove(page);
        }

        _stop = true;
        return true;

        // Whether block b's bytes in physical page `page` overlap [offset, end): a straddling block has its first bytes up
        // to the end of its first page and its last ones from the start of its tail page (both, when the two are one).
        static bool Overlaps(Block b, ulong page, int offset, int end)
        {
            int start = (int)(b.Lin & 0xFFF);
            ref Op first = ref b.Ops[0];
            if (b.Straddles)
            {
                int tail = start + first.Len - 4096;
                return (b.PhysPage >> 12 == page && start < end)
                    || (b.TailPage >> 12 == page && offset < tail);
            }

            long length = (long)(b.Ops[b.Count - 1].Next - (first.Next - first.Len));
            if (length <= 0 || start + length > 4096)
            {
                // The instruction pointer wrapped inside the block (16- or 32-bit code): count the rest of the page.
                length = 4096 - start;
            }

            return start < end && offset < start + length;
        }

        static bool ContainsAny(Block[] region, List<Block> hit, int count)
        {
            for (int i = 0; i < count; i++)
            {
                if (Array.IndexOf(region, hit[i]) >= 0)
                {
                    return true;
                }
            }

            return false;
        }
    }

    private int ModeKey => _cpu.Bitness | (int)(_userKey << 7);

    /// <summary>Blocks this vCPU has decoded so far (for tests: how much code a write dropped).</summary>
    internal long BlocksDecoded { get; private set; }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private Block GetBlock() => CachedBlock(out ulong lin, out ulong csBase, out int h) ?? GetBlockSlow(lin, csBase, h);

    /// <summary>
    /// The block at the current CS:RIP when the first-level lookup holds it (valid, same mode and CS base), else null
    /// with the linear address, CS base and lookup slot for <see cref="GetBlockSlow"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Block? CachedBlock(out ulong lin, out ulong csBase, out int h)
    {
        lin = CodeLinear(out csBase);
        h = (int)(lin ^ (lin >> L1Bits)) & L1Mask;
        var b = _l1[h];
        return b != null && RunsHere(b, lin, csBase) ? b : null;
    }

    /// <summary>The linear address of CS:RIP, as blocks are keyed, with CS's base in <paramref name="csBase"/> (0 in 64-bit mode).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong CodeLinear(out ulong csBase)
    {
        csBase = _cpu.Bitness == 64 ? 0 : _cpu.SegBase[SegCs];
        return _cpu.Bitness == 64 ? _cpu.Rip : (csBase + _cpu.Rip) & 0xFFFFFFFF;
    }

    /// <summary>
    /// Whether <paramref name="b"/>, held where lookups keep blocks, is the block to run at linear address
    /// <paramref name="lin"/> now: it starts there, is still valid, and was decoded in this mode with CS base
    /// <paramref name="csBase"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool RunsHere(Block b, ulong lin, ulong csBase) => b.Lin == lin && b.Valid && b.ModeKey == ModeKey && b.CsBase == csBase;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private Block GetBlockSlow(ulong lin, ulong csBase, int h)
    {
        if (_remoteCodeWritePending)
        {
            DrainRemoteCodeWrites();
        }

        CheckCanonical(lin);
        ulong phys = Translate(lin, AccExec, _cpu.Cpl == 3);
        bool global = _walkGlobal;
        int mode = ModeKey;
        ulong key = phys | ((ulong)mode << 56);
        if (_l2.TryGetValue(key, out var b) && b.Valid && b.Lin == lin && b.CsBase == csBase
            && (!b.Straddles || TailHolds(b, ref global)))
        {
            SetL1(h, b, global);
            return b;
        }

        b = Decode(lin, csBase, phys, ref global);
        BlocksDecoded++;
        _l2[key] = b;
        SetL1(h, b, global);
        AddToCodePage(phys >> 12, b);
        if (b.Straddles && b.TailPage != (phys & ~0xFFFUL))
        {
            AddToCodePage(b.TailPage >> 12, b);
        }

        return b;
    }

    /// <summary>Whether the next page still translates to straddling block <paramref name="b"/>'s tail page (a fault there is the instruction's own).</summary>
    private bool TailHolds(Block b, ref bool global) => TailPageOf(b.TailLin, ref global) == b.TailPage;

    /// <summary>
    /// The physical page an instruction's bytes continue in at linear page <paramref name="tailLin"/>, translated for
    /// execution (a fault there is the instruction's own); <paramref name="global"/> stays set only when that translation
    /// is global too.
    /// </summary>
    private ulong TailPageOf(ulong tailLin, ref bool global)
    {
        ulong tail = Translate(tailLin, AccExec, _cpu.Cpl == 3);
        global &= _walkGlobal;
        return tail & ~0xFFFUL;
    }

    /// <summary>The linear address of the page after the one <paramref name="lin"/> is in (wrapping at 4 GiB outside 64-bit mode).</summary>
    private ulong NextPageLinear(ulong lin)
    {
        ulong next = (lin | 0xFFF) + 1;
        return _cpu.Bitness == 64 ? next : next & 0xFFFFFFFF;
    }

    /// <summary>Records that <paramref name="b"/> was decoded from physical page <paramref name="page"/> (a frame number), watching the page for writes.</summary>
    private void AddToCodePage(ulong page, Block b)
    {
        if (!_codePages.TryGetValue(page, out var list))
        {
            list = [];
            _codePages[page] = list;
            FlushWriteTlbForPhysPage(page << 12);
            if (_smp)
            {
                int region = FindRegion(page << 12);
                if (region >= 0)
                {
                    _partition.MarkCodePage(this, region, ((page << 12) - _regions[region].Start) >> 12);
                }
            }

            _partition.Memory.WatchPage(new GuestAddress(page << 12));
        }

        list.Add(b);
    }

    private void SetL1(int h, Block b, bool global)
    {
        _l1[h] = b;
        b.Global = global;
        (global ? _l1GlobalFills : _l1NonGlobalFills).Add(h);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private Block Decode(ulong lin, ulong csBase, ulong phys, ref bool global)
    {
        nint host = HostPage(phys & ~0xFFFUL);
        if (host == 0)
        {
            // Executing from MMIO or outside RAM: nothing sensible to fetch.
            throw Fault(Vectors.UD, 0);
        }

        int off = (int)(phys & 0xFFF);
        int avail = 4096 - off;

        // The block's bytes up to the end of the page, or as many as its longest decode reads.
        int fetched = Math.Min(avail, MaxBlockBytes);
        new ReadOnlySpan<byte>((void*)(host + off), fetched).CopyTo(_fetch);
        // The decoder works in CS offsets (RIP), so next-instruction and branch-target values are RIP values.
        ulong start = _cpu.Rip;
        var decoder = FetchDecoder(fetched, start);
        int n = 0;
        bool straddles = false;
        ulong tailLin = 0, tailPage = 0;
        while (n < MaxBlockInstructions)
        {
            ulong ip = decoder.IP;
            decoder.Decode(out var ins);
            if (ins.Code == Code.INVALID && decoder.LastError == DecoderError.NoMoreBytes)
            {
                if (n > 0)
                {
                    break;
                }

                // The first instruction crosses into the next page: fetch its tail; the block is this instruction alone.
                tailLin = NextPageLinear(lin);
                tailPage = TailPageOf(tailLin, ref global);
                nint host2 = HostPage(tailPage);
                if (host2 == 0)
                {
                    throw Fault(Vectors.UD, 0);
                }

                new ReadOnlySpan<byte>((void*)host2, 16).CopyTo(_fetch.AsSpan(avail));
                decoder = FetchDecoder(avail + 16, start);
                decoder.Decode(out ins);
                straddles = true;
                _decodeTmp[n++] = ins;
                break;
            }

            _decodeTmp[n++] = ins;
            if (EndsBlock(in ins) || ip + (ulong)ins.Length - start >= (ulong)avail)
            {
                break;
            }
        }

        var block = new Block
        {
            Count = n,
            Lin = lin,
            CsBase = csBase,
            PhysPage = phys & ~0xFFFUL,
            ModeKey = ModeKey,
            Straddles = straddles,
            TailLin = tailLin,
            TailPage = tailPage,
            Ops = new Op[n],
            Instrs = new Instruction[n],
        };
        for (int i = 0; i < n; i++)
        {
            block.Instrs[i] = _decodeTmp[i];
            block.Ops[i] = Translator.Translate(in _decodeTmp[i], _cpu.Bitness, _smp);
            block.Ops[i].Slot = i;
        }

        return block;
    }

    private static bool EndsBlock(in Instruction ins)
    {
        if (ins.FlowControl != FlowControl.Next)
        {
            return true;
        }

        return InstructionTable.At(InstructionTable.IndexOf(ins.Code)).EndsBlock;
    }
}
