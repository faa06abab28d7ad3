namespace Virt.X86;

/// <summary>The paging mode that CR0.PG, CR4.PAE, CR4.LA57 and EFER.LMA select (Intel SDM vol. 3, 4.1.1).</summary>
public enum PagingMode
{
    /// <summary>CR0.PG clear: linear addresses are physical addresses (32 bits wide).</summary>
    Disabled,

    /// <summary>32-bit paging: two levels of 4-byte entries, 4 MiB pages with CR4.PSE, no NX.</summary>
    Legacy32,

    /// <summary>PAE paging: a 4-entry PDPT and two levels of 8-byte entries over 32-bit linear addresses.</summary>
    Pae,

    /// <summary>4-level paging (long mode): PML4, PDPT, PD and PT over 48-bit canonical linear addresses.</summary>
    FourLevel,

    /// <summary>5-level paging (long mode with CR4.LA57): a PML5 above the PML4, 57-bit canonical linear addresses.</summary>
    FiveLevel,
}
