using Virt.Devices.Tests.Support;
using Xunit;

namespace Virt.Devices.Tests.Platform;

public sealed class CmosRtcTests
{
    // A Thursday in a leap year, in the afternoon (so 12-hour mode shows PM).
    private static readonly DateTimeOffset Fixed = new(2024, 2, 29, 13, 45, 7, TimeSpan.Zero);

    private readonly ManualTimeProvider _clock = new(Fixed.AddMilliseconds(500));
    private readonly CmosRtc _rtc;
    private readonly PortIoBus _bus = new();

    public CmosRtcTests()
    {
        _rtc = new CmosRtc(_clock);
        _rtc.AttachTo(_bus);
    }

    private byte ReadCmos(byte index)
    {
        _bus.Write(CmosRtc.IndexPort, [index]);
        var b = new byte[1];
        _bus.Read(CmosRtc.DataPort, b);
        return b[0];
    }

    private void WriteCmos(byte index, byte value)
    {
        _bus.Write(CmosRtc.IndexPort, [index]);
        _bus.Write(CmosRtc.DataPort, [value]);
    }

    [Fact]
    public void Time_reads_in_BCD_24_hour_by_default()
    {
        Assert.Equal(0x07, ReadCmos(CmosRtc.RegSeconds));
        Assert.Equal(0x45, ReadCmos(CmosRtc.RegMinutes));
        Assert.Equal(0x13, ReadCmos(CmosRtc.RegHours));
        Assert.Equal(5, ReadCmos(CmosRtc.RegDayOfWeek));
        Assert.Equal(0x29, ReadCmos(CmosRtc.RegDayOfMonth));
        Assert.Equal(0x02, ReadCmos(CmosRtc.RegMonth));
        Assert.Equal(0x24, ReadCmos(CmosRtc.RegYear));
        Assert.Equal(0x20, ReadCmos(CmosRtc.RegCentury));
    }

    [Fact]
    public void Time_reads_in_binary_when_register_B_selects_it()
    {
        WriteCmos(CmosRtc.RegB, CmosRtc.RegBBinary | CmosRtc.RegB24Hour);

        Assert.Equal(7, ReadCmos(CmosRtc.RegSeconds));
        Assert.Equal(45, ReadCmos(CmosRtc.RegMinutes));
        Assert.Equal(13, ReadCmos(CmosRtc.RegHours));
        Assert.Equal(29, ReadCmos(CmosRtc.RegDayOfMonth));
        Assert.Equal(2, ReadCmos(CmosRtc.RegMonth));
        Assert.Equal(24, ReadCmos(CmosRtc.RegYear));
        Assert.Equal(20, ReadCmos(CmosRtc.RegCentury));
    }

    [Theory]
    [InlineData(0x00, 13, 0x81)] // BCD, 1 PM
    [InlineData(0x04, 13, 0x81)] // binary, 1 PM
    [InlineData(0x00, 0, 0x12)] // BCD, midnight is 12 AM
    [InlineData(0x04, 0, 12)] // binary, midnight
    [InlineData(0x00, 12, 0x92)] // BCD, noon is 12 PM
    [InlineData(0x00, 23, 0x91)] // BCD, 11 PM
    public void Hours_in_12_hour_mode_carry_the_PM_bit(byte registerB, int hour, byte expected)
    {
        _clock.Now = new DateTimeOffset(2024, 2, 29, hour, 0, 0, TimeSpan.Zero);
        WriteCmos(CmosRtc.RegB, registerB);

        Assert.Equal(expected, ReadCmos(CmosRtc.RegHours));
    }

    [Fact]
    public void Update_in_progress_is_set_just_before_the_second_changes_and_clear_otherwise()
    {
        _clock.Now = Fixed.AddMilliseconds(500);
        Assert.Equal(0, ReadCmos(CmosRtc.RegA) & CmosRtc.RegAUpdateInProgress);

        _clock.Now = Fixed.AddMilliseconds(999);
        Assert.Equal(CmosRtc.RegAUpdateInProgress, ReadCmos(CmosRtc.RegA) & CmosRtc.RegAUpdateInProgress);

        _clock.Now = Fixed.AddSeconds(1);
        Assert.Equal(0, ReadCmos(CmosRtc.RegA) & CmosRtc.RegAUpdateInProgress);
    }

    [Fact]
    public void Update_in_progress_stays_clear_while_SET_holds_the_clock()
    {
        WriteCmos(CmosRtc.RegB, CmosRtc.RegBSet | CmosRtc.RegB24Hour);
        _clock.Now = Fixed.AddMilliseconds(999);

        Assert.Equal(0, ReadCmos(CmosRtc.RegA) & CmosRtc.RegAUpdateInProgress);
    }

    [Fact]
    public void Register_A_keeps_its_writable_bits_and_register_D_reports_valid_RAM()
    {
        Assert.Equal(0x26, ReadCmos(CmosRtc.RegA) & 0x7F);
        WriteCmos(CmosRtc.RegA, 0xA6);
        Assert.Equal(0x26, ReadCmos(CmosRtc.RegA) & 0x7F);
        Assert.Equal(CmosRtc.RegDValidRam, ReadCmos(CmosRtc.RegD));
    }

    [Fact]
    public void Clock_follows_the_time_provider()
    {
        _clock.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(0x17, ReadCmos(CmosRtc.RegSeconds));
    }

    [Fact]
    public void Guest_can_set_the_time_under_SET_and_the_clock_runs_from_there()
    {
        WriteCmos(CmosRtc.RegB, CmosRtc.RegBSet | CmosRtc.RegB24Hour);
        WriteCmos(CmosRtc.RegYear, 0x30);
        WriteCmos(CmosRtc.RegMonth, 0x12);
        WriteCmos(CmosRtc.RegDayOfMonth, 0x31);
        WriteCmos(CmosRtc.RegHours, 0x23);
        WriteCmos(CmosRtc.RegMinutes, 0x59);
        WriteCmos(CmosRtc.RegSeconds, 0x50);
        _clock.Advance(TimeSpan.FromSeconds(30)); // frozen: does not count
        WriteCmos(CmosRtc.RegB, CmosRtc.RegB24Hour);

        Assert.Equal(new DateTimeOffset(2030, 12, 31, 23, 59, 50, TimeSpan.Zero), _rtc.GuestTime.AddTicks(-(_rtc.GuestTime.Ticks % TimeSpan.TicksPerSecond)));
        _clock.Advance(TimeSpan.FromSeconds(15));
        Assert.Equal(0x31, ReadCmos(CmosRtc.RegYear));
        Assert.Equal(0x01, ReadCmos(CmosRtc.RegMonth));
        Assert.Equal(0x05, ReadCmos(CmosRtc.RegSeconds));
    }

    [Fact]
    public void Invalid_date_written_without_SET_is_ignored()
    {
        WriteCmos(CmosRtc.RegDayOfMonth, 0x31); // 31 February
        WriteCmos(CmosRtc.RegMonth, 0x1F); // not BCD

        Assert.Equal(0x29, ReadCmos(CmosRtc.RegDayOfMonth));
        Assert.Equal(0x02, ReadCmos(CmosRtc.RegMonth));
    }

    [Fact]
    public void NVRAM_bytes_read_back_and_the_index_port_NMI_bit_is_tracked()
    {
        for (byte i = 0x0E; i < 0x80; i++)
        {
            if (i != CmosRtc.RegCentury)
            {
                WriteCmos((byte)(i | CmosRtc.IndexNmiDisable), (byte)(i ^ 0x5A));
            }
        }

        Assert.True(_rtc.NmiDisabled);
        for (byte i = 0x0E; i < 0x80; i++)
        {
            if (i != CmosRtc.RegCentury)
            {
                Assert.Equal((byte)(i ^ 0x5A), ReadCmos(i));
            }
        }

        Assert.False(_rtc.NmiDisabled);
    }
}
