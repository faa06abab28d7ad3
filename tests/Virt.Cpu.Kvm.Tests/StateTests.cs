using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>GetState is taken between two instructions, even right after a port-I/O exit that KVM completes only later.</summary>
public sealed class StateTests
{
    [Fact]
    public void State_after_a_port_read_exit_holds_the_value_and_the_next_instruction()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create(memorySize: 1UL << 20);
        byte[] code = GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(dx, 0x80);
            a.@in(al, dx);
            a.hlt();
        });
        vm.Start(StartMode.Long64, code);
        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.True(exit.Reason == VcpuExitReason.PortIo && !exit.IsWrite, exit.ToString());
        vm.Vcpu.ExitData[0] = 0x5A;

        var state = vm.Vcpu.GetState();
        Assert.Equal(0x5AUL, state.General.Rax & 0xFF);
        Assert.Equal(TestVm.CodeAddress + (ulong)code.Length - 1, state.General.Rip); // at the hlt

        // The state continues as it says: the next run executes the hlt and nothing before it again.
        vm.Vcpu.SetState(state);
        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
    }
}
