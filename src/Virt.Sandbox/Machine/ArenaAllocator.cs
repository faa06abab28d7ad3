using Virt.Memory;

namespace Virt.Sandbox.Machine;

/// <summary>
/// Hands out heap pages for <c>brk</c> and anonymous <c>mmap</c>. The heap is already mapped (see
/// <see cref="AddressSpace"/>); this class only decides which pages belong to the program, so the memory
/// limit holds: when no free run is left, the caller gets <c>ENOMEM</c>. Pages are zeroed when handed out
/// again, as anonymous memory must be. The stack is not the allocator's: it has its own mapping above an
/// unmapped guard gap.
/// </summary>
internal sealed class ArenaAllocator
{
    private readonly GuestMemory _memory;
    private readonly ulong _physical;
    private bool[] _used;
    private bool[] _mayBeDirty;
    private readonly bool[] _pinned;

    /// <summary>Creates the allocator over <paramref name="pages"/> heap pages at guest physical <paramref name="physical"/>.</summary>
    public ArenaAllocator(GuestMemory memory, ulong physical, ulong pages)
    {
        _memory = memory;
        _physical = physical;
        _used = new bool[pages];
        _mayBeDirty = new bool[pages];
        _pinned = new bool[pages];
        BreakStart = BreakEnd = GuestLayout.ArenaBase;
    }

    /// <summary>Heap pages.</summary>
    public ulong Pages => (ulong)_used.Length;

    /// <summary>Pages handed to the program now.</summary>
    public int UsedPages { get; private set; }

    /// <summary>Most pages handed to the program at once.</summary>
    public int PeakPages { get; private set; }

    /// <summary>Whether a request was refused because the arena was full.</summary>
    public bool LimitReached { get; set; }

    /// <summary>The initial program break.</summary>
    public ulong BreakStart { get; }

    /// <summary>The current program break.</summary>
    public ulong BreakEnd { get; private set; }

    /// <summary>Virtual end of the heap (the guard gap below the stack starts here).</summary>
    public ulong End => GuestLayout.ArenaBase + (Pages * GuestLayout.PageSize);

    /// <summary>A copy of the allocation state (for snapshots).</summary>
    public State Save() => new((bool[])_used.Clone(), (bool[])_mayBeDirty.Clone(), BreakEnd, UsedPages, PeakPages, LimitReached, Region?.Save());

    /// <summary>The reserved region whose pages this allocator pins (saved and restored with the allocator's state).</summary>
    public ReservedRegion? Region { get; set; }

    /// <summary>Returns to a saved state.</summary>
    public void Restore(State s)
    {
        ArgumentNullException.ThrowIfNull(s);
        _used = (bool[])s.Used.Clone();
        _mayBeDirty = (bool[])s.MayBeDirty.Clone();
        BreakEnd = s.BreakEnd;
        UsedPages = s.UsedPages;
        PeakPages = s.PeakPages;
        LimitReached = s.LimitReached;

        // Pages pinned to the reserved region since the snapshot stay taken: their bindings outlive a reset.
        for (int p = 0; p < _pinned.Length; p++)
        {
            if (_pinned[p] && !_used[p])
            {
                _used[p] = _mayBeDirty[p] = true;
                UsedPages++;
            }
        }

        PeakPages = Math.Max(PeakPages, UsedPages);
        if (s.Region is not null)
        {
            Region?.Restore(s.Region);
        }
    }

    /// <summary>Guest physical addresses of the pages handed out now.</summary>
    public IEnumerable<ulong> UsedPhysicalPages()
    {
        for (int p = 0; p < _used.Length; p++)
        {
            if (_used[p])
            {
                yield return _physical + ((ulong)p * GuestLayout.PageSize);
            }
        }
    }

    /// <summary>Every free page may hold another process's bytes: each is zeroed before it is handed out.</summary>
    public void MarkFreePagesMayBeDirty()
    {
        for (int p = 0; p < _used.Length; p++)
        {
            if (!_used[p])
            {
                _mayBeDirty[p] = true;
            }
        }
    }

    /// <summary>Saved allocation state.</summary>
    internal sealed record State(bool[] Used, bool[] MayBeDirty, ulong BreakEnd, int UsedPages, int PeakPages, bool LimitReached, ReservedRegion.State? Region);

    /// <summary>Linux <c>brk</c>: moves the break when the pages are free, and returns the (possibly unchanged) break.</summary>
    public ulong Brk(ulong requested)
    {
        if (requested < BreakStart || requested > End)
        {
            return BreakEnd;
        }

        ulong oldPage = PageIndex(BreakEnd + GuestLayout.PageSize - 1);
        ulong newPage = PageIndex(requested + GuestLayout.PageSize - 1);
        if (newPage > oldPage)
        {
            for (ulong p = oldPage; p < newPage; p++)
            {
                if (_used[p])
                {
                    LimitReached = true;
                    return BreakEnd;
                }
            }

            Take(oldPage, newPage - oldPage);
        }
        else if (newPage < oldPage)
        {
            Release(newPage, oldPage - newPage);
        }

        BreakEnd = requested;
        return BreakEnd;
    }

    /// <summary>Allocates <paramref name="pages"/> pages at the highest free run of the heap; 0 when none.</summary>
    public ulong Allocate(ulong pages)
    {
        if (pages == 0 || pages > Pages)
        {
            LimitReached |= pages > Pages;
            return 0;
        }

        ulong floor = PageIndex(BreakEnd + GuestLayout.PageSize - 1);
        ulong run = 0;
        for (ulong p = Pages; p-- > floor;)
        {
            run = _used[p] ? 0 : run + 1;
            if (run == pages)
            {
                Take(p, pages);
                return GuestLayout.ArenaBase + (p * GuestLayout.PageSize);
            }
        }

        LimitReached = true;
        return 0;
    }

    /// <summary>
    /// Allocates <paramref name="pages"/> pages (zeroed) for the reserved region, which binds them to its own virtual
    /// pages for the sandbox's lifetime: they are never freed nor handed out again, even by a reset. 0 when none.
    /// </summary>
    public ulong AllocatePinned(ulong pages)
    {
        ulong at = Allocate(pages);
        if (at != 0)
        {
            for (ulong p = PageIndex(at); p < PageIndex(at) + pages; p++)
            {
                _pinned[p] = true;
            }
        }

        return at;
    }

    /// <summary>Guest physical address of heap address <paramref name="address"/>.</summary>
    public ulong PhysicalOf(ulong address) => _physical + (address - GuestLayout.ArenaBase);

    /// <summary>Allocates exactly <c>[address, address + pages)</c> (MAP_FIXED), replacing what was there.</summary>
    public bool AllocateAt(ulong address, ulong pages)
    {
        if (!Contains(address, pages))
        {
            return false;
        }

        ulong first = PageIndex(address);
        Release(first, pages);
        Take(first, pages);
        return true;
    }

    /// <summary>Grows the run at <paramref name="address"/> from <paramref name="oldPages"/> to <paramref name="newPages"/> in place when the pages after it are free.</summary>
    public bool TryGrowInPlace(ulong address, ulong oldPages, ulong newPages)
    {
        if (!Contains(address, newPages))
        {
            return false;
        }

        ulong first = PageIndex(address);
        for (ulong p = first + oldPages; p < first + newPages; p++)
        {
            if (_used[p])
            {
                return false;
            }
        }

        Take(first + oldPages, newPages - oldPages);
        return true;
    }

    /// <summary>Frees the heap pages of <c>[address, address + pages)</c>; pages outside the heap are ignored.</summary>
    public void Free(ulong address, ulong pages)
    {
        if (address < GuestLayout.ArenaBase)
        {
            ulong skip = (GuestLayout.ArenaBase - address + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
            if (skip >= pages)
            {
                return;
            }

            address += skip * GuestLayout.PageSize;
            pages -= skip;
        }

        ulong first = PageIndex(address);
        if (first >= Pages)
        {
            return;
        }

        Release(first, Math.Min(pages, Pages - first));
    }

    /// <summary>Whether the heap holds <c>[address, address + pages)</c> entirely.</summary>
    public bool Contains(ulong address, ulong pages) =>
        address >= GuestLayout.ArenaBase && (address & 0xFFF) == 0 && PageIndex(address) <= Pages && pages <= Pages - PageIndex(address);

    /// <summary>Whether every page of <c>[address, address + pages)</c> is in the heap and handed to the program.</summary>
    public bool IsAllocated(ulong address, ulong pages)
    {
        if (!Contains(address, pages))
        {
            return false;
        }

        ulong first = PageIndex(address);
        for (ulong p = first; p < first + pages; p++)
        {
            if (!_used[p])
            {
                return false;
            }
        }

        return true;
    }

    private static ulong PageIndex(ulong address) => (address - GuestLayout.ArenaBase) / GuestLayout.PageSize;

    private void Take(ulong first, ulong count)
    {
        for (ulong p = first; p < first + count; p++)
        {
            if (_used[p])
            {
                continue;
            }

            if (_mayBeDirty[p])
            {
                _memory.GetSpan(new GuestAddress(_physical + (p * GuestLayout.PageSize)), (int)GuestLayout.PageSize, forWrite: true).Clear();
            }

            _used[p] = _mayBeDirty[p] = true;
            UsedPages++;
        }

        PeakPages = Math.Max(PeakPages, UsedPages);
    }

    private void Release(ulong first, ulong count)
    {
        for (ulong p = first; p < first + count; p++)
        {
            if (_used[p] && !_pinned[p])
            {
                _used[p] = false;
                UsedPages--;
            }
        }
    }
}
