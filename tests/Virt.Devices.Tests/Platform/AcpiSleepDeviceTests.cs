using Xunit;

namespace Virt.Devices.Tests.Platform;

public sealed class AcpiSleepDeviceTests
{
    [Fact]
    public void Writing_SLP_EN_with_the_S5_sleep_type_requests_power_off()
    {
        int callbacks = 0;
        int events = 0;
        var device = new AcpiSleepDevice(onPowerOff: () => callbacks++);
        device.PowerOffRequested += (_, _) => events++;

        // What Linux's acpi_hw_extended_sleep writes for S5: (SLP_TYPa << 2) | SLP_EN.
        device.Write(AcpiSleepDevice.SleepControlOffset, [(byte)((AcpiSleepDevice.S5SleepType << AcpiSleepDevice.SleepTypeShift) | AcpiSleepDevice.SleepEnable)]);

        Assert.Equal(1, callbacks);
        Assert.Equal(1, events);
        Assert.Equal(1, device.PowerOffCount);
    }

    [Theory]
    [InlineData(0x14)] // S5 type without SLP_EN
    [InlineData(0x2C)] // SLP_EN with type 3
    [InlineData(0x80)] // WAK_STS written to the wrong register
    public void Other_sleep_control_writes_do_nothing(byte value)
    {
        var device = new AcpiSleepDevice(onPowerOff: () => Assert.Fail("powered off"));
        device.Write(AcpiSleepDevice.SleepControlOffset, [value]);
        Assert.Equal(0, device.PowerOffCount);
    }

    [Fact]
    public void Clearing_wake_status_is_accepted_and_status_reads_zero()
    {
        var device = new AcpiSleepDevice();
        device.Write(AcpiSleepDevice.SleepStatusOffset, [AcpiSleepDevice.WakeStatus]);

        var data = new byte[1];
        device.Read(AcpiSleepDevice.SleepStatusOffset, data);

        Assert.Equal(0, data[0]);
    }

    [Fact]
    public void Writing_the_reset_value_to_the_reset_register_requests_a_reset()
    {
        int resets = 0;
        var device = new AcpiSleepDevice(onReset: () => resets++);
        var bus = new PortIoBus();
        bus.Register(AcpiSleepDevice.DefaultPort, AcpiSleepDevice.PortCount, device, "acpi-sleep");

        bus.Write(AcpiSleepDevice.DefaultPort + AcpiSleepDevice.ResetOffset, [0x02]);
        Assert.Equal(0, resets);
        bus.Write(AcpiSleepDevice.DefaultPort + AcpiSleepDevice.ResetOffset, [AcpiSleepDevice.ResetValue]);
        Assert.Equal(1, resets);
    }
}
