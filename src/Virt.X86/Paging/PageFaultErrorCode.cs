namespace Virt.X86;

/// <summary>The error code a #PF pushes (Intel SDM vol. 3, 4.7; AMD APM vol. 2, 8.4.2).</summary>
[Flags]
public enum PageFaultErrorCode : uint
{
    /// <summary>A supervisor read of a not-present page.</summary>
    None = 0,

    /// <summary>P (bit 0): a protection violation on a present page; clear, the page was not present.</summary>
    Present = 1 << 0,

    /// <summary>W/R (bit 1): the access was a write.</summary>
    Write = 1 << 1,

    /// <summary>U/S (bit 2): the access was a user-mode (CPL 3) one.</summary>
    User = 1 << 2,

    /// <summary>RSVD (bit 3): an entry had a reserved bit set.</summary>
    ReservedBit = 1 << 3,

    /// <summary>I/D (bit 4): the access was an instruction fetch; reported only with CR4.SMEP, or with CR4.PAE and EFER.NXE.</summary>
    InstructionFetch = 1 << 4,

    /// <summary>PK (bit 5): a protection-key violation.</summary>
    ProtectionKey = 1 << 5,

    /// <summary>SS (bit 6): a shadow-stack access.</summary>
    ShadowStack = 1 << 6,
}
