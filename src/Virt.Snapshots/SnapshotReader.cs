using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Virt.Snapshots;

/// <summary>
/// Opens a snapshot file and validates its header and section table (sizes, offsets, overlaps, alignment, names,
/// checksums); state sections are checked against their checksums when read. Memory is not read: a restore maps the
/// memory sections copy-on-write through <see cref="File"/>, and <see cref="VerifyMemory"/> checks them on request.
/// Everything in the file is treated as hostile: any inconsistency ends in <see cref="SnapshotFormatException"/>.
/// </summary>
public sealed class SnapshotReader : IDisposable
{
    private readonly Dictionary<string, SnapshotSection> _byName;

    private SnapshotReader(SafeFileHandle file, long length, int version, DateTimeOffset created, List<SnapshotSection> sections)
    {
        File = file;
        Length = length;
        FormatVersion = version;
        Created = created;
        Sections = sections;
        _byName = sections.ToDictionary(s => s.Name, StringComparer.Ordinal);
    }

    /// <summary>The open file (read-only). Memory sections can be mapped from it.</summary>
    public SafeFileHandle File { get; }

    /// <summary>The file's length in bytes.</summary>
    public long Length { get; }

    /// <summary>The format version of the file.</summary>
    public int FormatVersion { get; }

    /// <summary>When the snapshot was written.</summary>
    public DateTimeOffset Created { get; }

    /// <summary>The sections, in file order of their table entries.</summary>
    public IReadOnlyList<SnapshotSection> Sections { get; }

    /// <summary>Opens and validates the file at <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">No file at the path.</exception>
    /// <exception cref="SnapshotFormatException">The file is not a snapshot this build reads, or is corrupt; the message names where.</exception>
    public static SnapshotReader Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!System.IO.File.Exists(path))
        {
            throw new FileNotFoundException($"No snapshot at '{path}'.", path);
        }

        var file = System.IO.File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            return Open(file);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>Validates the snapshot in <paramref name="file"/> (which the reader then owns).</summary>
    /// <exception cref="SnapshotFormatException">The file is not a snapshot this build reads, or is corrupt.</exception>
    public static SnapshotReader Open(SafeFileHandle file)
    {
        ArgumentNullException.ThrowIfNull(file);
        long length = RandomAccess.GetLength(file);
        var header = new byte[SnapshotFormat.HeaderSize];
        if (length < SnapshotFormat.PageSize || RandomAccess.Read(file, header, 0) != header.Length)
        {
            throw new SnapshotFormatException("", "header", $"the file has {length} bytes, less than a snapshot header; it is not a snapshot or it is truncated.");
        }

        if (!header.AsSpan(0, 8).SequenceEqual(SnapshotFormat.Magic))
        {
            throw new SnapshotFormatException("", "magic", "the file does not start with VIRTSNAP; it is not a Virt.Sdk snapshot.");
        }

        ulong expected = BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(120));
        if (XxHash64.HashToUInt64(header.AsSpan(0, 120)) != expected)
        {
            throw new SnapshotFormatException("", "header checksum", "does not match the header: the header is corrupt, or the snapshot was not completed.");
        }

        int version = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(8));
        if (version != SnapshotFormat.Version)
        {
            throw new SnapshotFormatException("", "format version", $"is {version}; this build reads version {SnapshotFormat.Version}.");
        }

        int headerSize = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(12));
        int count = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(16));
        long tableOffset = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(24));
        long tableLength = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(32));
        long created = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(40));
        if (headerSize != SnapshotFormat.HeaderSize)
        {
            throw new SnapshotFormatException("", "header size", $"is {headerSize}, not {SnapshotFormat.HeaderSize}.");
        }

        if (count < 0 || count > SnapshotFormat.MaxSections || tableLength != (long)count * SnapshotFormat.SectionEntrySize)
        {
            throw new SnapshotFormatException("", "section count", $"{count} sections do not fit a table of {tableLength} bytes (at most {SnapshotFormat.MaxSections}).");
        }

        if (tableOffset < SnapshotFormat.PageSize || tableOffset > length || tableLength > length - tableOffset)
        {
            throw new SnapshotFormatException("", "section table offset", $"0x{tableOffset:x}+0x{tableLength:x} is outside the {length}-byte file.");
        }

        var table = new byte[tableLength];
        if (RandomAccess.Read(file, table, tableOffset) != table.Length)
        {
            throw new SnapshotFormatException("", "section table", "could not be read whole: the file is truncated.");
        }

        var sections = new List<SnapshotSection>(count);
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
        {
            var s = ParseEntry(table.AsSpan(i * SnapshotFormat.SectionEntrySize, SnapshotFormat.SectionEntrySize), i, length, tableOffset, tableLength);
            if (!names.Add(s.Name))
            {
                throw new SnapshotFormatException(s.Name, "name", "appears twice in the section table.");
            }

            sections.Add(s);
        }

        CheckOverlaps(sections);
        return new SnapshotReader(file, length, version, DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(created, 0, 253_402_300_799_999)), sections);
    }

    private static SnapshotSection ParseEntry(ReadOnlySpan<byte> e, int index, long fileLength, long tableOffset, long tableLength)
    {
        var nameBytes = e[..SnapshotFormat.MaxNameBytes];
        int end = nameBytes.IndexOf((byte)0);
        nameBytes = end < 0 ? nameBytes : nameBytes[..end];
        string name;
        try
        {
            name = new UTF8Encoding(false, true).GetString(nameBytes);
        }
        catch (DecoderFallbackException)
        {
            throw new SnapshotFormatException($"#{index}", "name", "is not valid UTF-8.");
        }

        if (name.Length == 0)
        {
            throw new SnapshotFormatException($"#{index}", "name", "is empty.");
        }

        uint kind = BinaryPrimitives.ReadUInt32LittleEndian(e[64..]);
        int version = BinaryPrimitives.ReadInt32LittleEndian(e[68..]);
        long offset = BinaryPrimitives.ReadInt64LittleEndian(e[72..]);
        long length = BinaryPrimitives.ReadInt64LittleEndian(e[80..]);
        ulong checksum = BinaryPrimitives.ReadUInt64LittleEndian(e[88..]);
        if (kind > (uint)SnapshotSectionKind.Memory)
        {
            throw new SnapshotFormatException(name, "kind", $"is {kind}; 0 (state) and 1 (memory) are the kinds this build reads.");
        }

        if (offset < SnapshotFormat.PageSize || length < 0 || offset > fileLength || length > fileLength - offset)
        {
            throw new SnapshotFormatException(name, "offset", $"0x{offset:x}+0x{length:x} is outside the {fileLength}-byte file.");
        }

        if (offset < tableOffset + tableLength && tableOffset < offset + length && length > 0)
        {
            throw new SnapshotFormatException(name, "offset", "overlaps the section table.");
        }

        if (kind == (uint)SnapshotSectionKind.State && length > SnapshotFormat.MaxStateSectionBytes)
        {
            throw new SnapshotFormatException(name, "length", $"{length} bytes is more than a state section may hold ({SnapshotFormat.MaxStateSectionBytes}).");
        }

        if (kind == (uint)SnapshotSectionKind.Memory && (offset % SnapshotFormat.PageSize != 0 || length % SnapshotFormat.PageSize != 0 || length == 0))
        {
            throw new SnapshotFormatException(name, "offset", $"a memory section must start on a page and hold whole pages; it is 0x{offset:x}+0x{length:x}.");
        }

        return new SnapshotSection(name, (SnapshotSectionKind)kind, version, offset, length, checksum);
    }

    private static void CheckOverlaps(List<SnapshotSection> sections)
    {
        var sorted = sections.Where(s => s.Length > 0).OrderBy(s => s.Offset).ToList();
        for (int i = 1; i < sorted.Count; i++)
        {
            if (sorted[i - 1].Offset + sorted[i - 1].Length > sorted[i].Offset)
            {
                throw new SnapshotFormatException(sorted[i].Name, "offset", $"overlaps section '{sorted[i - 1].Name}'.");
            }
        }
    }

    /// <summary>Whether a section named <paramref name="name"/> exists.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The table entry of section <paramref name="name"/>.</summary>
    /// <exception cref="SnapshotFormatException">There is no such section.</exception>
    public SnapshotSection GetSection(string name) =>
        _byName.TryGetValue(name, out var s) ? s : throw new SnapshotFormatException(name, "section", "is missing from the snapshot.");

    /// <summary>Reads state section <paramref name="name"/> and checks its checksum.</summary>
    /// <exception cref="SnapshotFormatException">The section is missing, is not a state section, or its bytes do not match the checksum.</exception>
    public byte[] ReadState(string name)
    {
        var s = GetSection(name);
        if (s.Kind != SnapshotSectionKind.State)
        {
            throw new SnapshotFormatException(name, "kind", "is a memory section where a state section was expected.");
        }

        var data = new byte[s.Length];
        if (RandomAccess.Read(File, data, s.Offset) != data.Length)
        {
            throw new SnapshotFormatException(name, "data", "could not be read whole: the file is truncated.");
        }

        if (XxHash64.HashToUInt64(data) != s.Checksum)
        {
            throw new SnapshotFormatException(name, "checksum", "does not match the section's bytes: the section is corrupt.");
        }

        return data;
    }

    /// <summary>Restores <paramref name="component"/> from its section (named by <see cref="IPersistentState.StateName"/>).</summary>
    /// <exception cref="SnapshotFormatException">The section is missing or corrupt, or the component refused it.</exception>
    public void RestoreState(IPersistentState component)
    {
        ArgumentNullException.ThrowIfNull(component);
        var s = GetSection(component.StateName);
        var data = ReadState(component.StateName);
        var reader = new StateReader(data, component.StateName);
        component.RestoreState(ref reader, s.Version);
    }

    /// <summary>Reads every stored page of every memory section and checks its checksum (a full read of the snapshot's memory).</summary>
    /// <exception cref="SnapshotFormatException">A memory section does not match its checksum.</exception>
    public void VerifyMemory()
    {
        var page = new byte[SnapshotFormat.PageSize];
        foreach (var s in Sections.Where(s => s.Kind == SnapshotSectionKind.Memory))
        {
            var hash = new XxHash64();
            for (long offset = 0; offset < s.Length; offset += SnapshotFormat.PageSize)
            {
                if (RandomAccess.Read(File, page, s.Offset + offset) != page.Length)
                {
                    throw new SnapshotFormatException(s.Name, "data", $"page at 0x{offset:x} could not be read: the file is truncated.");
                }

                if (page.AsSpan().IndexOfAnyExcept((byte)0) >= 0)
                {
                    hash.Append(page);
                }
            }

            if (hash.GetCurrentHashAsUInt64() != s.Checksum)
            {
                throw new SnapshotFormatException(s.Name, "checksum", "does not match the memory's pages: the snapshot's memory is corrupt.");
            }
        }
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => File.Dispose();
}
