using Virt.Testing;
using Xunit;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>How the backend tells a KVM with hardware virtualization from one that emulates kernel-mode code.</summary>
public sealed class HardwareAssistTests
{
    private const string IntelWithVmx = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic vmx ept sse sse2\n\n";
    private const string AmdWithSvm = "processor\t: 0\nflags\t\t: fpu vme de pse svm npt sse sse2\n";
    private const string NoVirtualization = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor sse sse2 avx2\n";

    [Fact]
    public void A_processor_with_vmx_or_svm_runs_kernel_mode_at_speed()
    {
        Assert.Null(KvmHardwareAssist.Probe(IntelWithVmx, pvmLoaded: false));
        Assert.Null(KvmHardwareAssist.Probe(AmdWithSvm, pvmLoaded: false));
    }

    [Fact]
    public void A_processor_without_either_flag_emulates_kernel_mode_and_says_why()
    {
        string? reason = KvmHardwareAssist.Probe(NoVirtualization, pvmLoaded: false);
        Assert.NotNull(reason);
        Assert.Contains("neither the vmx nor the svm flag", reason, StringComparison.Ordinal);
    }

    [Fact]
    public void The_paravirtual_module_means_emulated_kernel_mode_whatever_the_flags()
    {
        Assert.Contains("kvm_pvm", KvmHardwareAssist.Probe(IntelWithVmx, pvmLoaded: true), StringComparison.Ordinal);
    }

    [Fact]
    public void A_flag_that_merely_contains_vmx_does_not_count()
    {
        Assert.NotNull(KvmHardwareAssist.Probe("flags\t: fpu vmx_ept_ad svm_lock\n", pvmLoaded: false));
    }

    [Fact]
    public void Without_cpuinfo_an_ordinary_kvm_is_assumed()
    {
        Assert.Null(KvmHardwareAssist.Probe(null, pvmLoaded: false));
    }

    [Fact]
    public void The_availability_report_carries_this_hosts_answer()
    {
        HostRequirements.RequireKvm();
        var a = new KvmHypervisor().GetAvailability();
        Assert.True(a.IsAvailable, a.Reason);
        Assert.Equal(KvmHardwareAssist.SlowKernelModeReason, a.SlowKernelMode);
    }
}
