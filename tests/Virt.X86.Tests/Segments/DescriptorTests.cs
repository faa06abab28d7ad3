using Virt.Cpu;
using Xunit;

namespace Virt.X86.Tests.Segments;

public sealed class DescriptorTests
{
    [Theory]
    [InlineData(true, true, 0, 0x00AF9B000000FFFFUL)]
    [InlineData(false, false, 0, 0x00CF93000000FFFFUL)]
    [InlineData(true, false, 0, 0x00CF9B000000FFFFUL)]
    [InlineData(true, false, 3, 0x00CFFB000000FFFFUL)]
    [InlineData(false, false, 3, 0x00CFF3000000FFFFUL)]
    [InlineData(true, true, 3, 0x00AFFB000000FFFFUL)]
    public void Flat_segments_encode_to_the_classic_gdt_values(bool code, bool longMode, byte dpl, ulong expected) =>
        Assert.Equal(expected, SegmentDescriptor.Encode(SegmentRegister.Flat(0x08, code, longMode, dpl)));

    [Fact]
    public void Code_and_data_descriptors_round_trip()
    {
        var random = new Random(7);
        for (int i = 0; i < 2000; i++)
        {
            bool g = random.Next(2) == 0;
            var s = new SegmentRegister
            {
                Base = (ulong)random.NextInt64(0, 1L << 32),
                Limit = g ? ((uint)random.Next(0, 1 << 20) << 12) | 0xFFF : (uint)random.Next(0, 1 << 20),
                Selector = (ushort)random.Next(0, 1 << 16),
                Type = (byte)random.Next(16),
                Present = random.Next(2) == 0,
                Dpl = (byte)random.Next(4),
                DefaultBig = random.Next(2) == 0,
                IsCodeOrData = true,
                Long = random.Next(2) == 0,
                Granularity = g,
                Available = random.Next(2) == 0,
            };
            Assert.Equal(s, SegmentDescriptor.Decode(SegmentDescriptor.Encode(s), s.Selector));
        }
    }

    [Fact]
    public void Any_8_byte_descriptor_decodes_and_encodes_back_to_itself()
    {
        var random = new Random(8);
        for (int i = 0; i < 2000; i++)
        {
            ulong d = (ulong)random.NextInt64() ^ ((ulong)random.Next() << 33);
            Assert.Equal(d, SegmentDescriptor.Encode(SegmentDescriptor.Decode(d)));
        }
    }

    [Fact]
    public void A_64_bit_tss_descriptor_spans_two_slots_with_the_high_base_in_the_second()
    {
        var tr = new SegmentRegister { Base = 0xFFFF_FFFF_8000_1100, Limit = TaskStateSegment.Limit, Selector = 0x30, Type = SegmentType.TssBusy, Present = true };
        var d = SegmentDescriptor.EncodeSystem(tr);

        Assert.Equal(0x80008B00_11000067UL, (ulong)d);
        Assert.Equal(0xFFFF_FFFFUL, (ulong)(d >> 64));
        Assert.Equal(tr, SegmentDescriptor.DecodeSystem(d, 0x30));
    }

    [Fact]
    public void Boot_style_tss_at_a_low_address_encodes_as_before()
    {
        const ulong tss = 0x580;
        var tr = new SegmentRegister { Base = tss, Limit = 0x67, Type = SegmentType.TssBusy, Present = true };
        ulong expected = 0x67 | ((tss & 0xFFFFFF) << 16) | (0x8BUL << 40) | (((tss >> 24) & 0xFF) << 56);
        Assert.Equal(new UInt128(0, expected), SegmentDescriptor.EncodeSystem(tr));
    }

    [Fact]
    public void A_limit_that_is_not_whole_pages_is_refused_with_granularity()
    {
        var s = SegmentRegister.Flat(0x08, code: true, longMode: true);
        s.Limit = 0x1000;
        Assert.Contains("0xFFF", Assert.Throws<ArgumentException>(() => SegmentDescriptor.Encode(s)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_byte_limit_above_20_bits_is_refused()
    {
        var s = new SegmentRegister { Limit = 0x10_0000, IsCodeOrData = true };
        Assert.Throws<ArgumentException>(() => SegmentDescriptor.Encode(s));
    }

    [Fact]
    public void A_base_above_4_GiB_needs_a_system_descriptor()
    {
        var s = new SegmentRegister { Base = 1UL << 32, IsCodeOrData = true };
        Assert.Throws<ArgumentException>(() => SegmentDescriptor.Encode(s));
        Assert.Throws<ArgumentException>(() => SegmentDescriptor.EncodeSystem(s));
    }

    [Fact]
    public void Interrupt_gates_encode_like_the_manual_and_round_trip()
    {
        const ulong handler = 0xFFFF_FFFF_8000_3040;
        var gate = GateDescriptor.Interrupt(handler, selector: 0x08, interruptStackTable: 1);
        var d = gate.Encode();

        ulong low = (handler & 0xFFFF) | (0x08UL << 16) | (1UL << 32) | (0x8EUL << 40) | (((handler >> 16) & 0xFFFF) << 48);
        Assert.Equal(low, (ulong)d);
        Assert.Equal(handler >> 32, (ulong)(d >> 64));
        Assert.Equal(gate, GateDescriptor.Decode(d));
        Assert.Equal(0xEEUL, ((ulong)GateDescriptor.Interrupt(handler, 0x08, dpl: 3).Encode() >> 40) & 0xFF);
    }

    [Fact]
    public void Gates_with_out_of_range_fields_are_refused()
    {
        Assert.Throws<ArgumentException>(() => new GateDescriptor(0, 8, 8, SegmentType.InterruptGate, 0).Encode());
        Assert.Throws<ArgumentException>(() => new GateDescriptor(0, 8, 0, SegmentType.TrapGate, 4).Encode());
    }

    [Fact]
    public void Tss_layout_matches_the_manual()
    {
        Assert.Equal(0x68, TaskStateSegment.Size);
        Assert.Equal(0x24, TaskStateSegment.InterruptStackOffset(1));
        Assert.Equal(0x54, TaskStateSegment.InterruptStackOffset(7));
        Assert.Throws<ArgumentOutOfRangeException>(() => TaskStateSegment.InterruptStackOffset(0));
    }
}
