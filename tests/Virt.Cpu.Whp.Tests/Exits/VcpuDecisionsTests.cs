using Virt.Cpu;
using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Exits;

public sealed class VcpuDecisionsTests
{
    [Fact]
    public void Rdmsr_of_a_mapped_msr_reads_its_register()
    {
        var d = VcpuDecisions.DecideMsr(new WHV_X64_MSR_ACCESS_CONTEXT { MsrNumber = MsrIndex.Lstar });
        Assert.Equal((MsrAction.ReadRegister, WhvRegisterName.Lstar), (d.Action, d.Register));
    }

    [Fact]
    public void Wrmsr_of_a_mapped_msr_writes_edx_eax_ignoring_the_upper_halves()
    {
        var d = VcpuDecisions.DecideMsr(new WHV_X64_MSR_ACCESS_CONTEXT
        {
            AccessInfo = 1, MsrNumber = MsrIndex.KernelGsBase, Rax = 0xFFFF_FFFF_8765_4321, Rdx = 0xFFFF_FFFF_1234_5678,
        });
        Assert.Equal(MsrAction.WriteRegister, d.Action);
        Assert.Equal(WhvRegisterName.KernelGsBase, d.Register);
        Assert.Equal(0x1234_5678_8765_4321UL, d.Value);
    }

    [Theory]
    [InlineData(0x10Au, false)] // IA32_ARCH_CAPABILITIES
    [InlineData(0xC001_0015u, true)]
    [InlineData(0xFFFF_FFFFu, false)]
    public void Msr_nothing_implements_gets_a_general_protection_fault(uint msr, bool write)
    {
        var d = VcpuDecisions.DecideMsr(new WHV_X64_MSR_ACCESS_CONTEXT { MsrNumber = msr, AccessInfo = write ? 1u : 0 });
        Assert.Equal(MsrAction.InjectGeneralProtection, d.Action);
    }

    [Fact]
    public void No_queued_interrupt_means_nothing_to_do() =>
        Assert.Equal(InjectionDecision.Nothing, VcpuDecisions.DecideInjection(-1, 0x202, 0, 0));

    [Fact]
    public void Queued_interrupt_is_injected_when_the_guest_can_take_it() =>
        Assert.Equal(InjectionDecision.Inject, VcpuDecisions.DecideInjection(0x30, 0x202, 0, 0));

    [Theory]
    [InlineData(0x002UL, 0UL, 0UL)] // IF clear
    [InlineData(0x202UL, 1UL, 0UL)] // interrupt shadow after STI / MOV SS
    [InlineData(0x202UL, 0UL, 0x0020_0001UL)] // an event is still pending delivery
    public void Queued_interrupt_waits_for_the_interrupt_window(ulong rflags, ulong interruptState, ulong pending) =>
        Assert.Equal(InjectionDecision.WaitForWindow, VcpuDecisions.DecideInjection(0x30, rflags, interruptState, pending));

    [Fact]
    public void Rom_is_mapped_without_write_so_guest_writes_exit()
    {
        Assert.Equal(WhvMapGpaRangeFlags.Read | WhvMapGpaRangeFlags.Execute, GpaMapping.Flags(readOnly: true, trackDirty: true));
        Assert.Equal(WhvMapGpaRangeFlags.Read | WhvMapGpaRangeFlags.Write | WhvMapGpaRangeFlags.Execute, GpaMapping.Flags(readOnly: false, trackDirty: false));
        Assert.Equal(
            WhvMapGpaRangeFlags.Read | WhvMapGpaRangeFlags.Write | WhvMapGpaRangeFlags.Execute | WhvMapGpaRangeFlags.TrackDirtyPages,
            GpaMapping.Flags(readOnly: false, trackDirty: true));
    }
}
