using System.Buffers.Binary;
using System.Text;

namespace Virt.Snapshots;

/// <summary>
/// Reads a component's state field by field. Every read is bounds-checked: a truncated or corrupt section ends in
/// <see cref="SnapshotFormatException"/> naming the section and the field, never in another exception.
/// </summary>
public ref struct StateReader
{
    private readonly ReadOnlySpan<byte> _data;
    private int _position;

    /// <summary>Reads <paramref name="data"/>, the state of section <paramref name="section"/>.</summary>
    public StateReader(ReadOnlySpan<byte> data, string section)
    {
        _data = data;
        _position = 0;
        Section = section;
    }

    /// <summary>The section being read, for error messages.</summary>
    public string Section { get; }

    /// <summary>Bytes not yet read.</summary>
    public readonly int Remaining => _data.Length - _position;

    private ReadOnlySpan<byte> Take(int count, string field)
    {
        if (count < 0 || count > Remaining)
        {
            throw new SnapshotFormatException(Section, field, $"needs {count} bytes at offset {_position}, but the section has {Remaining} left (truncated or corrupt).");
        }

        var span = _data.Slice(_position, count);
        _position += count;
        return span;
    }

    /// <summary>Reads a byte.</summary>
    public byte ReadByte(string field) => Take(1, field)[0];

    /// <summary>Reads a Boolean written as 0 or 1; any other value is corrupt.</summary>
    public bool ReadBoolean(string field)
    {
        byte b = ReadByte(field);
        return b switch
        {
            0 => false,
            1 => true,
            _ => throw new SnapshotFormatException(Section, field, $"is {b}, not a Boolean (0 or 1)."),
        };
    }

    /// <summary>Reads a 16-bit value.</summary>
    public ushort ReadUInt16(string field) => BinaryPrimitives.ReadUInt16LittleEndian(Take(2, field));

    /// <summary>Reads a 32-bit value.</summary>
    public uint ReadUInt32(string field) => BinaryPrimitives.ReadUInt32LittleEndian(Take(4, field));

    /// <summary>Reads a signed 32-bit value.</summary>
    public int ReadInt32(string field) => (int)ReadUInt32(field);

    /// <summary>Reads a 64-bit value.</summary>
    public ulong ReadUInt64(string field) => BinaryPrimitives.ReadUInt64LittleEndian(Take(8, field));

    /// <summary>Reads a signed 64-bit value.</summary>
    public long ReadInt64(string field) => (long)ReadUInt64(field);

    /// <summary>Reads a length-prefixed byte string of at most <paramref name="maxLength"/> bytes.</summary>
    public ReadOnlySpan<byte> ReadBytes(string field, int maxLength)
    {
        int length = ReadInt32(field);
        if (length < 0 || length > maxLength)
        {
            throw new SnapshotFormatException(Section, field, $"has length {length}; at most {maxLength} is valid.");
        }

        return Take(length, field);
    }

    /// <summary>Reads a length-prefixed UTF-8 string of at most <paramref name="maxLength"/> bytes.</summary>
    public string ReadString(string field, int maxLength = 4096)
    {
        var bytes = ReadBytes(field, maxLength);
        try
        {
            return new UTF8Encoding(false, true).GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new SnapshotFormatException(Section, field, $"is not valid UTF-8 ({e.Message}).");
        }
    }

    /// <summary>Reads a value that must lie in <c>[min, max]</c>.</summary>
    public ulong ReadUInt64InRange(string field, ulong min, ulong max)
    {
        ulong v = ReadUInt64(field);
        return v < min || v > max ? throw new SnapshotFormatException(Section, field, $"is 0x{v:x}, outside 0x{min:x}-0x{max:x}.") : v;
    }

    /// <summary>Reads a value that must lie in <c>[min, max]</c>.</summary>
    public int ReadInt32InRange(string field, int min, int max)
    {
        int v = ReadInt32(field);
        return v < min || v > max ? throw new SnapshotFormatException(Section, field, $"is {v}, outside {min}-{max}.") : v;
    }

    /// <summary>Fails unless every byte of the section was read (a longer section means another layout).</summary>
    public readonly void EnsureEnd()
    {
        if (Remaining != 0)
        {
            throw new SnapshotFormatException(Section, "end", $"{Remaining} bytes follow the last field; the section has another layout than its version says.");
        }
    }

    /// <summary>Throws for a version this reader does not understand.</summary>
    public readonly SnapshotFormatException UnsupportedVersion(int version, int supported) =>
        new(Section, "version", $"is {version}; this build reads version {supported}. Restore with the build that saved it, or save it again.");
}
