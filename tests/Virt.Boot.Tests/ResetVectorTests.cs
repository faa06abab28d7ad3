using Virt.Cpu;
using Virt.Cpu.Interpreter;
using Virt.Memory;
using Xunit;

namespace Virt.Boot.Tests;

public sealed class ResetVectorTests
{
    [Fact]
    public void A_jump_to_the_reset_vector_pulses_the_keyboard_controller_reset_line_then_halts()
    {
        using var memory = GuestMemory.CreateRam(2 << 20);
        ResetVector.Install(memory);
        using var partition = new InterpreterHypervisor().CreatePartition(memory, new PartitionOptions());
        using var vcpu = partition.CreateVcpu(0);
        var s = ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), StartMode.Real);
        s.Cs = SegmentRegister.RealMode(0xF000, code: true);
        vcpu.SetSpecialRegisters(s);
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = 0xFFF0, Rflags = 0x202 });

        var exit = vcpu.Run();
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal(0x64, exit.Port);
        Assert.Equal(1, exit.Size);
        Assert.Equal(0xFE, vcpu.ExitData[0]);

        // Nothing reset the machine: the stub stops with interrupts off rather than running on.
        exit = vcpu.Run();
        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        Assert.Equal(0UL, vcpu.GetGeneralRegisters().Rflags & 0x200);
    }

    [Fact]
    public void Memory_without_ram_at_the_reset_vector_is_refused()
    {
        using var memory = GuestMemory.CreateRam(512 << 10);
        var ex = Assert.Throws<ArgumentException>(() => ResetVector.Install(memory));
        Assert.Contains("reset vector", ex.Message, StringComparison.Ordinal);
    }
}
