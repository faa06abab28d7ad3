using Virt.Devices.Interrupts;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

public sealed class PicPairTests
{
    /// <summary>The initialisation Linux performs (init_8259A): vectors 0x30/0x38, cascade on IRQ2, 8086 mode.</summary>
    internal static PicPair InitialisedLikeLinux(bool autoEoi = false)
    {
        var pic = new PicPair();
        pic.MasterPorts.Out(1, 0xFF);
        pic.SlavePorts.Out(1, 0xFF);
        pic.MasterPorts.Out(0, 0x11); // ICW1: edge, cascade, ICW4
        pic.MasterPorts.Out(1, 0x30); // ICW2
        pic.MasterPorts.Out(1, 0x04); // ICW3: slave on IRQ2
        pic.MasterPorts.Out(1, autoEoi ? (byte)0x03 : (byte)0x01); // ICW4
        pic.SlavePorts.Out(0, 0x11);
        pic.SlavePorts.Out(1, 0x38);
        pic.SlavePorts.Out(1, 0x02);
        pic.SlavePorts.Out(1, 0x01);
        pic.MasterPorts.Out(1, 0x00); // unmask all
        pic.SlavePorts.Out(1, 0x00);
        return pic;
    }

    [Fact]
    public void Edge_irq_is_delivered_once_with_its_vector_and_in_service_until_eoi()
    {
        var pic = InitialisedLikeLinux();
        Assert.False(pic.HasPendingInterrupt);
        pic.GetLine(4).Raise();
        Assert.True(pic.HasPendingInterrupt);
        Assert.Equal(0x34, pic.AcknowledgeInterrupt());
        Assert.False(pic.HasPendingInterrupt);
        Assert.Equal(0x10, pic.Registers(true).Isr);

        // A second edge while in service waits for the EOI.
        pic.GetLine(4).Lower();
        pic.GetLine(4).Raise();
        Assert.False(pic.HasPendingInterrupt);
        pic.MasterPorts.Out(0, 0x20); // non-specific EOI
        Assert.True(pic.HasPendingInterrupt);
    }

    [Fact]
    public void Held_edge_line_does_not_retrigger()
    {
        var pic = InitialisedLikeLinux();
        pic.GetLine(3).Raise();
        Assert.Equal(0x33, pic.AcknowledgeInterrupt());
        pic.MasterPorts.Out(0, 0x20);
        pic.GetLine(3).Raise();
        Assert.False(pic.HasPendingInterrupt);
    }

    [Fact]
    public void Slave_irq_goes_through_the_cascade_and_needs_two_eois()
    {
        var pic = InitialisedLikeLinux();
        pic.GetLine(12).Raise();
        Assert.True(pic.HasPendingInterrupt);
        Assert.Equal(0x3C, pic.AcknowledgeInterrupt());
        Assert.Equal(0x04, pic.Registers(true).Isr);
        Assert.Equal(0x10, pic.Registers(false).Isr);
        pic.SlavePorts.Out(0, 0x20);
        pic.MasterPorts.Out(0, 0x20);
        Assert.Equal(0, pic.Registers(true).Isr);
        Assert.Equal(0, pic.Registers(false).Isr);
    }

    [Fact]
    public void Masked_irq_is_not_delivered_until_unmasked()
    {
        var pic = InitialisedLikeLinux();
        pic.MasterPorts.Out(1, 0x02);
        Assert.Equal(0x02, pic.MasterPorts.In(1));
        pic.GetLine(1).Raise();
        Assert.False(pic.HasPendingInterrupt);
        pic.MasterPorts.Out(1, 0x00);
        Assert.Equal(0x31, pic.AcknowledgeInterrupt());
    }

    [Fact]
    public void Lower_number_has_priority_and_preempts_a_lower_priority_in_service()
    {
        var pic = InitialisedLikeLinux();
        pic.GetLine(5).Raise();
        pic.GetLine(1).Raise();
        Assert.Equal(0x31, pic.AcknowledgeInterrupt());
        Assert.False(pic.HasPendingInterrupt); // 5 waits for 1
        pic.MasterPorts.Out(0, 0x20);
        Assert.Equal(0x35, pic.AcknowledgeInterrupt());
        pic.GetLine(0).Raise();
        Assert.Equal(0x30, pic.AcknowledgeInterrupt()); // 0 preempts 5
    }

    [Fact]
    public void Auto_eoi_leaves_nothing_in_service()
    {
        var pic = InitialisedLikeLinux(autoEoi: true);
        pic.GetLine(6).Raise();
        Assert.Equal(0x36, pic.AcknowledgeInterrupt());
        Assert.Equal(0, pic.Registers(true).Isr);
    }

    [Fact]
    public void Acknowledge_without_a_request_gives_spurious_irq7()
    {
        var pic = InitialisedLikeLinux();
        Assert.Equal(0x37, pic.AcknowledgeInterrupt());
        Assert.Equal(0, pic.Registers(true).Isr);
    }

    [Fact]
    public void Ocw3_selects_irr_or_isr_for_command_port_reads()
    {
        var pic = InitialisedLikeLinux();
        pic.MasterPorts.Out(1, 0xFF);
        pic.GetLine(3).Raise();
        pic.MasterPorts.Out(0, 0x0A); // read IRR
        Assert.Equal(0x08, pic.MasterPorts.In(0));
        pic.MasterPorts.Out(0, 0x0B); // read ISR
        Assert.Equal(0x00, pic.MasterPorts.In(0));
    }

    [Fact]
    public void Level_triggered_irq_per_elcr_follows_the_line()
    {
        var pic = InitialisedLikeLinux();
        pic.ElcrPorts.Out(1, 0x08); // IRQ 11 level
        Assert.Equal(0x08, pic.ElcrPorts.In(1));
        pic.GetLine(11).Raise();
        Assert.Equal(0x3B, pic.AcknowledgeInterrupt());
        pic.SlavePorts.Out(0, 0x20);
        pic.MasterPorts.Out(0, 0x20);
        Assert.True(pic.HasPendingInterrupt); // still asserted
        pic.GetLine(11).Lower();
        Assert.False(pic.HasPendingInterrupt);
    }

    [Fact]
    public void Pic_that_was_never_initialised_does_not_interrupt()
    {
        var pic = new PicPair();
        pic.GetLine(4).Raise();
        Assert.False(pic.HasPendingInterrupt);

        // Half-way through the ICW sequence it stays silent too.
        pic.MasterPorts.Out(0, 0x11);
        pic.MasterPorts.Out(1, 0x30);
        Assert.False(pic.HasPendingInterrupt);
        pic.MasterPorts.Out(1, 0x04);
        pic.MasterPorts.Out(1, 0x01);
        pic.GetLine(4).Lower();
        pic.GetLine(4).Raise();
        Assert.Equal(0x34, pic.AcknowledgeInterrupt());
    }

    [Fact]
    public void Elcr_cannot_make_timer_keyboard_or_cascade_level_triggered()
    {
        var pic = new PicPair();
        pic.ElcrPorts.Out(0, 0xFF);
        Assert.Equal(0xF8, pic.ElcrPorts.In(0));
    }

    [Fact]
    public void Raising_a_line_notifies_the_cpu()
    {
        var pic = InitialisedLikeLinux();
        int wakeups = 0;
        pic.InterruptRequested = () => wakeups++;
        pic.GetLine(7).Raise();
        Assert.Equal(1, wakeups);
    }

    [Fact]
    public void Out_of_range_ports_and_sizes_do_not_throw()
    {
        var pic = new PicPair();
        pic.MasterPorts.Write(5, [1, 2, 3, 4]);
        pic.MasterPorts.Read(7, new byte[4]);
        pic.MasterPorts.Write(0, []);
        pic.ElcrPorts.Read(0, new byte[4]);
        pic.SetIrq(99, true);
    }
}
