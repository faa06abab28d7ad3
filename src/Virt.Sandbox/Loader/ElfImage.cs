using Virt.X86;

namespace Virt.Sandbox.Loader;

/// <summary>One <c>PT_LOAD</c> segment, with the load bias already applied to <see cref="VirtualAddress"/>.</summary>
internal readonly record struct LoadSegment(ulong VirtualAddress, ulong FileOffset, ulong FileSize, ulong MemorySize, ElfSegmentFlags Flags);

/// <summary>
/// A validated ELF64 x86-64 executable (<c>ET_EXEC</c>, or a PIE <c>ET_DYN</c> placed at <see cref="PieLoadBias"/>),
/// static or naming an interpreter (<see cref="InterpreterPath"/>), or a program interpreter itself
/// (<see cref="ParseInterpreter"/>: an <c>ET_DYN</c> whose addresses are offsets from where it is loaded).
/// <see cref="ElfFile"/> checks that the headers fit the file; this class checks what the sandbox can run against the
/// user half of the address space, so later stages can trust the numbers.
/// </summary>
internal sealed class ElfImage
{
    /// <summary>Where a static-PIE executable is placed (1 GiB aligned so any <c>p_align</c> up to that holds).</summary>
    public const ulong PieLoadBias = 0x4000_0000;

    /// <summary>Highest user virtual address (exclusive) that a segment may reach: the bottom of the arena.</summary>
    public const ulong UserImageLimit = 0x7000_0000_0000;

    /// <summary>The most bytes an interpreter's segments may span (ld.so needs a few hundred KiB).</summary>
    public const ulong MaxInterpreterSpan = 1UL << 30;

    private const int MaxProgramHeaders = 128;

    private ElfImage(byte[] file, ulong entry, ulong bias, LoadSegment[] segments, ulong phdrAddress, int phnum, bool executableStack, bool isPie, string? interpreter)
    {
        InterpreterPath = interpreter;
        File = file;
        Entry = entry;
        LoadBias = bias;
        Segments = segments;
        ProgramHeaderAddress = phdrAddress;
        ProgramHeaderCount = phnum;
        ExecutableStack = executableStack;
        IsPositionIndependent = isPie;
    }

    /// <summary>The file bytes.</summary>
    public byte[] File { get; }

    /// <summary>Entry point (bias applied).</summary>
    public ulong Entry { get; }

    /// <summary>The load bias (0 for <c>ET_EXEC</c>).</summary>
    public ulong LoadBias { get; }

    /// <summary>The <c>PT_LOAD</c> segments in file order.</summary>
    public IReadOnlyList<LoadSegment> Segments { get; }

    /// <summary>Virtual address of the program headers (for <c>AT_PHDR</c>), or 0 when no segment maps them.</summary>
    public ulong ProgramHeaderAddress { get; }

    /// <summary>Number of program headers (<c>AT_PHNUM</c>).</summary>
    public int ProgramHeaderCount { get; }

    /// <summary>Whether <c>PT_GNU_STACK</c> asks for an executable stack.</summary>
    public bool ExecutableStack { get; }

    /// <summary>Whether the file is position independent (<c>ET_DYN</c>).</summary>
    public bool IsPositionIndependent { get; }

    /// <summary>The program interpreter <c>PT_INTERP</c> names (an absolute guest path), or null for a static executable.</summary>
    public string? InterpreterPath { get; }

    /// <summary>The lowest and highest (exclusive) page-aligned virtual addresses the segments occupy.</summary>
    public (ulong Start, ulong End) Extent
    {
        get
        {
            ulong lo = ulong.MaxValue, hi = 0;
            foreach (var s in Segments)
            {
                lo = Math.Min(lo, s.VirtualAddress & ~PageTable.PageOffsetMask);
                hi = Math.Max(hi, (s.VirtualAddress + s.MemorySize + PageTable.PageOffsetMask) & ~PageTable.PageOffsetMask);
            }

            return (lo, hi);
        }
    }

    /// <summary>Parses and validates the executable <paramref name="file"/>.</summary>
    /// <exception cref="ElfImageException">The file is not a loadable x86-64 executable; the message names the field.</exception>
    public static ElfImage Parse(byte[] file) => Parse(file, interpreter: false);

    /// <summary>
    /// Parses and validates a program interpreter (<c>ld-linux-x86-64.so.2</c>): an <c>ET_DYN</c> without an interpreter
    /// of its own, spanning at most <see cref="MaxInterpreterSpan"/>. Its addresses (segments, entry) are offsets from
    /// the base it is loaded at.
    /// </summary>
    /// <exception cref="ElfImageException">The file is not a usable interpreter; the message names the field.</exception>
    public static ElfImage ParseInterpreter(byte[] file) => Parse(file, interpreter: true);

    private static ElfImage Parse(byte[] file, bool interpreter)
    {
        ArgumentNullException.ThrowIfNull(file);
        ElfFile elf;
        try
        {
            elf = ElfFile.Parse(file);
        }
        catch (ElfFormatException e)
        {
            throw new ElfImageException(e.Location, e.Reason);
        }

        CheckHeader(elf);
        int phnum = elf.ProgramHeaders.Count;
        bool pie = elf.Type == ElfFileType.SharedObject;
        if (interpreter && !pie)
        {
            throw new ElfImageException("e_type", "the program interpreter is not ET_DYN (3).");
        }

        ulong bias = pie && !interpreter ? PieLoadBias : 0;
        string? interpreterPath = null;
        var segments = new List<LoadSegment>();
        ulong phdrAddress = 0;
        bool execStack = false, hasDynamic = false;
        foreach (var h in elf.ProgramHeaders)
        {
            switch (h.Type)
            {
                case ElfSegmentType.Interpreter when interpreter:
                    throw new ElfImageException("PT_INTERP", "the program interpreter names an interpreter of its own.");
                case ElfSegmentType.Interpreter:
                    interpreterPath = ReadInterpreterPath(elf, file, h);
                    break;
                case ElfSegmentType.Dynamic:
                    hasDynamic = true;
                    break;
                case ElfSegmentType.GnuStack:
                    execStack = (h.Flags & ElfSegmentFlags.Execute) != 0;
                    break;
                case ElfSegmentType.ProgramHeaders:
                    phdrAddress = h.VirtualAddress + bias;
                    break;
                case ElfSegmentType.Tls:
                    CheckTls(h);
                    break;
                case ElfSegmentType.Load when LoadSegmentFrom(h, bias, interpreter) is { } segment:
                    segments.Add(segment);
                    break;
                default:
                    break;
            }
        }

        if (segments.Count == 0)
        {
            throw new ElfImageException("PT_LOAD", "the file has no loadable segment.");
        }

        if (pie && !hasDynamic && interpreterPath is null)
        {
            throw new ElfImageException("e_type", "ET_DYN without PT_DYNAMIC is not a static PIE.");
        }

        ulong entry = elf.Entry + bias;
        if (!segments.Any(s => (s.Flags & ElfSegmentFlags.Execute) != 0 && entry >= s.VirtualAddress && entry < s.VirtualAddress + s.MemorySize))
        {
            throw new ElfImageException("e_entry", $"entry point 0x{entry:x} is not inside an executable PT_LOAD segment.");
        }

        if (phdrAddress == 0)
        {
            phdrAddress = ProgramHeadersInSegments(elf.ProgramHeaderOffset, phnum, segments);
        }

        return new ElfImage(file, entry, bias, [.. segments], phdrAddress, phnum, execStack, pie, interpreterPath);
    }

    /// <summary>The sandbox's rules for the ELF header: a 64-bit x86-64 executable or static PIE with 1 to <see cref="MaxProgramHeaders"/> program headers.</summary>
    private static void CheckHeader(ElfFile elf)
    {
        if (elf.Class != ElfClass.Elf64)
        {
            throw new ElfImageException("e_ident[EI_CLASS]", $"class {(int)elf.Class} is not ELFCLASS64; build a 64-bit executable.");
        }

        if (elf.Machine != ElfMachine.X64)
        {
            throw new ElfImageException("e_machine", $"machine {elf.Machine} is not x86-64 (62).");
        }

        if (elf.Type is not ElfFileType.Executable and not ElfFileType.SharedObject)
        {
            throw new ElfImageException("e_type", $"type {(int)elf.Type} is neither ET_EXEC (2) nor a static-PIE ET_DYN (3).");
        }

        int phnum = elf.ProgramHeaders.Count;
        if (phnum > 0 && elf.ProgramHeaderEntrySize != ElfFile.ProgramHeaderSize64)
        {
            throw new ElfImageException("e_phentsize", $"program header size {elf.ProgramHeaderEntrySize} is not {ElfFile.ProgramHeaderSize64}.");
        }

        if (phnum == 0 || phnum > MaxProgramHeaders)
        {
            throw new ElfImageException("e_phnum", $"{phnum} program headers; expected 1 to {MaxProgramHeaders}.");
        }
    }

    private static void CheckTls(in ElfProgramHeader h)
    {
        if (h.Alignment != 0 && (h.Alignment & (h.Alignment - 1)) != 0)
        {
            throw new ElfImageException($"program header {h.Index} (PT_TLS) p_align", $"0x{h.Alignment:x} is not a power of two.");
        }
    }

    /// <summary>The segment a PT_LOAD header maps, or <see langword="null"/> for an empty one; throws where it breaks the sandbox's rules.</summary>
    private static LoadSegment? LoadSegmentFrom(in ElfProgramHeader h, ulong bias, bool interpreter)
    {
        string at = $"program header {h.Index}";
        if (h.Alignment > 1 && (h.VirtualAddress % PageTable.PageSize) != (h.Offset % PageTable.PageSize))
        {
            throw new ElfImageException($"{at} p_vaddr", $"0x{h.VirtualAddress:x} and p_offset 0x{h.Offset:x} differ modulo the page size.");
        }

        ulong start = h.VirtualAddress + bias;
        if (h.MemorySize == 0)
        {
            return null;
        }

        if (interpreter)
        {
            // Offsets from the load base, which the loader chooses: only the span is limited.
            if (start >= MaxInterpreterSpan || h.MemorySize > MaxInterpreterSpan || start + h.MemorySize > MaxInterpreterSpan)
            {
                throw new ElfImageException($"{at} p_vaddr", $"segment 0x{start:x}+0x{h.MemorySize:x} reaches past the interpreter's largest span 0x{MaxInterpreterSpan:x}.");
            }
        }
        else if (start < 0x10000 || start >= UserImageLimit || h.MemorySize > UserImageLimit || start + h.MemorySize > UserImageLimit)
        {
            throw new ElfImageException($"{at} p_vaddr", $"segment 0x{start:x}+0x{h.MemorySize:x} is outside the loadable range 0x10000-0x{UserImageLimit:x}.");
        }

        return new LoadSegment(start, h.Offset, h.FileSize, h.MemorySize, h.Flags & (ElfSegmentFlags.Read | ElfSegmentFlags.Write | ElfSegmentFlags.Execute));
    }

    /// <summary>Without PT_PHDR, the headers are visible where a segment maps the file bytes that hold them (0 when none does).</summary>
    private static ulong ProgramHeadersInSegments(ulong phoff, int phnum, List<LoadSegment> segments)
    {
        foreach (var s in segments)
        {
            if (phoff >= s.FileOffset && phoff + ((ulong)phnum * ElfFile.ProgramHeaderSize64) <= s.FileOffset + s.FileSize)
            {
                return s.VirtualAddress + (phoff - s.FileOffset);
            }
        }

        return 0;
    }

    /// <summary>The interpreter path PT_INTERP names: an absolute path of printable ASCII, NUL-terminated, under 4096 bytes.</summary>
    private static string ReadInterpreterPath(ElfFile elf, byte[] file, in ElfProgramHeader header)
    {
        var bytes = elf.GetContents(file, header);
        int end = bytes.IndexOf((byte)0);
        if (end <= 0 || end >= 4096)
        {
            throw new ElfImageException("PT_INTERP", "the interpreter path is empty, not NUL-terminated or longer than 4095 bytes.");
        }

        foreach (byte b in bytes[..end])
        {
            if (b is < 0x20 or > 0x7E)
            {
                throw new ElfImageException("PT_INTERP", "the interpreter path is not printable ASCII.");
            }
        }

        string path = System.Text.Encoding.ASCII.GetString(bytes[..end]);
        return path.StartsWith('/') ? path : throw new ElfImageException("PT_INTERP", $"the interpreter path '{path}' is not absolute.");
    }
}
