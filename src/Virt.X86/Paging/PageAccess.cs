namespace Virt.X86;

/// <summary>What a memory access through paging is: read, write or instruction fetch, by user or supervisor code.</summary>
[Flags]
public enum PageAccess
{
    /// <summary>A supervisor-mode (CPL 0-2) data read.</summary>
    Read = 0,

    /// <summary>A data write.</summary>
    Write = 1 << 0,

    /// <summary>An instruction fetch (exclusive with <see cref="Write"/>).</summary>
    Execute = 1 << 1,

    /// <summary>A user-mode access (CPL 3); without it the access is a supervisor-mode one.</summary>
    User = 1 << 2,

    /// <summary>
    /// RFLAGS.AC is set for an explicit supervisor-mode data access (after <c>STAC</c>): CR4.SMAP then lets it
    /// reach user pages. Ignored for user-mode accesses and instruction fetches.
    /// </summary>
    AlignmentCheck = 1 << 3,
}
