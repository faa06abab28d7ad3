using Virt.Memory;
using Virt.X86;

namespace Virt.Sandbox.Machine;

/// <summary>
/// Address space that a program reserves without using it yet: <c>mmap(PROT_NONE)</c> ranges (Go reserves hundreds of
/// MiB for its heap index and 64 MiB heap arenas at once, glibc its thread arenas and thread stacks) live here, between
/// the program image and the arena, and cost no RAM until a part of them is made accessible (<c>mmap</c> with
/// <c>MAP_FIXED</c> or <c>mprotect</c>). A committed page is then bound to a heap page taken from the
/// <see cref="ArenaAllocator"/> (so the memory limit holds) and its page-table entry is written.
/// </summary>
/// <remarks>
/// The tables of the rest of the address space stay fixed (see <see cref="AddressSpace"/>). Here entries only ever go
/// from not present to present, which no TLB nor shadow page table caches, and a binding of a virtual page to a
/// physical page, like a table page's place in the hierarchy, is kept for the sandbox's lifetime: a page unmapped and
/// mapped again gets the same physical page back (zeroed), and a reset writes the same entries again. So no cached
/// translation, hardware or shadow, can ever disagree with the tables. What is not enforced, as for the rest of the
/// heap: a committed page that the program unmaps or protects with <c>PROT_NONE</c> stays accessible.
/// </remarks>
internal sealed class ReservedRegion
{
    /// <summary>Lowest address of the region (512 GiB: the first top-level entry, which holds the image, is not shared).</summary>
    public const ulong Start = 0x0000_0080_0000_0000;

    /// <summary>End of the region (the arena's base).</summary>
    public const ulong End = GuestLayout.ArenaBase;

    private const PageFlags TableFlags = PageFlags.Present | PageFlags.Writable | PageFlags.User | PageFlags.Accessed;
    private readonly GuestMemory _memory;
    private readonly ArenaAllocator _arena;
    private readonly ulong _root;
    private readonly PageFlags _leafFlags;
    private readonly ulong _tablePoolEnd;
    private readonly Dictionary<(int Level, ulong Prefix), ulong> _tables = [];
    private readonly Dictionary<ulong, ulong> _bindings = [];
    private readonly bool _enabled;
    private ulong _nextTable;
    private RangeList _reserved = new();
    private HashSet<ulong> _committed = [];
    private ulong _cursor = End;

    /// <summary>Creates the region over the page-table pages <c>[tablePool, tablePool + tablePages)</c>.</summary>
    public ReservedRegion(GuestMemory memory, ArenaAllocator arena, ulong root, ulong tablePool, ulong tablePages, PageFlags leafFlags, bool enabled)
    {
        _memory = memory;
        _arena = arena;
        _root = root;
        _nextTable = tablePool;
        _tablePoolEnd = tablePool + (tablePages * GuestLayout.PageSize);
        _leafFlags = leafFlags;
        _enabled = enabled;
    }

    /// <summary>Pages committed now.</summary>
    public int CommittedPages => _committed.Count;

    /// <summary>Whether <c>[address, address + pages)</c> lies inside the region.</summary>
    public bool Contains(ulong address, ulong pages) =>
        _enabled && address >= Start && address < End && pages <= (End - address) / GuestLayout.PageSize;

    /// <summary>Whether <paramref name="address"/> lies inside the region.</summary>
    public bool Covers(ulong address) => _enabled && address >= Start && address < End;

    /// <summary>
    /// Reserves <paramref name="pages"/> pages without RAM: at <paramref name="hint"/> when that range is free and inside
    /// the region (Linux honours a free hint too), else below the lowest reservation made so far. 0 when there is no room.
    /// </summary>
    public ulong Reserve(ulong hint, ulong pages)
    {
        if (!_enabled || pages == 0)
        {
            return 0;
        }

        ulong bytes = pages * GuestLayout.PageSize;
        if ((hint & 0xFFF) == 0 && Contains(hint, pages) && IsFreeBytes(hint, bytes))
        {
            Add(hint, bytes);
            return hint;
        }

        // Top-down below the lowest reservation, then first fit from the top among the gaps.
        if (_cursor - Start >= bytes && IsFreeBytes(_cursor - bytes, bytes))
        {
            _cursor -= bytes;
            Add(_cursor, bytes);
            return _cursor;
        }

        ulong top = End;
        for (int k = _reserved.Count - 1; k >= 0; k--)
        {
            var (start, end) = (_reserved.StartAt(k), _reserved.EndAt(k));
            if (top - end >= bytes)
            {
                Add(top - bytes, bytes);
                return top - bytes;
            }

            top = start;
        }

        if (top - Start >= bytes)
        {
            Add(top - bytes, bytes);
            return top - bytes;
        }

        return 0;
    }

    /// <summary>
    /// <c>mmap(MAP_FIXED)</c> inside the region: the range becomes reserved (replacing what was there), and accessible
    /// ones are committed with zeroed pages. False when the heap has no pages left for it (<c>ENOMEM</c>).
    /// </summary>
    public bool MapFixed(ulong address, ulong pages, bool accessible)
    {
        Uncommit(address, pages);
        Add(address, pages * GuestLayout.PageSize);
        return !accessible || Commit(address, pages);
    }

    /// <summary>Whether every page of the range is reserved (mapped in any way).</summary>
    public bool IsReserved(ulong address, ulong pages)
    {
        ulong end = address + (pages * GuestLayout.PageSize);
        ulong at = address;
        for (int k = 0; k < _reserved.Count; k++)
        {
            var (start, stop) = (_reserved.StartAt(k), _reserved.EndAt(k));
            if (stop <= at)
            {
                continue;
            }

            if (start > at)
            {
                return false;
            }

            at = stop;
            if (at >= end)
            {
                return true;
            }
        }

        return at >= end;
    }

    /// <summary>Commits the pages of a reserved range that are not committed yet (<c>mprotect</c> to an accessible protection).</summary>
    public bool Commit(ulong address, ulong pages)
    {
        // Every committed page needs a heap page: more than the heap holds can never succeed (and is not walked page by page).
        if (pages > _arena.Pages)
        {
            _arena.LimitReached = true;
            return false;
        }

        // Bind the pages that have no physical page yet, in runs, so a committed range is physically contiguous where it can be.
        ulong p = 0;
        while (p < pages)
        {
            ulong vpn = (address >> 12) + p;
            if (_bindings.ContainsKey(vpn))
            {
                p++;
                continue;
            }

            ulong run = 1;
            while (p + run < pages && !_bindings.ContainsKey(vpn + run))
            {
                run++;
            }

            if (!Bind(vpn, run))
            {
                return false;
            }

            p += run;
        }

        for (p = 0; p < pages; p++)
        {
            ulong vpn = (address >> 12) + p;
            if (_committed.Add(vpn))
            {
                // A page committed again starts zeroed, as fresh anonymous memory does.
                _memory.GetSpan(new GuestAddress(_bindings[vpn]), (int)GuestLayout.PageSize, forWrite: true).Clear();
            }
        }

        return true;
    }

    /// <summary><c>munmap</c> inside the region: the pages stop being reserved or committed (their binding stays).</summary>
    public void Unmap(ulong address, ulong pages)
    {
        Uncommit(address, pages);
        Remove(address, address + (pages * GuestLayout.PageSize));
    }

    /// <summary>The physical address of a committed user page and the bytes that follow contiguously; false when not committed.</summary>
    public bool TryTranslate(ulong va, out ulong physical, out ulong contiguous)
    {
        ulong vpn = va >> 12;
        if (!_committed.Contains(vpn) || !_bindings.TryGetValue(vpn, out ulong pa))
        {
            physical = contiguous = 0;
            return false;
        }

        physical = pa + (va & 0xFFF);
        contiguous = GuestLayout.PageSize - (va & 0xFFF);
        while (_committed.Contains(vpn + 1) && _bindings.TryGetValue(vpn + 1, out ulong next) && next == pa + GuestLayout.PageSize && contiguous < (1UL << 24))
        {
            vpn++;
            pa = next;
            contiguous += GuestLayout.PageSize;
        }

        return true;
    }

    /// <summary>Page flags of a region page as the program may use it: the leaf flags when committed, none otherwise.</summary>
    public PageFlags FlagsAt(ulong va) => _committed.Contains(va >> 12) ? _leafFlags : PageFlags.None;

    /// <summary>Reserved ranges, with whether their first page is committed, for <c>/proc/self/maps</c>.</summary>
    public IEnumerable<(ulong Start, ulong End, bool Committed)> Ranges()
    {
        var committed = _committed.Order().ToArray();
        for (int k = 0; k < _reserved.Count; k++)
        {
            var (start, end) = (_reserved.StartAt(k), _reserved.EndAt(k));
            // Walk the committed pages inside the range, not the range itself (it may span terabytes).
            ulong at = start;
            int i = Array.BinarySearch(committed, start >> 12);
            i = i < 0 ? ~i : i;
            while (i < committed.Length && committed[i] < end >> 12)
            {
                ulong runStart = committed[i] << 12;
                while (i + 1 < committed.Length && committed[i + 1] == committed[i] + 1 && committed[i + 1] < end >> 12)
                {
                    i++;
                }

                ulong runEnd = (committed[i] + 1) << 12;
                if (runStart > at)
                {
                    yield return (at, runStart, false);
                }

                yield return (runStart, runEnd, true);
                at = runEnd;
                i++;
            }

            if (at < end)
            {
                yield return (at, end, false);
            }
        }
    }

    /// <summary>The reservation state (bindings and tables are for the sandbox's lifetime and are not part of it).</summary>
    public State Save() => new(_reserved.Clone(), [.. _committed], _cursor);

    /// <summary>Returns to a saved state and writes every binding's entries again (a reset restores the table pages).</summary>
    public void Restore(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        _reserved = state.Reserved.Clone();
        _committed = [.. state.Committed];
        _cursor = state.Cursor;
        foreach (var (vpn, pa) in _bindings)
        {
            WriteEntry(vpn << 12, pa);
        }
    }

    /// <summary>Saved reservation state.</summary>
    internal sealed record State(RangeList Reserved, HashSet<ulong> Committed, ulong Cursor);

    private bool Bind(ulong vpn, ulong run)
    {
        // Page tables needed for the run, from the pool; refuse before taking heap pages if the pool cannot hold them.
        ulong needed = 0;
        for (ulong v = vpn; v < vpn + run; v = ((v >> 9) + 1) << 9)
        {
            for (int level = 3; level >= 1; level--)
            {
                int shift = 9 * level;
                if (!_tables.ContainsKey((level, v >> shift)))
                {
                    needed++;
                }
            }
        }

        if (_nextTable + (needed * GuestLayout.PageSize) > _tablePoolEnd)
        {
            _arena.LimitReached = true;
            return false;
        }

        // Physically contiguous when the heap has such a run, else page by page.
        ulong va = _arena.AllocatePinned(run);
        if (va != 0)
        {
            for (ulong i = 0; i < run; i++)
            {
                BindOne(vpn + i, _arena.PhysicalOf(va + (i * GuestLayout.PageSize)));
            }

            return true;
        }

        for (ulong i = 0; i < run; i++)
        {
            ulong one = _arena.AllocatePinned(1);
            if (one == 0)
            {
                return false;
            }

            BindOne(vpn + i, _arena.PhysicalOf(one));
        }

        return true;
    }

    private void BindOne(ulong vpn, ulong pa)
    {
        _bindings[vpn] = pa;
        WriteEntry(vpn << 12, pa);
    }

    /// <summary>Writes the entries from the root down to <paramref name="va"/>'s leaf (the same tables every time).</summary>
    private void WriteEntry(ulong va, ulong pa)
    {
        ulong table = _root;
        for (int level = 4; level > 1; level--)
        {
            int childLevel = level - 1;
            var key = (childLevel, va >> (12 + (9 * childLevel)));
            if (!_tables.TryGetValue(key, out ulong child))
            {
                child = _nextTable;
                _nextTable += GuestLayout.PageSize;
                _memory.GetSpan(new GuestAddress(child), (int)GuestLayout.PageSize, forWrite: true).Clear();
                _tables[key] = child;
            }

            _memory.Write(new GuestAddress(table + ((ulong)PageTable.Index(va, level) * 8)), child | (ulong)TableFlags);
            table = child;
        }

        _memory.Write(new GuestAddress(table + ((ulong)PageTable.Index(va, 1) * 8)), pa | (ulong)_leafFlags);
    }

    private void Uncommit(ulong address, ulong pages)
    {
        ulong first = address >> 12;
        if (pages > (ulong)_committed.Count)
        {
            // A range larger than what is committed (a reservation can span terabytes): walk the committed pages instead.
            _committed.RemoveWhere(v => v >= first && v - first < pages);
            return;
        }

        for (ulong p = 0; p < pages; p++)
        {
            _committed.Remove(first + p);
        }
    }

    /// <summary>Whether no page of <c>[address, address + pages)</c> is reserved.</summary>
    public bool IsFree(ulong address, ulong pages) => IsFreeBytes(address, pages * GuestLayout.PageSize);

    private bool IsFreeBytes(ulong address, ulong bytes)
    {
        ulong end = address + bytes;
        for (int k = 0; k < _reserved.Count; k++)
        {
            if (_reserved.Overlaps(k, address, end))
            {
                return false;
            }
        }

        return true;
    }

    private void Add(ulong address, ulong bytes)
    {
        ulong start = address, end = address + bytes;
        Remove(start, end);
        _reserved.Insert(start, end);
        _cursor = Math.Min(_cursor, start);
    }

    private void Remove(ulong start, ulong end)
    {
        // Ranges are disjoint and sorted: the overlapping ones are consecutive. Each is cut to what lies outside
        // [start, end): the part below stays in its place, the part above (if any) is inserted after it.
        for (int k = 0; k < _reserved.Count; k++)
        {
            if (!_reserved.Overlaps(k, start, end))
            {
                continue;
            }

            ulong s = _reserved.StartAt(k), e = _reserved.EndAt(k);
            _reserved.RemoveAt(k);
            if (s < start)
            {
                _reserved.Insert(s, start);
                k++;
            }

            if (e > end)
            {
                _reserved.Insert(end, e);
                k++;
            }

            k--;
        }
    }

    /// <summary>
    /// Disjoint ranges <c>[start, end)</c> sorted by start, in two arrays. A sorted dictionary over <see langword="ulong"/>
    /// keys would be framework generic code over value types (its tree and nodes), which no ReadyToRun image holds and
    /// every sandbox process would compile; a program reserves a few dozen ranges at most, so inserts that shift
    /// elements cost nothing.
    /// </summary>
    internal sealed class RangeList
    {
        private ulong[] _starts = new ulong[8];
        private ulong[] _ends = new ulong[8];

        /// <summary>Ranges held.</summary>
        public int Count { get; private set; }

        /// <summary>Start of range <paramref name="k"/>.</summary>
        public ulong StartAt(int k) => _starts[k];

        /// <summary>End (exclusive) of range <paramref name="k"/>.</summary>
        public ulong EndAt(int k) => _ends[k];

        /// <summary>Whether range <paramref name="k"/> shares an address with <c>[start, end)</c>.</summary>
        public bool Overlaps(int k, ulong start, ulong end) => _starts[k] < end && start < _ends[k];

        /// <summary>Adds <c>[start, end)</c>, which overlaps no range held, in its place.</summary>
        public void Insert(ulong start, ulong end)
        {
            if (Count == _starts.Length)
            {
                // Array.Copy rather than Array.Resize, which is generic (compiled for ulong in every process that grows it).
                var starts = new ulong[Count * 2];
                var ends = new ulong[Count * 2];
                Array.Copy(_starts, starts, Count);
                Array.Copy(_ends, ends, Count);
                (_starts, _ends) = (starts, ends);
            }

            int k = Count;
            while (k > 0 && _starts[k - 1] > start)
            {
                _starts[k] = _starts[k - 1];
                _ends[k] = _ends[k - 1];
                k--;
            }

            _starts[k] = start;
            _ends[k] = end;
            Count++;
        }

        /// <summary>Removes range <paramref name="k"/>.</summary>
        public void RemoveAt(int k)
        {
            Array.Copy(_starts, k + 1, _starts, k, Count - k - 1);
            Array.Copy(_ends, k + 1, _ends, k, Count - k - 1);
            Count--;
        }

        /// <summary>A copy (saved states keep their own).</summary>
        public RangeList Clone() => new() { _starts = (ulong[])_starts.Clone(), _ends = (ulong[])_ends.Clone(), Count = Count };
    }
}
