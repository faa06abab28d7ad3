using Virt.Cpu;
using Virt.Cpu.Kvm;
using Virt.Memory;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>Automatic backend choice knows what the host's hypervisor runs fast.</summary>
public sealed class BackendSelectionTests
{
    [Fact]
    public void Auto_passes_over_a_kvm_that_emulates_kernel_mode_for_a_kernel_guest_and_says_why()
    {
        HostRequirements.RequireKvm();
        var kvm = new KvmHypervisor().GetAvailability();
        Assert.True(kvm.IsAvailable, kvm.Reason);

        var selection = BackendSelector.Select(BackendKind.Auto, null, kernelModeGuest: true);
        if (kvm.SlowKernelMode is null)
        {
            Assert.Equal("kvm", selection.Name);
        }
        else
        {
            Assert.Equal("interpreter", selection.Name);
            Assert.Contains("kvm passed over for a guest that runs a kernel", selection.Reason, StringComparison.Ordinal);
            Assert.Contains(kvm.SlowKernelMode, selection.Reason, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Auto_keeps_kvm_for_a_user_mode_guest_whatever_its_kernel_mode_speed()
    {
        HostRequirements.RequireKvm();
        var selection = BackendSelector.Select(BackendKind.Auto, null, kernelModeGuest: false);
        Assert.Equal("kvm", selection.Name);
    }

    [Fact]
    public void A_linux_guest_counts_as_a_kernel_guest_and_a_flat_long_mode_one_does_not()
    {
        Assert.True(VirtualMachineBuilder.RunsKernel(new VirtualMachineConfiguration { Kernel = new byte[16], LinuxPlatform = true }));
        Assert.True(VirtualMachineBuilder.RunsKernel(new VirtualMachineConfiguration { EntryPoint = new GuestAddress(0x7c00), StartMode = Virt.Boot.StartMode.Real }));
        Assert.True(VirtualMachineBuilder.RunsKernel(new VirtualMachineConfiguration { EntryPoint = new GuestAddress(0x10000), StartMode = Virt.Boot.StartMode.Protected32 }));
        Assert.False(VirtualMachineBuilder.RunsKernel(new VirtualMachineConfiguration { EntryPoint = new GuestAddress(0x10000), StartMode = Virt.Boot.StartMode.Long64 }));
    }

    [Fact]
    public void A_backend_requested_by_name_is_used_with_its_limitation_in_the_reason()
    {
        var slow = new SlowKernelBackend();
        var selection = BackendSelector.Select(BackendKind.Auto, slow, kernelModeGuest: true);
        Assert.Same(slow, selection.Backend);
        Assert.Contains("privileged code is emulated", selection.Reason, StringComparison.Ordinal);
        Assert.DoesNotContain("note:", BackendSelector.Select(BackendKind.Auto, slow, kernelModeGuest: false).Reason, StringComparison.Ordinal);
    }

    /// <summary>A backend that reports slow kernel mode; it never creates a partition in these tests.</summary>
    private sealed class SlowKernelBackend : IHypervisor
    {
        public string Name => "slow-kernel";

        public HypervisorAvailability GetAvailability() =>
            HypervisorAvailability.Available("test backend") with { SlowKernelMode = "privileged code is emulated" };

        public IPartition CreatePartition(IGuestMemoryBacking memory, PartitionOptions options) =>
            throw new InvalidOperationException("This test backend creates no partitions.");
    }
}
