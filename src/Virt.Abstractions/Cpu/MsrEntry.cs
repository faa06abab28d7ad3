namespace Virt.Cpu;

/// <summary>A model-specific register and its value.</summary>
/// <param name="Index">The MSR number, e.g. 0xC0000080 for IA32_EFER.</param>
/// <param name="Value">The value.</param>
public readonly record struct MsrEntry(uint Index, ulong Value);

/// <summary>Well-known MSR numbers.</summary>
public static class MsrIndex
{
    /// <summary>IA32_TIME_STAMP_COUNTER.</summary>
    public const uint Tsc = 0x10;
    /// <summary>IA32_APIC_BASE.</summary>
    public const uint ApicBase = 0x1B;
    /// <summary>IA32_SPEC_CTRL (enumerated by CPUID.(EAX=7,ECX=0):EDX[26]): speculation controls; bit 0 (IBRS) restricts indirect branch prediction.</summary>
    public const uint SpecCtrl = 0x48;
    /// <summary>IA32_PRED_CMD (write-only, enumerated with IA32_SPEC_CTRL): writing bit 0 (IBPB) is an indirect branch prediction barrier.</summary>
    public const uint PredCmd = 0x49;
    /// <summary>MSR_PLATFORM_INFO; bit 31 says the processor can make CPUID fault outside CPL 0.</summary>
    public const uint PlatformInfo = 0xCE;
    /// <summary>IA32_ARCH_CAPABILITIES (read-only, enumerated by CPUID.(EAX=7,ECX=0):EDX[29]): the processor's speculative-execution properties, such as which side channels it is not affected by.</summary>
    public const uint ArchCapabilities = 0x10A;
    /// <summary>MSR_MISC_FEATURES_ENABLES; bit 0 makes CPUID at CPL above 0 raise #GP (CPUID faulting).</summary>
    public const uint MiscFeaturesEnables = 0x140;
    /// <summary>IA32_SYSENTER_CS.</summary>
    public const uint SysenterCs = 0x174;
    /// <summary>IA32_SYSENTER_ESP.</summary>
    public const uint SysenterEsp = 0x175;
    /// <summary>IA32_SYSENTER_EIP.</summary>
    public const uint SysenterEip = 0x176;
    /// <summary>IA32_MISC_ENABLE.</summary>
    public const uint MiscEnable = 0x1A0;
    /// <summary>IA32_PAT.</summary>
    public const uint Pat = 0x277;
    /// <summary>IA32_TSC_DEADLINE.</summary>
    public const uint TscDeadline = 0x6E0;
    /// <summary>IA32_EFER.</summary>
    public const uint Efer = 0xC0000080;
    /// <summary>IA32_STAR: SYSCALL/SYSRET selectors.</summary>
    public const uint Star = 0xC0000081;
    /// <summary>IA32_LSTAR: 64-bit SYSCALL target.</summary>
    public const uint Lstar = 0xC0000082;
    /// <summary>IA32_CSTAR: compatibility-mode SYSCALL target.</summary>
    public const uint Cstar = 0xC0000083;
    /// <summary>IA32_FMASK: RFLAGS mask for SYSCALL.</summary>
    public const uint Fmask = 0xC0000084;
    /// <summary>IA32_FS_BASE.</summary>
    public const uint FsBase = 0xC0000100;
    /// <summary>IA32_GS_BASE.</summary>
    public const uint GsBase = 0xC0000101;
    /// <summary>IA32_KERNEL_GS_BASE: swapped with GS base by SWAPGS.</summary>
    public const uint KernelGsBase = 0xC0000102;
    /// <summary>IA32_TSC_AUX (read by RDTSCP).</summary>
    public const uint TscAux = 0xC0000103;
}
