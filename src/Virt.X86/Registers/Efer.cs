namespace Virt.X86;

/// <summary>IA32_EFER (MSR 0xC000_0080) bits (Intel SDM vol. 3, 2.2.1; AMD APM vol. 2, 3.1.7).</summary>
public static class Efer
{
    /// <summary>SCE (bit 0): SYSCALL and SYSRET enabled; clear, they raise #UD.</summary>
    public const ulong SyscallEnable = 1UL << 0;

    /// <summary>LME (bit 8): long mode enabled; it becomes active when paging is turned on.</summary>
    public const ulong LongModeEnable = 1UL << 8;

    /// <summary>LMA (bit 10): long mode active (read-only on hardware; set by the processor from LME and CR0.PG).</summary>
    public const ulong LongModeActive = 1UL << 10;

    /// <summary>NXE (bit 11): the XD bit of PAE and 64-bit page-table entries is honoured (else it is reserved).</summary>
    public const ulong NoExecuteEnable = 1UL << 11;

    /// <summary>SVME (bit 12): AMD secure virtual machine (SVM) enabled.</summary>
    public const ulong SvmEnable = 1UL << 12;

    /// <summary>LMSLE (bit 13): AMD long-mode segment-limit checks.</summary>
    public const ulong LongModeSegmentLimitEnable = 1UL << 13;

    /// <summary>FFXSR (bit 14): AMD fast FXSAVE/FXRSTOR (XMM registers not saved at CPL 0 in long mode).</summary>
    public const ulong FastFxsave = 1UL << 14;

    /// <summary>TCE (bit 15): AMD translation-cache extension (INVLPG invalidates only the walked entries).</summary>
    public const ulong TranslationCacheExtension = 1UL << 15;
}
