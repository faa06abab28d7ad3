namespace Virt.Sandbox.Machine;

/// <summary>x86-64 page-table entry bits the sandbox uses (Intel SDM vol. 3, 4.5).</summary>
[Flags]
internal enum PageFlags : ulong
{
    None = 0,
    /// <summary>P: the entry maps something.</summary>
    Present = 1UL << 0,
    /// <summary>R/W: writes allowed (CR0.WP makes this bind CPL 0 too).</summary>
    Writable = 1UL << 1,
    /// <summary>U/S: CPL 3 may access.</summary>
    User = 1UL << 2,
    /// <summary>A: set by the CPU on access; preset so the walker never writes the tables.</summary>
    Accessed = 1UL << 5,
    /// <summary>D: set by the CPU on write; preset for writable pages for the same reason.</summary>
    Dirty = 1UL << 6,
    /// <summary>XD: instruction fetches fault (needs EFER.NXE).</summary>
    NoExecute = 1UL << 63,
}
