using Virt.Memory;
using Virt.Sandbox.Loader;

namespace Virt.Sandbox.Machine;

/// <summary>
/// Time-shares guest RAM between the program's processes. All processes run the same executable, so they have the same
/// page tables; what differs is the contents of the image, heap and stack pages. The process on the vCPU has its pages in
/// RAM; a process off the vCPU keeps a host copy of the pages it uses (all-zero pages as a mark only), and the heap
/// allocator's state. Switching copies the incoming process's pages in; heap pages it does not hold are zeroed before its
/// allocator hands them out, so no process sees another's bytes through fresh memory.
/// </summary>
internal sealed class ProcessMemory(GuestMemory memory, AddressSpace space, ArenaAllocator arena, ElfImage image)
{
    private const int PageSize = (int)GuestLayout.PageSize;
    private readonly ArenaAllocator.State _fresh = arena.Save();

    /// <summary>A process's memory while it is off the vCPU.</summary>
    private sealed record Image(Dictionary<ulong, byte[]?> Pages, ArenaAllocator.State Arena);

    /// <summary>A copy of the memory of the process on the vCPU (fork's child starts from it; a switch keeps it).</summary>
    public object Save()
    {
        var pages = new Dictionary<ulong, byte[]?>();
        foreach (var (start, count) in space.ImageAndStackPhysical())
        {
            for (ulong i = 0; i < count; i++)
            {
                Keep(pages, start + (i * GuestLayout.PageSize));
            }
        }

        foreach (var pa in arena.UsedPhysicalPages())
        {
            Keep(pages, pa);
        }

        return new Image(pages, arena.Save());
    }

    private void Keep(Dictionary<ulong, byte[]?> pages, ulong pa)
    {
        var page = memory.GetSpan(new GuestAddress(pa), PageSize, forWrite: false);
        pages[pa] = page.IndexOfAnyExcept((byte)0) < 0 ? null : page.ToArray();
    }

    /// <summary>Puts a saved process's memory back into RAM.</summary>
    public void Load(object saved)
    {
        var s = (Image)saved;
        foreach (var (pa, data) in s.Pages)
        {
            var target = memory.GetSpan(new GuestAddress(pa), PageSize, forWrite: false);
            if (data is null ? target.IndexOfAnyExcept((byte)0) < 0 : target.SequenceEqual(data))
            {
                continue;
            }

            target = memory.GetSpan(new GuestAddress(pa), PageSize, forWrite: true);
            if (data is null)
            {
                target.Clear();
            }
            else
            {
                data.CopyTo(target);
            }
        }

        arena.Restore(s.Arena);
        arena.MarkFreePagesMayBeDirty();
    }

    /// <summary>execve: the calling process's memory becomes a fresh load of the executable (segments, zero stack, empty heap).</summary>
    public void Reload()
    {
        foreach (var (start, count) in space.ImageAndStackPhysical())
        {
            for (ulong i = 0; i < count; i++)
            {
                var page = memory.GetSpan(new GuestAddress(start + (i * GuestLayout.PageSize)), PageSize, forWrite: false);
                if (page.IndexOfAnyExcept((byte)0) >= 0)
                {
                    memory.GetSpan(new GuestAddress(start + (i * GuestLayout.PageSize)), PageSize, forWrite: true).Clear();
                }
            }
        }

        foreach (var s in image.Segments)
        {
            if (s.FileSize > 0 && !space.TryWriteUser(s.VirtualAddress, image.File.AsSpan((int)s.FileOffset, (int)s.FileSize), memory, ignorePermissions: true))
            {
                throw new InvalidOperationException("A segment did not land in its own mapping.");
            }
        }

        arena.Restore(_fresh);
        arena.MarkFreePagesMayBeDirty();
    }
}
