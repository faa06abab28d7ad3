using System.Runtime.InteropServices;
using Virt.Memory;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

/// <summary>
/// The Linux KVM backend: partitions are KVM VMs created through <c>/dev/kvm</c>, vCPUs are KVM vCPUs
/// run on the calling thread.
/// </summary>
/// <remarks>
/// Needs Linux on x86-64, a loaded KVM module (<c>kvm_intel</c>, <c>kvm_amd</c> or another provider of
/// <c>/dev/kvm</c>), read/write access to <c>/dev/kvm</c> (usually membership of the <c>kvm</c> group), API
/// version 12 and the capabilities the backend relies on. <see cref="GetAvailability"/> says which is missing.
/// </remarks>
public sealed class KvmHypervisor : IHypervisor
{
    /// <summary>Capabilities the backend cannot work without, with what each is for.</summary>
    private static readonly (int Capability, string Name, string Purpose)[] s_requiredCapabilities =
    [
        (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "map guest memory"),
        (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "stop a vCPU without races"),
        (KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "give the guest CPUID leaves"),
    ];

    /// <summary>Creates the backend. Nothing is opened until a partition is created.</summary>
    public KvmHypervisor()
    {
    }

    /// <inheritdoc />
    /// <value><c>kvm</c>.</value>
    public string Name => "kvm";

    /// <inheritdoc />
    public HypervisorAvailability GetAvailability()
    {
        if (!OperatingSystem.IsLinux())
        {
            return HypervisorAvailability.Unavailable("KVM needs Linux; this host runs " + RuntimeInformation.OSDescription + ".");
        }

        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return HypervisorAvailability.Unavailable($"The KVM backend runs x86-64 guests and needs an x86-64 host process; this one is {RuntimeInformation.ProcessArchitecture}.");
        }

        using var kvm = KvmIoctls.TryOpenSystem(out int errno);
        if (kvm is null)
        {
            return HypervisorAvailability.Unavailable(KvmIoctls.DescribeOpenFailure(errno));
        }

        try
        {
            int version = KvmIoctls.GetApiVersion(kvm);
            if (version != ApiVersion)
            {
                return HypervisorAvailability.Unavailable($"KVM reports API version {version}; this backend needs version {ApiVersion}.");
            }

            var missing = s_requiredCapabilities
                .Where(c => KvmIoctls.CheckExtension(kvm, c.Capability) <= 0)
                .Select(c => $"{c.Name} (to {c.Purpose})")
                .ToArray();
            if (missing.Length > 0)
            {
                return HypervisorAvailability.Unavailable("KVM lacks required capabilities: " + string.Join(", ", missing) + ". Use a newer kernel.");
            }

            var info = KvmHostInfo.Get(kvm);
            return HypervisorAvailability.Available(
                $"KVM is available: API version {version}, {info.MemorySlots} memory slots, up to {info.MaxVcpus} vCPUs, " +
                $"{info.SupportedCpuid.Length} CPUID leaves, {info.SupportedMsrs.Length} MSRs.") with
            {
                SlowKernelMode = KvmHardwareAssist.SlowKernelModeReason,
            };
        }
        catch (HypervisorException e)
        {
            return HypervisorAvailability.Unavailable($"KVM did not answer a query: {e.Message}");
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Every region of <paramref name="memory"/> becomes one KVM memory slot, so each must carry a
    /// <see cref="GuestMemoryRegionInfo.HostAddress"/> (as Virt.Memory's GuestMemory does). ROM regions are
    /// mapped read-only where KVM supports it; without that capability they are left unmapped and guest
    /// accesses to them exit as MMIO.
    /// </remarks>
    /// <exception cref="ArgumentException">The memory or options cannot be mapped (no host address, too many regions, bad vCPU count).</exception>
    /// <exception cref="HypervisorException">KVM refused an operation.</exception>
    /// <exception cref="PlatformNotSupportedException">Not Linux.</exception>
    public IPartition CreatePartition(IGuestMemoryBacking memory, PartitionOptions options)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(options);
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("KVM needs Linux.");
        }

        return new KvmPartition(this, memory, options);
    }
}
