using Virt.Memory;
using Virt.Sandbox.Loader;
using Virt.X86;

namespace Virt.Sandbox.Machine;

/// <summary>
/// The guest's page tables and the host's copy of what they say. The host builds every table once,
/// before the first instruction runs, and never edits them afterwards: a shadow-paging hypervisor
/// would not notice host writes to a live table, and fixed tables also never need a TLB flush or a
/// place in a snapshot. Heap and anonymous mappings come from the arena's heap, which is mapped in
/// full up front and handed out by <see cref="ArenaAllocator"/>; the stack is mapped at the top of the
/// arena above a guard gap that no page table maps, so running off the end of the stack faults.
/// </summary>
/// <remarks>
/// User pointers are translated from the host's record of the mappings, not by walking the tables with
/// <see cref="PageWalker"/>: system calls translate every pointer they take, and a record lookup costs about
/// a tenth of a 4-level walk and answers for a whole run of pages where a walk answers for one 4 KiB page.
/// The tests check that the records and a walk of the tables agree on every page.
/// </remarks>
internal sealed class AddressSpace
{
    private readonly Mapping[] _mappings;

    private AddressSpace(Mapping[] mappings, ulong cr3, ulong arenaPhysical, ulong arenaPages, ulong stackPages, ulong imageEnd, ulong pageTablePages)
    {
        _mappings = mappings;
        Cr3 = cr3;
        ArenaPhysical = arenaPhysical;
        ArenaPages = arenaPages;
        StackPages = stackPages;
        ImageEnd = imageEnd;
        PageTablePages = pageTablePages;
    }

    /// <summary>Physical address of the PML4.</summary>
    public ulong Cr3 { get; }

    /// <summary>Physical address of the first heap page.</summary>
    public ulong ArenaPhysical { get; }

    /// <summary>Number of heap pages (at <see cref="GuestLayout.ArenaBase"/>).</summary>
    public ulong ArenaPages { get; }

    /// <summary>Number of stack pages, mapped just below <see cref="StackTop"/>.</summary>
    public ulong StackPages { get; }

    /// <summary>Lowest address of the unmapped guard gap between the heap and the stack.</summary>
    public ulong GuardStart => GuestLayout.ArenaBase + (ArenaPages * GuestLayout.PageSize);

    /// <summary>Lowest stack address; everything from <see cref="GuardStart"/> up to here is unmapped.</summary>
    public ulong StackBottom => GuardStart + GuestLayout.StackGuardBytes;

    /// <summary>Virtual top of the stack (the end of the arena).</summary>
    public ulong StackTop => StackBottom + (StackPages * GuestLayout.PageSize);

    /// <summary>Whether <paramref name="address"/> lies in the guard gap below the stack.</summary>
    public bool IsStackGuard(ulong address) => address >= GuardStart && address < StackBottom;

    /// <summary>Page-aligned end of the program image (virtual).</summary>
    public ulong ImageEnd { get; }

    /// <summary>Pages used by page tables.</summary>
    public ulong PageTablePages { get; }

    /// <summary>First physical page of the tables kept for the reserved region (none are written at build).</summary>
    public ulong RegionTablePool { get; private init; }

    /// <summary>Pages kept for the reserved region's tables (0: no region, the image reaches into it).</summary>
    public ulong RegionTablePages { get; private init; }

    /// <summary>Page flags of heap pages (executable for a dynamically linked program).</summary>
    public PageFlags ArenaFlags { get; private init; }

    /// <summary>The reserved region, whose committed pages translate like any other mapping (see <see cref="AttachRegion"/>).</summary>
    public ReservedRegion? Region { get; private set; }

    /// <summary>Creates the reserved region over the heap's allocator; the allocator saves and restores its state with its own.</summary>
    public void AttachRegion(GuestMemory memory, ArenaAllocator arena)
    {
        ArgumentNullException.ThrowIfNull(arena);
        Region = new ReservedRegion(memory, arena, Cr3, RegionTablePool, RegionTablePages, ArenaFlags, RegionTablePages > 0);
        arena.Region = Region;
    }

    /// <summary>
    /// The user mappings as <c>/proc/self/maps</c> lists them: runs of image pages with the same flags, the heap (named
    /// <c>[heap]</c>, the whole arena: its page tables are fixed) and the stack.
    /// </summary>
    public IEnumerable<(ulong Start, ulong End, PageFlags Flags, string Name)> Regions()
    {
        foreach (var m in _mappings)
        {
            if (m.VirtualStart >= GuestLayout.ArenaBase || (m.Uniform & PageFlags.User) == 0 && m.PerPage is null)
            {
                continue;
            }

            ulong start = m.VirtualStart;
            for (ulong p = 1; p <= m.Pages; p++)
            {
                if (p == m.Pages || m.FlagsOf(p) != m.FlagsOf(p - 1))
                {
                    var f = m.FlagsOf(p - 1);
                    if ((f & PageFlags.User) != 0)
                    {
                        yield return (start, m.VirtualStart + (p * GuestLayout.PageSize), f, "");
                    }

                    start = m.VirtualStart + (p * GuestLayout.PageSize);
                }
            }
        }

        var data = PageFlags.User | PageFlags.Writable | PageFlags.NoExecute;
        foreach (var (start, end, committed) in Region?.Ranges() ?? [])
        {
            yield return (start, end, committed ? data : PageFlags.NoExecute, "");
        }

        yield return (GuestLayout.ArenaBase, GuardStart, data, "[heap]");
        yield return (StackBottom, StackTop, data, "[stack]");
    }

    /// <summary>Guest physical page runs of the program image and of the stack: memory every process has (the heap is the allocator's).</summary>
    public IEnumerable<(ulong Physical, ulong Pages)> ImageAndStackPhysical()
    {
        foreach (var m in _mappings)
        {
            if (m.VirtualStart != GuestLayout.ArenaBase)
            {
                yield return (m.PhysicalStart, m.Pages);
            }
        }
    }

    /// <summary>One run of virtually and physically contiguous pages.</summary>
    private sealed record Mapping(ulong VirtualStart, ulong Pages, ulong PhysicalStart, PageFlags[]? PerPage, PageFlags Uniform)
    {
        public PageFlags FlagsOf(ulong page) => PerPage is null ? Uniform : PerPage[page];
    }

    /// <summary>
    /// Lays out <paramref name="memory"/> for <paramref name="image"/>: supervisor pages, page tables,
    /// the image's segments with their permissions, and the arena over all remaining RAM: a stack of
    /// <paramref name="stackBytes"/> at its top, a guard gap below that (no RAM, no mapping), and the heap.
    /// </summary>
    /// <exception cref="ArgumentException">The memory is too small for the image, the stack and <paramref name="minimumHeapBytes"/>.</exception>
    public static AddressSpace Build(GuestMemory memory, ElfImage image, ulong stackBytes, ulong minimumHeapBytes)
    {
        ulong stackPages = stackBytes / GuestLayout.PageSize;
        ulong totalPages = memory.TotalSize / GuestLayout.PageSize;

        // Merge segment permissions per page: segments that share a page get the union.
        var pageFlags = new ImagePages();
        foreach (var s in image.Segments)
        {
            var flags = PageFlags.Present | PageFlags.User | PageFlags.Accessed;
            if ((s.Flags & ElfSegmentFlags.Write) != 0)
            {
                flags |= PageFlags.Writable | PageFlags.Dirty;
            }

            bool exec = (s.Flags & ElfSegmentFlags.Execute) != 0;
            for (ulong va = s.VirtualAddress & ~0xFFFUL; va < s.VirtualAddress + s.MemorySize; va += GuestLayout.PageSize)
            {
                pageFlags.Merge(va >> 12, flags | (exec ? PageFlags.None : PageFlags.NoExecute));
            }
        }

        ulong imagePages = (ulong)pageFlags.Count;
        ulong supervisorPages = GuestLayout.PageTablePhysical / GuestLayout.PageSize;
        if (totalPages <= supervisorPages + imagePages)
        {
            throw new ArgumentException($"The memory limit ({memory.TotalSize} bytes) is smaller than the program image ({imagePages * 4096} bytes); raise it.");
        }

        ulong tablePages = 1 + TablesFor(2, supervisorPages) + TablesFor(GuestLayout.DoorbellAddress >> 12, 2);
        for (int i = 0, n; i < pageFlags.Count; i += n)
        {
            n = pageFlags.RunLength(i);
            tablePages += TablesFor(pageFlags.VpnAt(i), (ulong)n);
        }

        // Heap and stack together never exceed the RAM left, so tables for that many pages from the arena base
        // (plus those for the stack, which sits past the guard gap) are an upper bound.
        tablePages += TablesFor(GuestLayout.ArenaBase >> 12, totalPages) + TablesFor((GuestLayout.ArenaBase + GuestLayout.StackGuardBytes) >> 12, totalPages);
        // Tables for the reserved region, written as the program commits parts of it (see ReservedRegion): one per 2 MiB
        // of heap it could commit, plus some for the upper levels and for scattered small commits.
        ulong regionTablePages = image.Extent.End <= ReservedRegion.Start ? (totalPages / 512) + Math.Min(128, totalPages / 64) : 0;
        ulong used = supervisorPages + tablePages + regionTablePages + imagePages + stackPages;
        if (totalPages <= used || (totalPages - used) * GuestLayout.PageSize < minimumHeapBytes)
        {
            throw new ArgumentException($"The memory limit ({memory.TotalSize} bytes) leaves no room for the heap after the program image, page tables and the {stackBytes}-byte stack; raise it to at least {(used * GuestLayout.PageSize) + minimumHeapBytes} bytes or lower WithStackSize.");
        }

        var writer = new PageTableWriter(memory, GuestLayout.PageTablePhysical, tablePages);
        var mappings = new List<Mapping>();

        // Supervisor pages: never user-accessible; only the code page is executable.
        const PageFlags sup = PageFlags.Present | PageFlags.Accessed;
        const PageFlags supData = sup | PageFlags.Writable | PageFlags.Dirty | PageFlags.NoExecute;
        writer.Map(GuestLayout.SupervisorBase + GuestLayout.GdtPhysical, GuestLayout.GdtPhysical, supData);
        writer.Map(GuestLayout.SupervisorBase + GuestLayout.IdtPhysical, GuestLayout.IdtPhysical, sup | PageFlags.NoExecute);
        writer.Map(GuestLayout.SupervisorBase + GuestLayout.CodePhysical, GuestLayout.CodePhysical, sup);
        writer.Map(GuestLayout.SupervisorBase + GuestLayout.StackPhysical, GuestLayout.StackPhysical, supData);

        // The vDSO and system-call trampoline page (user-executable, read-only) and the doorbell (readable, no RAM behind it).
        writer.Map(GuestLayout.VdsoAddress, GuestLayout.TrampolinePhysical, PageFlags.Present | PageFlags.User | PageFlags.Accessed);
        writer.Map(GuestLayout.DoorbellAddress, GuestLayout.DoorbellPhysical, PageFlags.Present | PageFlags.User | PageFlags.Accessed | PageFlags.NoExecute);

        ulong regionTablePool = GuestLayout.PageTablePhysical + (tablePages * GuestLayout.PageSize);
        ulong nextPhysical = regionTablePool + (regionTablePages * GuestLayout.PageSize);
        for (int r = 0, n; r < pageFlags.Count; r += n)
        {
            // A run of consecutive pages of the image.
            n = pageFlags.RunLength(r);
            var flags = pageFlags.FlagsOf(r, n);
            ulong va = pageFlags.VpnAt(r) << 12;
            for (int i = 0; i < flags.Length; i++)
            {
                writer.Map(va + ((ulong)i * GuestLayout.PageSize), nextPhysical + ((ulong)i * GuestLayout.PageSize), flags[i]);
            }

            mappings.Add(new Mapping(va, (ulong)flags.Length, nextPhysical, flags, PageFlags.None));
            nextPhysical += (ulong)flags.Length * GuestLayout.PageSize;
        }

        ulong arenaPages = totalPages - (nextPhysical / GuestLayout.PageSize) - stackPages;
        // A dynamically linked program's interpreter and libraries are mapped into the arena, so there its pages are
        // executable too (the tables are fixed: mprotect cannot make some pages executable later). The stack stays
        // non-executable unless PT_GNU_STACK asks otherwise.
        var stackFlags = PageFlags.Present | PageFlags.User | PageFlags.Writable | PageFlags.Accessed | PageFlags.Dirty |
            (image.ExecutableStack ? PageFlags.None : PageFlags.NoExecute);
        var arenaFlags = image.InterpreterPath is null ? stackFlags : stackFlags & ~PageFlags.NoExecute;
        for (ulong i = 0; i < arenaPages; i++)
        {
            writer.Map(GuestLayout.ArenaBase + (i * GuestLayout.PageSize), nextPhysical + (i * GuestLayout.PageSize), arenaFlags);
        }

        mappings.Add(new Mapping(GuestLayout.ArenaBase, arenaPages, nextPhysical, null, arenaFlags));

        // The stack: the last physical pages, mapped past a gap of StackGuardBytes that nothing maps.
        ulong stackPhysical = nextPhysical + (arenaPages * GuestLayout.PageSize);
        ulong stackBottom = GuestLayout.ArenaBase + (arenaPages * GuestLayout.PageSize) + GuestLayout.StackGuardBytes;
        for (ulong i = 0; i < stackPages; i++)
        {
            writer.Map(stackBottom + (i * GuestLayout.PageSize), stackPhysical + (i * GuestLayout.PageSize), stackFlags);
        }

        mappings.Add(new Mapping(stackBottom, stackPages, stackPhysical, null, stackFlags));

        var space = new AddressSpace([.. mappings], writer.Root, nextPhysical, arenaPages, stackPages, image.Extent.End, tablePages + regionTablePages)
        {
            RegionTablePool = regionTablePool,
            RegionTablePages = regionTablePages,
            ArenaFlags = arenaFlags,
        };

        // Segment contents: file bytes, the rest stays zero (fresh guest RAM is zero).
        foreach (var s in image.Segments)
        {
            if (s.FileSize > 0 && !space.TryWriteUser(s.VirtualAddress, image.File.AsSpan((int)s.FileOffset, (int)s.FileSize), memory, ignorePermissions: true))
            {
                throw new InvalidOperationException("A segment did not land in its own mapping.");
            }
        }

        return space;
    }

    /// <summary>
    /// The image's pages and their flags, sorted by page number, in two arrays: a sorted dictionary keyed by page number
    /// would be framework generic code over value types (its tree and nodes), which no ReadyToRun image holds and every
    /// sandbox process would compile. Segments come in ascending order in well-formed images, so pages are appended; a
    /// page out of order is found or inserted by binary search.
    /// </summary>
    internal sealed class ImagePages
    {
        private ulong[] _vpns = new ulong[64];
        private PageFlags[] _flags = new PageFlags[64];

        /// <summary>Pages held.</summary>
        public int Count { get; private set; }

        /// <summary>Page number of entry <paramref name="i"/>.</summary>
        public ulong VpnAt(int i) => _vpns[i];

        /// <summary>Adds page <paramref name="vpn"/> with <paramref name="f"/>, or merges <paramref name="f"/> into it: the union of the permissions, NX only when neither has execute.</summary>
        public void Merge(ulong vpn, PageFlags f)
        {
            // The first entry not below vpn: the end when vpn comes after the last (the usual case), else by bisection.
            int at = Count;
            if (Count > 0 && _vpns[Count - 1] >= vpn)
            {
                int lo = 0, hi = Count - 1;
                while (lo < hi)
                {
                    int mid = (lo + hi) >>> 1;
                    if (_vpns[mid] < vpn)
                    {
                        lo = mid + 1;
                    }
                    else
                    {
                        hi = mid;
                    }
                }

                at = lo;
            }

            if (at < Count && _vpns[at] == vpn)
            {
                var existing = _flags[at];
                _flags[at] = ((existing | f) & ~PageFlags.NoExecute) | (existing & f & PageFlags.NoExecute);
                return;
            }

            if (Count == _vpns.Length)
            {
                var vpns = new ulong[Count * 2];
                var flags = new PageFlags[Count * 2];
                Array.Copy(_vpns, vpns, Count);
                Array.Copy(_flags, flags, Count);
                (_vpns, _flags) = (vpns, flags);
            }

            Array.Copy(_vpns, at, _vpns, at + 1, Count - at);
            Array.Copy(_flags, at, _flags, at + 1, Count - at);
            _vpns[at] = vpn;
            _flags[at] = f;
            Count++;
        }

        /// <summary>How many entries from <paramref name="i"/> on are consecutive pages.</summary>
        public int RunLength(int i)
        {
            int n = 1;
            while (i + n < Count && _vpns[i + n] == _vpns[i] + (ulong)n)
            {
                n++;
            }

            return n;
        }

        /// <summary>The flags of entries <paramref name="i"/> to <paramref name="i"/> + <paramref name="n"/>.</summary>
        public PageFlags[] FlagsOf(int i, int n)
        {
            var flags = new PageFlags[n];
            Array.Copy(_flags, i, flags, 0, n);
            return flags;
        }
    }

    /// <summary>Upper bound of page-table pages (PT, PD, PDPT) to map <paramref name="pages"/> pages from <paramref name="vpn"/>.</summary>
    private static ulong TablesFor(ulong vpn, ulong pages)
    {
        ulong last = vpn + pages - 1;
        return ((last >> 9) - (vpn >> 9) + 1) + ((last >> 18) - (vpn >> 18) + 1) + ((last >> 27) - (vpn >> 27) + 1);
    }

    /// <summary>
    /// Translates user virtual address <paramref name="va"/> as a CPL 3 access would, returning the
    /// physical address and the number of bytes that follow it contiguously with the same permission.
    /// </summary>
    public bool TryTranslate(ulong va, bool write, out ulong physical, out ulong contiguous)
    {
        if (Region is not null && Region.Covers(va))
        {
            return Region.TryTranslate(va, out physical, out contiguous);
        }

        foreach (var m in _mappings)
        {
            if (va < m.VirtualStart || va - m.VirtualStart >= m.Pages * GuestLayout.PageSize)
            {
                continue;
            }

            ulong page = (va - m.VirtualStart) / GuestLayout.PageSize;
            var need = PageFlags.Present | PageFlags.User | (write ? PageFlags.Writable : PageFlags.None);
            if ((m.FlagsOf(page) & need) != need)
            {
                break;
            }

            physical = m.PhysicalStart + (va - m.VirtualStart);
            if (m.PerPage is null)
            {
                contiguous = (m.Pages * GuestLayout.PageSize) - (va - m.VirtualStart);
            }
            else
            {
                ulong end = page + 1;
                while (end < m.Pages && (m.PerPage[end] & need) == need)
                {
                    end++;
                }

                contiguous = (end * GuestLayout.PageSize) - (va - m.VirtualStart);
            }

            return true;
        }

        physical = 0;
        contiguous = 0;
        return false;
    }

    /// <summary>Page flags of the user page at <paramref name="va"/>, or <see cref="PageFlags.None"/> when unmapped.</summary>
    public PageFlags FlagsAt(ulong va)
    {
        if (Region is not null && Region.Covers(va))
        {
            return Region.FlagsAt(va);
        }

        foreach (var m in _mappings)
        {
            if (va >= m.VirtualStart && va - m.VirtualStart < m.Pages * GuestLayout.PageSize)
            {
                return m.FlagsOf((va - m.VirtualStart) / GuestLayout.PageSize);
            }
        }

        return PageFlags.None;
    }

    /// <summary>Copies <paramref name="source"/> to user address <paramref name="va"/>; false when any byte is not user-writable.</summary>
    public bool TryWriteUser(ulong va, ReadOnlySpan<byte> source, IGuestMemory memory, bool ignorePermissions = false)
    {
        while (!source.IsEmpty)
        {
            if (!TryTranslate(va, write: !ignorePermissions, out ulong pa, out ulong run))
            {
                return false;
            }

            int n = (int)Math.Min(run, (ulong)source.Length);
            if (!memory.TryWrite(new GuestAddress(pa), source[..n]))
            {
                return false;
            }

            source = source[n..];
            va += (ulong)n;
        }

        return true;
    }

    /// <summary>Copies user memory at <paramref name="va"/> into <paramref name="destination"/>; false when any byte is not user-readable.</summary>
    public bool TryReadUser(ulong va, Span<byte> destination, IGuestMemory memory)
    {
        while (!destination.IsEmpty)
        {
            if (!TryTranslate(va, write: false, out ulong pa, out ulong run))
            {
                return false;
            }

            int n = (int)Math.Min(run, (ulong)destination.Length);
            if (!memory.TryRead(new GuestAddress(pa), destination[..n]))
            {
                return false;
            }

            destination = destination[n..];
            va += (ulong)n;
        }

        return true;
    }

    /// <summary>Writes 4-level page tables into a fixed pool of pages.</summary>
    private sealed class PageTableWriter
    {
        private const PageFlags TableFlags = PageFlags.Present | PageFlags.Writable | PageFlags.User | PageFlags.Accessed;
        private readonly GuestMemory _memory;
        private readonly ulong _end;
        private ulong _next;
        private ulong _cachedRange = ulong.MaxValue;
        private ulong _cachedTable;

        public PageTableWriter(GuestMemory memory, ulong start, ulong pages)
        {
            _memory = memory;
            _next = start;
            _end = start + (pages * GuestLayout.PageSize);
            Root = Allocate();
        }

        public ulong Root { get; }

        public void Map(ulong va, ulong pa, PageFlags flags)
        {
            // Consecutive pages share their last-level table: skip the walk within one 2 MiB range.
            if (va >> 21 == _cachedRange && _cachedTable != 0)
            {
                _memory.Write(new GuestAddress(_cachedTable + ((ulong)PageTable.Index(va, 1) * 8)), pa | (ulong)flags);
                return;
            }

            ulong table = Root;
            for (int level = 4; level > 1; level--)
            {
                var entryAddress = new GuestAddress(table + ((ulong)PageTable.Index(va, level) * 8));
                ulong entry = _memory.Read<ulong>(entryAddress);
                if ((entry & (ulong)PageFlags.Present) == 0)
                {
                    // Upper levels allow everything; the leaf decides. A supervisor leaf is never user-reachable.
                    entry = Allocate() | (ulong)TableFlags;
                    _memory.Write(entryAddress, entry);
                }

                table = entry & PageTable.AddressMask;
            }

            _memory.Write(new GuestAddress(table + ((ulong)PageTable.Index(va, 1) * 8)), pa | (ulong)flags);
            _cachedRange = va >> 21;
            _cachedTable = table;
        }

        private ulong Allocate()
        {
            if (_next >= _end)
            {
                throw new InvalidOperationException("Page-table pool exhausted: the size estimate is wrong.");
            }

            ulong page = _next;
            _next += GuestLayout.PageSize;
            return page;
        }
    }
}
