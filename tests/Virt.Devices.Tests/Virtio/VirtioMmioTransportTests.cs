using Virt.Devices.Virtio;
using Virt.Testing.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

public sealed class VirtioMmioTransportTests
{
    [Fact]
    public void Identification_registers_read_as_virtio_mmio_version_2()
    {
        using var rig = new VirtioRig(initialize: false);
        Assert.Equal(0x74726976u, rig.Driver.ReadRegister(0x000));
        Assert.Equal(2u, rig.Driver.ReadRegister(0x004));
        Assert.Equal(4u, rig.Driver.ReadRegister(0x008));
        Assert.NotEqual(0u, rig.Driver.ReadRegister(0x00c));
    }

    [Fact]
    public void Device_features_include_version_1_event_idx_and_indirect()
    {
        using var rig = new VirtioRig(initialize: false);
        ulong features = rig.Driver.ReadDeviceFeatures();
        Assert.Equal(MockVirtioDriver.Version1 | MockVirtioDriver.EventIdx | MockVirtioDriver.IndirectDesc | (1UL << 3), features);
    }

    [Fact]
    public void Driver_without_version_1_does_not_get_features_ok()
    {
        using var rig = new VirtioRig(initialize: false);
        rig.Driver.WriteRegister(0x70, 1 | 2);
        rig.Driver.WriteRegister(0x24, 0);
        rig.Driver.WriteRegister(0x20, 1u << 3);
        rig.Driver.WriteRegister(0x70, 1 | 2 | 8);
        Assert.Equal(3u, rig.Driver.Status);
    }

    [Fact]
    public void Driver_accepting_unoffered_features_does_not_get_features_ok()
    {
        using var rig = new VirtioRig(initialize: false);
        rig.Driver.WriteRegister(0x70, 1 | 2);
        rig.Driver.WriteRegister(0x24, 0);
        rig.Driver.WriteRegister(0x20, 1u << 7);
        rig.Driver.WriteRegister(0x24, 1);
        rig.Driver.WriteRegister(0x20, 1);
        rig.Driver.WriteRegister(0x70, 1 | 2 | 8);
        Assert.Equal(0u, rig.Driver.Status & 8);
    }

    [Fact]
    public void Driver_ok_before_features_ok_needs_reset()
    {
        using var rig = new VirtioRig(initialize: false);
        rig.Driver.WriteRegister(0x70, 1 | 2 | 4);
        Assert.True(rig.NeedsReset);
        Assert.Null(rig.Device.Context);
    }

    [Fact]
    public void Writing_zero_to_status_resets_device_and_lowers_interrupt()
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);
        Assert.True(rig.Irq.IsHigh);
        int resetsBefore = rig.Device.Resets;

        rig.Driver.WriteRegister(0x70, 0);

        Assert.Equal(0u, rig.Driver.Status);
        Assert.False(rig.Irq.IsHigh);
        Assert.Equal(0u, rig.Driver.ReadRegister(0x60));
        Assert.Equal(resetsBefore + 1, rig.Device.Resets);
        Assert.Equal(0u, rig.Driver.ReadRegister(0x44));
    }

    [Fact]
    public void Used_buffer_interrupt_is_acknowledged_through_interrupt_ack()
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);

        Assert.Equal(1u, rig.Driver.ReadRegister(0x60));
        Assert.True(rig.Irq.IsHigh);
        rig.Driver.WriteRegister(0x64, 1);
        Assert.Equal(0u, rig.Driver.ReadRegister(0x60));
        Assert.False(rig.Irq.IsHigh);
    }

    [Fact]
    public void No_interrupt_flag_suppresses_the_interrupt_without_event_idx()
    {
        using var rig = new VirtioRig(features: ~MockVirtioDriver.EventIdx);
        rig.Queue.SetAvailFlags(1);
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);
        Assert.Equal(1, rig.Queue.UsedIndex);
        Assert.Equal(0, rig.Irq.RaiseCount);
    }

    [Fact]
    public void Used_event_decides_when_to_interrupt_with_event_idx()
    {
        using var rig = new VirtioRig();
        rig.Queue.SetUsedEvent(1);
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);
        Assert.Equal(0, rig.Irq.RaiseCount);

        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);
        Assert.Equal(1, rig.Irq.RaiseCount);
    }

    [Fact]
    public void Avail_event_is_published_with_event_idx()
    {
        using var rig = new VirtioRig();
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Queue.AddChain((rig.Driver.Allocate(8), 8, true));
        rig.Driver.Notify(0);
        Assert.Equal(2, rig.Queue.AvailEvent);
    }

    [Fact]
    public void Config_space_is_read_and_written_through_the_window()
    {
        using var rig = new VirtioRig();
        Assert.Equal(new byte[] { 3, 4 }, rig.Driver.ReadConfig(2, 2));
        rig.Transport.Write(0x100 + 1, new byte[] { 9 });
        Assert.Equal(new byte[] { 1, 9, 3 }, rig.Driver.ReadConfig(0, 3));
        Assert.Equal(new byte[4], rig.Driver.ReadConfig(6, 4));
    }

    [Fact]
    public void Config_change_bumps_generation_and_raises_config_interrupt()
    {
        using var rig = new VirtioRig();
        uint before = rig.Driver.ReadRegister(0xfc);
        rig.Device.Context!.SignalConfigChanged();
        Assert.Equal(before + 1, rig.Driver.ReadRegister(0xfc));
        Assert.Equal(2u, rig.Driver.ReadRegister(0x60) & 2);
    }

    [Fact]
    public void Shared_memory_regions_are_absent()
    {
        using var rig = new VirtioRig();
        rig.Driver.WriteRegister(0xac, 0);
        Assert.Equal(uint.MaxValue, rig.Driver.ReadRegister(0xb0));
        Assert.Equal(uint.MaxValue, rig.Driver.ReadRegister(0xb4));
    }

    [Fact]
    public void Queue_num_max_is_zero_for_a_queue_that_does_not_exist()
    {
        using var rig = new VirtioRig(initialize: false);
        rig.Driver.WriteRegister(0x30, 0);
        Assert.Equal(16u, rig.Driver.ReadRegister(0x34));
        rig.Driver.WriteRegister(0x30, 1);
        Assert.Equal(0u, rig.Driver.ReadRegister(0x34));
    }

    [Theory]
    [InlineData(0x70UL, 1)]
    [InlineData(0x71UL, 2)]
    [InlineData(0x1f8UL, 8)]
    [InlineData(0x1ffUL, 4)]
    [InlineData(0x400UL, 4)]
    [InlineData(ulong.MaxValue, 4)]
    public void Odd_sized_or_out_of_window_accesses_are_ignored(ulong offset, int size)
    {
        using var rig = new VirtioRig();
        var data = new byte[size];
        Array.Fill(data, (byte)0xff);
        rig.Transport.Write(offset, data);
        rig.Transport.Read(offset, data);
        Assert.Equal(15u, rig.Driver.Status);
    }

    [Fact]
    public void Notify_for_a_queue_that_does_not_exist_is_ignored()
    {
        using var rig = new VirtioRig();
        rig.Driver.Notify(7);
        rig.Driver.WriteRegister(0x50, 0xffff_ffff);
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public void Clearing_status_bits_without_reset_is_ignored()
    {
        using var rig = new VirtioRig();
        rig.Driver.WriteRegister(0x70, 1);
        Assert.Equal(15u, rig.Driver.Status);
    }

    [Fact]
    public void Kernel_command_line_fragment_names_size_address_and_irq()
    {
        Assert.Equal("virtio_mmio.device=512@0xd0000000:5", VirtioMmioTransport.KernelCommandLineFragment(new GuestAddress(0xd000_0000), 5));
    }
}
