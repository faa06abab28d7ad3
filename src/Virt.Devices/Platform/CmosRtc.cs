namespace Virt.Devices;

/// <summary>
/// The PC's CMOS real-time clock (Motorola MC146818A) and its 128 bytes of battery-backed RAM,
/// at ports 0x70 (index, with the NMI-disable bit) and 0x71 (data). The time comes from a
/// <see cref="TimeProvider"/> (the host's UTC clock by default) plus whatever offset the guest sets.
/// </summary>
/// <remarks>
/// <para>Time and date registers honour register B: BCD or binary (DM bit) and 12- or 24-hour
/// (24/12 bit) format. Register 0x32 holds the century in the same format.</para>
/// <para>Register A's update-in-progress bit is set during the last 2228 µs of each second of the
/// guest clock (244 µs of warning plus the 1984 µs update cycle) while the oscillator runs
/// (divider bits 010) and register B's SET bit is clear.</para>
/// <para>Setting the SET bit freezes the clock so the guest can write the fields one by one;
/// clearing it starts the clock from the written time. Writing a field with SET clear moves the
/// clock at once. Fields that do not form a valid date are ignored.</para>
/// <para>Register D always reports valid RAM. No interrupts are generated: register C reads 0.</para>
/// </remarks>
public sealed partial class CmosRtc : IPortIoDevice
{
    /// <summary>Index port: bits 6:0 select the register, bit 7 set disables NMI.</summary>
    public const ushort IndexPort = 0x70;

    /// <summary>Data port: reads and writes the selected register.</summary>
    public const ushort DataPort = 0x71;

    /// <summary>Number of ports to register the device with (at <see cref="IndexPort"/>).</summary>
    public const ushort PortCount = 2;

    /// <summary>ISA interrupt of the RTC (not raised by this implementation).</summary>
    public const int Irq = 8;

    /// <summary>Index port bit: NMI disabled while set.</summary>
    public const byte IndexNmiDisable = 0x80;

    /// <summary>Register: seconds (0-59).</summary>
    public const byte RegSeconds = 0x00;

    /// <summary>Register: seconds alarm.</summary>
    public const byte RegSecondsAlarm = 0x01;

    /// <summary>Register: minutes (0-59).</summary>
    public const byte RegMinutes = 0x02;

    /// <summary>Register: minutes alarm.</summary>
    public const byte RegMinutesAlarm = 0x03;

    /// <summary>Register: hours (0-23, or 1-12 with bit 7 = PM in 12-hour mode).</summary>
    public const byte RegHours = 0x04;

    /// <summary>Register: hours alarm.</summary>
    public const byte RegHoursAlarm = 0x05;

    /// <summary>Register: day of the week (1 = Sunday).</summary>
    public const byte RegDayOfWeek = 0x06;

    /// <summary>Register: day of the month (1-31).</summary>
    public const byte RegDayOfMonth = 0x07;

    /// <summary>Register: month (1-12).</summary>
    public const byte RegMonth = 0x08;

    /// <summary>Register: year within the century (0-99).</summary>
    public const byte RegYear = 0x09;

    /// <summary>Register A: update in progress (bit 7), divider (6:4), periodic rate (3:0).</summary>
    public const byte RegA = 0x0A;

    /// <summary>Register B: SET, interrupt enables, square wave, data mode, 24/12, daylight saving.</summary>
    public const byte RegB = 0x0B;

    /// <summary>Register C: interrupt flags, cleared by reading.</summary>
    public const byte RegC = 0x0C;

    /// <summary>Register D: valid RAM and time (bit 7).</summary>
    public const byte RegD = 0x0D;

    /// <summary>Register: century (the common PC/AT location; ACPI's FADT names it).</summary>
    public const byte RegCentury = 0x32;

    /// <summary>Register A: update in progress (read-only).</summary>
    public const byte RegAUpdateInProgress = 0x80;

    /// <summary>Register A bits 6:4: the oscillator divider.</summary>
    public const byte RegADividerMask = 0x70;

    /// <summary>Register A divider value for a running 32.768 kHz time base.</summary>
    public const byte RegADividerNormal = 0x20;

    /// <summary>Register B: SET, halts updates so the time can be written.</summary>
    public const byte RegBSet = 0x80;

    /// <summary>Register B: update-ended interrupt enable.</summary>
    public const byte RegBUpdateInterruptEnable = 0x10;

    /// <summary>Register B: data mode, binary when set, BCD when clear.</summary>
    public const byte RegBBinary = 0x04;

    /// <summary>Register B: 24-hour mode when set, 12-hour when clear.</summary>
    public const byte RegB24Hour = 0x02;

    /// <summary>Register D: the RAM and time are valid (battery good).</summary>
    public const byte RegDValidRam = 0x80;

    /// <summary>Hours register bit 7 in 12-hour mode: PM.</summary>
    public const byte HoursPm = 0x80;

    /// <summary>How long before each second's update the update-in-progress bit is set (244 µs warning plus the 1984 µs cycle).</summary>
    private static readonly TimeSpan UpdateWindow = TimeSpan.FromMicroseconds(244 + 1984);

    private const int RamSize = 128;

    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private readonly byte[] _ram = new byte[RamSize];
    private byte _index;
    private bool _nmiDisabled;
    private TimeSpan _offset;
    private ClockFields _frozen;

    /// <summary>Creates the RTC: register A = 0x26 (running, 1024 Hz), register B = 0x02 (24-hour, BCD), RAM cleared.</summary>
    /// <param name="timeProvider">The clock to follow; <see cref="TimeProvider.System"/> when <see langword="null"/>.</param>
    public CmosRtc(TimeProvider? timeProvider = null)
    {
        _time = timeProvider ?? TimeProvider.System;
        _ram[RegA] = RegADividerNormal | 0x06;
        _ram[RegB] = RegB24Hour;
    }

    /// <summary>Whether the guest last wrote the index port with the NMI-disable bit set.</summary>
    public bool NmiDisabled
    {
        get
        {
            lock (_lock)
            {
                return _nmiDisabled;
            }
        }
    }

    /// <summary>The time the guest sees now (the host clock plus the guest's adjustments).</summary>
    public DateTimeOffset GuestTime
    {
        get
        {
            lock (_lock)
            {
                return (_ram[RegB] & RegBSet) != 0 && _frozen.TryToDateTime(out DateTimeOffset t) ? t : _time.GetUtcNow() + _offset;
            }
        }
    }

    /// <summary>Registers the RTC on <paramref name="bus"/> at ports 0x70-0x71.</summary>
    public void AttachTo(PortIoBus bus)
    {
        ArgumentNullException.ThrowIfNull(bus);
        bus.Register(IndexPort, PortCount, this, "cmos-rtc");
    }

    /// <summary>Reads a CMOS RAM byte the way the guest would, for the host (e.g. to inspect what the guest stored).</summary>
    public byte ReadRegister(byte index)
    {
        lock (_lock)
        {
            return Read((byte)(index & 0x7F));
        }
    }

    /// <summary>Writes a CMOS RAM byte the way the guest would (e.g. to preset configuration bytes before boot).</summary>
    public void WriteRegister(byte index, byte value)
    {
        lock (_lock)
        {
            Write((byte)(index & 0x7F), value);
        }
    }

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data)
    {
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                // The index register is write-only.
                data[i] = offset + i == 1 ? Read(_index) : BusDispatch.FloatingBusByte;
            }
        }
    }

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                switch (offset + i)
                {
                    case 0:
                        _index = (byte)(data[i] & 0x7F);
                        _nmiDisabled = (data[i] & IndexNmiDisable) != 0;
                        break;
                    case 1:
                        Write(_index, data[i]);
                        break;
                    default:
                        break;
                }
            }
        }
    }

    private bool Frozen => (_ram[RegB] & RegBSet) != 0;

    private bool Binary => (_ram[RegB] & RegBBinary) != 0;

    private bool TwentyFourHour => (_ram[RegB] & RegB24Hour) != 0;

    private byte Read(byte index)
    {
        switch (index)
        {
            case RegSeconds or RegMinutes or RegHours or RegDayOfWeek or RegDayOfMonth or RegMonth or RegYear or RegCentury:
                return EncodeField(index, CurrentFields());
            case RegA:
                return (byte)((_ram[RegA] & 0x7F) | (UpdateInProgress() ? RegAUpdateInProgress : 0));
            case RegC:
                return 0;
            case RegD:
                return RegDValidRam;
            default:
                return _ram[index];
        }
    }

    private void Write(byte index, byte value)
    {
        switch (index)
        {
            case RegSeconds or RegMinutes or RegHours or RegDayOfWeek or RegDayOfMonth or RegMonth or RegYear or RegCentury:
                WriteField(index, value);
                break;
            case RegA:
                _ram[RegA] = (byte)(value & 0x7F);
                break;
            case RegB:
                WriteRegisterB(value);
                break;
            case RegC or RegD:
                break;
            default:
                _ram[index] = value;
                break;
        }
    }

    private void WriteRegisterB(byte value)
    {
        bool wasFrozen = Frozen;
        bool freeze = (value & RegBSet) != 0;
        if (freeze)
        {
            // SET clears the update-ended interrupt enable (MC146818A data sheet).
            value &= unchecked((byte)~RegBUpdateInterruptEnable);
        }

        if (freeze && !wasFrozen)
        {
            _frozen = ClockFields.From(_time.GetUtcNow() + _offset);
        }

        _ram[RegB] = value;
        if (!freeze && wasFrozen && _frozen.TryToDateTime(out DateTimeOffset written))
        {
            _offset = written - _time.GetUtcNow();
        }
    }

    private ClockFields CurrentFields() => Frozen ? _frozen : ClockFields.From(_time.GetUtcNow() + _offset);

    private bool UpdateInProgress()
    {
        if (Frozen || (_ram[RegA] & RegADividerMask) != RegADividerNormal)
        {
            return false;
        }

        long ticksIntoSecond = (_time.GetUtcNow() + _offset).Ticks % TimeSpan.TicksPerSecond;
        return ticksIntoSecond >= TimeSpan.TicksPerSecond - UpdateWindow.Ticks;
    }

    private void WriteField(byte index, byte raw)
    {
        ClockFields fields = CurrentFields();
        int? decoded = index == RegHours ? DecodeHours(raw) : Decode(raw);
        if (decoded is not { } v)
        {
            return;
        }

        switch (index)
        {
            case RegSeconds: fields.Second = v; break;
            case RegMinutes: fields.Minute = v; break;
            case RegHours: fields.Hour = v; break;
            case RegDayOfWeek: fields.DayOfWeek = v; break;
            case RegDayOfMonth: fields.Day = v; break;
            case RegMonth: fields.Month = v; break;
            case RegYear: fields.Year = (fields.Year / 100 * 100) + v; break;
            case RegCentury: fields.Year = (v * 100) + (fields.Year % 100); break;
            default: break;
        }

        if (Frozen)
        {
            // Intermediate field combinations may be invalid while the guest writes them one by one.
            _frozen = fields;
        }
        else if (fields.TryToDateTime(out DateTimeOffset t))
        {
            _offset = t - _time.GetUtcNow();
        }
    }

    private byte EncodeField(byte index, in ClockFields f) => index switch
    {
        RegSeconds => Encode(f.Second),
        RegMinutes => Encode(f.Minute),
        RegHours => EncodeHours(f.Hour),
        RegDayOfWeek => Encode(f.DayOfWeek),
        RegDayOfMonth => Encode(f.Day),
        RegMonth => Encode(f.Month),
        RegYear => Encode(f.Year % 100),
        _ => Encode(f.Year / 100),
    };

    private byte Encode(int value) => Binary ? (byte)value : (byte)(((value / 10) << 4) | (value % 10));

    private byte EncodeHours(int hour)
    {
        if (TwentyFourHour)
        {
            return Encode(hour);
        }

        int h12 = hour % 12 == 0 ? 12 : hour % 12;
        return (byte)(Encode(h12) | (hour >= 12 ? HoursPm : 0));
    }

    private int? Decode(byte raw)
    {
        if (Binary)
        {
            return raw;
        }

        int hi = raw >> 4;
        int lo = raw & 0x0F;
        return hi > 9 || lo > 9 ? null : (hi * 10) + lo;
    }

    private int? DecodeHours(byte raw)
    {
        if (TwentyFourHour)
        {
            return Decode(raw);
        }

        if (Decode((byte)(raw & 0x7F)) is not { } h12 || h12 is < 1 or > 12)
        {
            return null;
        }

        return (h12 % 12) + ((raw & HoursPm) != 0 ? 12 : 0);
    }

    /// <summary>The clock as separate fields, which may transiently be invalid while the guest sets them.</summary>
    private struct ClockFields
    {
        public int Year;
        public int Month;
        public int Day;
        public int DayOfWeek;
        public int Hour;
        public int Minute;
        public int Second;
        public long SubSecondTicks;

        public static ClockFields From(DateTimeOffset t) => new()
        {
            Year = t.Year,
            Month = t.Month,
            Day = t.Day,
            DayOfWeek = (int)t.DayOfWeek + 1,
            Hour = t.Hour,
            Minute = t.Minute,
            Second = t.Second,
            SubSecondTicks = t.Ticks % TimeSpan.TicksPerSecond,
        };

        public readonly bool TryToDateTime(out DateTimeOffset result)
        {
            result = default;
            if (Year is < 1 or > 9999 || Month is < 1 or > 12 || Day < 1 || Day > DateTime.DaysInMonth(Year, Month)
                || Hour is < 0 or > 23 || Minute is < 0 or > 59 || Second is < 0 or > 59)
            {
                return false;
            }

            result = new DateTimeOffset(Year, Month, Day, Hour, Minute, Second, TimeSpan.Zero).AddTicks(SubSecondTicks);
            return true;
        }
    }
}
