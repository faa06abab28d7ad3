using System.Buffers.Binary;
using Virt.Devices.Tests.Snapshots;
using Virt.Devices.Tests.Support;
using Virt.Snapshots;
using Xunit;

namespace Virt.Devices.Tests.Platform;

public sealed class AcpiPmTimerTests
{
    private static readonly DateTimeOffset Start = new(2026, 3, 1, 12, 0, 0, TimeSpan.Zero);

    private static uint Read32(IPortIoDevice device)
    {
        var data = new byte[4];
        device.Read(0, data);
        return BinaryPrimitives.ReadUInt32LittleEndian(data);
    }

    [Fact]
    public void Counter_runs_at_3_579545_MHz_of_the_clock_it_is_given()
    {
        var clock = new ManualTimeProvider(Start);
        var timer = new AcpiPmTimer(clock);
        Assert.Equal(0u, Read32(timer));

        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(3_579_545u, Read32(timer));

        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(3_583_124u, Read32(timer)); // 1.001 s * 3579545 Hz, rounded down
    }

    [Fact]
    public void Counter_24_bit_wraps_at_2_to_the_24_and_32_bit_does_not()
    {
        var clock = new ManualTimeProvider(Start);
        var narrow = new AcpiPmTimer(clock, is32Bit: false);
        var wide = new AcpiPmTimer(clock, is32Bit: true);

        clock.Advance(TimeSpan.FromSeconds(5)); // 17,897,725 ticks: past 2^24 = 16,777,216

        Assert.Equal(17_897_725u - 16_777_216u, Read32(narrow));
        Assert.Equal(17_897_725u, Read32(wide));
        Assert.False(narrow.Is32Bit);
    }

    [Fact]
    public void Byte_and_word_reads_see_the_bytes_of_the_register_at_their_offset()
    {
        var clock = new ManualTimeProvider(Start);
        var timer = new AcpiPmTimer(clock);
        clock.Advance(TimeSpan.FromSeconds(1)); // 0x00369E99
        var bus = new PortIoBus();
        bus.Register(AcpiPmTimer.DefaultPort, AcpiPmTimer.PortCount, timer, "pm-timer");

        var word = new byte[2];
        bus.Read(AcpiPmTimer.DefaultPort + 1, word);
        var b = new byte[1];
        bus.Read(AcpiPmTimer.DefaultPort + 3, b);

        Assert.Equal(0x369Eu, BinaryPrimitives.ReadUInt16LittleEndian(word));
        Assert.Equal(0x00, b[0]);
    }

    [Fact]
    public void Writes_do_not_change_the_count()
    {
        var clock = new ManualTimeProvider(Start);
        var timer = new AcpiPmTimer(clock);
        clock.Advance(TimeSpan.FromMilliseconds(10));
        uint before = Read32(timer);

        timer.Write(0, [0, 0, 0, 0]);

        Assert.Equal(before, Read32(timer));
    }

    [Fact]
    public void Clock_that_steps_back_holds_the_count()
    {
        var clock = new ManualTimeProvider(Start);
        var timer = new AcpiPmTimer(clock);
        clock.Advance(TimeSpan.FromSeconds(1));
        clock.Now = Start.AddSeconds(-10);

        Assert.Equal(0u, Read32(timer));
    }

    [Fact]
    public void Restored_timer_continues_from_the_saved_count_on_another_clock()
    {
        var clock = new ManualTimeProvider(Start);
        var original = new AcpiPmTimer(clock);
        clock.Advance(TimeSpan.FromSeconds(2));
        byte[] state = StateTestSupport.Save(original);

        var later = new ManualTimeProvider(Start.AddDays(3));
        var restored = new AcpiPmTimer(later);
        StateTestSupport.Restore(restored, state);
        Assert.Equal(7_159_090u, Read32(restored));

        later.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(7_159_090u + 3_579_545u, Read32(restored));
    }

    [Fact]
    public void Snapshot_of_another_version_or_length_is_refused()
    {
        var timer = new AcpiPmTimer(new ManualTimeProvider(Start));
        byte[] state = StateTestSupport.Save(timer);

        Assert.Throws<SnapshotFormatException>(() => StateTestSupport.Restore(timer, state, version: 2));
        Assert.Throws<SnapshotFormatException>(() => StateTestSupport.Restore(timer, [.. state, 0]));
        Assert.Throws<SnapshotFormatException>(() => StateTestSupport.Restore(timer, state[..4]));
    }
}
