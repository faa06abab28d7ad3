using Virt.Memory;

namespace Virt.X86.Tests.Paging;

/// <summary>Hand-builds page tables in guest memory: 8-byte entries for PAE, 4-level and 5-level paging, 4-byte ones for 32-bit paging.</summary>
internal sealed class TableBuilder(GuestMemory memory, ulong firstTable = 0x10000)
{
    /// <summary>Flags on intermediate entries unless a test says otherwise: everything allowed, the leaf decides.</summary>
    public const PageFlags Open = PageFlags.Present | PageFlags.Writable | PageFlags.User;

    private ulong _next = firstTable;

    public GuestMemory Memory { get; } = memory;

    public ulong NewTable()
    {
        ulong table = _next;
        _next += PageTable.PageSize;
        Memory.Write(new GuestAddress(table), new byte[PageTable.PageSize]);
        return table;
    }

    /// <summary>
    /// Maps <paramref name="linear"/> to <paramref name="physical"/> under the root <paramref name="root"/> of a
    /// <paramref name="levels"/>-level hierarchy (2 for the directories under a PAE PDPTE), with a leaf at
    /// <paramref name="leafLevel"/> (1: 4 KiB, 2: 2 MiB, 3: 1 GiB). <paramref name="upper"/> is OR-ed into every
    /// intermediate entry the walk passes, replacing <see cref="Open"/> when given.
    /// </summary>
    public void Map(ulong root, int levels, ulong linear, ulong physical, PageFlags leaf, int leafLevel = 1, PageFlags? upper = null)
    {
        ulong table = root;
        for (int level = levels; level > leafLevel; level--)
        {
            var at = new GuestAddress(table + ((ulong)PageTable.Index(linear, level) * 8));
            ulong entry = Memory.Read<ulong>(at);
            if ((entry & (ulong)PageFlags.Present) == 0)
            {
                entry = NewTable() | (ulong)(upper ?? Open);
                Memory.Write(at, entry);
            }
            else if (upper is { } u)
            {
                entry = (entry & PageTable.AddressMask) | (ulong)u;
                Memory.Write(at, entry);
            }

            table = entry & PageTable.AddressMask;
        }

        ulong large = leafLevel > 1 ? (ulong)PageFlags.PageSize : 0;
        Memory.Write(new GuestAddress(table + ((ulong)PageTable.Index(linear, leafLevel) * 8)), physical | (ulong)leaf | large);
    }

    /// <summary>A PAE page-directory-pointer table (32-byte aligned, four entries) whose entry for <paramref name="linear"/> points to a new directory.</summary>
    public (ulong Cr3, ulong Directory) PaeRoot(ulong linear, ulong pdpteFlags = 1)
    {
        ulong pdpt = NewTable();
        ulong directory = NewTable();
        Memory.Write(new GuestAddress(pdpt + (((linear >> 30) & 3) * 8)), directory | pdpteFlags);
        return (pdpt, directory);
    }

    /// <summary>Writes a 4-byte entry (32-bit paging).</summary>
    public void Write32(ulong table, ulong index, uint entry) => Memory.Write(new GuestAddress(table + (index * 4)), entry);
}
