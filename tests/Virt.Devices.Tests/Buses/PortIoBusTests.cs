using Xunit;
using Virt.Devices.Tests.Support;

namespace Virt.Devices.Tests.Buses;

public sealed class PortIoBusTests
{
    [Fact]
    public void Access_is_dispatched_to_the_device_owning_the_port_with_offset_relative_to_its_range()
    {
        var bus = new PortIoBus();
        var a = new RecordingDevice(0xA0);
        var b = new RecordingDevice(0xB0);
        bus.Register(0x3F8, 8, a, "com1");
        bus.Register(0x2F8, 8, b, "com2");

        Span<byte> data = stackalloc byte[1];
        Assert.True(bus.Read(0x3FD, data));
        Assert.Equal(0xA5, data[0]);
        Assert.True(bus.Write(0x2F9, [0x42]));

        Assert.Equal(5UL, a.Accesses[0].Offset);
        Assert.False(a.Accesses[0].IsWrite);
        Assert.Single(b.Accesses);
        Assert.Equal(1UL, b.Accesses[0].Offset);
        Assert.Equal([0x42], b.Accesses[0].Data);
    }

    [Fact]
    public void Overlapping_registration_throws_ArgumentException_naming_both_devices_and_ranges()
    {
        var bus = new PortIoBus();
        bus.Register(0x3F8, 8, new RecordingDevice(), "com1");

        var ex = Assert.Throws<ArgumentException>(() => bus.Register(0x3FC, 4, new RecordingDevice(), "intruder"));

        Assert.Contains("'intruder'", ex.Message);
        Assert.Contains("'com1'", ex.Message);
        Assert.Contains("0x3fc-0x3ff", ex.Message);
        Assert.Contains("0x3f8-0x3ff", ex.Message);
    }

    [Theory]
    [InlineData(0x3F0, 9)] // ends inside
    [InlineData(0x3FF, 1)] // last port
    [InlineData(0x3F0, 0x20)] // covers
    public void Any_overlap_is_rejected(int start, int length)
    {
        var bus = new PortIoBus();
        bus.Register(0x3F8, 8, new RecordingDevice(), "com1");

        Assert.Throws<ArgumentException>(() => bus.Register((ushort)start, (ushort)length, new RecordingDevice(), "other"));
    }

    [Fact]
    public void Adjacent_ranges_are_accepted()
    {
        var bus = new PortIoBus();
        bus.Register(0x3F8, 8, new RecordingDevice(), "com1");
        bus.Register(0x3F0, 8, new RecordingDevice(), "below");
        bus.Register(0x400, 8, new RecordingDevice(), "above");

        Assert.Equal([0x3F0UL, 0x3F8UL, 0x400UL], bus.Registrations.Select(r => r.Start));
    }

    [Fact]
    public void Range_past_port_0xffff_or_empty_is_rejected()
    {
        var bus = new PortIoBus();
        Assert.Throws<ArgumentException>(() => bus.Register(0xFFFE, 4, new RecordingDevice(), "wraps"));
        Assert.Throws<ArgumentOutOfRangeException>(() => bus.Register(0x100, 0, new RecordingDevice(), "empty"));
        bus.Register(0xFFFC, 4, new RecordingDevice(), "top");
    }

    [Fact]
    public void Unclaimed_read_returns_all_ones_and_is_counted_and_reported()
    {
        var bus = new PortIoBus();
        var events = new List<UnhandledPortAccessEventArgs>();
        bus.UnhandledAccess += (_, e) => events.Add(e);

        var data = new byte[4];
        Assert.False(bus.Read(0x80, data));
        Assert.False(bus.Write(0x81, [1, 2]));

        Assert.Equal([0xFF, 0xFF, 0xFF, 0xFF], data);
        Assert.Equal(2, bus.UnhandledAccessCount);
        Assert.Equal((ushort)0x80, events[0].Port);
        Assert.Equal(4, events[0].Size);
        Assert.False(events[0].IsWrite);
        Assert.True(events[1].IsWrite);
    }

    [Fact]
    public void Access_straddling_the_end_of_a_range_gives_the_device_only_its_bytes_and_reads_the_rest_as_all_ones()
    {
        var bus = new PortIoBus();
        var dev = new RecordingDevice(0xA0);
        bus.Register(0x3F8, 8, dev, "com1");

        var data = new byte[4];
        Assert.True(bus.Read(0x3FE, data));

        Assert.Equal([0xA6, 0xA7, 0xFF, 0xFF], data);
        Assert.Equal(6UL, dev.Accesses[0].Offset);
        Assert.Equal(2, dev.Accesses[0].Data.Length);
        Assert.Equal(1, bus.UnhandledAccessCount);
    }

    [Fact]
    public void Access_straddling_two_adjacent_devices_is_split_between_them()
    {
        var bus = new PortIoBus();
        var a = new RecordingDevice(0xA0);
        var b = new RecordingDevice(0xB0);
        bus.Register(0x100, 2, a, "a");
        bus.Register(0x102, 2, b, "b");

        Assert.True(bus.Write(0x101, [1, 2, 3]));

        Assert.Equal(1UL, a.Accesses[0].Offset);
        Assert.Equal([1], a.Accesses[0].Data);
        Assert.Equal(0UL, b.Accesses[0].Offset);
        Assert.Equal([2, 3], b.Accesses[0].Data);
    }

    [Fact]
    public void Access_starting_in_a_gap_reaches_the_device_after_it()
    {
        var bus = new PortIoBus();
        var dev = new RecordingDevice(0xA0);
        bus.Register(0x102, 2, dev, "dev");

        var data = new byte[4];
        Assert.True(bus.Read(0x100, data));

        Assert.Equal([0xFF, 0xFF, 0xA0, 0xA1], data);
    }

    [Fact]
    public void Access_running_past_port_0xffff_reads_all_ones_for_the_missing_ports()
    {
        var bus = new PortIoBus();
        bus.Register(0xFFFE, 2, new RecordingDevice(0xA0), "top");

        var data = new byte[4];
        Assert.True(bus.Read(0xFFFF, data));

        Assert.Equal([0xA1, 0xFF, 0xFF, 0xFF], data);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    public void Access_of_an_impossible_size_is_not_dispatched(int size)
    {
        var bus = new PortIoBus();
        var dev = new RecordingDevice();
        bus.Register(0x100, 16, dev, "dev");

        var data = new byte[size];
        Assert.False(bus.Read(0x100, data));

        Assert.Empty(dev.Accesses);
        Assert.All(data, b => Assert.Equal(0xFF, b));
    }

    [Fact]
    public void Faulting_device_is_contained_reads_return_all_ones_and_the_fault_is_reported()
    {
        var bus = new PortIoBus();
        bus.Register(0x100, 4, new ThrowingDevice(), "buggy");
        var faults = new List<DeviceFaultedEventArgs>();
        bus.DeviceFaulted += (_, e) => faults.Add(e);

        var data = new byte[2];
        bool claimedRead = bus.Read(0x100, data);
        bool claimedWrite = bus.Write(0x101, [1]);

        Assert.True(claimedRead);
        Assert.True(claimedWrite);
        Assert.Equal([0xFF, 0xFF], data);
        Assert.Equal(2, bus.DeviceFaultCount);
        Assert.Equal("buggy", faults[0].DeviceName);
        Assert.IsType<InvalidOperationException>(faults[0].Exception);
    }

    [Fact]
    public void Unregistered_device_no_longer_receives_accesses()
    {
        var bus = new PortIoBus();
        var dev = new RecordingDevice();
        bus.Register(0x100, 4, dev, "dev");

        Assert.True(bus.Unregister(0x100));
        Assert.False(bus.Unregister(0x100));
        Assert.False(bus.Write(0x100, [1]));
        Assert.Empty(dev.Accesses);

        bus.Register(0x100, 4, new RecordingDevice(), "replacement");
    }

    [Fact]
    public void Unregistering_a_device_removes_all_its_ranges()
    {
        var bus = new PortIoBus();
        var dev = new RecordingDevice();
        bus.Register(0x60, 1, dev, "data", 0);
        bus.Register(0x64, 1, dev, "command", 4);

        Assert.Equal(2, bus.Unregister(dev));
        Assert.Empty(bus.Registrations);
    }

    [Fact]
    public void Device_offset_bias_lets_one_device_tell_its_scattered_ports_apart()
    {
        var bus = new PortIoBus();
        var dev = new RecordingDevice();
        bus.Register(0x60, 1, dev, "data", 0);
        bus.Register(0x64, 1, dev, "command", 4);

        bus.Write(0x64, [0xAA]);
        bus.Write(0x60, [0x11]);

        Assert.Equal([4UL, 0UL], dev.Accesses.Select(a => a.Offset));
        Assert.False(bus.Write(0x61, [0]));
    }

    [Fact]
    public void Many_devices_are_found_by_binary_search()
    {
        var bus = new PortIoBus();
        var devices = new RecordingDevice[100];
        for (int i = 0; i < devices.Length; i++)
        {
            devices[i] = new RecordingDevice();
            // Register in a scrambled order so insertion keeps the array sorted.
            int slot = (i * 37) % 100;
            bus.Register((ushort)(0x1000 + (slot * 16)), 8, devices[i], $"dev{slot}");
        }

        for (int slot = 0; slot < 100; slot++)
        {
            Assert.True(bus.Write((ushort)(0x1000 + (slot * 16) + 7), [1]));
            Assert.False(bus.Write((ushort)(0x1000 + (slot * 16) + 8), [1]));
        }

        Assert.All(devices, d => Assert.Equal(7UL, Assert.Single(d.Accesses).Offset));
    }

    [Fact]
    public async Task Registration_while_another_thread_dispatches_never_loses_a_registered_device()
    {
        var bus = new PortIoBus();
        var dev = new CountingDevice();
        var stable = new CountingDevice();
        bus.Register(0x3F8, 8, stable, "stable");
        using var stop = new CancellationTokenSource();
        var reader = Task.Run(() =>
        {
            int misses = 0;
            var b = new byte[1];
            while (!stop.IsCancellationRequested)
            {
                if (!bus.Read(0x3F8, b))
                {
                    misses++;
                }
            }

            return misses;
        });

        // Let the reader start dispatching before the registrations begin, so the two really overlap.
        while (stable.Reads == 0 && !reader.IsCompleted)
        {
            await Task.Yield();
        }

        for (int i = 0; i < 2000; i++)
        {
            bus.Register((ushort)(0x1000 + i), 1, dev, $"d{i}");
        }

        for (int i = 0; i < 2000; i++)
        {
            bus.Unregister((ushort)(0x1000 + i));
        }

        stop.Cancel();
        Assert.Equal(0, await reader);
        Assert.True(stable.Reads > 0);
    }

    private sealed class CountingDevice : IPortIoDevice
    {
        private long _reads;

        public long Reads => Interlocked.Read(ref _reads);

        public void Read(ushort offset, Span<byte> data)
        {
            Interlocked.Increment(ref _reads);
            data.Clear();
        }

        public void Write(ushort offset, ReadOnlySpan<byte> data)
        {
        }
    }
}
