using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using Virt.Memory;

namespace Virt.Cpu.Whp;

/// <summary>
/// The Windows Hypervisor Platform backend (<c>WinHvPlatform.dll</c>). It builds on every OS; on anything
/// but x64 Windows with the "Windows Hypervisor Platform" feature enabled, <see cref="GetAvailability"/>
/// says why it cannot run and <see cref="CreatePartition"/> throws.
/// </summary>
public sealed class WhpHypervisor : IHypervisor
{
    /// <summary>Creates the backend. Nothing is loaded until <see cref="GetAvailability"/> or <see cref="CreatePartition"/>.</summary>
    public WhpHypervisor() { }

    /// <inheritdoc />
    public string Name => "whp";

    /// <inheritdoc />
    public HypervisorAvailability GetAvailability() => WhpAvailability.Decide(ProbeHost());

    /// <inheritdoc />
    /// <exception cref="PlatformNotSupportedException">The backend is not available here; the message says why.</exception>
    /// <exception cref="HypervisorException">A WHP call failed; <see cref="HypervisorException.Operation"/> names it.</exception>
    public IPartition CreatePartition(IGuestMemoryBacking memory, PartitionOptions options)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(options);
        if (options.VcpuCount < 1)
        {
            throw new ArgumentException($"PartitionOptions.VcpuCount is {options.VcpuCount}; give at least 1.", nameof(options));
        }

        var availability = GetAvailability();
        if (!availability.IsAvailable || !OperatingSystem.IsWindows())
        {
            throw new PlatformNotSupportedException("The WHP backend cannot run here: " + availability.Reason);
        }

        return new WhpPartition(this, memory, options, ProbeHost().ExtendedVmExits);
    }

    private static WhpHostFacts ProbeHost()
    {
        var facts = new WhpHostFacts { IsWindows = OperatingSystem.IsWindows(), ProcessArchitecture = RuntimeInformation.ProcessArchitecture };
        if (!OperatingSystem.IsWindows() || facts.ProcessArchitecture != Architecture.X64)
        {
            return facts;
        }

        return ProbeWindows(facts);
    }

    [SupportedOSPlatform("windows")]
    private static unsafe WhpHostFacts ProbeWindows(WhpHostFacts facts)
    {
        try
        {
            var capability = default(WHV_CAPABILITY);
            uint written = 0;

            // SAFETY: both pointers are to locals of this frame; the buffer size passed is the local's size.
            int hr = Interop.WinHvPlatform.WHvGetCapability(WhvCapabilityCode.HypervisorPresent, &capability, (uint)sizeof(WHV_CAPABILITY), &written);
            facts = facts with { CapabilityHResult = hr, HypervisorPresent = hr >= 0 && capability.HypervisorPresent != 0 };
            if (facts.HypervisorPresent)
            {
                capability = default;
                hr = Interop.WinHvPlatform.WHvGetCapability(WhvCapabilityCode.ExtendedVmExits, &capability, (uint)sizeof(WHV_CAPABILITY), &written);
                facts = facts with { ExtendedVmExits = hr >= 0 ? capability.ExtendedVmExits : 0 };
            }
        }
        catch (DllNotFoundException)
        {
            return facts with { PlatformLibraryMissing = true };
        }
        catch (EntryPointNotFoundException)
        {
            return facts with { PlatformEntryPointMissing = true };
        }

        if (NativeLibrary.TryLoad(Interop.WinHvEmulation.Library, out nint emulation))
        {
            NativeLibrary.Free(emulation);
        }
        else
        {
            facts = facts with { EmulationLibraryMissing = true };
        }

        return facts;
    }
}
