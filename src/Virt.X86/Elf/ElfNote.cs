using System.Buffers.Binary;

namespace Virt.X86;

/// <summary>One note of a PT_NOTE segment (System V gABI, "Note Section").</summary>
public readonly ref struct ElfNote
{
    internal ElfNote(ReadOnlySpan<byte> name, uint type, ReadOnlySpan<byte> descriptor)
    {
        Name = name;
        Type = type;
        Descriptor = descriptor;
    }

    /// <summary>The owner's name without its terminating NUL bytes (<c>Xen</c>, <c>GNU</c>).</summary>
    public ReadOnlySpan<byte> Name { get; }

    /// <summary>The note type, whose meaning depends on <see cref="Name"/>.</summary>
    public uint Type { get; }

    /// <summary>The descriptor bytes.</summary>
    public ReadOnlySpan<byte> Descriptor { get; }
}

/// <summary>Walks the notes of every PT_NOTE segment of an <see cref="ElfFile"/>; use it with <c>foreach</c>.</summary>
/// <remarks>
/// Notes are aligned to 4 bytes, or to 8 in a segment whose <c>p_align</c> is 8 (as <c>.note.gnu.property</c> is). A
/// note whose sizes run past its segment ends the walk of that segment; it never reads outside the segment.
/// </remarks>
public ref struct ElfNoteEnumerator
{
    private const int NoteHeaderSize = 12;
    private readonly ReadOnlySpan<byte> _file;
    private readonly ElfProgramHeader[] _headers;
    private int _header;
    private ReadOnlySpan<byte> _rest;
    private int _align;

    internal ElfNoteEnumerator(ReadOnlySpan<byte> file, ElfProgramHeader[] headers)
    {
        _file = file;
        _headers = headers;
        _header = -1;
        _rest = default;
        _align = 4;
        Current = default;
    }

    /// <summary>The note at the current position.</summary>
    public ElfNote Current { get; private set; }

    /// <summary>Returns this enumerator (for <c>foreach</c>).</summary>
    public readonly ElfNoteEnumerator GetEnumerator() => this;

    /// <summary>Moves to the next note.</summary>
    public bool MoveNext()
    {
        while (true)
        {
            if (TryReadNote())
            {
                return true;
            }

            if (!NextNoteSegment())
            {
                return false;
            }
        }
    }

    private bool TryReadNote()
    {
        if (_rest.Length < NoteHeaderSize)
        {
            return false;
        }

        uint namesz = BinaryPrimitives.ReadUInt32LittleEndian(_rest);
        uint descsz = BinaryPrimitives.ReadUInt32LittleEndian(_rest[4..]);
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(_rest[8..]);
        ulong nameEnd = NoteHeaderSize + Align(namesz);
        ulong descEnd = nameEnd + Align(descsz);
        if (nameEnd > (ulong)_rest.Length || descsz > (ulong)_rest.Length - nameEnd)
        {
            _rest = default; // a malformed note ends the walk of this segment
            return false;
        }

        var name = _rest.Slice(NoteHeaderSize, (int)namesz);
        int end = name.Length;
        while (end > 0 && name[end - 1] == 0)
        {
            end--;
        }

        Current = new ElfNote(name[..end], type, _rest.Slice((int)nameEnd, (int)descsz));
        _rest = descEnd >= (ulong)_rest.Length ? default : _rest[(int)descEnd..];
        return true;
    }

    private bool NextNoteSegment()
    {
        while (++_header < _headers.Length)
        {
            var h = _headers[_header];
            if (h.Type == ElfSegmentType.Note)
            {
                // Parse checked that the segment's bytes are inside the file.
                _rest = _file.Slice((int)h.Offset, (int)h.FileSize);
                _align = h.Alignment == 8 ? 8 : 4;
                return true;
            }
        }

        return false;
    }

    private readonly ulong Align(uint value) => ((ulong)value + (ulong)(_align - 1)) & ~(ulong)(_align - 1);
}
