using System.Runtime.InteropServices;

namespace Virt.Cpu.Whp;

/// <summary>What probing the host found, as plain data so that the decision is tested on every OS.</summary>
internal readonly record struct WhpHostFacts
{
    public bool IsWindows { get; init; }
    public Architecture ProcessArchitecture { get; init; }
    /// <summary>WinHvPlatform.dll could not be loaded.</summary>
    public bool PlatformLibraryMissing { get; init; }
    /// <summary>WinHvPlatform.dll loaded but lacks WHvGetCapability (a Windows build older than 1803).</summary>
    public bool PlatformEntryPointMissing { get; init; }
    /// <summary>WinHvEmulation.dll could not be loaded.</summary>
    public bool EmulationLibraryMissing { get; init; }
    /// <summary>HRESULT of WHvGetCapability(HypervisorPresent).</summary>
    public int CapabilityHResult { get; init; }
    public bool HypervisorPresent { get; init; }
    /// <summary>WHV_EXTENDED_VM_EXITS the host supports (0 when unknown).</summary>
    public ulong ExtendedVmExits { get; init; }
}

/// <summary>Turns <see cref="WhpHostFacts"/> into an availability with a reason a user can act on.</summary>
internal static class WhpAvailability
{
    public const string NotWindowsReason =
        "the Windows Hypervisor Platform exists only on Windows 10 1803+ / Server 2019+; on Linux use the KVM backend " +
        "(or the interpreter backend where no hypervisor is reachable).";

    public const string EnableHint =
        "Enable the \"Windows Hypervisor Platform\" optional feature (PowerShell as administrator: " +
        "Enable-WindowsOptionalFeature -Online -FeatureName HypervisorPlatform), turn on hardware virtualization " +
        "(VT-x/AMD-V) in the firmware, and restart.";

    public static HypervisorAvailability Decide(in WhpHostFacts facts)
    {
        if (!facts.IsWindows)
        {
            return HypervisorAvailability.Unavailable(NotWindowsReason);
        }

        if (facts.ProcessArchitecture != Architecture.X64)
        {
            return HypervisorAvailability.Unavailable(
                $"the WHP backend supports x64 processes only; this process is {facts.ProcessArchitecture}.");
        }

        if (facts.PlatformLibraryMissing)
        {
            return HypervisorAvailability.Unavailable("WinHvPlatform.dll was not found. " + EnableHint);
        }

        if (facts.PlatformEntryPointMissing)
        {
            return HypervisorAvailability.Unavailable(
                "WinHvPlatform.dll lacks WHvGetCapability: this Windows is older than 10 1803 / Server 2019. Update Windows.");
        }

        if (HResult.Failed(facts.CapabilityHResult))
        {
            return HypervisorAvailability.Unavailable(
                $"WHvGetCapability(HypervisorPresent) failed with {HResult.Describe(facts.CapabilityHResult)}. " + EnableHint);
        }

        if (!facts.HypervisorPresent)
        {
            return HypervisorAvailability.Unavailable("the Windows hypervisor is not running. " + EnableHint);
        }

        if (facts.EmulationLibraryMissing)
        {
            return HypervisorAvailability.Unavailable(
                "WinHvEmulation.dll (the instruction emulator for I/O and MMIO exits) was not found. " + EnableHint);
        }

        string cpuidExit = (facts.ExtendedVmExits & WhvExtendedVmExits.X64CpuidExit) != 0 ? "CPUID exits" : "no CPUID exits";
        string msrExit = (facts.ExtendedVmExits & WhvExtendedVmExits.X64MsrExit) != 0 ? "MSR exits" : "no MSR exits";
        return HypervisorAvailability.Available($"Windows Hypervisor Platform ({cpuidExit}, {msrExit}).");
    }
}
