using System.Runtime.Intrinsics.X86;

namespace Virt.Testing;

/// <summary>
/// The host processor. Tests that use KVM as an oracle (guest code at CPL 3 runs natively there) get the host vendor's
/// behaviour, and where the vendors' manuals differ (the interpreter models an Intel processor) those tests need to know
/// which one answered.
/// </summary>
public static class HostCpu
{
    /// <summary>The CPUID vendor string, e.g. GenuineIntel or AuthenticAMD; empty off x86.</summary>
    public static string Vendor { get; } = ReadVendor();

    /// <summary>Whether the host follows AMD's manual (AuthenticAMD, HygonGenuine).</summary>
    public static bool IsAmd => Vendor is "AuthenticAMD" or "HygonGenuine";

    private static string ReadVendor()
    {
        if (!X86Base.IsSupported)
        {
            return "";
        }

        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        Span<byte> name = stackalloc byte[12];
        BitConverter.TryWriteBytes(name, ebx);
        BitConverter.TryWriteBytes(name[4..], edx);
        BitConverter.TryWriteBytes(name[8..], ecx);
        return System.Text.Encoding.ASCII.GetString(name);
    }
}
