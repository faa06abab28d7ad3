using Virt.X86;

namespace Virt.Boot;

/// <summary>A loadable segment of an ELF image.</summary>
internal readonly record struct ElfSegment(ulong PhysicalAddress, ulong FileOffset, ulong FileSize, ulong MemorySize);

/// <summary>
/// An ELF32 or ELF64 little-endian x86 kernel, parsed by <see cref="ElfFile"/> (which checks that the headers fit the
/// file) and checked against what a kernel loader needs: an executable for x86 with loadable segments.
/// </summary>
internal sealed class ElfImage
{
    private const int MaxProgramHeaders = 4096;

    private readonly ElfFile _elf;

    private ElfImage(ElfFile elf, IReadOnlyList<ElfSegment> segments)
    {
        _elf = elf;
        Segments = segments;
    }

    public bool Is64Bit => _elf.Class == ElfClass.Elf64;

    public ulong Entry => _elf.Entry;

    public IReadOnlyList<ElfSegment> Segments { get; }

    public static bool HasElfMagic(ReadOnlySpan<byte> image) => ElfFile.HasMagic(image);

    /// <exception cref="BootImageException">The image is not an x86 ELF executable with something to load; the field is named.</exception>
    public static ElfImage Parse(ReadOnlySpan<byte> image)
    {
        ElfFile elf;
        try
        {
            elf = ElfFile.Parse(image);
        }
        catch (ElfFormatException e)
        {
            throw new BootImageException(e.Field, Describe(e));
        }

        if (elf.Type is not ElfFileType.Executable and not ElfFileType.SharedObject)
        {
            throw new BootImageException("e_type", $"is {(int)elf.Type}, not an executable (2); link the kernel as an executable.");
        }

        if (elf.Machine is not ElfMachine.I386 and not ElfMachine.X64)
        {
            throw new BootImageException("e_machine", $"is {elf.Machine}, not x86 (3) or x86-64 (62); build the kernel for x86.");
        }

        int phnum = elf.ProgramHeaders.Count;
        if (phnum == 0 || phnum > MaxProgramHeaders)
        {
            throw new BootImageException("e_phnum", $"is {phnum}; a kernel needs 1 to {MaxProgramHeaders} program headers.");
        }

        var segments = new List<ElfSegment>();
        foreach (var h in elf.ProgramHeaders)
        {
            if (h.Type == ElfSegmentType.Load && h.MemorySize > 0)
            {
                segments.Add(new ElfSegment(h.PhysicalAddress, h.Offset, h.FileSize, h.MemorySize));
            }
        }

        if (segments.Count == 0)
        {
            throw new BootImageException("p_type", "the image has no PT_LOAD segment; there is nothing to load.");
        }

        return new ElfImage(elf, segments);
    }

    /// <summary>The descriptor of the first note named <paramref name="name"/> with type <paramref name="type"/>, or an empty span.</summary>
    public ReadOnlySpan<byte> FindNote(ReadOnlySpan<byte> image, ReadOnlySpan<byte> name, uint type) => _elf.FindNote(image, name, type);

    /// <summary>Copies the segments into guest memory (zeroing the part past the file size) and returns the highest end address.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="map">The memory map: segments must lie in its RAM.</param>
    /// <param name="image">The file.</param>
    /// <param name="reserved">
    /// What the loader places in guest memory, which segments must not overlap (<see cref="KernelPlacement"/>); then
    /// segments may load below 1 MiB. <see langword="null"/>: every segment must load at 1 MiB or above.
    /// </param>
    public ulong Load(Virt.Memory.IGuestMemory memory, IReadOnlyList<E820Entry> map, ReadOnlySpan<byte> image, IReadOnlyList<BootPlacement>? reserved = null)
    {
        // Check them all before writing any: a refused image leaves guest memory as it was.
        foreach (var s in Segments)
        {
            if (reserved is not null)
            {
                KernelPlacement.Check("p_paddr", "a segment", s.PhysicalAddress, s.MemorySize, map, reserved);
                continue;
            }

            if (s.PhysicalAddress < E820Map.ExtendedMemoryStart)
            {
                throw new BootImageException("p_paddr", $"a segment loads at 0x{s.PhysicalAddress:x}, below 1 MiB where the boot structures live; link the kernel at 1 MiB or above.");
            }

            if (!E820Map.IsRam(map, s.PhysicalAddress, s.MemorySize))
            {
                throw new BootImageException("p_paddr", $"the segment at 0x{s.PhysicalAddress:x} (0x{s.MemorySize:x} bytes) is not in guest RAM; give the VM more memory.");
            }
        }

        ulong highest = 0;
        foreach (var s in Segments)
        {

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

    /// <summary>The parser's reason in Boot's words: the program header first, and what to do about a file that is not ELF.</summary>
    private static string Describe(ElfFormatException e)
    {
        string where = e.ProgramHeaderIndex >= 0 ? $"program header {e.ProgramHeaderIndex}: " : "";
        string advice = e.Location == "e_ident[EI_MAG]" ? " Use an ELF vmlinux (not a bzImage or a compressed file)." : "";
        return where + e.Reason + advice;
    }
}
