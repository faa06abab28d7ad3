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
}
