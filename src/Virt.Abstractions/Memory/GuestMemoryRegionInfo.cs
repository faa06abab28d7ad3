namespace Virt.Memory;

/// <summary>Describes one region of guest physical memory.</summary>
/// <param name="Start">First guest physical address of the region.</param>
/// <param name="Size">Size in bytes (a multiple of 4 KiB).</param>
/// <param name="IsReadOnly">Whether the guest sees the region as ROM (guest writes are not stored).</param>
/// <param name="HostAddress">
/// Where the region is mapped in this process. Hypervisor backends map it into the partition;
/// nothing else should use it.
/// </param>
public readonly record struct GuestMemoryRegionInfo(GuestAddress Start, ulong Size, bool IsReadOnly, nint HostAddress)
{
    /// <summary>The first address after the region.</summary>
    public GuestAddress End => new(Start.Value + Size);

    /// <summary>Whether <paramref name="address"/> lies inside the region.</summary>
    public bool Contains(GuestAddress address) => address.Value >= Start.Value && address.Value - Start.Value < Size;
}
