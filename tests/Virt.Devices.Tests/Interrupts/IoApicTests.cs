using Virt.Devices.Interrupts;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

public sealed class IoApicTests
{
    private sealed class Sink : IApicMessageSink
    {
        public List<ApicMessage> Messages { get; } = [];

        public void Deliver(in ApicMessage message) => Messages.Add(message);
    }

    private static void Program(IoApic io, int pin, ulong entry)
    {
        io.Write32(0x00, (uint)(0x10 + (2 * pin)));
        io.Write32(0x10, (uint)entry);
        io.Write32(0x00, (uint)(0x11 + (2 * pin)));
        io.Write32(0x10, (uint)(entry >> 32));
    }

    private static ulong ReadEntry(IoApic io, int pin)
    {
        io.Write32(0x00, (uint)(0x10 + (2 * pin)));
        ulong low = io.Read32(0x10);
        io.Write32(0x00, (uint)(0x11 + (2 * pin)));
        return low | ((ulong)io.Read32(0x10) << 32);
    }

    [Fact]
    public void Version_register_reports_24_pins()
    {
        var io = new IoApic(new Sink());
        io.Write32(0x00, 0x01);
        Assert.Equal((23u << 16) | 0x11, io.Read32(0x10));
    }

    [Fact]
    public void Pins_start_masked_and_deliver_nothing()
    {
        var sink = new Sink();
        var io = new IoApic(sink);
        Assert.Equal(1UL << 16, ReadEntry(io, 4));
        io.GetLine(4).Pulse();
        Assert.Empty(sink.Messages);
    }

    [Fact]
    public void Edge_pin_delivers_its_vector_and_destination_once_per_rising_edge()
    {
        var sink = new Sink();
        var io = new IoApic(sink);
        Program(io, 4, 0x34 | (1UL << 56));
        io.GetLine(4).Raise();
        io.GetLine(4).Raise();
        Assert.Equal([new ApicMessage(0x34, ApicDeliveryMode.Fixed, false, 1, false)], sink.Messages);
        io.GetLine(4).Lower();
        io.GetLine(4).Raise();
        Assert.Equal(2, sink.Messages.Count);
    }

    [Fact]
    public void Level_pin_sets_remote_irr_and_redelivers_after_eoi_while_asserted()
    {
        var sink = new Sink();
        var io = new IoApic(sink);
        Program(io, 10, 0x41 | (1UL << 15));
        io.GetLine(10).Raise();
        Assert.Single(sink.Messages);
        Assert.True(sink.Messages[0].LevelTriggered);
        Assert.NotEqual(0UL, ReadEntry(io, 10) & (1UL << 14));

        io.GetLine(10).Raise(); // still in service: nothing new
        Assert.Single(sink.Messages);

        io.EndOfInterrupt(0x41); // line still high: again
        Assert.Equal(2, sink.Messages.Count);

        io.GetLine(10).Lower();
        io.EndOfInterrupt(0x41);
        Assert.Equal(2, sink.Messages.Count);
        Assert.Equal(0UL, ReadEntry(io, 10) & (1UL << 14));
    }

    [Fact]
    public void Unmasking_an_asserted_level_pin_delivers_it()
    {
        var sink = new Sink();
        var io = new IoApic(sink);
        Program(io, 9, 0x39 | (1UL << 15) | (1UL << 16));
        io.GetLine(9).Raise();
        Assert.Empty(sink.Messages);
        Program(io, 9, 0x39 | (1UL << 15));
        Assert.Single(sink.Messages);
    }

    [Fact]
    public void Guest_cannot_write_read_only_bits()
    {
        var io = new IoApic(new Sink());
        Program(io, 3, 0x30 | (1UL << 12) | (1UL << 14));
        Assert.Equal(0x30UL, ReadEntry(io, 3));
    }

    [Fact]
    public void Out_of_range_registers_and_sizes_are_ignored()
    {
        var io = new IoApic(new Sink());
        io.Write32(0x00, 0xFF);
        io.Write32(0x10, 0xFFFFFFFF);
        Assert.Equal(0u, io.Read32(0x10));
        io.Write(0x10, [1]);
        io.Read(0xFFF, new byte[8]);
        io.SetIrq(-1, true);
        io.SetIrq(24, true);
    }

    [Fact]
    public void Id_register_round_trips()
    {
        var io = new IoApic(new Sink());
        io.Write32(0x00, 0x00);
        io.Write32(0x10, 0x0F000000);
        Assert.Equal(0x0F000000u, io.Read32(0x10));
        Assert.Equal(15, io.Id);
    }
}
