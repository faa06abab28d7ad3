namespace Virt.X86;

/// <summary>How a page walk ended.</summary>
public enum PageWalkStatus
{
    /// <summary>The address translates and the access is allowed.</summary>
    Translated,

    /// <summary>An entry on the way had P clear: #PF with P = 0.</summary>
    NotPresent,

    /// <summary>The address translates but the access is not allowed (U/S, R/W with CR0.WP, XD, SMEP or SMAP): #PF with P = 1.</summary>
    ProtectionViolation,

    /// <summary>An entry had a reserved bit set: #PF with P = 1 and RSVD = 1.</summary>
    ReservedBitSet,

    /// <summary>
    /// A table entry lies outside guest memory (a guest pointed its tables at nothing). A processor would read
    /// whatever the bus returns there; the walk reports it as a not-present fault.
    /// </summary>
    TableOutsideMemory,

    /// <summary>The linear address is not canonical for the paging mode: the processor raises #GP (or #SS), not #PF.</summary>
    NonCanonical,
}
