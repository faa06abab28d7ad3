namespace Virt.X86;

/// <summary>
/// What the page tables allow for a page, combined over every level of the walk: an access right holds only
/// when every entry grants it (and, for <see cref="Executable"/>, no entry sets XD under EFER.NXE).
/// </summary>
[Flags]
public enum PagePermissions
{
    /// <summary>Supervisor-only, read-only, not executable.</summary>
    None = 0,

    /// <summary>R/W set at every level.</summary>
    Writable = 1 << 0,

    /// <summary>U/S set at every level: CPL 3 may access the page.</summary>
    User = 1 << 1,

    /// <summary>No level sets XD with EFER.NXE (always so in 32-bit paging or without NXE).</summary>
    Executable = 1 << 2,

    /// <summary>Every right: what an address has with paging disabled.</summary>
    All = Writable | User | Executable,
}
