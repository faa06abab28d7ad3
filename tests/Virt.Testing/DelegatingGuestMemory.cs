using Virt.Memory;

namespace Virt.Testing;

/// <summary>
/// An <see cref="IGuestMemoryBacking"/> that is not Virt.Memory's type: it forwards every call to an inner memory and
/// counts them. Backends must work on it exactly as on the inner memory (no casts to a concrete type).
/// </summary>
public sealed class DelegatingGuestMemory(IGuestMemoryBacking inner) : IGuestMemoryBacking
{
    /// <summary>Calls forwarded so far.</summary>
    public int Calls { get; private set; }

    /// <summary>Watch requests forwarded so far.</summary>
    public int WatchRequests { get; private set; }

    private T Count<T>(T value)
    {
        Calls++;
        return value;
    }

    /// <inheritdoc />
    public IReadOnlyList<GuestMemoryRegionInfo> Regions => inner.Regions;

    /// <inheritdoc />
    public ulong TotalSize => inner.TotalSize;

    /// <inheritdoc />
    public bool Contains(GuestAddress address, ulong length) => Count(inner.Contains(address, length));

    /// <inheritdoc />
    public void Read(GuestAddress address, Span<byte> destination)
    {
        Calls++;
        inner.Read(address, destination);
    }

    /// <inheritdoc />
    public void Write(GuestAddress address, ReadOnlySpan<byte> source)
    {
        Calls++;
        inner.Write(address, source);
    }

    /// <inheritdoc />
    public bool TryRead(GuestAddress address, Span<byte> destination) => Count(inner.TryRead(address, destination));

    /// <inheritdoc />
    public bool TryWrite(GuestAddress address, ReadOnlySpan<byte> source) => Count(inner.TryWrite(address, source));

    /// <inheritdoc />
    public T Read<T>(GuestAddress address) where T : unmanaged => Count(inner.Read<T>(address));

    /// <inheritdoc />
    public void Write<T>(GuestAddress address, T value) where T : unmanaged
    {
        Calls++;
        inner.Write(address, value);
    }

    /// <inheritdoc />
    public Span<byte> GetSpan(GuestAddress address, int length, bool forWrite)
    {
        Calls++;
        return inner.GetSpan(address, length, forWrite);
    }

    /// <inheritdoc />
    public bool TryGetSpan(GuestAddress address, int length, bool forWrite, out Span<byte> span)
    {
        Calls++;
        return inner.TryGetSpan(address, length, forWrite, out span);
    }

    /// <inheritdoc />
    public int DirtyBitmapLength(int regionIndex) => Count(inner.DirtyBitmapLength(regionIndex));

    /// <inheritdoc />
    public void CollectDirtyPages(int regionIndex, Span<ulong> bitmap)
    {
        Calls++;
        inner.CollectDirtyPages(regionIndex, bitmap);
    }

    /// <inheritdoc />
    public void SetWriteWatcher(IGuestWriteWatcher? watcher)
    {
        Calls++;
        inner.SetWriteWatcher(watcher);
    }

    /// <inheritdoc />
    public bool WatchPage(GuestAddress address)
    {
        WatchRequests++;
        return Count(inner.WatchPage(address));
    }

    /// <inheritdoc />
    public bool IsPageWatched(GuestAddress address) => Count(inner.IsPageWatched(address));
}
