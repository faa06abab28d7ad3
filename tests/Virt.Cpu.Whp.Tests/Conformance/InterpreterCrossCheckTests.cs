using Virt.Cpu.Interpreter;
using Virt.Testing;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Conformance;

/// <summary>The same scenarios on the interpreter, which runs on every host.</summary>
public sealed class InterpreterCrossCheckTests
{
    [Fact]
    public void Real_mode_port_io_on_the_interpreter() => GuestScenarios.RealModePortIo(new InterpreterHypervisor());

    [Fact]
    public void Long_mode_port_io_and_mmio_on_the_interpreter() => GuestScenarios.LongModePortIoAndMmio(new InterpreterHypervisor());

    [Fact]
    public void Exit_requested_before_run_interrupts_it_on_the_interpreter() => GuestScenarios.ExitRequestedBeforeRunInterruptsIt(new InterpreterHypervisor());
}
