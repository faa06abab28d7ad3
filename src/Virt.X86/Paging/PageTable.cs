namespace Virt.X86;

/// <summary>Geometry of x86 page tables: page sizes, table indices and the address field of an entry.</summary>
public static class PageTable
{
    /// <summary>Bytes in a page and in a page table.</summary>
    public const ulong PageSize = 4096;

    /// <summary>Bytes in a page mapped by a PDE in PAE, 4-level or 5-level paging (PS set).</summary>
    public const ulong LargePageSize = 2UL << 20;

    /// <summary>Bytes in a page mapped by a PDE in 32-bit paging with CR4.PSE (PS set).</summary>
    public const ulong LargePageSize32 = 4UL << 20;

    /// <summary>Bytes in a page mapped by a PDPTE in 4-level or 5-level paging (PS set).</summary>
    public const ulong HugePageSize = 1UL << 30;

    /// <summary>Offset bits inside a 4 KiB page.</summary>
    public const ulong PageOffsetMask = PageSize - 1;

    /// <summary>Entries in a table of 64-bit entries (9 bits of the linear address per level).</summary>
    public const int EntriesPerTable = 512;

    /// <summary>Physical-address bits 12-51 of a 64-bit entry: the next table, or the page of a 4 KiB leaf.</summary>
    public const ulong AddressMask = 0x000F_FFFF_FFFF_F000;

    /// <summary>
    /// Index into the table at <paramref name="level"/> for <paramref name="linearAddress"/> in PAE, 4-level or
    /// 5-level paging: level 1 is the page table, 2 the page directory, 3 the PDPT, 4 the PML4 and 5 the PML5.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="level"/> is not 1-5.</exception>
    public static int Index(ulong linearAddress, int level)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(level, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(level, 5);
        return (int)((linearAddress >> Shift(level)) & (EntriesPerTable - 1));
    }

    /// <summary>Bytes one entry at <paramref name="level"/> (1-5) covers: 4 KiB, 2 MiB, 1 GiB, 512 GiB or 256 TiB.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="level"/> is not 1-5.</exception>
    public static ulong EntryCoverage(int level)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(level, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(level, 5);
        return 1UL << Shift(level);
    }

    internal static int Shift(int level) => 12 + (9 * (level - 1));
}
