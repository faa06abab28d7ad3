using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

/// <summary>A host buffer for vectored I/O: a pointer into memory that stays put (guest RAM) and its length.</summary>
internal readonly record struct HostBuffer(nint Address, int Length)
{
    public unsafe Span<byte> Span => new((void*)Address, Length);

    public HostBuffer Slice(int start, int length) => new(Address + start, length);

    /// <summary>The bytes <paramref name="buffers"/> describe together.</summary>
    public static long Total(ReadOnlySpan<HostBuffer> buffers)
    {
        long total = 0;
        foreach (var b in buffers)
        {
            total += b.Length;
        }

        return total;
    }
}

/// <summary>
/// Synchronous positional I/O on the bytes of an image, so the format code runs the same over a file and over
/// memory (the fuzz tests). Reads past the end return zeroes; every method validates nothing about the format.
/// </summary>
internal abstract class ImageStore : IDisposable
{
    /// <summary>Current length in bytes.</summary>
    public abstract long Length { get; }

    /// <summary>Fills <paramref name="destination"/> from <paramref name="offset"/>; bytes past the end read as zeroes.</summary>
    public abstract void Read(long offset, Span<byte> destination);

    /// <summary>Writes <paramref name="source"/> at <paramref name="offset"/>, growing the store if needed.</summary>
    public abstract void Write(long offset, ReadOnlySpan<byte> source);

    /// <summary>Makes every completed write durable (fdatasync on a file).</summary>
    public abstract void Flush();

    /// <summary>Deallocates a range (reads as zeroes); false when the store cannot.</summary>
    public virtual bool TryPunchHole(long offset, long length) => false;

    /// <summary>Reads into several buffers in one call where the host allows (preadv).</summary>
    public virtual void ReadVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        foreach (var b in buffers)
        {
            Read(offset, b.Span);
            offset += b.Length;
        }
    }

    /// <summary>Writes several buffers in one call where the host allows (pwritev).</summary>
    public virtual void WriteVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        foreach (var b in buffers)
        {
            Write(offset, b.Span);
            offset += b.Length;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the store.</summary>
    protected virtual void Dispose(bool disposing)
    {
    }
}

/// <summary>An image file through <c>pread</c>/<c>pwrite</c>/<c>preadv</c>/<c>pwritev</c> on its handle.</summary>
internal sealed class FileImageStore : ImageStore
{
    private const int MaxIov = 1024;
    private bool _punchUnsupported;
    private ImageMapping? _mapping;

    private long _length;

    public FileImageStore(SafeFileHandle handle, string path)
    {
        Handle = handle;
        Path = path;
        _length = RandomAccess.GetLength(handle);
    }

    public SafeFileHandle Handle { get; }

    public string Path { get; }

    /// <summary>The length, cached: the file is locked, so only writes through this store change it.</summary>
    public override long Length => Volatile.Read(ref _length);

    public override void Read(long offset, Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int n = RandomAccess.Read(Handle, destination[done..], offset + done);
            if (n == 0)
            {
                destination[done..].Clear();
                return;
            }

            done += n;
        }
    }

    public override void Write(long offset, ReadOnlySpan<byte> source)
    {
        RandomAccess.Write(Handle, source, offset);
        Grow(offset + source.Length);
    }

    public override void Flush() => HostIo.DataSync(Handle);

    public override bool TryPunchHole(long offset, long length) => _mapping is { } mapping
        ? mapping.TryPunchHole(offset, length, ref _punchUnsupported)
        : RawFileBlockBackend.TryPunchHole(Handle, offset, length, ref _punchUnsupported);

    public override void ReadVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (_mapping is { } mapping)
        {
            mapping.ReadVector(offset, buffers);
        }
        else
        {
            HostIo.ReadVector(Handle, offset, buffers);
        }
    }

    /// <summary>
    /// Serves <see cref="ReadVector"/> and <see cref="WriteVector"/> through a shared mapping of the file's first
    /// <paramref name="limit"/> bytes where <see cref="ImageMapping"/> allows it (tmpfs, a lease). Call before any transfer.
    /// </summary>
    public void EnableMapping(long limit, bool writable) => _mapping ??= new ImageMapping(Handle, writable, limit);

    /// <summary>The mapping (tests), or null.</summary>
    internal ImageMapping? Mapping => _mapping;

    /// <summary>Whether the file ever refused RWF_NOWAIT in this direction.</summary>
    public NoWaitProbe NoWait { get; } = new();

    /// <summary>
    /// A transfer of data inside the file (never growing it) only if it needs no wait for the storage device; false
    /// when it must be redone the waiting way.
    /// </summary>
    public bool TryVectorNoWait(long offset, ReadOnlySpan<HostBuffer> buffers, bool write) => NoWait.TryVector(Handle, offset, buffers, write);

    public override void WriteVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (_mapping is { } mapping)
        {
            mapping.WriteVector(offset, buffers);
        }
        else
        {
            HostIo.WriteVector(Handle, offset, buffers);
        }

        long end = offset;
        foreach (var b in buffers)
        {
            end += b.Length;
        }

        Grow(end);
    }

    private void Grow(long end)
    {
        long current;
        while (end > (current = Volatile.Read(ref _length)) && Interlocked.CompareExchange(ref _length, end, current) != current)
        {
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _mapping?.Dispose();
            Handle.Dispose();
        }

        base.Dispose(disposing);
    }

    internal static int MaxVectors => MaxIov;
}

/// <summary>An image held in memory (tests, fuzzing). Growth is capped so a hostile image cannot make it huge.</summary>
internal sealed class MemoryImageStore : ImageStore
{
    private readonly long _limit;
    private byte[] _data;
    private long _length;

    public MemoryImageStore(byte[] contents, long limit = 64L << 20)
        : this(contents, contents.Length, limit)
    {
    }

    /// <summary>A store over the first <paramref name="length"/> bytes of <paramref name="buffer"/> (used in place).</summary>
    public MemoryImageStore(byte[] buffer, int length, long limit)
    {
        _data = buffer;
        _length = length;
        _limit = limit;
    }

    public override long Length => _length;

    public ReadOnlySpan<byte> Contents => _data.AsSpan(0, (int)_length);

    /// <summary>Reads that started at or past the end of the image (a parser following a hostile offset).</summary>
    public int ReadsPastEnd { get; private set; }

    public string? LastPastEnd { get; private set; }

    /// <summary>How far past the end a read may start without counting (the rest of a last, partial cluster).</summary>
    public long PastEndAllowance { get; set; }

    public override void Read(long offset, Span<byte> destination)
    {
        destination.Clear();
        if (offset >= _length + PastEndAllowance && destination.Length > 0)
        {
            ReadsPastEnd++;
            LastPastEnd = $"read of {destination.Length} at {offset} (length {_length})";
        }

        if (offset < _length)
        {
            int n = (int)Math.Min(destination.Length, _length - offset);
            _data.AsSpan((int)offset, n).CopyTo(destination);
        }
    }

    public override void Write(long offset, ReadOnlySpan<byte> source)
    {
        long end = offset + source.Length;
        if (offset < 0 || end > _limit)
        {
            throw new IOException($"The in-memory image would grow to {end} bytes, beyond its limit of {_limit}.");
        }

        if (end > _data.Length)
        {
            Array.Resize(ref _data, (int)Math.Min(_limit, end + (64 << 10)));
        }

        if (offset > _length)
        {
            _data.AsSpan((int)_length, (int)(offset - _length)).Clear();
        }

        source.CopyTo(_data.AsSpan((int)offset));
        _length = Math.Max(_length, end);
    }

    public override void Flush()
    {
    }
}

/// <summary>What an attempt to move data without waiting for the storage device came to (<see cref="HostIo.TryVectorNoWait"/>).</summary>
internal enum NoWaitResult
{
    /// <summary>All of the data moved.</summary>
    Done,

    /// <summary>Not all of it could move without waiting; redo the transfer the waiting way.</summary>
    WouldBlock,

    /// <summary>The file or the host does not offer no-wait transfers in this direction.</summary>
    Unsupported,
}

/// <summary>
/// Remembers, for one open file and each direction, whether the host refused RWF_NOWAIT (tmpfs and ext4's buffered
/// writes do on Linux 6.x), so it is tried until the first refusal and never after. Thread-safe.
/// </summary>
internal sealed class NoWaitProbe
{
    private int _refusedReads;
    private int _refusedWrites;
    private int _movedReads;
    private int _movedWrites;

    /// <summary>Whether a no-wait transfer in this direction is worth trying.</summary>
    public bool Allows(bool write) => Volatile.Read(ref write ? ref _refusedWrites : ref _refusedReads) == 0;

    /// <summary>
    /// Whether a no-wait transfer in this direction has moved data and none was refused: only then does an io_uring
    /// batch use RWF_NOWAIT on the file (io_uring answers EAGAIN where preadv2/pwritev2 answer EOPNOTSUPP, as for
    /// ext4's buffered writes, so the ring alone could not tell a refusal from a miss).
    /// </summary>
    public bool Confirmed(bool write) => Allows(write) && Volatile.Read(ref write ? ref _movedWrites : ref _movedReads) != 0;

    /// <summary>One no-wait attempt on the file (nothing when the direction was refused before); true when it moved everything.</summary>
    /// <exception cref="IOException">The file failed.</exception>
    public bool TryVector(SafeFileHandle handle, long offset, ReadOnlySpan<HostBuffer> buffers, bool write)
    {
        if (!Allows(write))
        {
            return false;
        }

        var result = HostIo.TryVectorNoWait(handle, offset, buffers, write);
        if (result == NoWaitResult.Unsupported)
        {
            Volatile.Write(ref write ? ref _refusedWrites : ref _refusedReads, 1);
        }
        else if (result == NoWaitResult.Done && Volatile.Read(ref write ? ref _movedWrites : ref _movedReads) == 0)
        {
            Volatile.Write(ref write ? ref _movedWrites : ref _movedReads, 1);
        }

        return result == NoWaitResult.Done;
    }
}

/// <summary>Host calls the block path uses: vectored positional I/O and fdatasync, with portable fallbacks.</summary>
internal static class HostIo
{
    /// <summary>Reads into <paramref name="buffers"/> from <paramref name="offset"/>; past the end reads as zeroes.</summary>
    public static unsafe void ReadVector(SafeFileHandle handle, long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (!OperatingSystem.IsLinux())
        {
            foreach (var b in buffers)
            {
                ReadExact(handle, offset, b.Span);
                offset += b.Length;
            }

            return;
        }

        int count = Math.Min(buffers.Length, FileImageStore.MaxVectors);
        Span<Interop.Libc.IoVec> iov = count <= 64 ? stackalloc Interop.Libc.IoVec[count] : new Interop.Libc.IoVec[count];
        int index = 0;
        int skip = 0;
        while (index < buffers.Length)
        {
            int n = FillIoVecs(buffers, index, skip, iov);

            long got;
            fixed (Interop.Libc.IoVec* p = iov)
            {
                // One buffer (the usual small request): pread spares the kernel copying in an iovec array.
                got = n == 1 ? Interop.Libc.Pread(handle, (byte*)p->Base, p->Length, offset) : Interop.Libc.Preadv(handle, p, n, offset);
            }

            if (got < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Interop.Libc.EINTR)
                {
                    continue;
                }

                throw new IOException($"preadv at {offset} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
            }

            if (got == 0)
            {
                // End of file: the rest reads as zeroes, like a hole.
                for (int i = index; i < buffers.Length; i++)
                {
                    buffers[i].Span[(i == index ? skip : 0)..].Clear();
                }

                return;
            }

            offset += got;
            Advance(buffers, ref index, ref skip, got);
        }
    }

    /// <summary>
    /// Describes <paramref name="buffers"/> from buffer <paramref name="index"/> (less its first <paramref name="skip"/>
    /// bytes) in <paramref name="iov"/>, as many as fit; returns how many entries it filled.
    /// </summary>
    private static int FillIoVecs(ReadOnlySpan<HostBuffer> buffers, int index, int skip, Span<Interop.Libc.IoVec> iov)
    {
        int n = 0;
        for (int i = index; i < buffers.Length && n < iov.Length; i++, n++)
        {
            int s = i == index ? skip : 0;
            iov[n] = new Interop.Libc.IoVec { Base = buffers[i].Address + s, Length = buffers[i].Length - s };
        }

        return n;
    }

    /// <summary>Writes <paramref name="buffers"/> at <paramref name="offset"/>.</summary>
    public static unsafe void WriteVector(SafeFileHandle handle, long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (!OperatingSystem.IsLinux())
        {
            foreach (var b in buffers)
            {
                RandomAccess.Write(handle, b.Span, offset);
                offset += b.Length;
            }

            return;
        }

        int count = Math.Min(buffers.Length, FileImageStore.MaxVectors);
        Span<Interop.Libc.IoVec> iov = count <= 64 ? stackalloc Interop.Libc.IoVec[count] : new Interop.Libc.IoVec[count];
        int index = 0;
        int skip = 0;
        while (index < buffers.Length)
        {
            int n = FillIoVecs(buffers, index, skip, iov);

            long put;
            fixed (Interop.Libc.IoVec* p = iov)
            {
                put = n == 1 ? Interop.Libc.Pwrite(handle, (byte*)p->Base, p->Length, offset) : Interop.Libc.Pwritev(handle, p, n, offset);
            }

            if (put < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Interop.Libc.EINTR)
                {
                    continue;
                }

                throw new IOException($"pwritev at {offset} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
            }

            if (put == 0 && buffers[index].Length - skip > 0)
            {
                throw new IOException($"pwritev at {offset} wrote nothing.");
            }

            offset += put;
            Advance(buffers, ref index, ref skip, put);
        }
    }

    /// <summary>Most buffers a no-wait attempt describes (on the stack); a request with more goes the waiting way.</summary>
    private const int NoWaitMaxVectors = 64;

    /// <summary>
    /// Reads or writes <paramref name="buffers"/> at <paramref name="offset"/> with one preadv2/pwritev2 call and
    /// RWF_NOWAIT: only if the kernel can do it without waiting for the storage device (the data is in the page cache;
    /// for a write, without blocking on writeback or allocation). <see cref="NoWaitResult.WouldBlock"/> when it cannot
    /// (EAGAIN), when it moved only part of the data, or when there are too many buffers: then the buffers' contents
    /// (for a read) or the range of the file (for a write) hold part of the data and the caller redoes the whole
    /// transfer the waiting way. <see cref="NoWaitResult.Unsupported"/> when the file, its file system or the kernel
    /// refuse RWF_NOWAIT for this direction (EOPNOTSUPP, EINVAL, ENOSYS, no preadv2 in the C library, not Linux).
    /// </summary>
    /// <exception cref="IOException">The call failed for another reason (the file's own error).</exception>
    public static unsafe NoWaitResult TryVectorNoWait(SafeFileHandle handle, long offset, ReadOnlySpan<HostBuffer> buffers, bool write)
    {
        if (!OperatingSystem.IsLinux())
        {
            return NoWaitResult.Unsupported;
        }

        if (buffers.Length > NoWaitMaxVectors)
        {
            return NoWaitResult.WouldBlock;
        }

        Span<Interop.Libc.IoVec> iov = stackalloc Interop.Libc.IoVec[buffers.Length];
        long total = 0;
        for (int i = 0; i < buffers.Length; i++)
        {
            iov[i] = new Interop.Libc.IoVec { Base = buffers[i].Address, Length = buffers[i].Length };
            total += buffers[i].Length;
        }

        nint done;
        try
        {
            fixed (Interop.Libc.IoVec* p = iov)
            {
                done = write
                    ? Interop.Libc.Pwritev2(handle, p, iov.Length, offset, Interop.Libc.RWF_NOWAIT)
                    : Interop.Libc.Preadv2(handle, p, iov.Length, offset, Interop.Libc.RWF_NOWAIT);
            }
        }
        catch (EntryPointNotFoundException)
        {
            return NoWaitResult.Unsupported;
        }

        if (done >= 0)
        {
            // A short count: part of the range was cached (or a read reached the end of the file); the waiting path
            // redoes the transfer and handles the end of the file.
            return done == total ? NoWaitResult.Done : NoWaitResult.WouldBlock;
        }

        int errno = Marshal.GetLastPInvokeError();
        return errno switch
        {
            Interop.Libc.EAGAIN or Interop.Libc.EINTR => NoWaitResult.WouldBlock,
            Interop.Libc.EOPNOTSUPP or Interop.Libc.EINVAL or Interop.Libc.ENOSYS => NoWaitResult.Unsupported,
            _ => throw new IOException($"{(write ? "pwritev2" : "preadv2")} at {offset} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})."),
        };
    }

    /// <summary>
    /// Whether the file lives in host memory (tmpfs, ramfs, hugetlbfs): reading and writing it copies memory and never
    /// waits for a storage device. False where this cannot be told (not Linux, fstatfs failed).
    /// </summary>
    public static bool IsInMemory(SafeFileHandle handle) =>
        FileSystemType(handle) is Interop.Libc.TMPFS_MAGIC or Interop.Libc.RAMFS_MAGIC or Interop.Libc.HUGETLBFS_MAGIC;

    /// <summary>The magic number of the file system holding the file (fstatfs f_type), or null where it cannot be told (not 64-bit Linux, fstatfs failed).</summary>
    public static unsafe long? FileSystemType(SafeFileHandle handle)
    {
        if (!OperatingSystem.IsLinux() || nint.Size != 8)
        {
            return null;
        }

        byte* statfs = stackalloc byte[256];
        return Interop.Libc.Fstatfs(handle, statfs) == 0 ? *(long*)statfs : null;
    }

    /// <summary>fdatasync on Linux (the file's data and the metadata needed to read it), fsync elsewhere.</summary>
    public static void DataSync(SafeFileHandle handle)
    {
        if (OperatingSystem.IsLinux())
        {
            if (Interop.Libc.Fdatasync(handle) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"fdatasync failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
            }

            return;
        }

        RandomAccess.FlushToDisk(handle);
    }

    private static void ReadExact(SafeFileHandle handle, long offset, Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int n = RandomAccess.Read(handle, destination[done..], offset + done);
            if (n == 0)
            {
                destination[done..].Clear();
                return;
            }

            done += n;
        }
    }

    private static void Advance(ReadOnlySpan<HostBuffer> buffers, ref int index, ref int skip, long bytes)
    {
        while (bytes > 0 && index < buffers.Length)
        {
            int left = buffers[index].Length - skip;
            if (bytes >= left)
            {
                bytes -= left;
                index++;
                skip = 0;
            }
            else
            {
                skip += (int)bytes;
                bytes = 0;
            }
        }

        while (index < buffers.Length && buffers[index].Length - skip == 0)
        {
            index++;
            skip = 0;
        }
    }
}
