using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

// The address space: brk, mmap, munmap, mprotect, mremap over the arena allocator (madvise is answered by the table).
internal sealed partial class LinuxAbi
{
    private long Brk(ulong address) => (long)_arena.Brk(address);

    private long Mmap(ulong address, ulong length, int prot, int flags, int fd, ulong offset)
    {
        const int MapShared = 1, MapPrivate = 2, MapFixed = 0x10, MapAnonymous = 0x20, MapFixedNoReplace = 0x100000;
        // A PROT_NONE reservation takes address space only, so it may be larger than the heap.
        bool tooLarge = length > (prot == 0 && (flags & MapAnonymous) != 0 ? ReservedRegion.End - ReservedRegion.Start : _arena.Pages * GuestLayout.PageSize);
        if (tooLarge)
        {
            _arena.LimitReached = true;
            return -Errno.ENOMEM;
        }

        if (length == 0 || (offset & 0xFFF) != 0)
        {
            return -Errno.EINVAL;
        }

        if ((flags & (MapShared | MapPrivate)) == 0)
        {
            return -Errno.EINVAL;
        }

        if ((prot & 4) != 0 && (_space.FlagsAt(GuestLayout.ArenaBase) & PageFlags.NoExecute) != 0)
        {
            // PROT_EXEC: arena pages are never executable (unless the image asked for an executable stack).
            return Count(Sys.Mmap, -Errno.EPERM);
        }

        VfsFile? file = null;
        if ((flags & MapAnonymous) == 0)
        {
            if (!ValidFd(fd) || _state.Fds[fd]!.Kind != FdKind.File)
            {
                return -Errno.EBADF;
            }

            if ((flags & MapShared) != 0 && (prot & 2) != 0)
            {
                return -Errno.EACCES;
            }

            file = _state.Fds[fd]!.Node as VfsFile;
        }

        ulong pages = (length + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        ulong at = MmapInRegion(address, pages, prot, flags, file is not null);
        if (at > unchecked((ulong)-4096L))
        {
            return (long)at;
        }

        if (at == 0 && (flags & (MapFixed | MapFixedNoReplace)) != 0)
        {
            if ((address & 0xFFF) != 0)
            {
                return -Errno.EINVAL;
            }

            if (!_arena.Contains(address, pages))
            {
                return -Errno.ENOMEM;
            }

            _arena.AllocateAt(address, pages);
            at = address;
        }
        else if (at == 0)
        {
            at = _arena.Allocate(pages);
            if (at == 0)
            {
                return -Errno.ENOMEM;
            }
        }

        if (file is not null && offset < (ulong)file.Length)
        {
            int n = (int)Math.Min((ulong)file.Length - offset, pages * GuestLayout.PageSize);
            _space.TryWriteUser(at, file.Content.AsSpan((int)offset, n), _memory);
        }

        return (long)at;
    }

    /// <summary>
    /// The part of <c>mmap</c> that the reserved region serves: <c>MAP_FIXED</c> inside it, and anonymous <c>PROT_NONE</c>
    /// reservations (Go's heap reservations, glibc's thread arenas and stacks), which take address space only. Returns the
    /// address, a negative errno, or 0 when the arena serves the call.
    /// </summary>
    private ulong MmapInRegion(ulong address, ulong pages, int prot, int flags, bool fileBacked)
    {
        const int MapFixed = 0x10, MapFixedNoReplace = 0x100000;
        var region = _space.Region!;
        bool isFixed = (flags & (MapFixed | MapFixedNoReplace)) != 0;
        if (isFixed && region.Contains(address, pages))
        {
            if ((address & 0xFFF) != 0)
            {
                return unchecked((ulong)-Errno.EINVAL);
            }

            if ((flags & MapFixedNoReplace) != 0 && !region.IsFree(address, pages))
            {
                return unchecked((ulong)-Errno.EEXIST);
            }

            return region.MapFixed(address, pages, accessible: prot != 0 || fileBacked) ? address : unchecked((ulong)-Errno.ENOMEM);
        }

        if (!isFixed && prot == 0 && !fileBacked && region.Covers(ReservedRegion.Start))
        {
            ulong at = region.Reserve(address, pages);
            return at != 0 ? at : unchecked((ulong)-Errno.ENOMEM);
        }

        return 0;
    }

    /// <summary>
    /// <c>mprotect</c> over the fixed page tables: a request that takes permissions away is accepted (the pages
    /// keep the access they have, see docs/sandbox.md), one that asks for a permission a page lacks (write on
    /// code, execute on data) is refused with <c>EPERM</c>, as <c>mmap</c> refuses it, and unmapped pages give
    /// <c>ENOMEM</c>, as on Linux.
    /// </summary>
    private long Mprotect(ulong address, ulong length, int prot)
    {
        const int ProtWrite = 2, ProtExec = 4, ProtGrowsDown = 0x0100_0000, ProtGrowsUp = 0x0200_0000;
        if ((address & 0xFFF) != 0 || (prot & ~(7 | ProtGrowsDown | ProtGrowsUp)) != 0 || length > (1UL << 47))
        {
            return -Errno.EINVAL;
        }

        ulong pages = (length + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        if (!GuestLayout.IsUserCanonical(address) || !GuestLayout.IsUserCanonical(address + (pages * GuestLayout.PageSize) - 1))
        {
            return pages == 0 ? 0 : -Errno.ENOMEM;
        }

        var region = _space.Region!;
        if (pages > 0 && region.Contains(address, pages))
        {
            if (!region.IsReserved(address, pages))
            {
                return -Errno.ENOMEM;
            }

            if ((prot & ProtExec) != 0 && (_space.ArenaFlags & PageFlags.NoExecute) != 0)
            {
                return Count(Sys.Mprotect, -Errno.EPERM);
            }

            // Making reserved pages accessible commits them; PROT_NONE keeps what they hold (and, as on the heap, their access).
            return (prot & 7) == 0 || region.Commit(address, pages) ? 0 : -Errno.ENOMEM;
        }

        for (ulong i = 0; i < pages; i++)
        {
            ulong va = address + (i * GuestLayout.PageSize);
            var flags = _space.FlagsAt(va);
            if ((flags & (PageFlags.Present | PageFlags.User)) != (PageFlags.Present | PageFlags.User) ||
                (_arena.Contains(va, 1) && !_arena.IsAllocated(va, 1)))
            {
                return -Errno.ENOMEM;
            }

            if (((prot & ProtWrite) != 0 && (flags & PageFlags.Writable) == 0) || ((prot & ProtExec) != 0 && (flags & PageFlags.NoExecute) != 0))
            {
                return Count(Sys.Mprotect, -Errno.EPERM);
            }
        }

        return 0;
    }

    private long Munmap(ulong address, ulong length)
    {
        if ((address & 0xFFF) != 0 || length == 0 || !GuestLayout.IsUserCanonical(address) || length > (1UL << 47))
        {
            return -Errno.EINVAL;
        }

        ulong pages = (length + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        var region = _space.Region!;
        if (address < ReservedRegion.End && address + (pages * GuestLayout.PageSize) > ReservedRegion.Start && region.Covers(ReservedRegion.Start))
        {
            ulong start = Math.Max(address, ReservedRegion.Start);
            ulong end = Math.Min(address + (pages * GuestLayout.PageSize), ReservedRegion.End);
            region.Unmap(start, (end - start) / GuestLayout.PageSize);
        }

        _arena.Free(address, pages);
        return 0;
    }

    private long Mremap(ulong oldAddress, ulong oldLength, ulong newLength, int flags)
    {
        const int MremapMaymove = 1;
        ulong oldPages = (oldLength + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        ulong newPages = (newLength + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        if ((oldAddress & 0xFFF) != 0 || newPages == 0 || (flags & ~3) != 0 || !_arena.Contains(oldAddress, Math.Max(oldPages, 1)))
        {
            return -Errno.EINVAL;
        }

        if (newPages > _arena.Pages)
        {
            _arena.LimitReached = true;
            return -Errno.ENOMEM;
        }

        if (newPages <= oldPages)
        {
            _arena.Free(oldAddress + (newPages * GuestLayout.PageSize), oldPages - newPages);
            return (long)oldAddress;
        }

        if (_arena.TryGrowInPlace(oldAddress, oldPages, newPages))
        {
            return (long)oldAddress;
        }

        if ((flags & MremapMaymove) == 0)
        {
            return -Errno.ENOMEM;
        }

        ulong at = _arena.Allocate(newPages);
        if (at == 0)
        {
            return -Errno.ENOMEM;
        }

        for (ulong p = 0; p < oldPages; p++)
        {
            var page = _scratch.AsSpan(0, (int)GuestLayout.PageSize);
            if (_space.TryReadUser(oldAddress + (p * GuestLayout.PageSize), page, _memory))
            {
                _space.TryWriteUser(at + (p * GuestLayout.PageSize), page, _memory);
            }
        }

        _arena.Free(oldAddress, oldPages);
        return (long)at;
    }
}
