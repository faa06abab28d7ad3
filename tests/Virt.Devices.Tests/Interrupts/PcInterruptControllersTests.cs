using Virt.Devices.Interrupts;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

public sealed class PcInterruptControllersTests
{
    [Fact]
    public void Pit_reaches_the_cpu_through_the_pic_before_the_ioapic_is_programmed()
    {
        var pc = new PcInterruptControllers(new VirtualClock());
        InitialisePic(pc.Pic);
        pc.Pit.Out(3, 0x34);
        pc.Pit.Out(0, 0x9C);
        pc.Pit.Out(0, 0x2E);
        pc.Clock.Advance(pc.Clock.FromCycles(11932, Pit8254.Frequency));
        Assert.True(pc.LocalApic.HasPendingInterrupt);
        Assert.Equal(0x30, pc.LocalApic.AcknowledgeInterrupt());
    }

    [Fact]
    public void Isa_irq0_is_on_ioapic_pin_2_and_others_on_their_own_pin()
    {
        var pc = new PcInterruptControllers(new VirtualClock());
        pc.LocalApic.Write32(0xF0, 0x1FF);
        pc.LocalApic.Write32(0x350, 1u << 16); // PIC path off, as Linux does in APIC mode
        ProgramPin(pc.IoApic, 2, 0x30);
        ProgramPin(pc.IoApic, 4, 0x34);
        pc.GetIsaLine(0).Pulse();
        Assert.Equal(0x30, pc.LocalApic.AcknowledgeInterrupt());
        pc.LocalApic.Write32(0xB0, 0);
        pc.GetIsaLine(4).Pulse();
        Assert.Equal(0x34, pc.LocalApic.AcknowledgeInterrupt());
        Assert.Equal(2, PcInterruptControllers.IoApicPinForIsaIrq(0));
        Assert.Equal(5, pc.PortDevices.Count);
        Assert.Equal(2, pc.MmioDevices.Count);
    }

    [Fact]
    public void Level_interrupt_round_trip_through_ioapic_and_lapic_eoi()
    {
        var pc = new PcInterruptControllers(new VirtualClock());
        pc.LocalApic.Write32(0xF0, 0x1FF);
        ProgramPin(pc.IoApic, 20, 0x50 | (1UL << 15));
        var line = pc.GetGsiLine(20);
        line.Raise();
        Assert.Equal(0x50, pc.LocalApic.AcknowledgeInterrupt());
        pc.LocalApic.Write32(0xB0, 0); // EOI while the device still asserts: delivered again
        Assert.Equal(0x50, pc.LocalApic.AcknowledgeInterrupt());
        line.Lower();
        pc.LocalApic.Write32(0xB0, 0);
        Assert.False(pc.LocalApic.HasPendingInterrupt);
    }

    private static void ProgramPin(IoApic io, int pin, ulong entry)
    {
        io.Write32(0x00, (uint)(0x10 + (2 * pin)));
        io.Write32(0x10, (uint)entry);
        io.Write32(0x00, (uint)(0x11 + (2 * pin)));
        io.Write32(0x10, (uint)(entry >> 32));
    }

    private static void InitialisePic(PicPair pic)
    {
        pic.MasterPorts.Out(0, 0x11);
        pic.MasterPorts.Out(1, 0x30);
        pic.MasterPorts.Out(1, 0x04);
        pic.MasterPorts.Out(1, 0x01);
        pic.SlavePorts.Out(0, 0x11);
        pic.SlavePorts.Out(1, 0x38);
        pic.SlavePorts.Out(1, 0x02);
        pic.SlavePorts.Out(1, 0x01);
    }
}
