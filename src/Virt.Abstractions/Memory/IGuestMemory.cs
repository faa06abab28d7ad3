namespace Virt.Memory;

/// <summary>
/// Guest physical memory as devices and loaders see it: bounds-checked reads and writes at guest
/// physical addresses. Creating and removing regions is the business of the implementation
/// (Virt.Memory), never of consumers.
/// </summary>
/// <remarks>
/// Every method is safe to call with guest-controlled addresses and lengths: anything that is not
/// entirely inside one region's RAM either throws <see cref="GuestMemoryException"/> or, for the
/// <c>Try</c> forms, returns <see langword="false"/> without touching host memory.
/// Accesses may span adjacent regions only where the regions are contiguous.
/// </remarks>
public interface IGuestMemory
{
    /// <summary>The regions, ordered by guest address, with holes between them where there is no RAM.</summary>
    IReadOnlyList<GuestMemoryRegionInfo> Regions { get; }

    /// <summary>The sum of the sizes of all regions, in bytes.</summary>
    ulong TotalSize { get; }

    /// <summary>Whether <c>[address, address + length)</c> lies entirely in guest memory (RAM or ROM).</summary>
    bool Contains(GuestAddress address, ulong length);

    /// <summary>Copies guest memory at <paramref name="address"/> into <paramref name="destination"/>.</summary>
    /// <exception cref="GuestMemoryException">Part of the range is not guest memory.</exception>
    void Read(GuestAddress address, Span<byte> destination);

    /// <summary>Copies <paramref name="source"/> into guest memory at <paramref name="address"/>.</summary>
    /// <exception cref="GuestMemoryException">Part of the range is not guest memory or is read-only.</exception>
    void Write(GuestAddress address, ReadOnlySpan<byte> source);

    /// <summary>Like <see cref="Read(GuestAddress, Span{byte})"/>, returning <see langword="false"/> instead of throwing.</summary>
    bool TryRead(GuestAddress address, Span<byte> destination);

    /// <summary>Like <see cref="Write(GuestAddress, ReadOnlySpan{byte})"/>, returning <see langword="false"/> instead of throwing.</summary>
    bool TryWrite(GuestAddress address, ReadOnlySpan<byte> source);

    /// <summary>Reads an unmanaged value (little-endian, unaligned allowed).</summary>
    /// <exception cref="GuestMemoryException">Part of the value is not guest memory.</exception>
    T Read<T>(GuestAddress address) where T : unmanaged;

    /// <summary>Writes an unmanaged value (little-endian, unaligned allowed).</summary>
    /// <exception cref="GuestMemoryException">Part of the value is not guest memory or is read-only.</exception>
    void Write<T>(GuestAddress address, T value) where T : unmanaged;

    /// <summary>
    /// A span over <paramref name="length"/> bytes of guest memory at <paramref name="address"/>, without a copy.
    /// The range must lie inside one region. Writes through the span are not seen by dirty tracking or
    /// code-page watches unless <paramref name="forWrite"/> is <see langword="true"/>, which marks the range written.
    /// </summary>
    /// <remarks>The span is valid until the memory is disposed; do not keep it beyond the current operation.</remarks>
    /// <exception cref="GuestMemoryException">The range is not inside one region, or <paramref name="forWrite"/> on ROM.</exception>
    Span<byte> GetSpan(GuestAddress address, int length, bool forWrite);

    /// <summary>Like <see cref="GetSpan"/>, returning <see langword="false"/> instead of throwing.</summary>
    bool TryGetSpan(GuestAddress address, int length, bool forWrite, out Span<byte> span);
}
