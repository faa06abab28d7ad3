namespace Virt.Memory;

/// <summary>
/// Guest memory as a CPU backend sees it: the consumer view (<see cref="IGuestMemory"/>) plus what running a guest on
/// it needs. Hypervisors map each region's <see cref="GuestMemoryRegionInfo.HostAddress"/> into the partition and merge
/// the pages written through this object into their dirty logs; an interpreter also watches the pages it decoded code
/// from, to drop that code when the host writes them.
/// </summary>
/// <remarks>
/// Virt.Memory's <c>GuestMemory</c> implements it. A wrapper may implement it by delegating; a backend never depends on
/// a concrete memory type.
/// </remarks>
public interface IGuestMemoryBacking : IGuestMemory
{
    /// <summary>Number of <see cref="ulong"/> elements of a dirty bitmap for region <paramref name="regionIndex"/> (one bit per 4 KiB page).</summary>
    int DirtyBitmapLength(int regionIndex);

    /// <summary>
    /// Copies into <paramref name="bitmap"/> (one bit per page, 64 pages per element) the pages of region
    /// <paramref name="regionIndex"/> written through this object since the last call, and clears them. Writes a
    /// hypervisor performs for the guest are not seen here: the partition's dirty log has them.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="bitmap"/> is shorter than <see cref="DirtyBitmapLength"/>.</exception>
    void CollectDirtyPages(int regionIndex, Span<ulong> bitmap);

    /// <summary>Sets the object told when a watched page is written through this object; <see langword="null"/> for none.</summary>
    void SetWriteWatcher(IGuestWriteWatcher? watcher);

    /// <summary>Watches the page holding <paramref name="address"/>: the next write to it through this object calls the watcher once.</summary>
    /// <returns><see langword="false"/> when the address is not guest memory.</returns>
    bool WatchPage(GuestAddress address);

    /// <summary>Whether the page holding <paramref name="address"/> is watched.</summary>
    bool IsPageWatched(GuestAddress address);
}

/// <summary>Told when a watched guest page is written through an <see cref="IGuestMemoryBacking"/>.</summary>
public interface IGuestWriteWatcher
{
    /// <summary>The page at <paramref name="pageAddress"/> (4 KiB aligned) was written; its watch is cleared.</summary>
    void OnWatchedPageWritten(GuestAddress pageAddress);
}
