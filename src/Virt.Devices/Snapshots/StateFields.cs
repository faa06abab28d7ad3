using Virt.Snapshots;

namespace Virt.Devices;

/// <summary>
/// Field readers the device models share when restoring: each checks a value against what the model can hold and
/// names the field it refuses, so a restore reads a whole layout into locals before it changes anything.
/// </summary>
internal static class StateFields
{
    /// <summary>The largest distance in clock ticks a relative time may have: far beyond any real timer, small enough that adding it to a clock value cannot overflow.</summary>
    public const long MaxRelativeTicks = 1L << 62;

    public static SnapshotFormatException Invalid(ref StateReader reader, string field, string message) =>
        new(reader.Section, field, message);

    /// <summary>Throws for a version other than <paramref name="supported"/>.</summary>
    public static void CheckVersion(ref StateReader reader, int version, int supported)
    {
        if (version != supported)
        {
            throw reader.UnsupportedVersion(version, supported);
        }
    }

    /// <summary>Reads a byte whose bits outside <paramref name="allowed"/> must be clear.</summary>
    public static byte ReadMaskedByte(ref StateReader reader, string field, byte allowed)
    {
        byte v = reader.ReadByte(field);
        return (v & ~allowed) != 0 ? throw Invalid(ref reader, field, $"is 0x{v:x2}; only bits 0x{allowed:x2} may be set.") : v;
    }

    /// <summary>Reads a 32-bit value whose bits outside <paramref name="allowed"/> must be clear.</summary>
    public static uint ReadMaskedUInt32(ref StateReader reader, string field, uint allowed)
    {
        uint v = reader.ReadUInt32(field);
        return (v & ~allowed) != 0 ? throw Invalid(ref reader, field, $"is 0x{v:x8}; only bits 0x{allowed:x8} may be set.") : v;
    }

    /// <summary>Reads a byte that must lie in <c>[min, max]</c>.</summary>
    public static byte ReadByteInRange(ref StateReader reader, string field, byte min, byte max)
    {
        byte v = reader.ReadByte(field);
        return v < min || v > max ? throw Invalid(ref reader, field, $"is {v}, outside {min}-{max}.") : v;
    }

    /// <summary>Reads a signed distance in ticks from the clock's present (see <see cref="MaxRelativeTicks"/>).</summary>
    public static long ReadRelativeTicks(ref StateReader reader, string field)
    {
        long v = reader.ReadInt64(field);
        return v is < -MaxRelativeTicks or > MaxRelativeTicks ? throw Invalid(ref reader, field, $"is {v} ticks from now, beyond ±2^62.") : v;
    }

    /// <summary>Reads a non-negative duration in ticks (at most <see cref="MaxRelativeTicks"/>).</summary>
    public static long ReadDuration(ref StateReader reader, string field)
    {
        long v = reader.ReadInt64(field);
        return v is < 0 or > MaxRelativeTicks ? throw Invalid(ref reader, field, $"is {v}; a duration lies in 0-2^62.") : v;
    }

    /// <summary>Fails with <paramref name="message"/> unless <paramref name="condition"/> holds.</summary>
    public static void Require(ref StateReader reader, bool condition, string field, string message)
    {
        if (!condition)
        {
            throw Invalid(ref reader, field, message);
        }
    }

    /// <summary>Writes <paramref name="state"/> as a nested record: its version, then its bytes length-prefixed.</summary>
    public static void WriteRecord(StateWriter writer, IPersistentState state)
    {
        var inner = new StateWriter();
        state.SaveState(inner);
        writer.WriteInt32(state.StateVersion);
        writer.WriteBytes(inner.WrittenMemory.Span);
    }

    /// <summary>Reads a nested record written by <see cref="WriteRecord"/>: its version, and a reader over its bytes.</summary>
    public static StateReader ReadRecord(ref StateReader reader, string name, out int version, int maxLength = 1 << 16)
    {
        version = reader.ReadInt32(name + ".version");
        var data = reader.ReadBytes(name, maxLength);
        return new StateReader(data, $"{reader.Section}/{name}");
    }
}
