using Virt.Snapshots;

namespace Virt.Devices;

/// <summary>The RTC's snapshot section, <c>cmos-rtc</c>.</summary>
/// <remarks>
/// <para>Layout 1: the 128 bytes of CMOS RAM (the bytes behind the clock fields and registers C and D, which the
/// model computes rather than stores, are zero), the index register, the NMI-disable bit, the guest clock's offset
/// from the host's clock in 100 ns ticks, and the clock fields frozen while register B's SET bit is on (year, month,
/// day, day of week, hour, minute, second, sub-second ticks).</para>
/// <para>Time: the offset, not the guest's time at the save, is what is kept. After a restore the RTC reads the
/// host's time now plus the offset the guest had, as a battery-backed clock keeps running while the machine is off:
/// a guest restored a day later reads a date a day later, and its wall clock agrees with the host's again after it
/// next reads the RTC. (The virtual clock the timers and the TSC run on, by contrast, continues from its saved
/// value, so intervals the guest measures do not jump.) A clock frozen with SET stays frozen at its saved fields.</para>
/// </remarks>
public sealed partial class CmosRtc : IPersistentState
{
    /// <summary>RAM indices the model computes on every read and never stores.</summary>
    private static readonly byte[] ComputedIndices = [RegSeconds, RegMinutes, RegHours, RegDayOfWeek, RegDayOfMonth, RegMonth, RegYear, RegC, RegD, RegCentury];

    /// <summary>The largest year the frozen fields can hold: the century and year registers take any byte in binary mode.</summary>
    private const int MaxFrozenYear = (255 * 100) + 255;

    /// <inheritdoc />
    public string StateName => "cmos-rtc";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        lock (_lock)
        {
            writer.WriteBytes(_ram);
            writer.WriteByte(_index);
            writer.WriteBoolean(_nmiDisabled);
            writer.WriteInt64(_offset.Ticks);
            writer.WriteInt32(_frozen.Year);
            writer.WriteInt32(_frozen.Month);
            writer.WriteInt32(_frozen.Day);
            writer.WriteInt32(_frozen.DayOfWeek);
            writer.WriteInt32(_frozen.Hour);
            writer.WriteInt32(_frozen.Minute);
            writer.WriteInt32(_frozen.Second);
            writer.WriteInt64(_frozen.SubSecondTicks);
        }
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        var ramSpan = reader.ReadBytes("ram", RamSize);
        StateFields.Require(ref reader, ramSpan.Length == RamSize, "ram", $"holds {ramSpan.Length} bytes; CMOS has {RamSize}.");
        byte[] ram = ramSpan.ToArray();
        foreach (byte i in ComputedIndices)
        {
            StateFields.Require(ref reader, ram[i] == 0, "ram", $"byte 0x{i:x2} is 0x{ram[i]:x2}; the model computes that register and stores nothing there.");
        }

        StateFields.Require(ref reader, (ram[RegA] & RegAUpdateInProgress) == 0, "ram", "register A has the read-only update-in-progress bit set.");
        StateFields.Require(ref reader, (ram[RegB] & RegBSet) == 0 || (ram[RegB] & RegBUpdateInterruptEnable) == 0, "ram", "register B has both SET and the update interrupt enable, which SET clears.");
        byte index = StateFields.ReadByteInRange(ref reader, "index", 0, RamSize - 1);
        bool nmiDisabled = reader.ReadBoolean("nmi-disabled");
        long offsetTicks = reader.ReadInt64("offset");
        long maxTicks = DateTime.MaxValue.Ticks;
        long hostTicks = _time.GetUtcNow().UtcTicks;
        StateFields.Require(ref reader, offsetTicks >= -maxTicks && offsetTicks <= maxTicks && hostTicks + offsetTicks >= 0 && hostTicks + offsetTicks <= maxTicks,
            "offset", $"is {offsetTicks} ticks, which puts the guest's clock outside the years 1-9999.");
        var frozen = new ClockFields
        {
            Year = reader.ReadInt32InRange("frozen.year", 0, MaxFrozenYear),
            Month = reader.ReadInt32InRange("frozen.month", 0, 255),
            Day = reader.ReadInt32InRange("frozen.day", 0, 255),
            DayOfWeek = reader.ReadInt32InRange("frozen.day-of-week", 0, 255),
            Hour = reader.ReadInt32InRange("frozen.hour", 0, 255),
            Minute = reader.ReadInt32InRange("frozen.minute", 0, 255),
            Second = reader.ReadInt32InRange("frozen.second", 0, 255),
            SubSecondTicks = (long)reader.ReadUInt64InRange("frozen.sub-second", 0, TimeSpan.TicksPerSecond - 1),
        };
        reader.EnsureEnd();

        lock (_lock)
        {
            ram.CopyTo(_ram, 0);
            _index = index;
            _nmiDisabled = nmiDisabled;
            _offset = TimeSpan.FromTicks(offsetTicks);
            _frozen = frozen;
        }
    }
}
