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

/// <summary>The in-kernel irqchip, PIT and clock travel as snapshot sections between partitions.</summary>
public sealed class PartitionStateTests
{
    [Fact]
    public void Irqchip_pit_and_clock_sections_restore_into_another_partition()
    {
        HostRequirements.RequireKvm();
        using var a = TestVm.Create(new PartitionOptions { InterruptController = true });
        using var b = TestVm.Create(new PartitionOptions { InterruptController = true });
        a.Partition.SetInterruptLine(3, true); // leave a line raised in the PIC and IOAPIC
        var sections = a.Partition.PersistentState.Select(s =>
        {
            var w = new Virt.Snapshots.StateWriter();
            s.SaveState(w);
            return (s.StateName, s.StateVersion, Data: w.WrittenMemory.ToArray());
        }).ToList();
        Assert.Equal(["kvm-clock", "kvm-pic-master", "kvm-pic-slave", "kvm-ioapic", "kvm-pit"], sections.Select(s => s.StateName));

        foreach (var (component, saved) in b.Partition.PersistentState.Zip(sections))
        {
            var reader = new Virt.Snapshots.StateReader(saved.Data, saved.StateName);
            component.RestoreState(ref reader, saved.StateVersion);
        }

        // The restored chips read back as the originals (the clock moves on, so it is not compared).
        foreach (var (component, saved) in b.Partition.PersistentState.Zip(sections).Skip(1))
        {
            var w = new Virt.Snapshots.StateWriter();
            component.SaveState(w);
            Assert.True(saved.Data.AsSpan().SequenceEqual(w.WrittenMemory.Span), $"{saved.StateName} differs after the restore");
        }

        var bad = new Virt.Snapshots.StateReader(new byte[] { 1, 0, 0, 0, 7 }, "kvm-pit");
        bool refused = false;
        try
        {
            b.Partition.PersistentState[^1].RestoreState(ref bad, 1);
        }
        catch (Virt.Snapshots.SnapshotFormatException)
        {
            refused = true;
        }

        Assert.True(refused);
    }
}
