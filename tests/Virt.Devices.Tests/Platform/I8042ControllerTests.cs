using Virt.Devices.Tests.Support;
using Xunit;

namespace Virt.Devices.Tests.Platform;

public sealed class I8042ControllerTests
{
    private readonly PortIoBus _bus = new();
    private readonly RecordingInterruptLine _irq1 = new();
    private readonly I8042Controller _kbc;
    private int _resets;

    public I8042ControllerTests()
    {
        _kbc = new I8042Controller(() => _resets++, _irq1);
        _kbc.AttachTo(_bus);
    }

    private byte In(ushort port)
    {
        var b = new byte[1];
        _bus.Read(port, b);
        return b[0];
    }

    private void Out(ushort port, byte value) => _bus.Write(port, [value]);

    [Fact]
    public void Command_0xFE_pulses_the_reset_line()
    {
        int events = 0;
        _kbc.ResetRequested += (_, _) => events++;

        Out(I8042Controller.CommandPort, I8042Controller.CmdPulseReset);

        Assert.Equal(1, _resets);
        Assert.Equal(1, events);
        Assert.Equal(1, _kbc.ResetCount);
    }

    [Fact]
    public void Clearing_output_port_bit_0_resets_but_other_output_port_writes_do_not()
    {
        Out(I8042Controller.CommandPort, I8042Controller.CmdWriteOutputPort);
        Out(I8042Controller.DataPort, 0x03);
        Assert.Equal(0, _resets);

        Out(I8042Controller.CommandPort, I8042Controller.CmdWriteOutputPort);
        Out(I8042Controller.DataPort, 0x02);
        Assert.Equal(1, _resets);
    }

    [Fact]
    public void Pulse_command_0xFF_does_not_reset()
    {
        Out(I8042Controller.CommandPort, 0xFF);
        Assert.Equal(0, _resets);
    }

    [Fact]
    public void Self_test_answers_0x55_and_sets_the_system_flag()
    {
        Out(I8042Controller.CommandPort, I8042Controller.CmdSelfTest);

        byte status = In(I8042Controller.CommandPort);
        Assert.Equal(I8042Controller.StatusOutputFull, status & I8042Controller.StatusOutputFull);
        Assert.Equal(I8042Controller.StatusSystemFlag, status & I8042Controller.StatusSystemFlag);
        Assert.Equal(I8042Controller.SelfTestPassed, In(I8042Controller.DataPort));
        Assert.Equal(0, In(I8042Controller.CommandPort) & I8042Controller.StatusOutputFull);
    }

    [Fact]
    public void Command_byte_reads_back_what_was_written()
    {
        Out(I8042Controller.CommandPort, I8042Controller.CmdWriteCommandByte);
        Out(I8042Controller.DataPort, 0x47);
        Out(I8042Controller.CommandPort, I8042Controller.CmdReadCommandByte);

        Assert.Equal(0x47, In(I8042Controller.DataPort));
        Assert.Equal(0x47, _kbc.CommandByte);
    }

    [Fact]
    public void Input_buffer_is_never_busy_so_reset_loops_do_not_spin()
    {
        Out(I8042Controller.CommandPort, I8042Controller.CmdSelfTest);
        Assert.Equal(0, In(I8042Controller.CommandPort) & I8042Controller.StatusInputFull);
    }

    [Fact]
    public void Enabling_aux_leaves_it_disabled_so_the_guest_sees_no_aux_port()
    {
        Out(I8042Controller.CommandPort, I8042Controller.CmdEnableAux);
        Out(I8042Controller.CommandPort, I8042Controller.CmdReadCommandByte);

        Assert.Equal(I8042Controller.CtrAuxDisabled, In(I8042Controller.DataPort) & I8042Controller.CtrAuxDisabled);
    }

    [Fact]
    public void Byte_for_the_missing_keyboard_is_answered_with_a_timeout()
    {
        Out(I8042Controller.DataPort, 0xF2); // keyboard "get ID"

        byte status = In(I8042Controller.CommandPort);
        Assert.Equal(I8042Controller.StatusTimeout, status & I8042Controller.StatusTimeout);
        Assert.Equal(0xFF, In(I8042Controller.DataPort));
    }

    [Fact]
    public void Keyboard_interrupt_follows_the_output_buffer_when_enabled_in_the_command_byte()
    {
        Out(I8042Controller.CommandPort, I8042Controller.CmdTestKeyboard);
        Assert.True(_irq1.IsHigh);
        Assert.Equal(0x00, In(I8042Controller.DataPort));
        Assert.False(_irq1.IsHigh);

        Out(I8042Controller.CommandPort, I8042Controller.CmdWriteCommandByte);
        Out(I8042Controller.DataPort, 0x00);
        Out(I8042Controller.CommandPort, I8042Controller.CmdTestKeyboard);
        Assert.False(_irq1.IsHigh);
    }

    [Fact]
    public void Only_ports_0x60_and_0x64_are_claimed()
    {
        Assert.Equal([0x60UL, 0x64UL], _bus.Registrations.Select(r => r.Start));
        Assert.False(_bus.Read(0x61, new byte[1]));
    }
}
