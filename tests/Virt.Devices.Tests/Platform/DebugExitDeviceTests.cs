using Xunit;

namespace Virt.Devices.Tests.Platform;

public sealed class DebugExitDeviceTests
{
    [Fact]
    public void Byte_written_is_reported_as_the_exit_code_unchanged()
    {
        byte? fromCallback = null;
        var device = new DebugExitDevice(code => fromCallback = code);
        DebugExitEventArgs? fromEvent = null;
        device.ExitRequested += (_, e) => fromEvent = e;
        var bus = new PortIoBus();
        bus.Register(DebugExitDevice.DefaultPort, DebugExitDevice.PortCount, device, "debug-exit");

        bus.Write(0x501, [42]);

        Assert.Equal((byte)42, fromCallback);
        Assert.Equal((byte)42, fromEvent?.ExitCode);
        Assert.Equal((byte)42, device.LastExitCode);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void Wider_write_uses_the_low_byte(int size)
    {
        byte? code = null;
        var device = new DebugExitDevice(c => code = c);
        var bus = new PortIoBus();
        bus.Register(DebugExitDevice.DefaultPort, DebugExitDevice.PortCount, device, "debug-exit");

        byte[] value = BitConverter.GetBytes(0x1234_5607u)[..size];
        bus.Write(0x501, value);

        Assert.Equal((byte)0x07, code);
    }

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
