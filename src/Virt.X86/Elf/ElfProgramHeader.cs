namespace Virt.X86;

/// <summary>One program header of an ELF file, widened to 64 bits for ELF32; its file bytes lie inside the file it was parsed from.</summary>
/// <param name="Index">Position in the program-header table (for messages: <c>program header 2</c>).</param>
/// <param name="Type"><c>p_type</c>.</param>
/// <param name="Flags"><c>p_flags</c>.</param>
/// <param name="Offset"><c>p_offset</c>: where the segment's bytes start in the file.</param>
/// <param name="VirtualAddress"><c>p_vaddr</c>.</param>
/// <param name="PhysicalAddress"><c>p_paddr</c> (where a kernel is loaded).</param>
/// <param name="FileSize"><c>p_filesz</c>: bytes in the file.</param>
/// <param name="MemorySize"><c>p_memsz</c>: bytes in memory; the part past <c>p_filesz</c> is zero.</param>
/// <param name="Alignment"><c>p_align</c>.</param>
public readonly record struct ElfProgramHeader(
    int Index,
    ElfSegmentType Type,
    ElfSegmentFlags Flags,
    ulong Offset,
    ulong VirtualAddress,
    ulong PhysicalAddress,
    ulong FileSize,
    ulong MemorySize,
    ulong Alignment);
