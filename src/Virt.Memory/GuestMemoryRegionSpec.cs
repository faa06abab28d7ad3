using Microsoft.Win32.SafeHandles;

namespace Virt.Memory;

/// <summary>What region to create in <see cref="GuestMemory.Create(GuestMemoryRegionSpec[])"/>.</summary>
/// <param name="Start">Guest physical start address; a multiple of 4 KiB.</param>
/// <param name="Size">Size in bytes; a non-zero multiple of 4 KiB.</param>
/// <param name="IsReadOnly">ROM: the guest cannot write it; the host loads it with <see cref="GuestMemory.LoadRom"/>.</param>
public readonly record struct GuestMemoryRegionSpec(GuestAddress Start, ulong Size, bool IsReadOnly)
{
    /// <summary>A RAM region.</summary>
    public static GuestMemoryRegionSpec Ram(GuestAddress start, ulong size) => new(start, size, false);

    /// <summary>A ROM region.</summary>
    public static GuestMemoryRegionSpec Rom(GuestAddress start, ulong size) => new(start, size, true);

    /// <summary>
    /// A RAM region whose initial contents are <paramref name="size"/> bytes of <paramref name="file"/> from
    /// <paramref name="offset"/>, mapped copy-on-write: pages are read from the file (through the page cache) when first
    /// touched, writes stay private to this memory, and memories mapped from the same file share the pages no one
    /// wrote. Holes in a sparse file read as zero and cost nothing. This is how snapshots restore without reading memory.
    /// </summary>
    /// <remarks>The file must stay the same while the memory lives; it may be closed once the memory is created.</remarks>
    public static GuestMemoryRegionSpec FromFile(GuestAddress start, ulong size, SafeFileHandle file, long offset)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        return new GuestMemoryRegionSpec(start, size, false) { File = file, FileOffset = offset };
    }

    /// <summary>The file whose contents the region starts with (<see cref="FromFile"/>), or <see langword="null"/> for zeroed memory.</summary>
    public SafeFileHandle? File { get; init; }

    /// <summary>Where in <see cref="File"/> the region's contents start; a multiple of 4 KiB.</summary>
    public long FileOffset { get; init; }
}
