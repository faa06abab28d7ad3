namespace Virt.X86;

/// <summary>CR4 bits (Intel SDM vol. 3, 2.5; AMD APM vol. 2, 3.1.3).</summary>
public static class Cr4
{
    /// <summary>VME (bit 0): virtual-8086 mode extensions (virtual interrupt flag in v8086 mode).</summary>
    public const ulong Vme = 1UL << 0;

    /// <summary>PVI (bit 1): protected-mode virtual interrupts (VIF/VIP at CPL 3).</summary>
    public const ulong Pvi = 1UL << 1;

    /// <summary>TSD (bit 2): RDTSC and RDTSCP are privileged (#GP at CPL &gt; 0).</summary>
    public const ulong TimeStampDisable = 1UL << 2;

    /// <summary>DE (bit 3): debugging extensions; DR4/DR5 references raise #UD and I/O breakpoints exist.</summary>
    public const ulong DebuggingExtensions = 1UL << 3;

    /// <summary>PSE (bit 4): 4 MiB pages in 32-bit paging (PDE.PS honoured).</summary>
    public const ulong Pse = 1UL << 4;

    /// <summary>PAE (bit 5): 64-bit page-table entries (PAE paging, and required for long mode).</summary>
    public const ulong Pae = 1UL << 5;

    /// <summary>MCE (bit 6): machine-check exceptions enabled.</summary>
    public const ulong MachineCheckEnable = 1UL << 6;

    /// <summary>PGE (bit 7): global pages (PTE.G) survive CR3 writes.</summary>
    public const ulong PageGlobalEnable = 1UL << 7;

    /// <summary>PCE (bit 8): RDPMC allowed at any privilege level.</summary>
    public const ulong PerformanceCounterEnable = 1UL << 8;

    /// <summary>OSFXSR (bit 9): the OS uses FXSAVE/FXRSTOR; SSE instructions are enabled.</summary>
    public const ulong OsFxsr = 1UL << 9;

    /// <summary>OSXMMEXCPT (bit 10): unmasked SSE floating-point exceptions raise #XM instead of #UD.</summary>
    public const ulong OsXmmExcpt = 1UL << 10;

    /// <summary>UMIP (bit 11): SGDT, SIDT, SLDT, SMSW and STR raise #GP at CPL &gt; 0.</summary>
    public const ulong Umip = 1UL << 11;

    /// <summary>LA57 (bit 12): 5-level paging with 57-bit linear addresses (in long mode).</summary>
    public const ulong La57 = 1UL << 12;

    /// <summary>VMXE (bit 13): VMX (Intel VT-x) enabled.</summary>
    public const ulong Vmxe = 1UL << 13;

    /// <summary>SMXE (bit 14): safer-mode extensions (GETSEC) enabled.</summary>
    public const ulong Smxe = 1UL << 14;

    /// <summary>FSGSBASE (bit 16): RDFSBASE, RDGSBASE, WRFSBASE and WRGSBASE allowed.</summary>
    public const ulong FsGsBase = 1UL << 16;

    /// <summary>PCIDE (bit 17): process-context identifiers in CR3[11:0].</summary>
    public const ulong Pcide = 1UL << 17;

    /// <summary>OSXSAVE (bit 18): XSAVE, XRSTOR, XGETBV and XSETBV enabled (and CPUID reports OSXSAVE).</summary>
    public const ulong OsXsave = 1UL << 18;

    /// <summary>SMEP (bit 20): supervisor-mode instruction fetches from user pages fault.</summary>
    public const ulong Smep = 1UL << 20;

    /// <summary>SMAP (bit 21): supervisor-mode data accesses to user pages fault unless RFLAGS.AC is set.</summary>
    public const ulong Smap = 1UL << 21;

    /// <summary>PKE (bit 22): protection keys for user pages (PKRU).</summary>
    public const ulong Pke = 1UL << 22;

    /// <summary>CET (bit 23): control-flow enforcement (shadow stacks, indirect-branch tracking).</summary>
    public const ulong Cet = 1UL << 23;

    /// <summary>PKS (bit 24): protection keys for supervisor pages (IA32_PKRS).</summary>
    public const ulong Pks = 1UL << 24;
}
