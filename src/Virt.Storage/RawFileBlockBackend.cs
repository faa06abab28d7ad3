using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

/// <summary>
/// A disk whose bytes are a raw image file, byte for byte. Holes in a sparse file read as zeroes, and discards
/// punch holes back where the file system can. <see cref="FlushAsync"/> reaches the disk (<c>fdatasync</c>).
/// </summary>
/// <remarks>
/// The file is locked while open: exclusively for a writable disk, shared for a read-only one, so a second VM
/// that opens the same image for writing gets <see cref="DiskImageError.InUse"/> instead of corrupting it.
/// </remarks>
public sealed class RawFileBlockBackend : IBlockBackend, IVectoredBlockBackend, IBackingReader
{
    private readonly SafeFileHandle _handle;
    private bool _punchUnsupported;
    private bool? _isInMemory;
    private readonly NoWaitProbe _noWait = new();
    private readonly ImageMapping _mapping;

    private RawFileBlockBackend(SafeFileHandle handle, string path, long capacity, bool readOnly)
    {
        _handle = handle;
        _mapping = new ImageMapping(handle, writable: !readOnly, capacity);
        Path = path;
        Capacity = capacity;
        IsReadOnly = readOnly;
    }

    /// <summary>The image file.</summary>
    public string Path { get; }

    /// <summary>The shared mapping that serves vectored transfers on tmpfs (tests).</summary>
    internal ImageMapping Mapping => _mapping;

    /// <summary>The open file (benchmarks compare the device path with direct I/O on it).</summary>
    internal SafeFileHandle Handle => _handle;

    /// <inheritdoc />
    public long Capacity { get; }

    /// <inheritdoc />
    public bool IsReadOnly { get; }

    /// <summary>Opens the raw image at <paramref name="path"/>; its size must be a multiple of 512.</summary>
    /// <exception cref="DiskImageException">The file is missing, in use, or not a multiple of 512 bytes long.</exception>
    public static RawFileBlockBackend Open(string path, bool readOnly = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var handle = DiskImage.OpenLocked(path, readOnly);
        try
        {
            long length = RandomAccess.GetLength(handle);
            if (length <= 0 || length % DiskImage.SectorSize != 0)
            {
                throw new DiskImageException(path, DiskImageError.InvalidFormat,
                    $"The image '{path}' is {length} bytes long, which is not a positive multiple of {DiskImage.SectorSize}. Resize it (e.g. truncate -s) to whole sectors.");
            }

            return new RawFileBlockBackend(handle, path, length, readOnly);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.Check(offset, buffer.Length, Capacity);
        int done = 0;
        while (done < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(_handle, buffer[done..], offset + done, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                // The file shrank under us; what is not there reads as zeroes, like a hole.
                buffer.Span[done..].Clear();
                return;
            }

            done += n;
        }
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.CheckWritable(IsReadOnly);
        BlockRange.Check(offset, buffer.Length, Capacity);
        return RandomAccess.WriteAsync(_handle, buffer, offset, cancellationToken);
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (!IsReadOnly)
        {
            HostIo.DataSync(_handle);
        }

        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        WriteZeroesAsync(offset, length, cancellationToken);

    /// <inheritdoc />
    public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        BlockRange.CheckWritable(IsReadOnly);
        BlockRange.Check(offset, length, Capacity);
        if (length == 0)
        {
            return;
        }

        if (_mapping.TryPunchHole(offset, length, ref _punchUnsupported))
        {
            return;
        }

        await DiskImage.WriteZeroesAsync(_handle, offset, length, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        _mapping.Dispose();
        _handle.Dispose();
        return ValueTask.CompletedTask;
    }

    bool IVectoredBlockBackend.IsInMemory => _isInMemory ??= HostIo.IsInMemory(_handle);

    void IVectoredBlockBackend.ReadVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        BlockRange.Check(offset, HostBuffer.Total(buffers), Capacity);
        _mapping.ReadVector(offset, buffers);
    }

    void IVectoredBlockBackend.WriteVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        BlockRange.CheckWritable(IsReadOnly);
        BlockRange.Check(offset, HostBuffer.Total(buffers), Capacity);
        _mapping.WriteVector(offset, buffers);
    }

    bool IVectoredBlockBackend.MayTransferWithoutWaiting(bool write) => _noWait.Allows(write) && !(write && IsReadOnly);

    bool IVectoredBlockBackend.TryVectorNoWait(long offset, ReadOnlySpan<HostBuffer> buffers, bool write)
    {
        if (write)
        {
            BlockRange.CheckWritable(IsReadOnly);
        }

        BlockRange.Check(offset, HostBuffer.Total(buffers), Capacity);
        return _noWait.TryVector(_handle, offset, buffers, write);
    }

    bool IVectoredBlockBackend.TryWriteInPlace(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        // A raw image has no metadata and no lock: every write is in place.
        ((IVectoredBlockBackend)this).WriteVector(offset, buffers);
        return true;
    }

    bool IVectoredBlockBackend.MayMapToFile(bool write) => _noWait.Confirmed(write) && !(write && IsReadOnly);

    bool IVectoredBlockBackend.TryEnterFileMapping() => true;

    void IVectoredBlockBackend.ExitFileMapping()
    {
        // A raw image maps the guest range to the same file range always: nothing to hold.
    }

    bool IVectoredBlockBackend.TryMapToFile(long offset, long length, bool write, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out SafeFileHandle? file, out long fileOffset)
    {
        file = null;
        fileOffset = 0;
        if (!_noWait.Confirmed(write) || (write && IsReadOnly) || length <= 0 || offset < 0 || offset > Capacity - length)
        {
            return false;
        }

        file = _handle;
        fileOffset = offset;
        return true;
    }

    void IBackingReader.ReadAt(long offset, Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int n = RandomAccess.Read(_handle, destination[done..], offset + done);
            if (n == 0)
            {
                destination[done..].Clear();
                return;
            }

            done += n;
        }
    }

    internal static bool TryPunchHole(SafeFileHandle handle, long offset, long length, ref bool unsupported)
    {
        if (unsupported || !OperatingSystem.IsLinux())
        {
            return false;
        }

        if (Interop.Libc.Fallocate(handle, Interop.Libc.FALLOC_FL_PUNCH_HOLE | Interop.Libc.FALLOC_FL_KEEP_SIZE, offset, length) == 0)
        {
            return true;
        }

        unsupported = true;
        return false;
    }
}
