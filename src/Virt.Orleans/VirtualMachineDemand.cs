using System.Globalization;

namespace Virt.Orleans;

/// <summary>What a VM needs of a silo: guest RAM, vCPUs, and whether it runs a kernel (which wants hardware KVM) or asks for KVM by name.</summary>
internal readonly record struct VirtualMachineDemand(long MemoryBytes, int Vcpus, bool KernelGuest, bool RequiresKvm)
{
    /// <summary>The request-context key under which a call that creates a VM carries its demand to placement.</summary>
    public const string RequestContextKey = "virt-vm-demand";

    public static VirtualMachineDemand FromSpec(VirtualMachineSpec spec, int defaultMemoryMiB) => new(
        (spec.SnapshotPath is null ? spec.MemoryMiB : defaultMemoryMiB) * (1L << 20),
        spec.SnapshotPath is null ? spec.VcpuCount : 1,
        spec.KernelPath is not null,
        spec.Backend == VirtualMachineBackend.Kvm);

    public string Encode() => string.Create(CultureInfo.InvariantCulture, $"{MemoryBytes},{Vcpus},{(KernelGuest ? 1 : 0)},{(RequiresKvm ? 1 : 0)}");

    /// <summary>Reads a demand written by <see cref="Encode"/>; anything else (a caller's own value under the key) is ignored.</summary>
    public static VirtualMachineDemand? Decode(object? value)
    {
        if (value is not string text)
        {
            return null;
        }

        var parts = text.Split(',');
        if (parts.Length != 4
            || !long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out long memory)
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int vcpus))
        {
            return null;
        }

        return new VirtualMachineDemand(memory, vcpus, parts[2] == "1", parts[3] == "1");
    }

    public override string ToString() => $"{MemoryBytes >> 20} MiB, {Vcpus} vCPU{(Vcpus == 1 ? "" : "s")}{(KernelGuest ? ", a kernel guest" : "")}{(RequiresKvm ? ", KVM" : "")}";
}
