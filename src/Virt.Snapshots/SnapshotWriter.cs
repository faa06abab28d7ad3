using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace Virt.Snapshots;

/// <summary>
/// Writes a snapshot file: state sections, then memory regions at page-aligned offsets with the zero pages left as holes,
/// then the section table and the header. Not thread-safe; dispose it to close the file (a file without
/// <see cref="Complete"/> has no valid header and is refused by <see cref="SnapshotReader"/>).
/// </summary>
public sealed class SnapshotWriter : IDisposable
{
    private readonly Stream _stream;
    private readonly bool _ownsStream;
    private readonly List<SnapshotSection> _sections = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private long _position;
    private bool _completed;

    /// <summary>Writes to <paramref name="stream"/>, which must be seekable and writable (a file, or a memory stream).</summary>
    /// <exception cref="ArgumentException">The stream cannot seek or write.</exception>
    public SnapshotWriter(Stream stream, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!stream.CanSeek || !stream.CanWrite)
        {
            throw new ArgumentException("A snapshot is written to a seekable, writable stream (a file); memory regions go to page-aligned offsets.", nameof(stream));
        }

        _stream = stream;
        _ownsStream = !leaveOpen;
        _stream.SetLength(0);
        _position = SnapshotFormat.PageSize * 2L; // header page, then room for the table (grown at the end if needed)
    }

    /// <summary>Creates (or replaces) the file at <paramref name="path"/>.</summary>
    public static SnapshotWriter Create(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new SnapshotWriter(new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, 1 << 16));
    }

    /// <summary>The sections written so far.</summary>
    public IReadOnlyList<SnapshotSection> Sections => _sections;

    /// <summary>Adds a state section.</summary>
    /// <exception cref="ArgumentException">The name is empty, too long, or used already; or the data is larger than <see cref="SnapshotFormat.MaxStateSectionBytes"/>.</exception>
    public void AddSection(string name, int version, ReadOnlySpan<byte> data)
    {
        CheckName(name);
        if (data.Length > SnapshotFormat.MaxStateSectionBytes)
        {
            throw new ArgumentException($"Section '{name}' has {data.Length} bytes; a state section holds at most {SnapshotFormat.MaxStateSectionBytes}.", nameof(data));
        }

        _stream.Position = _position;
        _stream.Write(data);
        _sections.Add(new SnapshotSection(name, SnapshotSectionKind.State, version, _position, data.Length, XxHash64.HashToUInt64(data)));
        _position += data.Length;
    }

    /// <summary>Adds a component's state: <see cref="IPersistentState.SaveState"/> into a section named by the component.</summary>
    public void AddState(IPersistentState component)
    {
        ArgumentNullException.ThrowIfNull(component);
        var writer = new StateWriter();
        component.SaveState(writer);
        AddSection(component.StateName, component.StateVersion, writer.WrittenMemory.Span);
    }

    /// <summary>
    /// Adds a memory region of <paramref name="size"/> bytes whose pages <paramref name="readPage"/> supplies: pages that
    /// are all zero are not written (the file keeps a hole there). Returns the number of pages stored.
    /// </summary>
    /// <param name="name">The section name.</param>
    /// <param name="size">The region's size, a multiple of 4 KiB.</param>
    /// <param name="readPage">Fills the span with the page at the given offset in the region.</param>
    public long AddMemory(string name, ulong size, Action<ulong, Span<byte>> readPage)
    {
        CheckName(name);
        ArgumentNullException.ThrowIfNull(readPage);
        if (size == 0 || size % SnapshotFormat.PageSize != 0)
        {
            throw new ArgumentException($"Memory section '{name}' has size 0x{size:x}; it must be a non-zero multiple of 4 KiB.", nameof(size));
        }

        long start = Align(_position);
        var hash = new XxHash64();
        var page = new byte[SnapshotFormat.PageSize];
        long stored = 0;
        for (ulong offset = 0; offset < size; offset += SnapshotFormat.PageSize)
        {
            readPage(offset, page);
            if (page.AsSpan().IndexOfAnyExcept((byte)0) < 0)
            {
                continue;
            }

            _stream.Position = start + (long)offset;
            _stream.Write(page);
            hash.Append(page);
            stored++;
        }

        _sections.Add(new SnapshotSection(name, SnapshotSectionKind.Memory, 1, start, (long)size, hash.GetCurrentHashAsUInt64()));
        _position = start + (long)size;
        return stored;
    }

    /// <summary>Writes the section table and the header. The file is valid from here on.</summary>
    public void Complete()
    {
        ObjectDisposedException.ThrowIf(_completed, this);
        // The file's length covers every memory section even where it ends in holes.
        _stream.SetLength(Math.Max(_stream.Length, _position));
        long tableOffset = SnapshotFormat.PageSize;
        long tableLength = (long)_sections.Count * SnapshotFormat.SectionEntrySize;
        if (tableLength > SnapshotFormat.PageSize)
        {
            tableOffset = Align(_position);
            _stream.SetLength(tableOffset + tableLength);
        }

        var table = new byte[tableLength];
        for (int i = 0; i < _sections.Count; i++)
        {
            var s = _sections[i];
            var e = table.AsSpan(i * SnapshotFormat.SectionEntrySize, SnapshotFormat.SectionEntrySize);
            Encoding.UTF8.GetBytes(s.Name, e[..SnapshotFormat.MaxNameBytes]);
            BinaryPrimitives.WriteUInt32LittleEndian(e[64..], (uint)s.Kind);
            BinaryPrimitives.WriteInt32LittleEndian(e[68..], s.Version);
            BinaryPrimitives.WriteInt64LittleEndian(e[72..], s.Offset);
            BinaryPrimitives.WriteInt64LittleEndian(e[80..], s.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(e[88..], s.Checksum);
        }

        _stream.Position = tableOffset;
        _stream.Write(table);

        var header = new byte[SnapshotFormat.HeaderSize];
        SnapshotFormat.Magic.CopyTo(header);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), SnapshotFormat.Version);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(12), SnapshotFormat.HeaderSize);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(16), _sections.Count);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(24), tableOffset);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(32), tableLength);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(40), DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(120), XxHash64.HashToUInt64(header.AsSpan(0, 120)));
        _stream.Position = 0;
        _stream.Write(header);
        _stream.Flush();
        if (_stream is FileStream file)
        {
            file.Flush(flushToDisk: true);
        }

        _completed = true;
    }

    /// <summary>Closes the file (when the writer owns it).</summary>
    public void Dispose()
    {
        if (_ownsStream)
        {
            _stream.Dispose();
        }
    }

    private void CheckName(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (Encoding.UTF8.GetByteCount(name) > SnapshotFormat.MaxNameBytes || name.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException($"Section name '{name}' must be 1 to {SnapshotFormat.MaxNameBytes} UTF-8 bytes without NUL.", nameof(name));
        }

        if (!_names.Add(name))
        {
            throw new ArgumentException($"A section named '{name}' was added already.", nameof(name));
        }

        if (_sections.Count >= SnapshotFormat.MaxSections)
        {
            throw new InvalidOperationException($"A snapshot holds at most {SnapshotFormat.MaxSections} sections.");
        }
    }

    private static long Align(long value) => (value + SnapshotFormat.PageSize - 1) & ~(long)(SnapshotFormat.PageSize - 1);
}
