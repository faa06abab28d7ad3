namespace Virt.Storage;

/// <summary>A disk held in process memory: fast, lost when disposed. Useful for tests and scratch disks.</summary>
public sealed class MemoryBlockBackend : IBlockBackend
{
    private readonly byte[] _data;

    /// <summary>Creates a zero-filled disk of <paramref name="capacity"/> bytes (a multiple of 512).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The capacity is not a positive multiple of 512 or exceeds 2 GiB.</exception>
    public MemoryBlockBackend(long capacity, bool readOnly = false)
    {
        DiskImage.ValidateSize(capacity, nameof(capacity));
        if (capacity > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity, $"An in-memory disk holds at most {Array.MaxLength} bytes; use a RawFileBlockBackend for larger disks.");
        }

        _data = new byte[capacity];
        IsReadOnly = readOnly;
    }

    /// <summary>Creates a disk over a copy of <paramref name="contents"/> (length a multiple of 512).</summary>
    public MemoryBlockBackend(ReadOnlySpan<byte> contents, bool readOnly = false)
    {
        DiskImage.ValidateSize(contents.Length, nameof(contents));
        _data = contents.ToArray();
        IsReadOnly = readOnly;
    }

    /// <inheritdoc />
    public long Capacity => _data.Length;

    /// <inheritdoc />
    public bool IsReadOnly { get; }

    /// <summary>The disk's bytes (a live view, not a copy).</summary>
    public ReadOnlySpan<byte> Contents => _data;

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.Check(offset, buffer.Length, Capacity);
        _data.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.CheckWritable(IsReadOnly);
        BlockRange.Check(offset, buffer.Length, Capacity);
        buffer.Span.CopyTo(_data.AsSpan((int)offset));
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        WriteZeroesAsync(offset, length, cancellationToken);

    /// <inheritdoc />
    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        BlockRange.CheckWritable(IsReadOnly);
        BlockRange.Check(offset, length, Capacity);
        _data.AsSpan((int)offset, (int)length).Clear();
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>Argument checks shared by the backends.</summary>
internal static class BlockRange
{
    public static void Check(long offset, long length, long capacity)
    {
        if (offset < 0 || length < 0 || offset > capacity || length > capacity - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), offset, $"The range of {length} bytes at {offset} is outside the disk of {capacity} bytes.");
        }
    }

    public static void CheckWritable(bool isReadOnly)
    {
        if (isReadOnly)
        {
            throw new InvalidOperationException("The disk is read-only; open it writable to change it.");
        }
    }
}
