using System.Runtime.InteropServices;
using Virt.Cpu;
using Virt.Cpu.Whp;
using Virt.Memory;
using Xunit;

namespace Virt.Cpu.Whp.Tests;

public sealed class AvailabilityTests
{
    private static readonly WhpHostFacts Good = new()
    {
        IsWindows = true, ProcessArchitecture = Architecture.X64, HypervisorPresent = true, ExtendedVmExits = 0b111,
    };

    [Fact]
    public void Backend_is_called_whp() => Assert.Equal("whp", new WhpHypervisor().Name);

    [Fact]
    public void Off_windows_the_backend_says_it_needs_windows_and_points_to_kvm()
    {
        if (OperatingSystem.IsWindows())
        {
            Assert.Skip("This host is Windows.");
        }

        var a = new WhpHypervisor().GetAvailability();
        Assert.False(a.IsAvailable);
        Assert.Contains("Windows 10 1803", a.Reason, StringComparison.Ordinal);
        Assert.Contains("Server 2019", a.Reason, StringComparison.Ordinal);
        Assert.Contains("KVM", a.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Off_windows_creating_a_partition_throws_with_the_reason()
    {
        if (OperatingSystem.IsWindows())
        {
            Assert.Skip("This host is Windows.");
        }

        using var memory = GuestMemory.CreateRam(0x10000);
        var e = Assert.Throws<PlatformNotSupportedException>(() => new WhpHypervisor().CreatePartition(memory, new PartitionOptions()));
        Assert.Contains("Windows", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Zero_vcpus_is_rejected_with_what_to_change()
    {
        using var memory = GuestMemory.CreateRam(0x10000);
        var e = Assert.Throws<ArgumentException>(() => new WhpHypervisor().CreatePartition(memory, new PartitionOptions { VcpuCount = 0 }));
        Assert.Contains("VcpuCount", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Working_host_is_available()
    {
        var a = WhpAvailability.Decide(Good);
        Assert.True(a.IsAvailable, a.Reason);
        Assert.Contains("CPUID exits", a.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Arm64_windows_is_unavailable_because_the_layouts_are_x64()
    {
        var a = WhpAvailability.Decide(Good with { ProcessArchitecture = Architecture.Arm64 });
        Assert.False(a.IsAvailable);
        Assert.Contains("x64", a.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_platform_dll_says_how_to_enable_the_feature()
    {
        var a = WhpAvailability.Decide(Good with { PlatformLibraryMissing = true });
        Assert.False(a.IsAvailable);
        Assert.Contains("WinHvPlatform.dll", a.Reason, StringComparison.Ordinal);
        Assert.Contains("Enable-WindowsOptionalFeature -Online -FeatureName HypervisorPlatform", a.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_entry_point_means_windows_is_too_old()
    {
        var a = WhpAvailability.Decide(Good with { PlatformEntryPointMissing = true });
        Assert.False(a.IsAvailable);
        Assert.Contains("1803", a.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Hypervisor_not_present_says_how_to_enable_the_feature()
    {
        var a = WhpAvailability.Decide(Good with { HypervisorPresent = false });
        Assert.False(a.IsAvailable);
        Assert.Contains("\"Windows Hypervisor Platform\"", a.Reason, StringComparison.Ordinal);
        Assert.Contains("HypervisorPlatform", a.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Failed_capability_query_reports_the_hresult()
    {
        var a = WhpAvailability.Decide(Good with { CapabilityHResult = unchecked((int)0x80370300), HypervisorPresent = false });
        Assert.False(a.IsAvailable);
        Assert.Contains("0x80370300", a.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_emulator_dll_is_unavailable()
    {
        var a = WhpAvailability.Decide(Good with { EmulationLibraryMissing = true });
        Assert.False(a.IsAvailable);
        Assert.Contains("WinHvEmulation.dll", a.Reason, StringComparison.Ordinal);
    }
}
