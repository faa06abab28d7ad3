using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

/// <summary>
/// A copy-on-write disk: reads come from a read-only base image (raw or qcow2) until a cluster is written; writes go to a
/// sparse overlay file with a cluster allocation map. The base is never written, except by
/// <see cref="CommitAsync"/>, which merges the overlay into it on request.
/// </summary>
/// <remarks>
/// Overlay file layout: a 4 KiB header (magic, cluster size, capacity, base path), the allocation bitmap
/// (one bit per cluster, padded to 4 KiB), then the data area, where cluster <c>n</c> lives at
/// <c>data offset + n * cluster size</c> so unallocated clusters stay holes. Data is written before the
/// bitmap, and the bitmap is persisted on <see cref="FlushAsync"/> and on dispose, so a flushed write survives
/// a crash and an unflushed one reads as the base.
/// </remarks>
public sealed class CopyOnWriteOverlay : IBlockBackend
{
    /// <summary>Default cluster size: the unit copied from the base on a first write.</summary>
    public const int DefaultClusterSize = 64 * 1024;

    private const ulong Magic = 0x3157_4f43_5452_4956; // "VIRTCOW1"
    private const int HeaderSize = 4096;
    private const int FormatVersion = 1;
    private const int MaxBasePathBytes = HeaderSize - 64;

    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly SafeFileHandle _overlay;
    private readonly byte[] _bitmap;
    private readonly int _clusterSize;
    private readonly long _dataOffset;
    private readonly string _basePath;
    private IBlockBackend _base;
    private bool _bitmapDirty;
    private bool _punchUnsupported;
    private int _disposed;

    private CopyOnWriteOverlay(string path, SafeFileHandle overlay, string basePath, IBlockBackend baseImage, byte[] bitmap, int clusterSize, long dataOffset)
    {
        Path = path;
        _basePath = basePath;
        _overlay = overlay;
        _base = baseImage;
        _bitmap = bitmap;
        _clusterSize = clusterSize;
        _dataOffset = dataOffset;
        Capacity = baseImage.Capacity;
    }

    /// <summary>The overlay file.</summary>
    public string Path { get; }

    /// <summary>The base image file.</summary>
    public string BasePath => _basePath;

    /// <inheritdoc />
    public long Capacity { get; }

    /// <inheritdoc />
    public bool IsReadOnly => false;

    /// <summary>Number of clusters written to the overlay so far.</summary>
    public int AllocatedClusters
    {
        get
        {
            int n = 0;
            foreach (byte b in _bitmap)
            {
                n += System.Numerics.BitOperations.PopCount(b);
            }

            return n;
        }
    }

    /// <summary>Opens the overlay at <paramref name="path"/> and its base image (read-only).</summary>
    /// <exception cref="DiskImageException">Either file is missing or in use, or the overlay is not an overlay.</exception>
    public static CopyOnWriteOverlay Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var handle = DiskImage.OpenLocked(path, readOnly: false);
        IBlockBackend? baseImage = null;
        try
        {
            var header = new byte[HeaderSize];
            if (RandomAccess.Read(handle, header, 0) != HeaderSize || BinaryPrimitives.ReadUInt64LittleEndian(header) != Magic)
            {
                throw Invalid(path, "it is not a Virt.Sdk overlay (bad header). Open raw images with DiskImage.OpenRaw.");
            }

            int version = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(8));
            int clusterSize = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(12));
            long capacity = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(16));
            long bitmapOffset = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(24));
            long dataOffset = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(32));
            int pathLength = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(40));
            if (version != FormatVersion || clusterSize < DiskImage.SectorSize || (clusterSize & (clusterSize - 1)) != 0
                || capacity <= 0 || pathLength <= 0 || pathLength > MaxBasePathBytes || bitmapOffset != HeaderSize
                || dataOffset != HeaderSize + BitmapBytes(capacity, clusterSize))
            {
                throw Invalid(path, "its header is damaged or from an unknown version.");
            }

            string basePath = Encoding.UTF8.GetString(header, 44, pathLength);
            baseImage = DiskImage.Open(basePath, readOnly: true);
            if (baseImage.Capacity != capacity)
            {
                throw Invalid(path, $"its base '{basePath}' is now {baseImage.Capacity} bytes, not the {capacity} it had when the overlay was created. Restore the base or recreate the overlay.");
            }

            var bitmap = new byte[(int)((ClusterCount(capacity, clusterSize) + 7) / 8)];
            RandomAccess.Read(handle, bitmap, bitmapOffset);
            return new CopyOnWriteOverlay(path, handle, basePath, baseImage, bitmap, clusterSize, dataOffset);
        }
        catch
        {
            baseImage?.DisposeAsync().AsTask().GetAwaiter().GetResult();
            handle.Dispose();
            throw;
        }
    }

    internal static void Initialize(SafeFileHandle handle, string basePath, long capacity)
    {
        byte[] pathBytes = Encoding.UTF8.GetBytes(basePath);
        if (pathBytes.Length > MaxBasePathBytes)
        {
            throw new DiskImageException(basePath, DiskImageError.Other, $"The base path is longer than {MaxBasePathBytes} bytes; move the base image to a shorter path.");
        }

        var header = new byte[HeaderSize];
        long bitmapBytes = BitmapBytes(capacity, DefaultClusterSize);
        BinaryPrimitives.WriteUInt64LittleEndian(header, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), FormatVersion);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(12), DefaultClusterSize);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(16), capacity);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(24), HeaderSize);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(32), HeaderSize + bitmapBytes);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(40), pathBytes.Length);
        pathBytes.CopyTo(header.AsSpan(44));
        RandomAccess.SetLength(handle, HeaderSize + bitmapBytes + capacity);
        RandomAccess.Write(handle, header, 0);
        RandomAccess.FlushToDisk(handle);
    }

    /// <inheritdoc />
    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.Check(offset, buffer.Length, Capacity);
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            int done = 0;
            while (done < buffer.Length)
            {
                long position = offset + done;
                long cluster = position / _clusterSize;
                int inCluster = (int)(position % _clusterSize);
                int n = Math.Min(_clusterSize - inCluster, buffer.Length - done);

                // Merge runs of clusters with the same source into one read.
                while (done + n < buffer.Length && IsAllocated(cluster + ((inCluster + n) / _clusterSize)) == IsAllocated(cluster))
                {
                    n += Math.Min(_clusterSize, buffer.Length - done - n);
                }

                var part = buffer.Slice(done, n);
                if (IsAllocated(cluster))
                {
                    await ReadExactAsync(_overlay, part, _dataOffset + position, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await _base.ReadAsync(position, part, cancellationToken).ConfigureAwait(false);
                }

                done += n;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <inheritdoc />
    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.Check(offset, buffer.Length, Capacity);
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            int done = 0;
            while (done < buffer.Length)
            {
                long position = offset + done;
                long cluster = position / _clusterSize;
                int inCluster = (int)(position % _clusterSize);
                int n = Math.Min(_clusterSize - inCluster, buffer.Length - done);
                if (!IsAllocated(cluster) && n != _clusterSize)
                {
                    await CopyUpAsync(cluster, cancellationToken).ConfigureAwait(false);
                }

                await RandomAccess.WriteAsync(_overlay, buffer.Slice(done, n), _dataOffset + position, cancellationToken).ConfigureAwait(false);
                MarkAllocated(cluster);
                done += n;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <inheritdoc />
    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            PersistBitmap();
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        WriteZeroesAsync(offset, length, cancellationToken);

    /// <inheritdoc />
    public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        BlockRange.Check(offset, length, Capacity);
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            long end = offset + length;
            long position = offset;
            while (position < end)
            {
                long cluster = position / _clusterSize;
                int inCluster = (int)(position % _clusterSize);
                int n = (int)Math.Min(_clusterSize - inCluster, end - position);
                if (!IsAllocated(cluster) && n != _clusterSize)
                {
                    await CopyUpAsync(cluster, cancellationToken).ConfigureAwait(false);
                }

                // The zeroes must hide the base, so the cluster becomes allocated either way.
                if (!RawFileBlockBackend.TryPunchHole(_overlay, _dataOffset + position, n, ref _punchUnsupported))
                {
                    await DiskImage.WriteZeroesAsync(_overlay, _dataOffset + position, n, cancellationToken).ConfigureAwait(false);
                }

                MarkAllocated(cluster);
                position += n;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// Forgets every write: the disk reads as the base again. Frees the overlay's data.
    /// </summary>
    public async ValueTask DiscardChangesAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ClearOverlay();
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// Writes every overlay cluster into the base image, makes it durable, and empties the overlay. The base is
    /// reopened for writing for the duration, so no other VM may have it open.
    /// </summary>
    /// <exception cref="DiskImageException">Another VM or process has the base open.</exception>
    public async ValueTask CommitAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            string basePath = _basePath;
            await _base.DisposeAsync().ConfigureAwait(false);
            IBlockBackend writable;
            try
            {
                writable = DiskImage.Open(basePath, readOnly: false);
            }
            catch (DiskImageException)
            {
                _base = DiskImage.Open(basePath, readOnly: true);
                throw;
            }

            try
            {
                byte[] buffer = ArrayPool<byte>.Shared.Rent(_clusterSize);
                try
                {
                    for (long cluster = 0; cluster < ClusterCount(Capacity, _clusterSize); cluster++)
                    {
                        if (!IsAllocated(cluster))
                        {
                            continue;
                        }

                        long position = cluster * _clusterSize;
                        int n = (int)Math.Min(_clusterSize, Capacity - position);
                        await ReadExactAsync(_overlay, buffer.AsMemory(0, n), _dataOffset + position, cancellationToken).ConfigureAwait(false);
                        await writable.WriteAsync(position, buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }

                await writable.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                await writable.DisposeAsync().ConfigureAwait(false);
                _base = DiskImage.Open(basePath, readOnly: true);
            }

            ClearOverlay();
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            PersistBitmap();
        }
        finally
        {
            _overlay.Dispose();
            await _base.DisposeAsync().ConfigureAwait(false);
            _gate.Release();
            _gate.Dispose();
        }
    }

    internal static bool HasMagic(ReadOnlySpan<byte> start) => start.Length >= 8 && BinaryPrimitives.ReadUInt64LittleEndian(start) == Magic;

    private static long ClusterCount(long capacity, int clusterSize) => (capacity + clusterSize - 1) / clusterSize;

    private static long BitmapBytes(long capacity, int clusterSize) =>
        (((ClusterCount(capacity, clusterSize) + 7) / 8) + HeaderSize - 1) / HeaderSize * HeaderSize;

    private static DiskImageException Invalid(string path, string why) =>
        new(path, DiskImageError.InvalidFormat, $"The overlay '{path}' cannot be opened: {why}");

    private static async ValueTask ReadExactAsync(SafeFileHandle handle, Memory<byte> buffer, long offset, CancellationToken cancellationToken)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(handle, buffer[done..], offset + done, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                buffer.Span[done..].Clear();
                return;
            }

            done += n;
        }
    }

    private bool IsAllocated(long cluster) => (_bitmap[cluster >> 3] & (1 << (int)(cluster & 7))) != 0;

    private void MarkAllocated(long cluster)
    {
        _bitmap[cluster >> 3] |= (byte)(1 << (int)(cluster & 7));
        _bitmapDirty = true;
    }

    private async ValueTask CopyUpAsync(long cluster, CancellationToken cancellationToken)
    {
        long position = cluster * _clusterSize;
        int n = (int)Math.Min(_clusterSize, Capacity - position);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(n);
        try
        {
            await _base.ReadAsync(position, buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            await RandomAccess.WriteAsync(_overlay, buffer.AsMemory(0, n), _dataOffset + position, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void PersistBitmap()
    {
        if (!_bitmapDirty)
        {
            return;
        }

        // Data first, then the map that makes it visible: a crash in between leaves the old map.
        RandomAccess.FlushToDisk(_overlay);
        RandomAccess.Write(_overlay, _bitmap, HeaderSize);
        RandomAccess.FlushToDisk(_overlay);
        _bitmapDirty = false;
    }

    private void ClearOverlay()
    {
        Array.Clear(_bitmap);
        _bitmapDirty = true;
        PersistBitmap();
        if (!RawFileBlockBackend.TryPunchHole(_overlay, _dataOffset, Capacity, ref _punchUnsupported))
        {
            // Without hole punching the stale data stays allocated but unreachable: the bitmap is the truth.
            return;
        }
    }
}
