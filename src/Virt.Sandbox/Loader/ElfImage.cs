using System.Buffers.Binary;

namespace Virt.Sandbox.Loader;

/// <summary>Segment permission bits of a program header (<c>p_flags</c>).</summary>
[Flags]
internal enum SegmentFlags : uint
{
    None = 0,
    /// <summary>PF_X: executable.</summary>
    Execute = 1,
    /// <summary>PF_W: writable.</summary>
    Write = 2,
    /// <summary>PF_R: readable.</summary>
    Read = 4,
}

/// <summary>One <c>PT_LOAD</c> segment, with the load bias already applied to <see cref="VirtualAddress"/>.</summary>
internal readonly record struct LoadSegment(ulong VirtualAddress, ulong FileOffset, ulong FileSize, ulong MemorySize, SegmentFlags Flags);

/// <summary>
/// A validated static ELF64 x86-64 executable (<c>ET_EXEC</c>, or a static-PIE <c>ET_DYN</c> placed at
/// <see cref="PieLoadBias"/>). Every field the loader relies on is checked here against the file size and
/// the user half of the address space, so later stages can trust the numbers.
/// </summary>
internal sealed class ElfImage
{
    /// <summary>Where a static-PIE executable is placed (1 GiB aligned so any <c>p_align</c> up to that holds).</summary>
    public const ulong PieLoadBias = 0x4000_0000;

    /// <summary>Highest user virtual address (exclusive) that a segment may reach: the bottom of the arena.</summary>
    public const ulong UserImageLimit = 0x7000_0000_0000;

    private const int HeaderSize = 64;
    private const int ProgramHeaderSize = 56;
    private const ushort EtExec = 2, EtDyn = 3;
    private const ushort EmX8664 = 62;
    private const uint PtLoad = 1, PtDynamic = 2, PtInterp = 3, PtPhdr = 6, PtTls = 7, PtGnuStack = 0x6474E551;
    private const int MaxProgramHeaders = 128;

    private ElfImage(byte[] file, ulong entry, ulong bias, LoadSegment[] segments, ulong phdrAddress, int phnum, bool executableStack, bool isPie)
    {
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

    /// <summary>Whether the file is a static PIE (<c>ET_DYN</c>).</summary>
    public bool IsPositionIndependent { get; }

    /// <summary>The lowest and highest (exclusive) page-aligned virtual addresses the segments occupy.</summary>
    public (ulong Start, ulong End) Extent
    {
        get
        {
            ulong lo = ulong.MaxValue, hi = 0;
            foreach (var s in Segments)
            {
                lo = Math.Min(lo, s.VirtualAddress & ~0xFFFUL);
                hi = Math.Max(hi, (s.VirtualAddress + s.MemorySize + 0xFFF) & ~0xFFFUL);
            }

            return (lo, hi);
        }
    }

    /// <summary>Parses and validates <paramref name="file"/>.</summary>
    /// <exception cref="ElfImageException">The file is not a loadable static x86-64 executable; the message names the field.</exception>
    public static ElfImage Parse(byte[] file)
    {
        ArgumentNullException.ThrowIfNull(file);
        var f = file.AsSpan();
        if (f.Length < HeaderSize)
        {
            throw new ElfImageException("e_ident", $"the file is {f.Length} bytes, shorter than an ELF64 header (64 bytes).");
        }

        if (f[0] != 0x7F || f[1] != (byte)'E' || f[2] != (byte)'L' || f[3] != (byte)'F')
        {
            throw new ElfImageException("e_ident[EI_MAG]", "not an ELF file (no \\x7fELF magic).");
        }

        if (f[4] != 2)
        {
            throw new ElfImageException("e_ident[EI_CLASS]", $"class {f[4]} is not ELFCLASS64; build a 64-bit executable.");
        }

        if (f[5] != 1)
        {
            throw new ElfImageException("e_ident[EI_DATA]", $"encoding {f[5]} is not little-endian.");
        }

        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(f[16..]);
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(f[18..]);
        ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(f[24..]);
        ulong phoff = BinaryPrimitives.ReadUInt64LittleEndian(f[32..]);
        ushort phentsize = BinaryPrimitives.ReadUInt16LittleEndian(f[54..]);
        ushort phnum = BinaryPrimitives.ReadUInt16LittleEndian(f[56..]);

        if (machine != EmX8664)
        {
            throw new ElfImageException("e_machine", $"machine {machine} is not x86-64 (62).");
        }

        if (type != EtExec && type != EtDyn)
        {
            throw new ElfImageException("e_type", $"type {type} is neither ET_EXEC (2) nor a static-PIE ET_DYN (3).");
        }

        if (phentsize != ProgramHeaderSize)
        {
            throw new ElfImageException("e_phentsize", $"program header size {phentsize} is not 56.");
        }

        if (phnum == 0 || phnum > MaxProgramHeaders)
        {
            throw new ElfImageException("e_phnum", $"{phnum} program headers; expected 1 to {MaxProgramHeaders}.");
        }

        if (phoff > (ulong)f.Length || (ulong)f.Length - phoff < (ulong)phnum * ProgramHeaderSize)
        {
            throw new ElfImageException("e_phoff", $"program headers at 0x{phoff:x} run past the end of the file.");
        }

        bool pie = type == EtDyn;
        ulong bias = pie ? PieLoadBias : 0;
        var segments = new List<LoadSegment>();
        ulong phdrAddress = 0;
        bool execStack = false, hasDynamic = false;
        for (int i = 0; i < phnum; i++)
        {
            var ph = f.Slice((int)phoff + (i * ProgramHeaderSize), ProgramHeaderSize);
            uint ptype = BinaryPrimitives.ReadUInt32LittleEndian(ph);
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(ph[4..]);
            ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]);
            ulong vaddr = BinaryPrimitives.ReadUInt64LittleEndian(ph[16..]);
            ulong filesz = BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]);
            ulong memsz = BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]);
            ulong align = BinaryPrimitives.ReadUInt64LittleEndian(ph[48..]);
            string at = $"program header {i}";
            switch (ptype)
            {
                case PtInterp:
                    throw new ElfImageException("PT_INTERP", "the executable is dynamically linked (it names an interpreter); link it statically (gcc -static, or musl-gcc -static).");
                case PtDynamic:
                    hasDynamic = true;
                    break;
                case PtGnuStack:
                    execStack = (flags & (uint)SegmentFlags.Execute) != 0;
                    break;
                case PtPhdr:
                    phdrAddress = vaddr + bias;
                    break;
                case PtTls:
                    if (filesz > memsz)
                    {
                        throw new ElfImageException($"{at} (PT_TLS) p_filesz", $"0x{filesz:x} is larger than p_memsz 0x{memsz:x}.");
                    }

                    if (align != 0 && (align & (align - 1)) != 0)
                    {
                        throw new ElfImageException($"{at} (PT_TLS) p_align", $"0x{align:x} is not a power of two.");
                    }

                    break;
                case PtLoad:
                    if (filesz > memsz)
                    {
                        throw new ElfImageException($"{at} p_filesz", $"0x{filesz:x} is larger than p_memsz 0x{memsz:x}.");
                    }

                    if (offset > (ulong)f.Length || (ulong)f.Length - offset < filesz)
                    {
                        throw new ElfImageException($"{at} p_offset", $"file bytes 0x{offset:x}+0x{filesz:x} run past the end of the file (0x{f.Length:x}).");
                    }

                    if (align > 1 && (vaddr % 4096) != (offset % 4096))
                    {
                        throw new ElfImageException($"{at} p_vaddr", $"0x{vaddr:x} and p_offset 0x{offset:x} differ modulo the page size.");
                    }

                    ulong start = vaddr + bias;
                    if (memsz == 0)
                    {
                        break;
                    }

                    if (start < 0x10000 || start >= UserImageLimit || memsz > UserImageLimit || start + memsz > UserImageLimit)
                    {
                        throw new ElfImageException($"{at} p_vaddr", $"segment 0x{start:x}+0x{memsz:x} is outside the loadable range 0x10000-0x{UserImageLimit:x}.");
                    }

                    segments.Add(new LoadSegment(start, offset, filesz, memsz, (SegmentFlags)(flags & 7)));
                    break;
                default:
                    break;
            }
        }

        if (segments.Count == 0)
        {
            throw new ElfImageException("PT_LOAD", "the file has no loadable segment.");
        }

        if (pie && !hasDynamic)
        {
            throw new ElfImageException("e_type", "ET_DYN without PT_DYNAMIC is not a static PIE.");
        }

        entry += bias;
        if (!segments.Any(s => (s.Flags & SegmentFlags.Execute) != 0 && entry >= s.VirtualAddress && entry < s.VirtualAddress + s.MemorySize))
        {
            throw new ElfImageException("e_entry", $"entry point 0x{entry:x} is not inside an executable PT_LOAD segment.");
        }

        if (phdrAddress == 0)
        {
            // Without PT_PHDR, the headers are visible when a segment maps the file bytes that hold them.
            foreach (var s in segments)
            {
                if (phoff >= s.FileOffset && phoff + ((ulong)phnum * ProgramHeaderSize) <= s.FileOffset + s.FileSize)
                {
                    phdrAddress = s.VirtualAddress + (phoff - s.FileOffset);
                    break;
                }
            }
        }

        return new ElfImage(file, entry, bias, [.. segments], phdrAddress, phnum, execStack, pie);
    }
}
