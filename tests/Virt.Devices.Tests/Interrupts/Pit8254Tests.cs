using Virt.Devices.Interrupts;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

public sealed class Pit8254Tests
{
    private static long PitCyclesToTicks(VirtualClock c, long cycles) => c.FromCycles(cycles, Pit8254.Frequency);

    [Fact]
    public void Mode_2_rate_generator_pulses_irq0_every_period()
    {
        var clock = new VirtualClock();
        var irq = new PortHelpers.RecordingLine();
        var pit = new Pit8254(clock, irq);
        pit.Out(3, 0x34);      // channel 0, LSB then MSB, mode 2
        pit.Out(0, 0x9C);      // 11932 = 100 Hz
        pit.Out(0, 0x2E);
        clock.AdvanceTo(PitCyclesToTicks(clock, 11932) - 1);
        Assert.Equal(0, irq.Raises);
        for (int step = 1; step <= 50; step++)
        {
            clock.AdvanceTo(PitCyclesToTicks(clock, 11932 * step / 10));
        }

        Assert.Equal(5, irq.Raises);
        Assert.False(irq.Level);
    }

    [Fact]
    public void A_long_jump_of_virtual_time_coalesces_missed_ticks_into_one()
    {
        var clock = new VirtualClock();
        var irq = new PortHelpers.RecordingLine();
        var pit = new Pit8254(clock, irq);
        pit.Out(3, 0x34);
        pit.Out(0, 2);    // a hostile 600 kHz rate
        pit.Out(0, 0);
        clock.Advance(clock.Frequency * 10);
        Assert.Equal(1, irq.Raises);
        Assert.True(clock.NextDeadline > clock.Now);
    }

    [Fact]
    public void Mode_3_square_wave_also_ticks_and_counter_reads_back()
    {
        var clock = new VirtualClock();
        var irq = new PortHelpers.RecordingLine();
        var pit = new Pit8254(clock, irq);
        pit.Out(3, 0x36);
        pit.Out(0, 0x00);
        pit.Out(0, 0x10); // 0x1000
        for (int step = 1; step <= 3; step++)
        {
            clock.AdvanceTo(PitCyclesToTicks(clock, 0x1000 * step));
        }

        Assert.Equal(3, irq.Raises);
    }

    [Fact]
    public void Mode_0_raises_once_at_terminal_count_and_holds_until_reprogrammed()
    {
        var clock = new VirtualClock();
        var irq = new PortHelpers.RecordingLine();
        var pit = new Pit8254(clock, irq);
        pit.Out(3, 0x30);
        pit.Out(0, 100);
        pit.Out(0, 0);
        clock.AdvanceTo(PitCyclesToTicks(clock, 1000));
        Assert.Equal(1, irq.Raises);
        Assert.True(irq.Level);
        pit.Out(3, 0x30);
        Assert.False(irq.Level);
    }

    [Fact]
    public void Latched_count_holds_while_time_passes()
    {
        var clock = new VirtualClock();
        var pit = new Pit8254(clock, NullInterruptLine.Instance);
        pit.Out(3, 0x34);
        pit.Out(0, 0x00);
        pit.Out(0, 0x10);
        clock.AdvanceTo(PitCyclesToTicks(clock, 0x100));
        pit.Out(3, 0x00); // latch channel 0
        clock.AdvanceTo(PitCyclesToTicks(clock, 0x300));
        int latched = pit.In(0) | (pit.In(0) << 8);
        Assert.Equal(0x1000 - 0x100, latched);
        int live = pit.In(0) | (pit.In(0) << 8);
        Assert.Equal(0x1000 - 0x300, live);
    }

    [Fact]
    public void Read_back_returns_status_then_count()
    {
        var clock = new VirtualClock();
        var pit = new Pit8254(clock, NullInterruptLine.Instance);
        pit.Out(3, 0xB0); // channel 2, LSB/MSB, mode 0
        pit.Out(2, 0x10);
        pit.Out(2, 0x00);
        pit.Out(3, 0xC8); // read-back count and status of channel 2
        byte status = pit.In(2);
        Assert.Equal(0x30, status & 0x3F); // access 3, mode 0, binary
        Assert.Equal(0, status & 0x40);    // count loaded
        Assert.Equal(0x10, pit.In(2));
        Assert.Equal(0x00, pit.In(2));
    }

    [Fact]
    public void Channel_2_calibration_as_linux_does_it_sees_out2_rise_after_the_count()
    {
        // pit_calibrate_tsc: gate on, speaker off; channel 2 mode 0 with a 10 ms count; poll port 0x61 bit 5.
        var clock = new VirtualClock();
        var pit = new Pit8254(clock, NullInterruptLine.Instance);
        var portB = pit.ControlPortB;
        portB.Out(0, (byte)((portB.In(0) & ~0x02) | 0x01));
        pit.Out(3, 0xB0);
        pit.Out(2, 11932 & 0xFF);
        pit.Out(2, 11932 >> 8);
        Assert.Equal(0, portB.In(0) & 0x20);
        clock.AdvanceTo(PitCyclesToTicks(clock, 11931));
        Assert.Equal(0, portB.In(0) & 0x20);
        clock.AdvanceTo(PitCyclesToTicks(clock, 11933));
        Assert.Equal(0x20, portB.In(0) & 0x20);
        Assert.Equal(0x01, portB.In(0) & 0x03);
    }

    [Fact]
    public void Gate_low_stops_channel_2_counting()
    {
        var clock = new VirtualClock();
        var pit = new Pit8254(clock, NullInterruptLine.Instance);
        pit.ControlPortB.Out(0, 0x01);
        pit.Out(3, 0xB0);
        pit.Out(2, 0x00);
        pit.Out(2, 0x10);
        clock.AdvanceTo(PitCyclesToTicks(clock, 0x100));
        pit.ControlPortB.Out(0, 0x00);
        clock.AdvanceTo(PitCyclesToTicks(clock, 0x800));
        int count = pit.In(2) | (pit.In(2) << 8);
        Assert.Equal(0x1000 - 0x100, count);
    }

    [Fact]
    public void Refresh_bit_toggles_with_virtual_time()
    {
        var clock = new VirtualClock();
        var pit = new Pit8254(clock, NullInterruptLine.Instance);
        byte a = pit.ControlPortB.In(0);
        clock.Advance(15_085);
        byte b = pit.ControlPortB.In(0);
        Assert.NotEqual(a & 0x10, b & 0x10);
    }

    [Fact]
    public void Hostile_port_accesses_do_not_throw()
    {
        var pit = new Pit8254(new VirtualClock(), NullInterruptLine.Instance);
        pit.Write(3, [0xFE]);
        pit.Write(9, [1]);
        pit.Read(3, new byte[4]);
        pit.Read(2, []);
        pit.ControlPortB.Write(3, [1]);
        for (int i = 0; i < 256; i++)
        {
            pit.Out(3, (byte)i);
            pit.Out((ushort)(i % 3), (byte)i);
            pit.In((ushort)(i % 3));
        }
    }
}
