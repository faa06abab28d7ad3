using System.Buffers.Binary;

namespace Virt.Boot;

/// <summary>A loadable segment of an ELF image.</summary>
internal readonly record struct ElfSegment(ulong PhysicalAddress, ulong FileOffset, ulong FileSize, ulong MemorySize);

/// <summary>The parts of an ELF32 or ELF64 little-endian x86 executable a loader needs, validated against the file's size.</summary>
internal sealed class ElfImage
{
    private const uint PtLoad = 1, PtNote = 4;
    private const ushort MachineX86 = 3, MachineX8664 = 0x3E;
    private const ushort TypeExec = 2, TypeDyn = 3;
    private const int MaxProgramHeaders = 4096;

    public required bool Is64Bit { get; init; }
    public required ulong Entry { get; init; }
    public required IReadOnlyList<ElfSegment> Segments { get; init; }
    public required IReadOnlyList<(ulong Offset, ulong Size)> NoteSegments { get; init; }

    public static bool HasElfMagic(ReadOnlySpan<byte> image) =>
        image.Length >= 4 && image[0] == 0x7F && image[1] == (byte)'E' && image[2] == (byte)'L' && image[3] == (byte)'F';

    public static ElfImage Parse(ReadOnlySpan<byte> image)
    {
        if (image.Length < 52)
        {
            throw new BootImageException("e_ident", $"the image is {image.Length} bytes, too short for an ELF header; the file is truncated.");
        }

        if (!HasElfMagic(image))
        {
            throw new BootImageException("e_ident", "the image does not start with the ELF magic 0x7F 'E' 'L' 'F'; use an ELF vmlinux (not a bzImage or a compressed file).");
        }

        bool is64 = image[4] switch
        {
            1 => false,
            2 => true,
            _ => throw new BootImageException("e_ident", $"EI_CLASS is {image[4]}, neither 32-bit (1) nor 64-bit (2); the image is corrupt."),
        };
        if (image[5] != 1)
        {
            throw new BootImageException("e_ident", $"EI_DATA is {image[5]}, not little-endian (1); this is not an x86 image.");
        }

        if (is64 && image.Length < 64)
        {
            throw new BootImageException("e_ident", "the image is too short for an ELF64 header; the file is truncated.");
        }

        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(image[16..]);
        if (type is not TypeExec and not TypeDyn)
        {
            throw new BootImageException("e_type", $"is {type}, not an executable (2); link the kernel as an executable.");
        }

        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(image[18..]);
        if (machine is not MachineX86 and not MachineX8664)
        {
            throw new BootImageException("e_machine", $"is {machine}, not x86 (3) or x86-64 (62); build the kernel for x86.");
        }

        ulong entry = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(image[24..]) : BinaryPrimitives.ReadUInt32LittleEndian(image[24..]);
        ulong phoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(image[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(image[28..]);
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(image[(is64 ? 54 : 42)..]);
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(image[(is64 ? 56 : 44)..]);
        int expected = is64 ? 56 : 32;
        if (phnum == 0 || phnum > MaxProgramHeaders)
        {
            throw new BootImageException("e_phnum", $"is {phnum}; a kernel needs 1 to {MaxProgramHeaders} program headers.");
        }

        if (phentsize < expected)
        {
            throw new BootImageException("e_phentsize", $"is {phentsize}, smaller than a program header ({expected}); the image is corrupt.");
        }

        if (phoff > (ulong)image.Length || (ulong)phentsize * (ulong)phnum > (ulong)image.Length - phoff)
        {
            throw new BootImageException("e_phoff", $"the program headers (0x{phoff:x}, {phnum} × {phentsize}) run past the end of the {image.Length}-byte file; the file is truncated.");
        }

        var segments = new List<ElfSegment>();
        var notes = new List<(ulong, ulong)>();
        for (int i = 0; i < phnum; i++)
        {
            var ph = image.Slice((int)phoff + (i * phentsize), expected);
            uint ptype = BinaryPrimitives.ReadUInt32LittleEndian(ph);
            ulong offset, paddr, filesz, memsz;
            if (is64)
            {
                offset = BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]);
                paddr = BinaryPrimitives.ReadUInt64LittleEndian(ph[24..]);
                filesz = BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]);
                memsz = BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]);
            }
            else
            {
                offset = BinaryPrimitives.ReadUInt32LittleEndian(ph[4..]);
                paddr = BinaryPrimitives.ReadUInt32LittleEndian(ph[12..]);
                filesz = BinaryPrimitives.ReadUInt32LittleEndian(ph[16..]);
                memsz = BinaryPrimitives.ReadUInt32LittleEndian(ph[20..]);
            }

            if (ptype is not PtLoad and not PtNote)
            {
                continue;
            }

            if (offset > (ulong)image.Length || filesz > (ulong)image.Length - offset)
            {
                throw new BootImageException("p_filesz", $"program header {i} covers file bytes 0x{offset:x}+0x{filesz:x}, past the end of the {image.Length}-byte file; the file is truncated.");
            }

            if (ptype == PtNote)
            {
                notes.Add((offset, filesz));
                continue;
            }

            if (memsz < filesz)
            {
                throw new BootImageException("p_memsz", $"program header {i} has p_memsz 0x{memsz:x} below p_filesz 0x{filesz:x}; the image is corrupt.");
            }

            if (memsz > 0)
            {
                segments.Add(new ElfSegment(paddr, offset, filesz, memsz));
            }
        }

        if (segments.Count == 0)
        {
            throw new BootImageException("p_type", "the image has no PT_LOAD segment; there is nothing to load.");
        }

        return new ElfImage { Is64Bit = is64, Entry = entry, Segments = segments, NoteSegments = notes };
    }

    /// <summary>The descriptor of the first note named <paramref name="name"/> with type <paramref name="type"/>, or an empty span.</summary>
    public ReadOnlySpan<byte> FindNote(ReadOnlySpan<byte> image, string name, uint type)
    {
        foreach (var (offset, size) in NoteSegments)
        {
            var notes = image.Slice((int)offset, (int)size);
            while (notes.Length >= 12)
            {
                uint namesz = BinaryPrimitives.ReadUInt32LittleEndian(notes);
                uint descsz = BinaryPrimitives.ReadUInt32LittleEndian(notes[4..]);
                uint ntype = BinaryPrimitives.ReadUInt32LittleEndian(notes[8..]);
                ulong nameEnd = 12 + Align4(namesz);
                ulong descEnd = nameEnd + Align4(descsz);
                if (namesz > (uint)notes.Length || descsz > (uint)notes.Length || descEnd > (ulong)notes.Length)
                {
                    break; // a malformed note ends the walk of this segment
                }

                var noteName = notes.Slice(12, (int)namesz);
                if (ntype == type && noteName.TrimEnd((byte)0).SequenceEqual(System.Text.Encoding.ASCII.GetBytes(name)))
                {
                    return notes.Slice((int)nameEnd, (int)descsz);
                }

                notes = notes[(int)descEnd..];
            }
        }

        return [];
    }

    private static ulong Align4(uint v) => ((ulong)v + 3) & ~3UL;

    /// <summary>Copies the segments into guest memory (zeroing the part past the file size) and returns the highest end address.</summary>
    public ulong Load(Virt.Memory.IGuestMemory memory, IReadOnlyList<E820Entry> map, ReadOnlySpan<byte> image)
    {
        ulong highest = 0;
        foreach (var s in Segments)
        {
            if (s.PhysicalAddress < E820Map.ExtendedMemoryStart)
            {
                throw new BootImageException("p_paddr", $"a segment loads at 0x{s.PhysicalAddress:x}, below 1 MiB where the boot structures live; link the kernel at 1 MiB or above.");
            }

            if (!E820Map.IsRam(map, s.PhysicalAddress, s.MemorySize))
            {
                throw new BootImageException("p_paddr", $"the segment at 0x{s.PhysicalAddress:x} (0x{s.MemorySize:x} bytes) is not in guest RAM; give the VM more memory.");
            }

            memory.Write(new GuestAddress(s.PhysicalAddress), image.Slice((int)s.FileOffset, (int)s.FileSize));
            ZeroFill(memory, s.PhysicalAddress + s.FileSize, s.MemorySize - s.FileSize);
            highest = Math.Max(highest, s.PhysicalAddress + s.MemorySize);
        }

        return highest;
    }

    internal static void ZeroFill(Virt.Memory.IGuestMemory memory, ulong address, ulong length)
    {
        Span<byte> zeros = stackalloc byte[4096];
        zeros.Clear();
        while (length > 0)
        {
            int chunk = (int)Math.Min(length, 4096);
            memory.Write(new GuestAddress(address), zeros[..chunk]);
            address += (ulong)chunk;
            length -= (ulong)chunk;
        }
    }
}
