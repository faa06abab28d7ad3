using System.Buffers.Binary;
using Virt.Devices.Tests.Snapshots;
using Virt.Snapshots;
using Xunit;

namespace Virt.Devices.Tests.Platform;

public sealed class PciHostBridgeTests
{
    private static void SelectRegister(PciHostBridge bridge, uint address)
    {
        var data = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(data, address);
        bridge.Write(0, data);
    }

    private static uint ReadData(PciHostBridge bridge, ushort offset, int width)
    {
        var data = new byte[4];
        bridge.Read(offset, data.AsSpan(0, width));
        return BinaryPrimitives.ReadUInt32LittleEndian(data);
    }

    private static uint Address(int bus, int device, int function, int register) =>
        0x8000_0000u | ((uint)bus << 16) | ((uint)device << 11) | ((uint)function << 8) | (uint)register;

    [Fact]
    public void Linux_type_1_probe_reads_back_the_enable_bit_and_finds_a_host_bridge()
    {
        // What pci_check_type1 does: a byte write to 0xCFB (not the address register), then 0x80000000 to 0xCF8 and
        // reads it back; pci_sanity_check then looks for a host bridge's class on bus 0.
        var bridge = new PciHostBridge();
        bridge.Write(3, [0x01]);
        SelectRegister(bridge, 0x8000_0000);
        Assert.Equal(0x8000_0000u, ReadData(bridge, 0, 4));

        SelectRegister(bridge, Address(0, 0, 0, 0x08));
        Assert.Equal(0x0600u, ReadData(bridge, 4 + 2, 2)); // PCI_CLASS_DEVICE (offset 0x0A): host bridge
        SelectRegister(bridge, Address(0, 0, 0, 0x00));
        Assert.Equal(0x1237_8086u, ReadData(bridge, 4, 4));
        Assert.Equal(0x8086u, ReadData(bridge, 4, 2));
        Assert.Equal(0x12u, ReadData(bridge, 4 + 3, 1));
        SelectRegister(bridge, Address(0, 0, 0, 0x0C));
        Assert.Equal(0x00u, ReadData(bridge, 4 + 2, 1)); // header type 0, single function
    }

    [Theory]
    [InlineData(0, 1, 0)]
    [InlineData(0, 0, 1)]
    [InlineData(1, 0, 0)]
    [InlineData(255, 31, 7)]
    public void Every_other_function_reads_as_absent(int bus, int device, int function)
    {
        var bridge = new PciHostBridge();
        SelectRegister(bridge, Address(bus, device, function, 0));
        Assert.Equal(0xFFFF_FFFFu, ReadData(bridge, 4, 4));
        Assert.Equal(0xFFFFu, ReadData(bridge, 6, 2));
    }

    [Fact]
    public void With_the_enable_bit_clear_data_reads_all_ones()
    {
        var bridge = new PciHostBridge();
        SelectRegister(bridge, 0x0000_0000);
        Assert.Equal(0xFFFF_FFFFu, ReadData(bridge, 4, 4));
    }

    [Fact]
    public void Registers_past_the_header_read_zero_and_writes_change_nothing()
    {
        var bridge = new PciHostBridge();
        SelectRegister(bridge, Address(0, 0, 0, 0xFC));
        Assert.Equal(0u, ReadData(bridge, 4, 4));
        SelectRegister(bridge, Address(0, 0, 0, 0x04));
        bridge.Write(4, [0xFF, 0xFF, 0xFF, 0xFF]); // command and status
        SelectRegister(bridge, Address(0, 0, 0, 0x00));
        bridge.Write(4, [0, 0, 0, 0]);              // vendor and device
        Assert.Equal(0x1237_8086u, ReadData(bridge, 4, 4));
        SelectRegister(bridge, Address(0, 0, 0, 0x04));
        Assert.Equal(0u, ReadData(bridge, 4, 4));
    }

    [Fact]
    public void Address_register_keeps_only_its_bits_and_ignores_narrow_accesses()
    {
        var bridge = new PciHostBridge();
        SelectRegister(bridge, 0xFFFF_FFFF);
        Assert.Equal(0x80FF_FFFCu, bridge.ConfigAddress);
        Assert.Equal(0x80FF_FFFCu, ReadData(bridge, 0, 4));

        bridge.Write(0, [0x00, 0x00]);
        bridge.Write(2, [0x00]);
        Assert.Equal(0x80FF_FFFCu, bridge.ConfigAddress);
        Assert.Equal(0xFFFFu, ReadData(bridge, 0, 2));
        Assert.Equal(0xFFu, ReadData(bridge, 1, 1));
    }

    [Fact]
    public void Snapshot_keeps_the_selected_register_and_refuses_bits_the_register_cannot_hold()
    {
        var bridge = new PciHostBridge();
        SelectRegister(bridge, Address(0, 0, 0, 0x08));
        var restored = new PciHostBridge();
        StateTestSupport.Copy(bridge, restored);
        Assert.Equal(bridge.ConfigAddress, restored.ConfigAddress);
        Assert.Equal(0x0600_0002u, ReadData(restored, 4, 4));

        var bad = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bad, 0x8000_0001);
        var ex = Assert.Throws<SnapshotFormatException>(() => StateTestSupport.Restore(new PciHostBridge(), bad));
        Assert.Equal("config-address", ex.Field);
        StateTestSupport.AssertVersionRefused(bridge);
    }
}
