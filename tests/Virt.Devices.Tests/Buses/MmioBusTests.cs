using Xunit;
using Virt.Devices.Tests.Support;

namespace Virt.Devices.Tests.Buses;

public sealed class MmioBusTests
{
    [Fact]
    public void Access_is_dispatched_by_address_with_offset_relative_to_the_range()
    {
        var bus = new MmioBus();
        var dev = new RecordingDevice(0xA0);
        bus.Register(new GuestAddress(0xD000_0000), 0x200, dev, "virtio0");

        var data = new byte[8];
        Assert.True(bus.Read(new GuestAddress(0xD000_0108), data));
        Assert.True(bus.Write(new GuestAddress(0xD000_0070), [1, 2, 3, 4]));

        Assert.Equal(0x108UL, dev.Accesses[0].Offset);
        Assert.Equal(8, dev.Accesses[0].Data.Length);
        Assert.Equal(0x70UL, dev.Accesses[1].Offset);
    }

    [Fact]
    public void Overlapping_registration_names_both_devices_and_ranges()
    {
        var bus = new MmioBus();
        bus.Register(new GuestAddress(0xD000_0000), 0x1000, new RecordingDevice(), "virtio0");

        var ex = Assert.Throws<ArgumentException>(() => bus.Register(new GuestAddress(0xD000_0800), 0x1000, new RecordingDevice(), "virtio1"));

        Assert.Contains("'virtio0' at 0xd0000000-0xd0000fff", ex.Message);
        Assert.Contains("'virtio1' at 0xd0000800-0xd00017ff", ex.Message);
    }

    [Fact]
    public void Range_wrapping_past_the_top_of_the_address_space_is_rejected()
    {
        var bus = new MmioBus();
        Assert.Throws<ArgumentException>(() => bus.Register(new GuestAddress(ulong.MaxValue - 0xF), 0x10, new RecordingDevice(), "top"));
        bus.Register(new GuestAddress(ulong.MaxValue - 0x10), 0x10, new RecordingDevice(), "almost top");
    }

    [Fact]
    public void Unclaimed_read_returns_all_ones()
    {
        var bus = new MmioBus();
        var data = new byte[8];
        Assert.False(bus.Read(new GuestAddress(0xFEE0_0000), data));
        Assert.All(data, b => Assert.Equal(0xFF, b));
        Assert.Equal(1, bus.UnhandledAccessCount);
    }

    [Fact]
    public void Read_at_the_very_top_of_the_address_space_does_not_wrap()
    {
        var bus = new MmioBus();
        var low = new RecordingDevice();
        bus.Register(GuestAddress.Zero, 0x10, low, "low");

        var data = new byte[8];
        Assert.False(bus.Read(new GuestAddress(ulong.MaxValue - 3), data));

        Assert.Empty(low.Accesses);
        Assert.All(data, b => Assert.Equal(0xFF, b));
    }

    [Fact]
    public void Straddling_access_is_split_at_the_range_end()
    {
        var bus = new MmioBus();
        var dev = new RecordingDevice(0xA0);
        bus.Register(new GuestAddress(0x1000), 0x10, dev, "dev");

        var data = new byte[8];
        Assert.True(bus.Read(new GuestAddress(0x100C), data));

        Assert.Equal([0xAC, 0xAD, 0xAE, 0xAF, 0xFF, 0xFF, 0xFF, 0xFF], data);
    }

    [Fact]
    public void Faulting_device_is_contained()
    {
        var bus = new MmioBus();
        bus.Register(new GuestAddress(0x1000), 0x10, new ThrowingDevice(), "buggy");
        DeviceFaultedEventArgs? fault = null;
        bus.DeviceFaulted += (_, e) => fault = e;

        var data = new byte[4];
        bus.Read(new GuestAddress(0x1000), data);

        Assert.Equal([0xFF, 0xFF, 0xFF, 0xFF], data);
        Assert.Equal("buggy", fault?.DeviceName);
        Assert.Equal(1, bus.DeviceFaultCount);
    }

    [Fact]
    public void Unregister_by_start_and_by_device()
    {
        var bus = new MmioBus();
        var dev = new RecordingDevice();
        bus.Register(new GuestAddress(0x1000), 0x10, dev, "a");
        bus.Register(new GuestAddress(0x2000), 0x10, dev, "b");

        Assert.True(bus.Unregister(new GuestAddress(0x1000)));
        Assert.Equal(1, bus.Unregister(dev));
        Assert.Empty(bus.Registrations);
    }
}
