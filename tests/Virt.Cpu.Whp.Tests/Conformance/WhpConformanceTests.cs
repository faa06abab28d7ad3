using Virt.Cpu.Whp;
using Virt.Testing;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Conformance;

/// <summary>The shared guest scenarios on the Windows Hypervisor Platform. Skipped (with the reason) where WHP is not available.</summary>
public sealed class WhpConformanceTests
{
    /// <summary>Set to 1 on a Windows machine that must run these tests: a missing WHP then fails instead of skipping.</summary>
    private const string RequireVariable = "VIRT_REQUIRE_WHP";

    private static WhpHypervisor RequireWhp()
    {
        var hypervisor = new WhpHypervisor();
        var availability = hypervisor.GetAvailability();
        if (!availability.IsAvailable)
        {
            if (Environment.GetEnvironmentVariable(RequireVariable) == "1")
            {
                Assert.Fail($"{RequireVariable}=1 but WHP is unavailable: {availability.Reason}");
            }

            Assert.Skip("Skipped: WHP is unavailable: " + availability.Reason);
        }

        return hypervisor;
    }

    [Fact]
    public void Real_mode_port_io_on_whp() => GuestScenarios.RealModePortIo(RequireWhp());

    [Fact]
    public void Long_mode_port_io_and_mmio_on_whp() => GuestScenarios.LongModePortIoAndMmio(RequireWhp());

    [Fact]
    public void Exit_requested_before_run_interrupts_it_on_whp() => GuestScenarios.ExitRequestedBeforeRunInterruptsIt(RequireWhp());
}
