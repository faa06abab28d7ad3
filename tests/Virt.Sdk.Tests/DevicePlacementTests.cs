using Virt.Devices;
using Virt.Devices.Virtio;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>How the device manager places devices, and what Build says when they do not fit.</summary>
public sealed class DevicePlacementTests
{
    private static VirtualMachineBuilder Valid() => VirtualMachine.CreateBuilder()
        .WithInterpreter()
        .WithMemoryMiB(16)
        .WithFlatBinary(new byte[] { 0xF4 }, new GuestAddress(0x100000))
        .WithEntryPoint(new GuestAddress(0x100000));

    private static DeviceResources Ports(ushort count, ushort? at = null, bool interrupt = false) =>
        new() { Port = at, PortCount = count, Interrupt = interrupt };

    [Fact]
    public async Task Automatic_ports_start_at_0x1000_aligned_to_their_size_and_skip_fixed_ones()
    {
        await using var vm = Valid()
            .WithDevice("one", Ports(1), _ => new NullDevice())
            .WithDevice("six", Ports(6), _ => new NullDevice())
            .WithDevice("fixed", Ports(8, at: 0x1008), _ => new NullDevice())
            .WithDevice("large", Ports(0x400), _ => new NullDevice())
            .Build();

        Assert.Equal<ushort?>([0x1000, 0x1010, 0x1008, 0x1100], vm.Devices.Select(d => d.Port));
    }

    [Fact]
    public async Task Lines_and_windows_go_to_virtio_and_user_devices_in_the_order_they_were_added()
    {
        await using var vm = Valid()
            .WithVirtioRng()
            .WithDevice("user", new DeviceResources { MmioSize = 0x1800, Interrupt = true }, _ => new NullDevice())
            .WithVirtioRng()
            .WithDevice("fixed line", new DeviceResources { PortCount = 1, Irq = 7 }, _ => new NullDevice())
            .WithVirtioRng()
            .Build();

        Assert.Equal(
            [
                new DevicePlacement("user", null, 0, new GuestAddress(0xD000_1000), 0x1800, 6),
                new DevicePlacement("fixed line", 0x1000, 1, null, 0, 7),
            ],
            vm.Devices);
        Assert.Equal(
            [
                new VirtioDeviceInfo("virtio-rng", new GuestAddress(0xD000_0000), VirtioMmioTransport.WindowSize, 5),
                new VirtioDeviceInfo("virtio-rng", new GuestAddress(0xD000_3000), VirtioMmioTransport.WindowSize, 9),
                new VirtioDeviceInfo("virtio-rng", new GuestAddress(0xD000_4000), VirtioMmioTransport.WindowSize, 10),
            ],
            vm.VirtioDevices);
    }

    [Fact]
    public async Task A_fixed_window_is_kept_and_virtio_windows_go_around_it()
    {
        await using var vm = Valid()
            .WithVirtioRng()
            .WithMmioDevice(new GuestAddress(0xD000_0000), 0x1000, new NullDevice(), "fixed")
            .Build();

        Assert.Equal(new GuestAddress(0xD000_1000), Assert.Single(vm.VirtioDevices).Address);
        Assert.Equal(new DevicePlacement("fixed", null, 0, new GuestAddress(0xD000_0000), 0x1000, null), Assert.Single(vm.Devices));
    }

    [Fact]
    public void Fixed_ports_overlapping_another_device_are_refused_naming_both()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithDevice("first", Ports(4, at: 0x510), _ => new NullDevice())
            .WithDevice("second", Ports(2, at: 0x512), _ => new NullDevice())
            .Build());
        Assert.Contains("'first'", ex.Message, StringComparison.Ordinal);
        Assert.Contains("'second'", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Ports_the_interrupt_controllers_claim_are_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithInterruptController()
            .WithDevice("timer", Ports(1, at: 0x43), _ => new NullDevice())
            .Build());
        Assert.Contains("8254 PIT", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_window_over_the_ioapic_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithInterruptController()
            .WithDevice("shadow", new DeviceResources { MmioAddress = new GuestAddress(0xFEC0_0800), MmioSize = 0x100 }, _ => new NullDevice())
            .Build());
        Assert.Contains("IOAPIC", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_line_a_platform_device_uses_is_refused_naming_it()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithSerialConsole(Stream.Null)
            .WithDevice("com1 clash", Ports(1, interrupt: true) with { Irq = 4 }, _ => new NullDevice())
            .Build());
        Assert.Contains("serial console", ex.Message, StringComparison.Ordinal);
        Assert.Contains("Irq", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_same_fixed_line_twice_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithDevice("a", new DeviceResources { PortCount = 1, Irq = 9 }, _ => new NullDevice())
            .WithDevice("b", new DeviceResources { PortCount = 1, Irq = 9 }, _ => new NullDevice())
            .Build());
        Assert.Contains("'a'", ex.Message, StringComparison.Ordinal);
        Assert.Contains("'b'", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_line_above_23_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithDevice("far", new DeviceResources { PortCount = 1, Irq = 24 }, _ => new NullDevice())
            .Build());
        Assert.Contains("0-23", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Running_out_of_interrupt_lines_says_which_device_got_none()
    {
        var builder = Valid();
        for (int i = 0; i < 17; i++)
        {
            builder = builder.WithDevice($"device {i}", Ports(1, interrupt: true), _ => new NullDevice());
        }

        var ex = Assert.Throws<ArgumentException>(builder.Build);
        Assert.Contains("No free interrupt line for 'device 16'", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Running_out_of_ports_says_what_to_change()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithDevice("everything", Ports(0xF000), _ => new NullDevice())
            .WithDevice("one more", Ports(1), _ => new NullDevice())
            .Build());
        Assert.Contains("'one more'", ex.Message, StringComparison.Ordinal);
        Assert.Contains("DeviceResources.Port", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_window_larger_than_the_device_region_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithDevice("huge", new DeviceResources { MmioSize = 1UL << 30 }, _ => new NullDevice())
            .Build());
        Assert.Contains("No free MMIO window", ex.Message, StringComparison.Ordinal);
        Assert.Contains("MmioAddress", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ram_larger_than_the_space_below_the_device_region_moves_above_4_GiB_and_windows_still_fit()
    {
        await using var vm = Valid()
            .WithMemoryMiB(4096)
            .WithDevice("window", new DeviceResources { MmioSize = 0x1000 }, _ => new NullDevice())
            .Build();
        Assert.Equal(2, vm.Memory.Regions.Count);
        Assert.Equal(VirtualMachineBuilder.VirtioMmioBase, vm.Memory.Regions[0].Size);
        Assert.Equal(new GuestAddress(1UL << 32), vm.Memory.Regions[1].Start);
        Assert.Equal(4096UL << 20, vm.Memory.TotalSize);
    }

    [Fact]
    public void A_device_without_ports_or_window_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithDevice("nothing", new DeviceResources { Interrupt = true }, _ => new NullDevice())
            .Build());
        Assert.Contains("PortCount or MmioSize", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_device_that_cannot_serve_its_ports_is_refused_and_what_was_created_is_released()
    {
        var resource = new Resource();
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithDevice("first", Ports(1), context =>
            {
                context.DisposeWithMachine(resource);
                return new NullDevice();
            })
            .WithDevice("mmio only", Ports(1), _ => new MmioOnlyDevice())
            .Build());
        Assert.Contains("IPortIoDevice", ex.Message, StringComparison.Ordinal);
        Assert.True(resource.Disposed);
    }

    [Fact]
    public async Task Resources_a_factory_registers_are_released_with_the_vm()
    {
        var resource = new Resource();
        var vm = Valid()
            .WithDevice("owner", Ports(1), context =>
            {
                context.DisposeWithMachine(resource);
                return new NullDevice();
            })
            .Build();
        Assert.False(resource.Disposed);

        await vm.DisposeAsync();

        Assert.True(resource.Disposed);
    }

    [Fact]
    public void Asking_for_the_interrupt_line_of_a_device_without_one_says_how_to_get_one()
    {
        var ex = Assert.Throws<InvalidOperationException>(() => Valid()
            .WithDevice("quiet", Ports(1), context => new LineHolder(context.InterruptLine))
            .Build());
        Assert.Contains("DeviceResources.Interrupt", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Each_build_calls_the_factory_again()
    {
        int created = 0;
        var builder = Valid().WithDevice("counted", Ports(1), _ =>
        {
            created++;
            return new NullDevice();
        });

        await using (builder.Build())
        {
        }

        await using (builder.Build())
        {
        }

        Assert.Equal(2, created);
    }

    [Fact]
    public void With_device_returns_a_new_builder_and_leaves_the_original_alone()
    {
        var a = Valid();
        var b = a.WithDevice("new", Ports(1), _ => new NullDevice());
        Assert.NotSame(a, b);
        Assert.Empty(a.Configuration.Devices);
        Assert.Single(b.Configuration.Devices);
    }

    private sealed class NullDevice : IPortIoDevice, IMmioDevice
    {
        public void Read(ushort offset, Span<byte> data) => data.Clear();

        public void Write(ushort offset, ReadOnlySpan<byte> data) { }

        public void Read(ulong offset, Span<byte> data) => data.Clear();

        public void Write(ulong offset, ReadOnlySpan<byte> data) { }
    }

    private sealed class MmioOnlyDevice : IMmioDevice
    {
        public void Read(ulong offset, Span<byte> data) => data.Clear();

        public void Write(ulong offset, ReadOnlySpan<byte> data) { }
    }

    private sealed class LineHolder(IInterruptLine line) : IPortIoDevice
    {
        public void Read(ushort offset, Span<byte> data) => line.Lower();

        public void Write(ushort offset, ReadOnlySpan<byte> data) => line.Raise();
    }

    private sealed class Resource : IAsyncDisposable
    {
        public bool Disposed { get; private set; }

        public ValueTask DisposeAsync()
        {
            Disposed = true;
            return ValueTask.CompletedTask;
        }
    }
}
