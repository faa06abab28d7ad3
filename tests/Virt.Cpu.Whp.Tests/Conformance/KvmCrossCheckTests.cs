using Virt.Cpu.Kvm;
using Virt.Testing;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Conformance;

/// <summary>
/// The same scenarios on KVM, where this Linux host has it: proves the guest programs and expected exits
/// are right, so a failure on a Windows host points at the WHP backend rather than at the scenario.
/// </summary>
public sealed class KvmCrossCheckTests
{
    [Fact]
    public void Real_mode_port_io_on_kvm()
    {
        HostRequirements.RequireKvm();
        GuestScenarios.RealModePortIo(new KvmHypervisor());
    }

    [Fact]
    public void Long_mode_port_io_and_mmio_on_kvm()
    {
        HostRequirements.RequireKvm();
        GuestScenarios.LongModePortIoAndMmio(new KvmHypervisor());
    }

    [Fact]
    public void Exit_requested_before_run_interrupts_it_on_kvm()
    {
        HostRequirements.RequireKvm();
        GuestScenarios.ExitRequestedBeforeRunInterruptsIt(new KvmHypervisor());
    }
}
