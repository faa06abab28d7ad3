using Xunit;

namespace Virt.Devices.Tests.Platform;

public sealed class DebugExitDeviceTests
{
    private static (DebugExitDevice Device, PortIoBus Bus, List<int> Codes) Rig(int width = 1, DebugExitConvention convention = DebugExitConvention.Raw)
    {
        var codes = new List<int>();
        var device = new DebugExitDevice(codes.Add, width, convention);
        var bus = new PortIoBus();
        bus.Register(DebugExitDevice.DefaultPort, (ushort)width, device, "debug-exit");
        return (device, bus, codes);
    }

    [Fact]
    public void Byte_written_is_reported_as_the_exit_code_unchanged()
    {
        var (device, bus, codes) = Rig();
        DebugExitEventArgs? fromEvent = null;
        device.ExitRequested += (_, e) => fromEvent = e;

        bus.Write(0x501, [42]);

        Assert.Equal([42], codes);
        Assert.Equal(42, fromEvent?.ExitCode);
        Assert.Equal(42u, fromEvent?.Value);
        Assert.Equal(42, device.LastExitCode);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void One_port_device_takes_the_low_byte_of_a_wider_write(int size)
    {
        var (_, bus, codes) = Rig();

        bus.Write(0x501, BitConverter.GetBytes(0x1234_5607u).AsSpan(0, size));

        Assert.Equal([0x07], codes);
    }

    [Theory]
    [InlineData(1, 0xA5u)]
    [InlineData(2, 0xBEEFu)]
    [InlineData(4, 0x1234_5678u)]
    public void Device_of_each_width_reports_the_whole_value_written_at_that_width(int width, uint value)
    {
        var (device, bus, codes) = Rig(width);

        bus.Write(0x501, BitConverter.GetBytes(value).AsSpan(0, width));

        Assert.Equal([(int)value], codes);
        Assert.Equal(width, device.Width);
        Assert.Equal((ulong)width, bus.Registrations.Single().Length);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void Device_of_each_width_takes_no_more_than_its_width_of_a_four_byte_write(int width)
    {
        var (_, bus, codes) = Rig(width);

        bus.Write(0x501, BitConverter.GetBytes(0x8877_6655u));

        uint expected = width == 4 ? 0x8877_6655u : width == 2 ? 0x6655u : 0x55u;
        Assert.Equal([unchecked((int)expected)], codes);
    }

    [Theory]
    [InlineData(1, 0u, 1)]
    [InlineData(1, 0x31u, 0x63)]
    [InlineData(1, 0xFFu, 0x1FF)]
    [InlineData(2, 0x1234u, 0x2469)]
    [InlineData(4, 0x10u, 0x21)]
    [InlineData(4, 0x8000_0000u, 1)]
    public void Qemu_convention_reports_the_value_shifted_left_with_bit_0_set(int width, uint value, int expected)
    {
        var (device, bus, codes) = Rig(width, DebugExitConvention.QemuIsaDebugExit);

        bus.Write(0x501, BitConverter.GetBytes(value).AsSpan(0, width));

        Assert.Equal([expected], codes);
        Assert.Equal(expected, device.LastExitCode);
    }

    [Fact]
    public void Raw_four_byte_value_above_int_max_reads_as_a_negative_exit_code()
    {
        var (_, bus, codes) = Rig(4);

        bus.Write(0x501, BitConverter.GetBytes(0xFFFF_FFFEu));

        Assert.Equal([-2], codes);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(8)]
    public void Width_other_than_1_2_or_4_is_refused(int width) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new DebugExitDevice(width: width));

    [Fact]
    public void Nothing_is_reported_until_the_guest_writes()
    {
        bool called = false;
        var device = new DebugExitDevice(_ => called = true);
        var data = new byte[1];

        device.Read(0, data);

        Assert.False(called);
        Assert.Null(device.LastExitCode);
        Assert.Equal(0xFF, data[0]);
    }
}
