using System.Buffers.Binary;
using Virt.Memory;
using Xunit;

namespace Virt.Boot.Tests;

public sealed class MpTableTests
{
    private static byte Sum(ReadOnlySpan<byte> data)
    {
        byte s = 0;
        foreach (byte b in data)
        {
            s += b;
        }

        return s;
    }

    [Fact]
    public void Floating_pointer_and_config_table_have_valid_signatures_and_checksums()
    {
        using var m = GuestMemory.CreateRam(1 << 20);
        var placed = MpTable.Write(m);
        Assert.Equal(0x9FC00UL, placed.Address.Value);

        var fp = new byte[16];
        m.Read(placed.Address, fp);
        Assert.Equal("_MP_"u8.ToArray(), fp[..4]);
        Assert.Equal(0, Sum(fp));
        Assert.Equal(1, fp[8]);
        Assert.Equal(4, fp[9]);
        uint configAddress = BinaryPrimitives.ReadUInt32LittleEndian(fp.AsSpan(4));
        Assert.Equal(0x9FC10u, configAddress);

        var header = new byte[44];
        m.Read(new GuestAddress(configAddress), header);
        Assert.Equal("PCMP"u8.ToArray(), header[..4]);
        int length = BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(4));
        var config = new byte[length];
        m.Read(new GuestAddress(configAddress), config);
        Assert.Equal(0, Sum(config));
        Assert.Equal(0xFEE00000u, BinaryPrimitives.ReadUInt32LittleEndian(config.AsSpan(36)));
        Assert.Equal(placed.Length, (ulong)(16 + length));
    }

    [Fact]
    public void Entries_list_processors_bus_ioapic_and_every_irq()
    {
        using var m = GuestMemory.CreateRam(1 << 20);
        MpTable.Write(m, new MpTableOptions { ProcessorCount = 2, LevelTriggeredPins = new HashSet<int> { 5 } });
        var header = new byte[44];
        m.Read(new GuestAddress(0x9FC10), header);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(34));
        int length = BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(4));
        var body = new byte[length - 44];
        m.Read(new GuestAddress(0x9FC10 + 44), body);

        var types = new List<byte>();
        var irqToPin = new Dictionary<int, (int Pin, ushort Flags)>();
        int offset = 0;
        for (int i = 0; i < count; i++)
        {
            byte type = body[offset];
            types.Add(type);
            if (type == 0)
            {
                Assert.Equal(i, body[offset + 1]);                       // APIC ID
                Assert.Equal(i == 0 ? 3 : 1, body[offset + 3]);          // enabled, BSP
                offset += 20;
                continue;
            }

            if (type == 1)
            {
                Assert.Equal("ISA   "u8.ToArray(), body[(offset + 2)..(offset + 8)]);
            }
            else if (type == 2)
            {
                Assert.Equal(2, body[offset + 1]); // after the two processors
                Assert.Equal(0xFEC00000u, BinaryPrimitives.ReadUInt32LittleEndian(body.AsSpan(offset + 4)));
            }
            else if (type == 3)
            {
                Assert.Equal(2, body[offset + 6]);
                irqToPin[body[offset + 5]] = (body[offset + 7], BinaryPrimitives.ReadUInt16LittleEndian(body.AsSpan(offset + 2)));
            }

            offset += 8;
        }

        Assert.Equal(body.Length, offset);
        Assert.Equal([0, 0, 1, 2], types.Take(4));
        Assert.Equal(2, types.Count(t => t == 4));
        Assert.Equal(23, irqToPin.Count);
        Assert.Equal(2, irqToPin[0].Pin);
        Assert.False(irqToPin.ContainsKey(2));
        Assert.Equal(15, irqToPin[15].Pin);
        Assert.Equal(0x0D, irqToPin[5].Flags);
        Assert.Equal(0, irqToPin[4].Flags);
    }

    [Fact]
    public void Too_many_processors_fail_naming_the_count()
    {
        using var m = GuestMemory.CreateRam(1 << 20);
        var ex = Assert.Throws<BootImageException>(() => MpTable.Write(m, new MpTableOptions { ProcessorCount = 60 }));
        Assert.Equal("processor_count", ex.Field);
    }

    [Fact]
    public void Table_outside_ram_fails()
    {
        using var m = GuestMemory.CreateRam(0x10000);
        var ex = Assert.Throws<BootImageException>(() => MpTable.Write(m));
        Assert.Equal("mp_table", ex.Field);
    }
}
