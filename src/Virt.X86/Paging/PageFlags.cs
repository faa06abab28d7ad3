namespace Virt.X86;

/// <summary>
/// Bits of a page-table entry at any level (Intel SDM vol. 3, 4.3-4.5; AMD APM vol. 2, 5.4). 32-bit paging uses
/// the low 12 of them; PAE, 4-level and 5-level paging entries are 64 bits wide, with the physical address in
/// <see cref="PageTable.AddressMask"/>.
/// </summary>
[Flags]
#pragma warning disable CA1028 // Entries are 64 bits wide and NX is bit 63.
public enum PageFlags : ulong
#pragma warning restore CA1028
{
    /// <summary>No bits.</summary>
    None = 0,

    /// <summary>P (bit 0): the entry maps something; clear, every other bit is ignored and an access faults.</summary>
    Present = 1UL << 0,

    /// <summary>R/W (bit 1): writes allowed; CR0.WP makes it bind supervisor writes too.</summary>
    Writable = 1UL << 1,

    /// <summary>U/S (bit 2): CPL 3 may access; needed at every level of the walk.</summary>
    User = 1UL << 2,

    /// <summary>PWT (bit 3): write-through caching for the page (or the next table).</summary>
    WriteThrough = 1UL << 3,

    /// <summary>PCD (bit 4): caching disabled for the page (or the next table).</summary>
    CacheDisable = 1UL << 4,

    /// <summary>A (bit 5): set by the processor when the walk uses the entry; preset it to keep the processor from writing the tables.</summary>
    Accessed = 1UL << 5,

    /// <summary>D (bit 6): set by the processor on the first write through a leaf entry; preset on writable pages for the same reason.</summary>
    Dirty = 1UL << 6,

    /// <summary>PS (bit 7): in a PDE or PDPTE, the entry maps a large page (4 MiB, 2 MiB or 1 GiB) instead of pointing to a table.</summary>
    PageSize = 1UL << 7,

    /// <summary>G (bit 8): in a leaf, the translation survives CR3 writes when CR4.PGE is set.</summary>
    Global = 1UL << 8,

    /// <summary>XD/NX (bit 63): instruction fetches fault; honoured only with EFER.NXE, otherwise the bit is reserved.</summary>
    NoExecute = 1UL << 63,
}
