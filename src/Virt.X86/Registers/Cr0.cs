namespace Virt.X86;

/// <summary>CR0 bits (Intel SDM vol. 3, 2.5; AMD APM vol. 2, 3.1.1).</summary>
public static class Cr0
{
    /// <summary>PE (bit 0): protected mode; segmentation uses descriptors instead of selector * 16.</summary>
    public const ulong ProtectionEnable = 1UL << 0;

    /// <summary>MP (bit 1): WAIT/FWAIT raise #NM when <see cref="TaskSwitched"/> is set.</summary>
    public const ulong MonitorCoprocessor = 1UL << 1;

    /// <summary>EM (bit 2): no x87 unit; x87 instructions raise #NM and SSE instructions #UD.</summary>
    public const ulong Emulation = 1UL << 2;

    /// <summary>TS (bit 3): set by a task switch; the next x87/SSE instruction raises #NM (lazy FPU switching).</summary>
    public const ulong TaskSwitched = 1UL << 3;

    /// <summary>ET (bit 4): 387-compatible coprocessor; hard-wired to 1 on every processor since the 486.</summary>
    public const ulong ExtensionType = 1UL << 4;

    /// <summary>NE (bit 5): x87 errors raise #MF instead of the legacy FERR#/IRQ 13 path.</summary>
    public const ulong NumericError = 1UL << 5;

    /// <summary>WP (bit 16): supervisor-mode writes honour read-only pages.</summary>
    public const ulong WriteProtect = 1UL << 16;

    /// <summary>AM (bit 18): RFLAGS.AC enables alignment checking at CPL 3.</summary>
    public const ulong AlignmentMask = 1UL << 18;

    /// <summary>NW (bit 29): not write-through (with <see cref="CacheDisable"/>, caching is off).</summary>
    public const ulong NotWriteThrough = 1UL << 29;

    /// <summary>CD (bit 30): cache disable.</summary>
    public const ulong CacheDisable = 1UL << 30;

    /// <summary>PG (bit 31): paging; needs <see cref="ProtectionEnable"/>.</summary>
    public const ulong Paging = 1UL << 31;
}
