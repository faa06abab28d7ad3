namespace Virt.Storage;

/// <summary>
/// Where a virtual disk's bytes live: a file, memory, an overlay. Offsets and lengths are in bytes;
/// callers keep them inside <see cref="Capacity"/>. Methods may complete on any thread.
/// </summary>
public interface IBlockBackend : IAsyncDisposable
{
    /// <summary>Size of the disk in bytes.</summary>
    long Capacity { get; }

    /// <summary>Whether writes, discards and write-zeroes are refused.</summary>
    bool IsReadOnly { get; }

    /// <summary>Reads <c>buffer.Length</c> bytes at <paramref name="offset"/>.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default);

    /// <summary>Writes <paramref name="buffer"/> at <paramref name="offset"/>.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default);

    /// <summary>Makes every completed write durable (on a file: <c>fsync</c>).</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>Tells the backend the range is no longer needed; later reads of it return zeroes.</summary>
    ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>Writes zeroes over the range (may deallocate it where the backend can).</summary>
    ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default);
}
