using System.Buffers.Binary;
using System.Globalization;

namespace Virt.X86;

/// <summary>
/// The file header and program headers of a little-endian ELF32 or ELF64 file, checked against the file's size
/// (System V gABI, "ELF Header" and "Program Header"). Parsing only reads and validates structure: whether a
/// loader accepts the file's type, machine, addresses or segments is the loader's decision.
/// </summary>
/// <remarks>
/// <para>
/// Checked here: the header fits the file; the magic, <c>EI_CLASS</c> (1 or 2) and <c>EI_DATA</c> (little-endian);
/// the program-header table (<c>e_phoff</c>, <c>e_phnum</c>, <c>e_phentsize</c> at least the class's entry size)
/// lies inside the file; every program header's file bytes (<c>p_offset</c>, <c>p_filesz</c>) lie inside the
/// file; <c>p_filesz</c> is at most <c>p_memsz</c> for PT_LOAD and PT_TLS. Every failure is an
/// <see cref="ElfFormatException"/> that names the field; no other exception escapes, whatever the bytes.
/// </para>
/// <para>Not supported: big-endian files, and extended program-header numbering (<c>e_phnum</c> = 0xFFFF is read as a count).</para>
/// <para>
/// The file's bytes are not kept. Methods that need them (<see cref="GetContents"/>, <see cref="Notes"/>,
/// <see cref="FindNote"/>) take the same bytes again, and refuse bytes of another length.
/// </para>
/// </remarks>
public sealed class ElfFile
{
    /// <summary>Bytes of <c>e_ident</c>.</summary>
    public const int IdentSize = 16;

    /// <summary>Bytes of an ELF32 file header.</summary>
    public const int HeaderSize32 = 52;

    /// <summary>Bytes of an ELF64 file header.</summary>
    public const int HeaderSize64 = 64;

    /// <summary>Bytes of an ELF32 program header.</summary>
    public const int ProgramHeaderSize32 = 32;

    /// <summary>Bytes of an ELF64 program header.</summary>
    public const int ProgramHeaderSize64 = 56;

    private readonly ElfProgramHeader[] _programHeaders;

    private ElfFile(ElfClass elfClass, ElfFileType type, ushort machine, byte osAbi, ulong entry, ulong phoff, int phentsize, ElfProgramHeader[] headers, int fileLength)
    {
        Class = elfClass;
        Type = type;
        Machine = machine;
        OsAbi = osAbi;
        Entry = entry;
        ProgramHeaderOffset = phoff;
        ProgramHeaderEntrySize = phentsize;
        _programHeaders = headers;
        FileLength = fileLength;
    }

    /// <summary><c>e_ident[EI_CLASS]</c>.</summary>
    public ElfClass Class { get; }

    /// <summary><c>e_type</c>.</summary>
    public ElfFileType Type { get; }

    /// <summary><c>e_machine</c> (see <see cref="ElfMachine"/>).</summary>
    public ushort Machine { get; }

    /// <summary><c>e_ident[EI_OSABI]</c>.</summary>
    public byte OsAbi { get; }

    /// <summary><c>e_entry</c>: the entry point's virtual address.</summary>
    public ulong Entry { get; }

    /// <summary><c>e_phoff</c>: where the program-header table starts in the file.</summary>
    public ulong ProgramHeaderOffset { get; }

    /// <summary><c>e_phentsize</c>: bytes per program-header table entry (at least the class's entry size).</summary>
    public int ProgramHeaderEntrySize { get; }

    /// <summary>The program headers in table order (<c>e_phnum</c> of them).</summary>
    public IReadOnlyList<ElfProgramHeader> ProgramHeaders => _programHeaders;

    /// <summary>Bytes in the file that was parsed.</summary>
    public int FileLength { get; }

    /// <summary>Whether <paramref name="file"/> starts with the ELF magic <c>0x7F 'E' 'L' 'F'</c> (cheap to call before choosing a loader).</summary>
    public static bool HasMagic(ReadOnlySpan<byte> file) => file.Length >= 4 && file[..4].SequenceEqual("\u007FELF"u8);

    /// <summary>Parses and validates the structure of <paramref name="file"/>.</summary>
    /// <exception cref="ElfFormatException">The file is truncated, not ELF, big-endian, or a header's numbers do not fit the file; the field is named.</exception>
    public static ElfFile Parse(ReadOnlySpan<byte> file)
    {
        if (file.Length < IdentSize)
        {
            throw new ElfFormatException("e_ident", $"the file is {file.Length} bytes, too short for an ELF header; the file is truncated.");
        }

        if (!HasMagic(file))
        {
            throw ElfFormatException.Ident("EI_MAG", "the file does not start with the ELF magic 0x7F 'E' 'L' 'F'.");
        }

        var elfClass = file[4] switch
        {
            1 => ElfClass.Elf32,
            2 => ElfClass.Elf64,
            _ => throw ElfFormatException.Ident("EI_CLASS", $"class {file[4]} is neither ELFCLASS32 (1) nor ELFCLASS64 (2); the file is corrupt."),
        };
        if (file[5] != 1)
        {
            throw ElfFormatException.Ident("EI_DATA", $"encoding {file[5]} is not little-endian (ELFDATA2LSB, 1); this is not an x86 file.");
        }

        bool is64 = elfClass == ElfClass.Elf64;
        int headerSize = is64 ? HeaderSize64 : HeaderSize32;
        if (file.Length < headerSize)
        {
            throw new ElfFormatException("e_ident", $"the file is {file.Length} bytes, too short for an ELF{(is64 ? 64 : 32)} header ({headerSize} bytes); the file is truncated.");
        }

        var type = (ElfFileType)BinaryPrimitives.ReadUInt16LittleEndian(file[16..]);
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(file[18..]);
        ulong entry = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(file[24..]) : BinaryPrimitives.ReadUInt32LittleEndian(file[24..]);
        ulong phoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(file[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(file[28..]);
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(file[(is64 ? 54 : 42)..]);
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(file[(is64 ? 56 : 44)..]);
        int entrySize = is64 ? ProgramHeaderSize64 : ProgramHeaderSize32;
        if (phnum > 0 && phentsize < entrySize)
        {
            throw new ElfFormatException("e_phentsize", $"is {phentsize}, smaller than an ELF{(is64 ? 64 : 32)} program header ({entrySize} bytes); the file is corrupt.");
        }

        ulong length = (ulong)file.Length;
        ulong tableSize = (ulong)phentsize * (ulong)phnum;
        if (phnum > 0 && (phoff > length || tableSize > length - phoff))
        {
            throw new ElfFormatException("e_phoff", $"the program headers at 0x{phoff:x} ({phnum} × {phentsize} bytes) run past the end of the {file.Length}-byte file; the file is truncated or corrupt.");
        }

        var headers = new ElfProgramHeader[phnum];
        for (int i = 0; i < phnum; i++)
        {
            headers[i] = ReadProgramHeader(file.Slice((int)phoff + (i * phentsize), entrySize), i, is64);
            Validate(headers[i], length);
        }

        return new ElfFile(elfClass, type, machine, file[7], entry, phoff, phentsize, headers, file.Length);
    }

    /// <summary>The first program header of <paramref name="type"/>, or <see langword="null"/>.</summary>
    public ElfProgramHeader? Find(ElfSegmentType type)
    {
        foreach (var h in _programHeaders)
        {
            if (h.Type == type)
            {
                return h;
            }
        }

        return null;
    }

    /// <summary>The file bytes of <paramref name="header"/> (<c>p_filesz</c> bytes at <c>p_offset</c>).</summary>
    /// <exception cref="ArgumentException"><paramref name="file"/> is not the parsed file's length, or <paramref name="header"/>'s bytes are not inside it.</exception>
    public ReadOnlySpan<byte> GetContents(ReadOnlySpan<byte> file, in ElfProgramHeader header)
    {
        RequireSameFile(file);
        if (header.Offset > (ulong)file.Length || header.FileSize > (ulong)file.Length - header.Offset)
        {
            throw new ArgumentException($"The program header's bytes 0x{header.Offset:x}+0x{header.FileSize:x} are not inside the {file.Length}-byte file.", nameof(header));
        }

        return file.Slice((int)header.Offset, (int)header.FileSize);
    }

    /// <summary>The notes of every PT_NOTE segment, in file order. A malformed note ends the walk of its segment.</summary>
    /// <exception cref="ArgumentException"><paramref name="file"/> is not the parsed file's length.</exception>
    public ElfNoteEnumerator Notes(ReadOnlySpan<byte> file)
    {
        RequireSameFile(file);
        return new ElfNoteEnumerator(file, _programHeaders);
    }

    /// <summary>The descriptor of the first note named <paramref name="name"/> (without its NUL) with type <paramref name="type"/>, or an empty span.</summary>
    /// <exception cref="ArgumentException"><paramref name="file"/> is not the parsed file's length.</exception>
    public ReadOnlySpan<byte> FindNote(ReadOnlySpan<byte> file, ReadOnlySpan<byte> name, uint type)
    {
        foreach (var note in Notes(file))
        {
            if (note.Type == type && note.Name.SequenceEqual(name))
            {
                return note.Descriptor;
            }
        }

        return [];
    }

    private void RequireSameFile(ReadOnlySpan<byte> file)
    {
        if (file.Length != FileLength)
        {
            throw new ArgumentException($"The file is {file.Length} bytes, not the {FileLength} bytes that were parsed; pass the same bytes.", nameof(file));
        }
    }

    private static ElfProgramHeader ReadProgramHeader(ReadOnlySpan<byte> ph, int index, bool is64)
    {
        var type = (ElfSegmentType)BinaryPrimitives.ReadUInt32LittleEndian(ph);
        if (is64)
        {
            return new ElfProgramHeader(
                index,
                type,
                (ElfSegmentFlags)BinaryPrimitives.ReadUInt32LittleEndian(ph[4..]),
                Offset: BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]),
                VirtualAddress: BinaryPrimitives.ReadUInt64LittleEndian(ph[16..]),
                PhysicalAddress: BinaryPrimitives.ReadUInt64LittleEndian(ph[24..]),
                FileSize: BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]),
                MemorySize: BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]),
                Alignment: BinaryPrimitives.ReadUInt64LittleEndian(ph[48..]));
        }

        return new ElfProgramHeader(
            index,
            type,
            (ElfSegmentFlags)BinaryPrimitives.ReadUInt32LittleEndian(ph[24..]),
            Offset: BinaryPrimitives.ReadUInt32LittleEndian(ph[4..]),
            VirtualAddress: BinaryPrimitives.ReadUInt32LittleEndian(ph[8..]),
            PhysicalAddress: BinaryPrimitives.ReadUInt32LittleEndian(ph[12..]),
            FileSize: BinaryPrimitives.ReadUInt32LittleEndian(ph[16..]),
            MemorySize: BinaryPrimitives.ReadUInt32LittleEndian(ph[20..]),
            Alignment: BinaryPrimitives.ReadUInt32LittleEndian(ph[28..]));
    }

    private static void Validate(in ElfProgramHeader h, ulong length)
    {
        if (h.Offset > length)
        {
            throw ElfFormatException.InProgramHeader(h.Index, "p_offset", $"0x{h.Offset:x} is past the end of the {length}-byte file; the file is truncated or corrupt.");
        }

        if (h.FileSize > length - h.Offset)
        {
            // Both fields make the range; the size is what overruns the file.
            throw ElfFormatException.InProgramHeader(h.Index, "p_filesz", "p_offset+p_filesz",
                $"{TypeName(h.Type)} covers file bytes 0x{h.Offset:x}+0x{h.FileSize:x}, past the end of the {length}-byte file; the file is truncated or corrupt.");
        }

        if (h.Type is ElfSegmentType.Load or ElfSegmentType.Tls && h.FileSize > h.MemorySize)
        {
            throw ElfFormatException.InProgramHeader(h.Index, "p_filesz",
                $"{TypeName(h.Type)} p_filesz 0x{h.FileSize:x} is larger than p_memsz 0x{h.MemorySize:x}; the file is corrupt.");
        }
    }

    /// <summary>The gABI name of a segment type (<c>PT_LOAD</c>), or its number.</summary>
    internal static string TypeName(ElfSegmentType type) => type switch
    {
        ElfSegmentType.Null => "PT_NULL",
        ElfSegmentType.Load => "PT_LOAD",
        ElfSegmentType.Dynamic => "PT_DYNAMIC",
        ElfSegmentType.Interpreter => "PT_INTERP",
        ElfSegmentType.Note => "PT_NOTE",
        ElfSegmentType.SharedLibrary => "PT_SHLIB",
        ElfSegmentType.ProgramHeaders => "PT_PHDR",
        ElfSegmentType.Tls => "PT_TLS",
        ElfSegmentType.GnuEhFrame => "PT_GNU_EH_FRAME",
        ElfSegmentType.GnuStack => "PT_GNU_STACK",
        ElfSegmentType.GnuRelro => "PT_GNU_RELRO",
        ElfSegmentType.GnuProperty => "PT_GNU_PROPERTY",
        _ => "segment type 0x" + ((uint)type).ToString("x", CultureInfo.InvariantCulture),
    };
}
