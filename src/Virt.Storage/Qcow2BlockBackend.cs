using System.Buffers;
using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace Virt.Storage;

/// <summary>
/// A disk stored in a qcow2 image (versions 2 and 3, as written by <c>qemu-img</c>): two-level cluster tables,
/// refcounts, a backing file (qcow2 or raw, chains), zero clusters, discard, extended L2 entries (32 subclusters per
/// cluster, each allocated, zero or unallocated on its own), and compressed clusters (zlib or zstd) on read.
/// </summary>
/// <remarks>
/// <para>
/// Crash consistency by write ordering: guest data goes straight to newly allocated clusters; table changes are
/// kept in memory and written on <see cref="FlushAsync"/> (or when much is pending) in four steps, each ended by
/// <c>fdatasync</c>: (1) refcount increments and new tables, (2) refcount-table entries for new refcount blocks,
/// (3) L2 and L1 entries that make the new clusters visible, (4) refcount decrements for clusters no table
/// references any more. A crash at any point leaves an image whose only fault can be leaked clusters, which
/// <c>qemu-img check</c> reports as harmless; a write that was not flushed may be lost, as on a real disk.
/// </para>
/// <para>
/// Not supported (refused at open, naming the feature): encryption, external data files,
/// compression types other than zlib and zstd; writing an image that has internal snapshots or is marked dirty or corrupt (open it read-only,
/// or repair it with <c>qemu-img check -r all</c>). Compressed clusters (zlib or zstd) are read; a write to one
/// stores it uncompressed.
/// </para>
/// <para>Thread-safe: operations are serialized on the image.</para>
/// </remarks>
public sealed class Qcow2BlockBackend : IBlockBackend, IVectoredBlockBackend, IBackingReader
{
    private const int MaxBackingDepth = 64;
    private const long DirtyLimitBytes = 32L << 20;
    private const long CacheLimitBytes = 64L << 20;

    private readonly Lock _sync = new();
    private readonly ImageStore _store;
    private readonly int _clusterBits;
    private readonly int _clusterSize;
    private readonly int _l2Entries;

    /// <summary>Words per L2 entry: 2 with extended L2 entries (the descriptor and the subcluster bitmap), else 1.</summary>
    private readonly int _l2Stride;

    /// <summary>The image has extended L2 entries: each standard cluster has 32 subclusters with their own state.</summary>
    private readonly bool _extended;

    /// <summary>Log2 of the allocation unit: the subcluster with extended L2 entries, else the cluster.</summary>
    private readonly int _unitBits;
    private readonly int _refcountBits;
    private readonly long _refEntriesPerBlock;
    private readonly ulong[] _l1;
    private readonly long _l1Offset;
    private readonly HashSet<int> _dirtyL1 = [];
    private readonly Dictionary<long, L2Table> _l2 = [];

    /// <summary>
    /// The L2 table looked up last and its offset (0: none), so a run of requests inside one table (the usual guest
    /// I/O) skips the dictionary; it is always <c>_l2[_lastL2Offset]</c> (every change of <see cref="_l2"/> goes
    /// through <see cref="CacheL2"/> or <see cref="ClearL2Cache"/>).
    /// </summary>
    private long _lastL2Offset;
    private L2Table? _lastL2;
    private readonly Dictionary<long, RefBlock> _refBlocks = [];
    private readonly HashSet<long> _dirtyRefTable = [];
    private readonly List<long> _pendingFree = [];
    private readonly long _compressedMask;
    private readonly int _compressedSectorShift;

    /// <summary>Compressed clusters hold zstd frames (compression_type 1) rather than raw deflate data.</summary>
    private readonly bool _zstd;
    private ulong[] _refTable;
    private long _refTableOffset;
    private long _freeHint;
    private long _highWater;
    private long _dirtyBytes;
    private long _decompressedAt = -1;
    private byte[]? _decompressed;
    private IBackingReader? _backing;
    private bool? _isInMemory;
    private int _disposed;
    private readonly RunAction _readRun;
    private readonly RunAction _writeRun;
    private readonly RunAction _readRunNoWait;
    private readonly RunAction _writeRunNoWait;
    private readonly RunAction _writeRunInPlace;

    private Qcow2BlockBackend(ImageStore store, string path, bool readOnly, Header header, ulong[] l1, ulong[] refTable)
    {
        _store = store;
        Path = path;
        IsReadOnly = readOnly;
        Version = header.Version;
        _clusterBits = header.ClusterBits;
        _clusterSize = 1 << _clusterBits;
        _extended = (header.Incompatible & Qcow2Format.IncompatExtendedL2) != 0;
        _l2Stride = _extended ? 2 : 1;
        _l2Entries = _clusterSize / (8 * _l2Stride);
        _unitBits = _extended ? _clusterBits - 5 : _clusterBits;
        _refcountBits = 1 << header.RefcountOrder;
        _refEntriesPerBlock = (long)_clusterSize * 8 / _refcountBits;
        Capacity = header.Size;
        _l1 = l1;
        _l1Offset = header.L1Offset;
        _refTable = refTable;
        _refTableOffset = header.RefTableOffset;
        BackingPath = header.BackingPath;
        BackingFormat = header.BackingFormat;
        Snapshots = header.Snapshots;
        _compressedSectorShift = 62 - (_clusterBits - 8);
        _compressedMask = (1L << _compressedSectorShift) - 1;
        _zstd = (header.Incompatible & Qcow2Format.IncompatCompressionType) != 0;
        _freeHint = 1;
        _highWater = (store.Length + _clusterSize - 1) >> _clusterBits;
        _readRun = ReadRun;
        _writeRun = WriteRun;
        _readRunNoWait = (run, _, slice) => NoWaitRun(run, slice, write: false);
        _writeRunNoWait = (run, _, slice) => NoWaitRun(run, slice, write: true);
        _writeRunInPlace = (run, _, slice) => InPlaceRun(run, slice);

        // Data clusters may lie anywhere the file grows to: the virtual size, the tables, some slack.
        (store as FileImageStore)?.EnableMapping(Capacity + (Capacity / 8) + (256L << 20), writable: !readOnly);
    }

    /// <summary>The image file.</summary>
    public string Path { get; }

    /// <summary>How many bytes of L2 tables and refcount blocks stay cached before they are flushed and dropped (tests lower it).</summary>
    internal long TableCacheLimitBytes { get; set; } = CacheLimitBytes;

    /// <summary>Where the image's bytes live (tests).</summary>
    internal ImageStore Store => _store;

    /// <summary>The open file, when the image is one (benchmarks compare the device path with direct I/O on it).</summary>
    internal Microsoft.Win32.SafeHandles.SafeFileHandle? FileHandle => (_store as FileImageStore)?.Handle;

    /// <inheritdoc />
    public long Capacity { get; }

    /// <inheritdoc />
    public bool IsReadOnly { get; }

    /// <summary>The qcow2 version (2 or 3).</summary>
    public int Version { get; }

    /// <summary>Bytes per cluster (the allocation unit, or with extended L2 entries the unit of the tables).</summary>
    public int ClusterSize => _clusterSize;

    /// <summary>Whether the image has extended L2 entries: each cluster has 32 subclusters allocated one by one.</summary>
    public bool HasExtendedL2 => _extended;

    /// <summary>The backing file as the image names it (relative to the image's directory unless absolute); null for none.</summary>
    public string? BackingPath { get; }

    /// <summary>The backing file's format as the image records it ("raw", "qcow2"); null when it is probed.</summary>
    public string? BackingFormat { get; }

    /// <summary>The backing image, opened read-only; null for none.</summary>
    public IBlockBackend? Backing => _backing as IBlockBackend;

    /// <summary>The internal snapshots the image records (listed only).</summary>
    public IReadOnlyList<Qcow2Snapshot> Snapshots { get; }

    /// <summary>Opens the qcow2 image at <paramref name="path"/> and its backing chain (read-only).</summary>
    /// <exception cref="DiskImageException">
    /// The file or a backing file is missing or in use, or the image is damaged or uses an unsupported feature; the
    /// message names the header field or table entry.
    /// </exception>
    public static Qcow2BlockBackend Open(string path, bool readOnly = false) => Open(path, readOnly, 0);

    internal static Qcow2BlockBackend Open(string path, bool readOnly, int depth)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = System.IO.Path.GetFullPath(path);
        var handle = DiskImage.OpenLocked(full, readOnly);
        var store = new FileImageStore(handle, full);
        Qcow2BlockBackend? image = null;
        try
        {
            image = OpenStore(store, full, readOnly);
            if (image.BackingPath is not null)
            {
                image._backing = OpenBacking(image, full, depth);
            }

            return image;
        }
        catch
        {
            if (image is not null)
            {
                image._store.Dispose();
            }
            else
            {
                store.Dispose();
            }

            throw;
        }
    }

    /// <summary>Parses and validates the image in <paramref name="store"/> (no backing file is opened).</summary>
    internal static Qcow2BlockBackend OpenStore(ImageStore store, string path, bool readOnly)
    {
        var header = Header.Parse(store, path);
        if (!readOnly)
        {
            if ((header.Incompatible & Qcow2Format.IncompatDirty) != 0)
            {
                throw Damaged(path, "incompatible_features", "has the dirty bit set: the refcounts may be stale after a crash of a program using lazy refcounts. Repair it with 'qemu-img check -r all', or open it read-only");
            }

            if ((header.Incompatible & Qcow2Format.IncompatCorrupt) != 0)
            {
                throw Damaged(path, "incompatible_features", "has the corrupt bit set. Repair it with 'qemu-img check -r all', or open it read-only");
            }

            if (header.Snapshots.Count > 0)
            {
                throw new DiskImageException(path, DiskImageError.InvalidFormat,
                    $"The qcow2 image '{path}' has {header.Snapshots.Count} internal snapshot(s), which share clusters; it can only be opened read-only here. Delete them (qemu-img snapshot -d) or open it read-only.");
            }
        }

        int cs = 1 << header.ClusterBits;
        var l1 = new ulong[header.L1Size];
        ReadTable(store, header.L1Offset, l1);
        var refTable = new ulong[(long)header.RefTableClusters * cs / 8];
        ReadTable(store, header.RefTableOffset, refTable);
        var image = new Qcow2BlockBackend(store, path, readOnly, header, l1, refTable);
        if (!readOnly && header.Autoclear != 0)
        {
            // Autoclear features this code does not maintain (e.g. persistent bitmaps) are declared stale.
            Span<byte> zero = stackalloc byte[8];
            zero.Clear();
            store.Write(Qcow2Format.OffAutoclear, zero);
            store.Flush();
        }

        return image;
    }

    private static IBackingReader OpenBacking(Qcow2BlockBackend image, string imagePath, int depth)
    {
        if (depth + 1 >= MaxBackingDepth)
        {
            throw Damaged(imagePath, "backing_file", $"starts a backing chain deeper than {MaxBackingDepth} images (a loop?)");
        }

        string name = image.BackingPath!;
        if (name.StartsWith("json:", StringComparison.Ordinal) || name.Contains("://", StringComparison.Ordinal))
        {
            throw new DiskImageException(imagePath, DiskImageError.InvalidFormat,
                $"The qcow2 image '{imagePath}' names the backing file '{name}', which is not a plain file path; rebase it onto a file (qemu-img rebase).");
        }

        string dir = System.IO.Path.GetDirectoryName(imagePath) ?? ".";
        string full = System.IO.Path.GetFullPath(System.IO.Path.IsPathRooted(name) ? name : System.IO.Path.Combine(dir, name));
        if (string.Equals(full, imagePath, StringComparison.Ordinal))
        {
            throw Damaged(imagePath, "backing_file", "names the image itself");
        }

        DiskFormat format = image.BackingFormat switch
        {
            null => DiskImage.DetectFormat(full),
            "raw" => DiskFormat.Raw,
            "qcow2" => DiskFormat.Qcow2,
            var other => throw new DiskImageException(imagePath, DiskImageError.InvalidFormat,
                $"The qcow2 image '{imagePath}' has a backing file of format '{other}', which is not supported (raw and qcow2 are). Convert it with qemu-img convert."),
        };

        return format switch
        {
            DiskFormat.Qcow2 => Open(full, readOnly: true, depth + 1),
            DiskFormat.Raw => RawFileBlockBackend.Open(full, readOnly: true),
            _ => throw new DiskImageException(imagePath, DiskImageError.InvalidFormat,
                $"The backing file '{full}' of '{imagePath}' is a Virt.Sdk overlay, which cannot back a qcow2 image."),
        };
    }

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.Check(offset, buffer.Length, Capacity);
        cancellationToken.ThrowIfCancellationRequested();
        lock (_sync)
        {
            ThrowIfDisposed();
            ReadCore(offset, buffer.Span);
        }

        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BlockRange.CheckWritable(IsReadOnly);
        BlockRange.Check(offset, buffer.Length, Capacity);
        cancellationToken.ThrowIfCancellationRequested();
        lock (_sync)
        {
            ThrowIfDisposed();
            WriteCore(offset, buffer.Span);
            AfterChange();
        }

        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (IsReadOnly)
        {
            return ValueTask.CompletedTask;
        }

        lock (_sync)
        {
            ThrowIfDisposed();
            FlushMetadata();
        }

        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        WriteZeroesAsync(offset, length, cancellationToken);

    /// <inheritdoc />
    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        BlockRange.CheckWritable(IsReadOnly);
        BlockRange.Check(offset, length, Capacity);
        cancellationToken.ThrowIfCancellationRequested();
        lock (_sync)
        {
            ThrowIfDisposed();
            ZeroCore(offset, length);
            AfterChange();
        }

        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            lock (_sync)
            {
                if (!IsReadOnly)
                {
                    FlushMetadata();
                }
            }
        }
        finally
        {
            _store.Dispose();
            if (_backing is not null)
            {
                await _backing.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    bool IVectoredBlockBackend.IsInMemory => _isInMemory ??=
        FileHandle is { } handle && HostIo.IsInMemory(handle) && (_backing is null || _backing is IVectoredBlockBackend { IsInMemory: true });

    void IVectoredBlockBackend.ReadVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        long length = HostBuffer.Total(buffers);
        BlockRange.Check(offset, length, Capacity);
        lock (_sync)
        {
            ThrowIfDisposed();
            ForEachRun(offset, length, buffers, forWrite: false, _readRun);
        }
    }

    void IVectoredBlockBackend.WriteVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        BlockRange.CheckWritable(IsReadOnly);
        long length = HostBuffer.Total(buffers);
        BlockRange.Check(offset, length, Capacity);
        lock (_sync)
        {
            ThrowIfDisposed();
            ForEachRun(offset, length, buffers, forWrite: true, _writeRun);
            AfterChange();
        }
    }

    bool IVectoredBlockBackend.MayTransferWithoutWaiting(bool write) =>
        _store is FileImageStore file && file.NoWait.Allows(write) && !(write && IsReadOnly);

    bool IVectoredBlockBackend.TryVectorNoWait(long offset, ReadOnlySpan<HostBuffer> buffers, bool write)
    {
        if (_store is not FileImageStore || (write && IsReadOnly))
        {
            return false;
        }

        return RunsIfUncontended(offset, buffers, write, write ? _writeRunNoWait : _readRunNoWait);
    }

    bool IVectoredBlockBackend.TryWriteInPlace(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (IsReadOnly)
        {
            return false;
        }

        return RunsIfUncontended(offset, buffers, forWrite: true, _writeRunInPlace);
    }

    bool IVectoredBlockBackend.MayMapToFile(bool write) => _store is FileImageStore store && store.NoWait.Confirmed(write) && !(write && IsReadOnly);

    bool IVectoredBlockBackend.TryEnterFileMapping()
    {
        if (_store is not FileImageStore || !_sync.TryEnter())
        {
            return false;
        }

        if (Volatile.Read(ref _disposed) != 0)
        {
            _sync.Exit();
            return false;
        }

        return true;
    }

    void IVectoredBlockBackend.ExitFileMapping() => _sync.Exit();

    bool IVectoredBlockBackend.TryMapToFile(long offset, long length, bool write, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Microsoft.Win32.SafeHandles.SafeFileHandle? file, out long fileOffset)
    {
        file = null;
        fileOffset = 0;
        if (_store is not FileImageStore store || !store.NoWait.Confirmed(write) || (write && IsReadOnly)
            || length <= 0 || offset < 0 || offset > Capacity - length || !L2Cached(offset, length))
        {
            return false;
        }

        // Only a data run that covers the whole range: one host range of the image file (for a write, clusters written
        // in place: MapRun gives an allocating write another kind). The caller holds the lock, so the run stays put.
        var run = MapRun(offset, length, write);
        if (run.Kind != ClusterKind.Normal || run.Length != length)
        {
            return false;
        }

        file = store.Handle;
        fileOffset = run.Host;
        return true;
    }

    /// <summary>
    /// Runs <paramref name="action"/> over the range's runs only if that needs no waiting: the image's lock is free
    /// (another thread holding it, a flush syncing the tables or an allocating write, would make this one wait) and
    /// every L2 table of the range is cached. False sends the request the waiting way.
    /// </summary>
    private bool RunsIfUncontended(long offset, ReadOnlySpan<HostBuffer> buffers, bool forWrite, RunAction action)
    {
        long length = HostBuffer.Total(buffers);
        BlockRange.Check(offset, length, Capacity);
        if (!_sync.TryEnter())
        {
            return false;
        }

        try
        {
            ThrowIfDisposed();
            if (!L2Cached(offset, length))
            {
                return false;
            }

            // The usual small request lies in one run: it goes there with the caller's buffers, without the walk.
            var run = MapRun(offset, length, forWrite);
            return run.Length == length ? action(run, offset, buffers) : ForEachRun(offset, length, buffers, forWrite, action);
        }
        finally
        {
            _sync.Exit();
        }
    }

    /// <summary>What a vectored transfer does with one run of its range; false stops the transfer (it is redone the waiting way).</summary>
    private delegate bool RunAction(Run run, long position, ReadOnlySpan<HostBuffer> slice);

    /// <summary>
    /// Walks the guest range <paramref name="offset"/>..+<paramref name="length"/> (described by
    /// <paramref name="buffers"/>) run by run (<see cref="MapRun"/>), handing each run its part of the buffers; a
    /// request inside one run (the usual small one) passes the caller's buffers as they are. Returns false as soon as
    /// <paramref name="action"/> does. The caller holds the image's lock.
    /// </summary>
    private bool ForEachRun(long offset, long length, ReadOnlySpan<HostBuffer> buffers, bool forWrite, RunAction action)
    {
        long done = 0;
        while (done < length)
        {
            long pos = offset + done;
            var run = MapRun(pos, length - done, forWrite);
            HostBuffer[]? rented = null;
            var slice = done == 0 && run.Length == length ? buffers : Slice(buffers, done, run.Length, out rented);
            try
            {
                if (!action(run, pos, slice))
                {
                    return false;
                }
            }
            finally
            {
                Return(rented);
            }

            done += run.Length;
        }

        return true;
    }

    /// <summary>A run of a read: the file's bytes for an allocated cluster, zeroes or the backing file's otherwise.</summary>
    private bool ReadRun(Run run, long position, ReadOnlySpan<HostBuffer> slice)
    {
        if (run.Kind == ClusterKind.Normal)
        {
            _store.ReadVector(run.Host, slice);
            return true;
        }

        foreach (var b in slice)
        {
            FillSpecial(run, position, b.Span);
            position += b.Length;
        }

        return true;
    }

    /// <summary>A run of a write: in place for a cluster written in place, else an allocating write of the gathered run.</summary>
    private bool WriteRun(Run run, long position, ReadOnlySpan<HostBuffer> slice)
    {
        if (run.Kind == ClusterKind.Normal)
        {
            _store.WriteVector(run.Host, slice);
            return true;
        }

        // An allocating write: gather the run (at most one cluster) and copy it in.
        byte[] gathered = ArrayPool<byte>.Shared.Rent((int)run.Length);
        try
        {
            int at = 0;
            foreach (var b in slice)
            {
                b.Span.CopyTo(gathered.AsSpan(at));
                at += b.Length;
            }

            WriteCore(position, gathered.AsSpan(0, (int)run.Length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(gathered);
        }

        return true;
    }

    /// <summary>A run of an in-place write: only a cluster written in place (MapRun gives an allocating write another kind).</summary>
    private bool InPlaceRun(Run run, ReadOnlySpan<HostBuffer> slice)
    {
        if (run.Kind != ClusterKind.Normal)
        {
            return false;
        }

        _store.WriteVector(run.Host, slice);
        return true;
    }

    /// <summary>
    /// A run of a no-wait transfer: only a cluster written in place (a write here never allocates: MapRun gives a write
    /// to an unallocated or shared cluster another kind) or, for a read, one that reads as zeroes. A backing file, a
    /// compressed cluster or an allocating write stop the transfer.
    /// </summary>
    private bool NoWaitRun(Run run, ReadOnlySpan<HostBuffer> slice, bool write)
    {
        if (run.Kind == ClusterKind.Normal)
        {
            return ((FileImageStore)_store).TryVectorNoWait(run.Host, slice, write);
        }

        if (!write && (run.Kind == ClusterKind.Zero || (run.Kind == ClusterKind.Unallocated && _backing is null)))
        {
            foreach (var b in slice)
            {
                b.Span.Clear();
            }

            return true;
        }

        return false;
    }

    /// <summary>Whether every L2 table that maps the guest range is in memory or absent (so the lookup reads nothing).</summary>
    private bool L2Cached(long offset, long length)
    {
        long first = (offset >> _clusterBits) / _l2Entries;
        long last = ((offset + length - 1) >> _clusterBits) / _l2Entries;
        for (long i = first; i <= last; i++)
        {
            if (i >= _l1.Length)
            {
                // MapRun reports the damage.
                return true;
            }

            long table = (long)(_l1[i] & Qcow2Format.OffsetMask);
            if (table != 0 && table != _lastL2Offset && !_l2.ContainsKey(table))
            {
                return false;
            }
        }

        return true;
    }

    long IBackingReader.Capacity => Capacity;

    void IBackingReader.ReadAt(long offset, Span<byte> destination)
    {
        lock (_sync)
        {
            ThrowIfDisposed();
            ReadCore(offset, destination);
        }
    }

    /// <summary>Every cluster offset referenced by the tables, for tests: (guest cluster index, entry).</summary>
    internal IEnumerable<(long GuestCluster, ulong Entry)> MappedClusters()
    {
        for (int i = 0; i < _l1.Length; i++)
        {
            var table = GetL2(i, allocate: false);
            if (table is null)
            {
                continue;
            }

            for (int j = 0; j < _l2Entries; j++)
            {
                ulong entry = table.Entries[j * _l2Stride];
                if (entry != 0)
                {
                    yield return (((long)i * _l2Entries) + j, entry);
                }
            }
        }
    }

    // ---------------------------------------------------------------- reading

    private enum ClusterKind
    {
        Unallocated,
        Zero,
        Normal,
        Compressed,
    }

    private readonly record struct Run(ClusterKind Kind, long Host, long Length, ulong Entry);

    private void ReadCore(long offset, Span<byte> destination)
    {
        long done = 0;
        while (done < destination.Length)
        {
            long pos = offset + done;
            var run = MapRun(pos, destination.Length - done, forWrite: false);
            var part = destination.Slice((int)done, (int)run.Length);
            if (run.Kind == ClusterKind.Normal)
            {
                _store.Read(run.Host, part);
            }
            else
            {
                FillSpecial(run, pos, part);
            }

            done += run.Length;
        }
    }

    /// <summary>
    /// The longest run from <paramref name="pos"/> (at most <paramref name="max"/> bytes) of one kind; for
    /// <see cref="ClusterKind.Normal"/>, host-contiguous (and, when <paramref name="forWrite"/>, writable in place);
    /// a compressed cluster, or the part of one cluster that a write must allocate or fill, is a run of its own.
    /// The unit is the cluster, or the subcluster in an image with extended L2 entries.
    /// </summary>
    private Run MapRun(long pos, long max, bool forWrite)
    {
        long unitSize = 1L << _unitBits;
        long unit = pos >> _unitBits;
        long inUnit = pos & (unitSize - 1);
        long clusterLeft = _clusterSize - (pos & (_clusterSize - 1));
        var first = LookupUnit(unit);
        long length = Math.Min(unitSize - inUnit, max);
        if (forWrite && !first.Writable)
        {
            // The following units of the same cluster that cannot take the write in place either join the run.
            long limit = Math.Min(clusterLeft, max);
            while (length < limit && !LookupUnit(unit + ((inUnit + length) >> _unitBits)).Writable)
            {
                length = Math.Min(length + unitSize, limit);
            }

            return new Run(ClusterKind.Unallocated, 0, length, first.Entry);
        }

        if (first.Kind == ClusterKind.Compressed)
        {
            return new Run(first.Kind, first.Host, Math.Min(clusterLeft, max), first.Entry);
        }

        long nextHost = first.Host + unitSize;
        while (length < max)
        {
            var next = LookupUnit(unit + ((inUnit + length) >> _unitBits));
            if (next.Kind != first.Kind || (first.Kind == ClusterKind.Normal && (next.Host != nextHost || (forWrite && !next.Writable))))
            {
                break;
            }

            nextHost += unitSize;
            length = Math.Min(length + unitSize, max);
        }

        return new Run(first.Kind, first.Kind == ClusterKind.Normal ? first.Host + inUnit : first.Host, length, first.Entry);
    }

    /// <summary>One allocation unit's state: its kind, its host offset when it holds data, its cluster's entry.</summary>
    private readonly record struct Unit(ClusterKind Kind, long Host, ulong Entry)
    {
        /// <summary>A write may go to the unit's host bytes in place.</summary>
        public bool Writable => Kind == ClusterKind.Normal && (Entry & Qcow2Format.Copied) != 0;
    }

    private Unit LookupUnit(long unit)
    {
        int subBits = _clusterBits - _unitBits;
        long cluster = unit >> subBits;
        var (kind, host, entry, bitmap) = Lookup(cluster);
        if (!_extended || kind == ClusterKind.Compressed)
        {
            return new Unit(kind, host, entry);
        }

        int sub = (int)(unit & ((1 << subBits) - 1));
        if (((bitmap >> sub) & 1) != 0)
        {
            return new Unit(ClusterKind.Normal, host + ((long)sub << _unitBits), entry);
        }

        return new Unit(((bitmap >> (32 + sub)) & 1) != 0 ? ClusterKind.Zero : ClusterKind.Unallocated, 0, entry);
    }

    private (ClusterKind Kind, long Host, ulong Entry, ulong Bitmap) Lookup(long cluster)
    {
        long l1Index = cluster / _l2Entries;
        if (l1Index >= _l1.Length)
        {
            throw Damaged(Path, "l1_size", $"is {_l1.Length}, too small to map guest cluster {cluster}");
        }

        var table = GetL2((int)l1Index, allocate: false);
        if (table is null)
        {
            return (ClusterKind.Unallocated, 0, 0, 0);
        }

        var (_, entry, bitmap, kind, host) = EntryOf(table, cluster);
        return (kind, host, entry, bitmap);
    }

    /// <summary>
    /// The L2 entry of <paramref name="cluster"/> in its <paramref name="table"/>: the word it starts at, the entry,
    /// its subcluster bitmap (0 without extended L2 entries), and the cluster's kind and host offset.
    /// </summary>
    private (int Slot, ulong Entry, ulong Bitmap, ClusterKind Kind, long Host) EntryOf(L2Table table, long cluster)
    {
        int slot = (int)(cluster % _l2Entries) * _l2Stride;
        ulong entry = table.Entries[slot];
        ulong bitmap = _extended ? table.Entries[slot + 1] : 0;
        var (kind, host) = Decode(entry, bitmap, cluster);
        return (slot, entry, bitmap, kind, host);
    }

    /// <summary>
    /// With extended L2 entries, whether a cluster takes writes to its subclusters where they are: it has no host
    /// cluster yet, or one of its own (not compressed, not shared).
    /// </summary>
    private static bool TakesSubclusterWrites(ClusterKind kind, ulong entry) =>
        kind == ClusterKind.Unallocated || (kind == ClusterKind.Normal && (entry & Qcow2Format.Copied) != 0);

    /// <summary>
    /// The state of a whole cluster from its L2 entry. With extended L2 entries a standard cluster is
    /// <see cref="ClusterKind.Normal"/> when it has a host cluster and <see cref="ClusterKind.Unallocated"/> when not;
    /// its subclusters' states come from <paramref name="bitmap"/>, which is checked here.
    /// </summary>
    private (ClusterKind Kind, long Host) Decode(ulong entry, ulong bitmap, long cluster)
    {
        if ((entry & Qcow2Format.Compressed) != 0)
        {
            if ((entry & Qcow2Format.Copied) != 0)
            {
                throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} is compressed and marked copied (0x{entry:x16})");
            }

            long host = (long)entry & _compressedMask;
            if (host >= _store.Length || host < _clusterSize)
            {
                throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} points to compressed data at {host}, outside the file");
            }

            // A compressed cluster has no subclusters; its bitmap is not used.
            return (ClusterKind.Compressed, host);
        }

        if ((entry & Qcow2Format.L2Reserved) != 0)
        {
            throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} has reserved bits set (0x{entry:x16})");
        }

        long offset = (long)(entry & Qcow2Format.OffsetMask);
        if (_extended)
        {
            // Bit 0 (the whole-cluster zero flag) is not used with extended L2 entries: the bitmap says which parts read as zeroes.
            if ((bitmap & (bitmap >> 32) & Qcow2Format.AllSubclustersAllocated) != 0)
            {
                throw Damaged(Path, "L2 bitmap", $"of guest cluster {cluster} marks subclusters both allocated and zero (0x{bitmap:x16})");
            }

            if (offset == 0)
            {
                if ((bitmap & Qcow2Format.AllSubclustersAllocated) != 0 || (entry & Qcow2Format.Copied) != 0)
                {
                    throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} has no host cluster but allocated subclusters or the copied flag (0x{entry:x16}, bitmap 0x{bitmap:x16})");
                }

                return (ClusterKind.Unallocated, 0);
            }

            CheckDataCluster(offset, cluster);
            return (ClusterKind.Normal, offset);
        }

        if ((entry & Qcow2Format.ZeroFlag) != 0)
        {
            if (Version < 3)
            {
                throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} has the zero flag, which version 2 images do not have");
            }

            if (offset != 0)
            {
                CheckDataCluster(offset, cluster);
            }

            return (ClusterKind.Zero, offset);
        }

        if (offset == 0)
        {
            if ((entry & Qcow2Format.Copied) != 0)
            {
                throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} is unallocated but marked copied");
            }

            return (ClusterKind.Unallocated, 0);
        }

        CheckDataCluster(offset, cluster);
        return (ClusterKind.Normal, offset);
    }

    private void CheckDataCluster(long offset, long cluster)
    {
        if ((offset & (_clusterSize - 1)) != 0 || offset >= FileLimit)
        {
            throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} points to host offset {offset}, which is unaligned or past the end of the file");
        }

        if (offset < _clusterSize || Overlaps(offset, _l1Offset, (long)_l1.Length * 8) || Overlaps(offset, _refTableOffset, (long)_refTable.Length * 8))
        {
            throw Damaged(Path, "L2 entry", $"of guest cluster {cluster} points to host offset {offset}, which holds the image's own metadata");
        }
    }

    /// <summary>The end of the file (the store caches it; the image is locked, so only this object changes it).</summary>
    private long FileLimit => _store.Length;

    private bool Overlaps(long cluster, long start, long length) => length > 0 && cluster < start + length && cluster + _clusterSize > start;

    private void FillSpecial(Run run, long guestOffset, Span<byte> destination)
    {
        switch (run.Kind)
        {
            case ClusterKind.Zero:
                destination.Clear();
                break;
            case ClusterKind.Unallocated:
                ReadBacking(guestOffset, destination);
                break;
            case ClusterKind.Compressed:
                var data = Decompress(run.Entry, guestOffset >> _clusterBits);
                data.AsSpan((int)(guestOffset & (_clusterSize - 1)), destination.Length).CopyTo(destination);
                break;
            default:
                throw new InvalidOperationException("A normal run is read from the file directly.");
        }
    }

    private void ReadBacking(long guestOffset, Span<byte> destination)
    {
        if (_backing is null || guestOffset >= _backing.Capacity)
        {
            destination.Clear();
            return;
        }

        int n = (int)Math.Min(destination.Length, _backing.Capacity - guestOffset);
        _backing.ReadAt(guestOffset, destination[..n]);
        destination[n..].Clear();
    }

    private byte[] Decompress(ulong entry, long cluster)
    {
        long host = (long)entry & _compressedMask;
        if (_decompressedAt == host && _decompressed is not null)
        {
            return _decompressed;
        }

        long sectors = (long)((entry & ~(Qcow2Format.Copied | Qcow2Format.Compressed)) >> _compressedSectorShift) + 1;
        int size = (int)((sectors * 512) - (host & 511));
        size = (int)Math.Min(size, FileLimit - host);
        byte[] compressed = ArrayPool<byte>.Shared.Rent(size);
        var output = _decompressed ??= new byte[_clusterSize];
        _decompressedAt = -1;
        try
        {
            _store.Read(host, compressed.AsSpan(0, size));
            using var input = new MemoryStream(compressed, 0, size, writable: false);
            using Stream inflate = _zstd ? ZstdCluster(input) : new DeflateStream(input, CompressionMode.Decompress);
            int done = 0;
            while (done < output.Length)
            {
                int n = inflate.Read(output, done, output.Length - done);
                if (n == 0)
                {
                    break;
                }

                done += n;
            }

            if (done != output.Length)
            {
                throw Damaged(Path, "compressed cluster", $"of guest cluster {cluster} inflates to {done} bytes, not {output.Length}");
            }
        }
        catch (Exception e) when (e is InvalidDataException or ZstdSharp.ZstdException)
        {
            throw new DiskImageException(Path, DiskImageError.InvalidFormat,
                $"The qcow2 image '{Path}' is damaged: compressed cluster of guest cluster {cluster} is not valid {(_zstd ? "zstd" : "deflate")} data.", e);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(compressed);
        }

        _decompressedAt = host;
        return output;
    }

    /// <summary>
    /// A zstd reader over one compressed cluster. The window it may allocate is bounded (2 MiB, or the cluster size
    /// when larger: a frame asking for more is damaged, not a reason to allocate), and the padding after the frame is
    /// never read: the caller stops at one cluster of output.
    /// </summary>
    private ZstdSharp.DecompressionStream ZstdCluster(Stream input)
    {
        var stream = new ZstdSharp.DecompressionStream(input, bufferSize: 0, checkEndOfStream: false, leaveOpen: true);
        stream.SetParameter(ZstdSharp.Unsafe.ZSTD_dParameter.ZSTD_d_windowLogMax, Math.Max(_clusterBits, 21));
        return stream;
    }

    // ---------------------------------------------------------------- writing

    private void WriteCore(long offset, ReadOnlySpan<byte> source)
    {
        long done = 0;
        while (done < source.Length)
        {
            long pos = offset + done;
            var run = MapRun(pos, source.Length - done, forWrite: true);
            var part = source.Slice((int)done, (int)run.Length);
            if (run.Kind == ClusterKind.Normal)
            {
                _store.Write(run.Host, part);
            }
            else
            {
                AllocatingWrite(pos, part);
            }

            done += run.Length;
        }
    }

    /// <summary>
    /// Writes within one cluster where the bytes cannot be written in place: a new cluster takes the old contents and
    /// the data; with extended L2 entries, the subclusters written are filled (in the cluster's own host cluster when
    /// it has one) and marked allocated.
    /// </summary>
    private void AllocatingWrite(long pos, ReadOnlySpan<byte> data)
    {
        long cluster = pos >> _clusterBits;
        int inCluster = (int)(pos & (_clusterSize - 1));
        var table = GetL2((int)(cluster / _l2Entries), allocate: true)!;
        var (slot, entry, _, kind, host) = EntryOf(table, cluster);
        if (_extended && TakesSubclusterWrites(kind, entry))
        {
            SubclusterWrite(table, slot, pos, data, kind == ClusterKind.Normal ? host : 0);
            return;
        }

        long guestStart = cluster << _clusterBits;
        long newHost = AllocateCluster();
        if (data.Length == _clusterSize)
        {
            _store.Write(newHost, data);
        }
        else
        {
            byte[] buffer = ArrayPool<byte>.Shared.Rent(_clusterSize);
            try
            {
                var whole = buffer.AsSpan(0, _clusterSize);
                switch (kind)
                {
                    case ClusterKind.Normal when !_extended:
                        _store.Read(host, whole);
                        break;
                    case ClusterKind.Zero:
                        whole.Clear();
                        break;
                    case ClusterKind.Compressed:
                        Decompress(entry, cluster).CopyTo(whole);
                        break;
                    case ClusterKind.Normal:
                        ReadCore(guestStart, whole); // a shared cluster with subclusters: what the guest sees of each
                        break;
                    default:
                        ReadBacking(guestStart, whole);
                        break;
                }

                data.CopyTo(whole[inCluster..]);
                _store.Write(newHost, whole);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        SetL2Entry(table, slot, (ulong)newHost | Qcow2Format.Copied, Qcow2Format.AllSubclustersAllocated);
        ReleaseEntry(kind, host, entry);
    }

    /// <summary>
    /// Writes subclusters of a cluster that are unallocated or read as zeroes: into <paramref name="host"/>, or into a
    /// new cluster when that is 0. Partly written subclusters keep the rest of what they read as before.
    /// </summary>
    private void SubclusterWrite(L2Table table, int slot, long pos, ReadOnlySpan<byte> data, long host)
    {
        long unitSize = 1L << _unitBits;
        long clusterStart = pos & ~((long)_clusterSize - 1);
        long end = pos + data.Length;
        long from = pos & ~(unitSize - 1);
        long to = (end + unitSize - 1) & ~(unitSize - 1);
        long target = host != 0 ? host : AllocateCluster();
        if (from == pos && to == end)
        {
            _store.Write(target + (from - clusterStart), data);
        }
        else
        {
            int length = (int)(to - from);
            byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
            try
            {
                var span = buffer.AsSpan(0, length);
                ReadCore(from, span[..(int)(pos - from)]);
                ReadCore(end, span[(int)(end - from)..]);
                data.CopyTo(span[(int)(pos - from)..]);
                _store.Write(target + (from - clusterStart), span);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        ulong units = SubclusterMask(from - clusterStart, to - from);
        ulong bitmap = (table.Entries[slot + 1] | units) & ~(units << 32);
        ulong entry = host != 0 ? table.Entries[slot] : (ulong)target | Qcow2Format.Copied;
        SetL2Entry(table, slot, entry, bitmap);
    }

    /// <summary>Allocation bits (0-31) of the subclusters of the unit-aligned range [start, start + length) of a cluster.</summary>
    private ulong SubclusterMask(long start, long length)
    {
        int first = (int)(start >> _unitBits);
        int count = (int)(length >> _unitBits);
        return count >= Qcow2Format.Subclusters ? Qcow2Format.AllSubclustersAllocated : ((1UL << count) - 1) << first;
    }

    private void ZeroCore(long offset, long length)
    {
        long end = offset + length;
        long pos = offset;
        byte[]? zeroes = null;
        try
        {
            while (pos < end)
            {
                long cluster = pos >> _clusterBits;
                int inCluster = (int)(pos & (_clusterSize - 1));
                int n = (int)Math.Min(_clusterSize - inCluster, end - pos);
                long guestStart = cluster << _clusterBits;
                bool whole = inCluster == 0 && (n == _clusterSize || guestStart + n == Capacity);
                if (whole && (Version >= 3 || _backing is null))
                {
                    var table = GetL2((int)(cluster / _l2Entries), allocate: false);
                    if (table is null && _backing is null)
                    {
                        pos += n;
                        continue; // unallocated without a backing file already reads as zeroes
                    }

                    table ??= GetL2((int)(cluster / _l2Entries), allocate: true)!;
                    var (slot, entry, bitmap, kind, host) = EntryOf(table, cluster);
                    (ulong replacement, ulong replacementBitmap) = (_backing is null, _extended) switch
                    {
                        (true, _) => (0UL, 0UL),
                        (false, true) => (0UL, Qcow2Format.AllSubclustersZero),
                        (false, false) => (Qcow2Format.ZeroFlag, 0UL),
                    };

                    if (entry != replacement || bitmap != replacementBitmap)
                    {
                        SetL2Entry(table, slot, replacement, replacementBitmap);
                        ReleaseEntry(kind, host, entry);
                    }
                }
                else if (!_extended || !ZeroSubclusters(cluster, pos, n, ref zeroes))
                {
                    zeroes ??= new byte[_clusterSize];
                    WriteCore(pos, zeroes.AsSpan(0, n));
                }

                pos += n;
            }
        }
        finally
        {
            _decompressedAt = -1;
        }
    }

    /// <summary>
    /// Zeroes part of one cluster of an image with extended L2 entries through its bitmap: the whole subclusters in
    /// the range are marked as reading zeroes and the partial ones at its edges are written. False (nothing done)
    /// when the cluster is compressed or shared, which a write must copy first. The edges are written from
    /// <paramref name="zeroes"/>, the caller's buffer of a cluster of zeroes, made here if it has none yet.
    /// </summary>
    private bool ZeroSubclusters(long cluster, long pos, int length, ref byte[]? zeroes)
    {
        var table = GetL2((int)(cluster / _l2Entries), allocate: false);
        if (table is null && _backing is null)
        {
            return true; // unallocated without a backing file already reads as zeroes
        }

        table ??= GetL2((int)(cluster / _l2Entries), allocate: true)!;
        var (slot, entry, bitmap, kind, _) = EntryOf(table, cluster);
        if (!TakesSubclusterWrites(kind, entry))
        {
            return false;
        }

        long unitSize = 1L << _unitBits;
        long clusterStart = cluster << _clusterBits;
        long end = pos + length;
        long from = (pos + unitSize - 1) & ~(unitSize - 1);
        long to = end & ~(unitSize - 1);
        if (to <= from)
        {
            return false;
        }

        ulong units = SubclusterMask(from - clusterStart, to - from);
        SetL2Entry(table, slot, entry, (bitmap & ~units) | (units << 32));
        zeroes ??= new byte[_clusterSize];
        if (pos < from)
        {
            WriteCore(pos, zeroes.AsSpan(0, (int)(from - pos)));
        }

        if (to < end)
        {
            WriteCore(to, zeroes.AsSpan(0, (int)(end - to)));
        }

        return true;
    }

    /// <summary>Schedules the clusters an entry held for release once the tables no longer reference them on disk.</summary>
    private void ReleaseEntry(ClusterKind kind, long host, ulong entry)
    {
        switch (kind)
        {
            case ClusterKind.Normal:
            case ClusterKind.Zero when host != 0:
                _pendingFree.Add(host >> _clusterBits);
                break;
            case ClusterKind.Compressed:
                long sectors = (long)((entry & ~(Qcow2Format.Copied | Qcow2Format.Compressed)) >> _compressedSectorShift) + 1;
                long last = host + (sectors * 512) - (host & 511) - 1;
                for (long c = host >> _clusterBits; c <= last >> _clusterBits; c++)
                {
                    _pendingFree.Add(c);
                }

                _decompressedAt = -1;
                break;
            default:
                break;
        }

        _dirtyBytes += 8;
    }

    /// <summary>Sets the L2 entry at word <paramref name="slot"/>, and its subcluster bitmap when the image has them.</summary>
    private void SetL2Entry(L2Table table, int slot, ulong entry, ulong bitmap)
    {
        table.Entries[slot] = entry;
        if (_extended)
        {
            table.Entries[slot + 1] = bitmap;
        }

        if (!table.Dirty)
        {
            table.Dirty = true;
            _dirtyBytes += _clusterSize;
        }
    }

    private void AfterChange()
    {
        if (_dirtyBytes > DirtyLimitBytes)
        {
            FlushMetadata();
        }

        if (((long)_l2.Count + _refBlocks.Count) * _clusterSize > TableCacheLimitBytes)
        {
            FlushMetadata();
            ClearL2Cache();
            _refBlocks.Clear();
        }
    }

    // ---------------------------------------------------------------- tables

    private sealed class L2Table(ulong[] entries, bool isNew)
    {
        public ulong[] Entries { get; } = entries;

        public bool Dirty { get; set; } = isNew;

        public bool New { get; set; } = isNew;
    }

    private sealed class RefBlock(byte[] data, bool isNew)
    {
        public byte[] Data { get; } = data;

        public bool Dirty { get; set; } = isNew;

        public bool New { get; set; } = isNew;
    }

    private L2Table? GetL2(int l1Index, bool allocate)
    {
        ulong entry = _l1[l1Index];
        if ((entry & Qcow2Format.L1Reserved) != 0)
        {
            throw Damaged(Path, "L1 entry", $"{l1Index} has reserved bits set (0x{entry:x16})");
        }

        long offset = (long)(entry & Qcow2Format.OffsetMask);
        if (offset == 0)
        {
            if (!allocate)
            {
                return null;
            }

            long at = AllocateCluster();
            var fresh = new L2Table(new ulong[_clusterSize / 8], isNew: true);
            CacheL2(at, fresh);
            _l1[l1Index] = (ulong)at | Qcow2Format.Copied;
            _dirtyL1.Add(l1Index);
            _dirtyBytes += _clusterSize;
            return fresh;
        }

        if (offset == _lastL2Offset)
        {
            return _lastL2;
        }

        if (_l2.TryGetValue(offset, out var cached))
        {
            (_lastL2Offset, _lastL2) = (offset, cached);
            return cached;
        }

        if ((offset & (_clusterSize - 1)) != 0 || offset >= FileLimit || offset < _clusterSize)
        {
            throw Damaged(Path, "L1 entry", $"{l1Index} points to an L2 table at {offset}, which is unaligned, the header, or past the end of the file");
        }

        if (allocate && (entry & Qcow2Format.Copied) == 0)
        {
            throw Damaged(Path, "L1 entry", $"{l1Index} names a shared L2 table (not marked copied) in an image without snapshots");
        }

        var entries = new ulong[_clusterSize / 8];
        ReadTable(_store, offset, entries);
        var table = new L2Table(entries, isNew: false);
        CacheL2(offset, table);
        return table;
    }

    /// <summary>Keeps <paramref name="table"/> as the L2 table at <paramref name="offset"/> (and as the last one looked up).</summary>
    private void CacheL2(long offset, L2Table table)
    {
        _l2[offset] = table;
        (_lastL2Offset, _lastL2) = (offset, table);
    }

    /// <summary>Forgets every cached L2 table (they are all clean: the caller flushed them).</summary>
    private void ClearL2Cache()
    {
        _l2.Clear();
        (_lastL2Offset, _lastL2) = (0, null);
    }

    private RefBlock? GetRefBlock(long blockIndex)
    {
        if (blockIndex >= _refTable.Length)
        {
            return null;
        }

        ulong entry = _refTable[blockIndex];
        if ((entry & Qcow2Format.RefTableReserved) != 0)
        {
            throw Damaged(Path, "refcount table entry", $"{blockIndex} has reserved bits set (0x{entry:x16})");
        }

        long offset = (long)entry;
        if (offset == 0)
        {
            return null;
        }

        if (_refBlocks.TryGetValue(blockIndex, out var cached))
        {
            return cached;
        }

        if ((offset & (_clusterSize - 1)) != 0 || offset >= FileLimit || offset < _clusterSize)
        {
            throw Damaged(Path, "refcount table entry", $"{blockIndex} points to a refcount block at {offset}, which is the header or past the end of the file");
        }

        var data = new byte[_clusterSize];
        _store.Read(offset, data);
        var block = new RefBlock(data, isNew: false);
        _refBlocks[blockIndex] = block;
        return block;
    }

    private long GetRefcount(long cluster)
    {
        var block = GetRefBlock(cluster / _refEntriesPerBlock);
        return block is null ? 0 : ReadRefcount(block.Data, cluster % _refEntriesPerBlock);
    }

    private void SetRefcount(long cluster, long value)
    {
        long blockIndex = cluster / _refEntriesPerBlock;
        var block = GetRefBlock(blockIndex) ?? throw Damaged(Path, "refcount table", $"has no refcount block for cluster {cluster}, which is in use");
        long max = _refcountBits == 64 ? long.MaxValue : (1L << _refcountBits) - 1;
        if (value < 0 || value > max)
        {
            throw Damaged(Path, "refcount", $"of cluster {cluster} would become {value}, outside 0..{max}");
        }

        WriteRefcount(block.Data, cluster % _refEntriesPerBlock, value);
        if (!block.Dirty)
        {
            block.Dirty = true;
            _dirtyBytes += _clusterSize;
        }
    }

    private long ReadRefcount(byte[] data, long index)
    {
        switch (_refcountBits)
        {
            case 8:
                return data[index];
            case 16:
                return BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan((int)(index * 2)));
            case 32:
                return BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan((int)(index * 4)));
            case 64:
                return (long)Math.Min(BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan((int)(index * 8))), long.MaxValue);
            default:
                int perByte = 8 / _refcountBits;
                int shift = (int)(index % perByte) * _refcountBits;
                return (data[index / perByte] >> shift) & ((1 << _refcountBits) - 1);
        }
    }

    private void WriteRefcount(byte[] data, long index, long value)
    {
        switch (_refcountBits)
        {
            case 8:
                data[index] = (byte)value;
                break;
            case 16:
                BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan((int)(index * 2)), (ushort)value);
                break;
            case 32:
                BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan((int)(index * 4)), (uint)value);
                break;
            case 64:
                BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan((int)(index * 8)), (ulong)value);
                break;
            default:
                int perByte = 8 / _refcountBits;
                int shift = (int)(index % perByte) * _refcountBits;
                int mask = ((1 << _refcountBits) - 1) << shift;
                data[index / perByte] = (byte)((data[index / perByte] & ~mask) | ((int)value << shift));
                break;
        }
    }

    /// <summary>Finds a cluster with refcount 0, gives it refcount 1, and returns its byte offset.</summary>
    private long AllocateCluster()
    {
        long c = _freeHint;
        while (true)
        {
            if ((c << _clusterBits) >= 1L << 56)
            {
                throw new DiskImageException(Path, DiskImageError.Other, $"The qcow2 image '{Path}' has no room for another cluster.");
            }

            long blockIndex = c / _refEntriesPerBlock;
            if (blockIndex >= _refTable.Length)
            {
                GrowRefTable(blockIndex);
                continue;
            }

            var block = GetRefBlock(blockIndex);
            if (block is null)
            {
                // No refcount block covers this range yet: the new block lives in its own first free cluster.
                var created = new RefBlock(new byte[_clusterSize], isNew: true);
                _refBlocks[blockIndex] = created;
                _refTable[blockIndex] = (ulong)(c << _clusterBits);
                _dirtyRefTable.Add(blockIndex);
                _dirtyBytes += _clusterSize;
                SetRefcount(c, 1);
                _highWater = Math.Max(_highWater, c + 1);
                c++;
                continue;
            }

            long end = Math.Min((blockIndex + 1) * _refEntriesPerBlock, long.MaxValue);
            for (; c < end; c++)
            {
                if (ReadRefcount(block.Data, c % _refEntriesPerBlock) == 0)
                {
                    SetRefcount(c, 1);
                    _freeHint = c + 1;
                    _highWater = Math.Max(_highWater, c + 1);
                    return c << _clusterBits;
                }
            }
        }
    }

    /// <summary>
    /// Moves the refcount table to a larger one at the end of the file with the refcount blocks that cover it,
    /// switches the header to it in one sector write, and frees the old table.
    /// </summary>
    private void GrowRefTable(long neededBlock)
    {
        FlushMetadata();
        long oldEntries = _refTable.Length;
        long entries = Math.Max(neededBlock + 1, oldEntries * 2);
        long start = Math.Max(_highWater, (_store.Length + _clusterSize - 1) >> _clusterBits);
        long tableClusters;
        List<long> newBlocks;
        while (true)
        {
            tableClusters = ((entries * 8) + _clusterSize - 1) / _clusterSize;
            newBlocks = [];
            long end = start + tableClusters;
            while (true)
            {
                newBlocks.Clear();
                for (long b = start / _refEntriesPerBlock; b <= (end - 1) / _refEntriesPerBlock; b++)
                {
                    if (b >= oldEntries || _refTable[b] == 0)
                    {
                        newBlocks.Add(b);
                    }
                }

                long newEnd = start + tableClusters + newBlocks.Count;
                if (newEnd == end)
                {
                    break;
                }

                end = newEnd;
            }

            long maxBlock = (end - 1) / _refEntriesPerBlock;
            if (maxBlock < entries && neededBlock < entries)
            {
                break;
            }

            entries = Math.Max(entries, maxBlock + 1) * 2;
        }

        if (tableClusters * _clusterSize > Qcow2Format.MaxRefTableBytes)
        {
            throw new DiskImageException(Path, DiskImageError.Other, $"The qcow2 image '{Path}' would need a refcount table larger than {Qcow2Format.MaxRefTableBytes} bytes.");
        }

        var table = new ulong[tableClusters * _clusterSize / 8];
        Array.Copy(_refTable, table, _refTable.Length);
        long oldOffset = _refTableOffset;
        long oldClusters = (_refTable.LongLength * 8) / _clusterSize;
        _refTable = table;
        long blockAt = start + tableClusters;
        foreach (long b in newBlocks)
        {
            _refTable[b] = (ulong)(blockAt << _clusterBits);
            _refBlocks[b] = new RefBlock(new byte[_clusterSize], isNew: true);
            blockAt++;
        }

        for (long c = start; c < blockAt; c++)
        {
            SetRefcount(c, 1);
        }

        _highWater = Math.Max(_highWater, blockAt);

        // The new blocks, any block whose counts changed, and the new table: durable before the header points at them.
        foreach (var (index, block) in _refBlocks)
        {
            if (block.Dirty)
            {
                _store.Write((long)_refTable[index], block.Data);
                block.Dirty = false;
                block.New = false;
            }
        }

        WriteTable(start << _clusterBits, _refTable, 0, _refTable.Length);
        _store.Flush();
        Span<byte> fields = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(fields, (ulong)(start << _clusterBits));
        BinaryPrimitives.WriteUInt32BigEndian(fields[8..], (uint)tableClusters);
        _store.Write(Qcow2Format.OffRefTableOffset, fields);
        _store.Flush();
        _refTableOffset = start << _clusterBits;
        _dirtyRefTable.Clear();
        for (long c = 0; c < oldClusters; c++)
        {
            _pendingFree.Add((oldOffset >> _clusterBits) + c);
        }
    }

    /// <summary>Writes pending table changes in crash-safe order (see the class remarks), then syncs the file.</summary>
    private void FlushMetadata()
    {
        bool refDirty = false, newL2 = false, oldL2 = false;
        foreach (var block in _refBlocks.Values)
        {
            refDirty |= block.Dirty;
        }

        foreach (var table in _l2.Values)
        {
            newL2 |= table.Dirty && table.New;
            oldL2 |= table.Dirty && !table.New;
        }

        // 1. Refcount increments, new refcount blocks and new L2 tables: nothing on disk references the new ones yet.
        if (refDirty || newL2)
        {
            WriteDirtyRefBlocks();
            foreach (var (offset, table) in _l2)
            {
                if (table.Dirty && table.New)
                {
                    WriteTable(offset, table.Entries, 0, table.Entries.Length);
                    table.Dirty = false;
                }
            }

            _store.Flush();
        }

        // 2. Refcount-table entries of new refcount blocks.
        if (_dirtyRefTable.Count > 0)
        {
            WriteEntries(_refTableOffset, _refTable, _dirtyRefTable);
            _dirtyRefTable.Clear();
            foreach (var block in _refBlocks.Values)
            {
                block.New = false;
            }

            _store.Flush();
        }

        // 3. The L2 and L1 entries that make new clusters visible (and hide discarded ones).
        if (oldL2 || _dirtyL1.Count > 0)
        {
            foreach (var (offset, table) in _l2)
            {
                if (table.Dirty)
                {
                    WriteTable(offset, table.Entries, 0, table.Entries.Length);
                    table.Dirty = false;
                }
            }

            WriteEntries(_l1Offset, _l1, _dirtyL1);
            _dirtyL1.Clear();
            _store.Flush();
        }

        foreach (var table in _l2.Values)
        {
            table.New = false;
        }

        // 4. Release clusters nothing on disk references any more.
        if (_pendingFree.Count > 0)
        {
            ReleasePending();
        }

        if (!refDirty && !newL2 && !oldL2 && _dirtyBytes == 0)
        {
            _store.Flush();
        }

        _dirtyBytes = 0;
    }

    private void WriteDirtyRefBlocks()
    {
        foreach (var (index, block) in _refBlocks)
        {
            if (block.Dirty)
            {
                _store.Write((long)_refTable[index], block.Data);
                block.Dirty = false;
            }
        }
    }

    private void ReleasePending()
    {
        foreach (long c in _pendingFree)
        {
            long count = GetRefcount(c);
            if (count > 0)
            {
                SetRefcount(c, count - 1);
            }

            if (count == 1)
            {
                _freeHint = Math.Min(_freeHint, c);
            }
        }

        WriteDirtyRefBlocks();
        _store.Flush();
        foreach (long c in _pendingFree)
        {
            if (GetRefcount(c) == 0)
            {
                _store.TryPunchHole(c << _clusterBits, _clusterSize);
            }
        }

        _pendingFree.Clear();
    }

    private void WriteTable(long offset, ulong[] entries, int start, int count)
    {
        byte[] bytes = ArrayPool<byte>.Shared.Rent(count * 8);
        try
        {
            for (int i = 0; i < count; i++)
            {
                BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), entries[start + i]);
            }

            _store.Write(offset + ((long)start * 8), bytes.AsSpan(0, count * 8));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(bytes);
        }
    }

    /// <summary>Writes the 512-byte sectors of a table that hold the given entries.</summary>
    private void WriteEntries(long tableOffset, ulong[] table, IEnumerable<long> indices)
    {
        var sectors = new SortedSet<long>();
        foreach (long i in indices)
        {
            sectors.Add(i / 64);
        }

        foreach (long s in sectors)
        {
            int start = (int)(s * 64);
            WriteTable(tableOffset, table, start, Math.Min(64, table.Length - start));
        }
    }

    private void WriteEntries(long tableOffset, ulong[] table, HashSet<int> indices)
    {
        var list = new List<long>(indices.Count);
        foreach (int i in indices)
        {
            list.Add(i);
        }

        WriteEntries(tableOffset, table, list);
    }

    private static void ReadTable(ImageStore store, long offset, ulong[] entries)
    {
        if (entries.Length == 0)
        {
            return;
        }

        byte[] bytes = ArrayPool<byte>.Shared.Rent(Math.Min(entries.Length * 8, 1 << 20));
        try
        {
            int done = 0;
            while (done < entries.Length)
            {
                int n = Math.Min(entries.Length - done, bytes.Length / 8);
                store.Read(offset + ((long)done * 8), bytes.AsSpan(0, n * 8));
                for (int i = 0; i < n; i++)
                {
                    entries[done + i] = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8));
                }

                done += n;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(bytes);
        }
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    /// <summary>The part of <paramref name="buffers"/> from byte <paramref name="start"/>, <paramref name="length"/> bytes long.</summary>
    private static ReadOnlySpan<HostBuffer> Slice(ReadOnlySpan<HostBuffer> buffers, long start, long length, out HostBuffer[] rented)
    {
        rented = ArrayPool<HostBuffer>.Shared.Rent(buffers.Length);
        int n = 0;
        long skip = start;
        foreach (var b in buffers)
        {
            if (length == 0)
            {
                break;
            }

            if (skip >= b.Length)
            {
                skip -= b.Length;
                continue;
            }

            int take = (int)Math.Min(b.Length - skip, length);
            rented[n++] = b.Slice((int)skip, take);
            length -= take;
            skip = 0;
        }

        return rented.AsSpan(0, n);
    }

    private static void Return(HostBuffer[]? rented)
    {
        if (rented is not null)
        {
            ArrayPool<HostBuffer>.Shared.Return(rented);
        }
    }

    internal static DiskImageException Damaged(string path, string field, string why) =>
        new(path, DiskImageError.InvalidFormat, $"The qcow2 image '{path}' is damaged or unsupported: {field} {why}.");

    /// <summary>The validated header.</summary>
    private sealed record Header(
        int Version,
        int ClusterBits,
        long Size,
        int L1Size,
        long L1Offset,
        long RefTableOffset,
        int RefTableClusters,
        int RefcountOrder,
        ulong Incompatible,
        ulong Autoclear,
        string? BackingPath,
        string? BackingFormat,
        IReadOnlyList<Qcow2Snapshot> Snapshots)
    {
        public static Header Parse(ImageStore store, string path)
        {
            long fileLength = store.Length;
            Span<byte> h = stackalloc byte[Qcow2Format.V3HeaderLength + 8];
            if (fileLength < Qcow2Format.V2HeaderLength)
            {
                throw Damaged(path, "header", $"is cut short: the file is {fileLength} bytes");
            }

            store.Read(0, h);
            if (!Qcow2Format.HasMagic(h))
            {
                throw Damaged(path, "magic", "is not QFI\\xfb");
            }

            uint version = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffVersion..]);
            if (version is not (2 or 3))
            {
                throw Damaged(path, "version", $"is {version}; versions 2 and 3 are supported");
            }

            uint clusterBits = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffClusterBits..]);
            if (clusterBits is < Qcow2Format.MinClusterBits or > Qcow2Format.MaxClusterBits)
            {
                throw Damaged(path, "cluster_bits", $"is {clusterBits}, outside {Qcow2Format.MinClusterBits}..{Qcow2Format.MaxClusterBits}");
            }

            long cs = 1L << (int)clusterBits;

            uint headerLength = Qcow2Format.V2HeaderLength;
            ulong incompatible = 0, autoclear = 0;
            uint refcountOrder = 4;
            if (version == 3)
            {
                (incompatible, autoclear, refcountOrder, headerLength) = ParseVersion3(path, h, cs, fileLength);
            }

            uint crypt = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffCryptMethod..]);
            if (crypt != 0)
            {
                throw Damaged(path, "crypt_method", $"is {crypt}; encrypted images are not supported");
            }

            ulong size = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2Format.OffSize..]);
            if (size == 0 || size % DiskImage.SectorSize != 0 || size > Qcow2Format.MaxVirtualSize)
            {
                throw Damaged(path, "size", $"is {size}; it must be a positive multiple of {DiskImage.SectorSize} up to {Qcow2Format.MaxVirtualSize}");
            }

            uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffL1Size..]);
            long needL1 = Qcow2Format.L1EntriesFor((long)size, (int)clusterBits, (incompatible & Qcow2Format.IncompatExtendedL2) != 0);
            if (l1Size < needL1 || (long)l1Size * 8 > Qcow2Format.MaxL1Bytes)
            {
                throw Damaged(path, "l1_size", $"is {l1Size}; the size needs {needL1} entries and at most {Qcow2Format.MaxL1Bytes / 8} are allowed");
            }

            ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2Format.OffL1Offset..]);
            CheckTable(path, "l1_table_offset", l1Offset, (long)l1Size * 8, cs, fileLength);

            uint refClusters = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffRefTableClusters..]);
            if (refClusters == 0 || refClusters * cs > Qcow2Format.MaxRefTableBytes)
            {
                throw Damaged(path, "refcount_table_clusters", $"is {refClusters}; it must be 1 to {Qcow2Format.MaxRefTableBytes / cs}");
            }

            ulong refOffset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2Format.OffRefTableOffset..]);
            CheckTable(path, "refcount_table_offset", refOffset, refClusters * cs, cs, fileLength);

            // Header extensions (version 3: after header_length; version 2: after the 72-byte header).
            byte[] first = new byte[Math.Min(cs, fileLength)];
            store.Read(0, first);
            string? backingFormat = ParseExtensions(path, first, headerLength);
            string? backingPath = null;
            ulong backingOffset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2Format.OffBackingOffset..]);
            uint backingSize = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffBackingSize..]);
            if (backingOffset != 0)
            {
                if (backingSize == 0 || backingSize > Qcow2Format.MaxBackingNameBytes || backingOffset > (ulong)first.Length || backingOffset + backingSize > (ulong)first.Length)
                {
                    throw Damaged(path, "backing_file_offset", $"is {backingOffset} with backing_file_size {backingSize}; the name must be 1 to {Qcow2Format.MaxBackingNameBytes} bytes inside the first cluster");
                }

                backingPath = DecodeString(path, "backing_file", first.AsSpan((int)backingOffset, (int)backingSize));
            }

            uint snapshotCount = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffSnapshotCount..]);
            ulong snapshotsOffset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2Format.OffSnapshotsOffset..]);
            var snapshots = ReadSnapshots(store, path, snapshotCount, snapshotsOffset, cs, fileLength, version);
            return new Header((int)version, (int)clusterBits, (long)size, (int)l1Size, (long)l1Offset, (long)refOffset, (int)refClusters,
                (int)refcountOrder, incompatible, autoclear, backingPath, backingFormat, snapshots);
        }

        private static (ulong Incompatible, ulong Autoclear, uint RefcountOrder, uint HeaderLength) ParseVersion3(string path, ReadOnlySpan<byte> h, long cs, long fileLength)
        {
            ulong incompatible = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2Format.OffIncompatible..]);
            ulong autoclear = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2Format.OffAutoclear..]);
            uint refcountOrder = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffRefcountOrder..]);
            uint headerLength = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2Format.OffHeaderLength..]);
            if (headerLength < Qcow2Format.V3HeaderLength || headerLength > cs || headerLength > fileLength)
            {
                throw Damaged(path, "header_length", $"is {headerLength}; it must be at least {Qcow2Format.V3HeaderLength} and within the first cluster and the file");
            }

            if (refcountOrder > 6)
            {
                throw Damaged(path, "refcount_order", $"is {refcountOrder}; at most 6 (64-bit refcounts)");
            }

            byte compressionType = headerLength > Qcow2Format.OffCompressionType ? h[Qcow2Format.OffCompressionType] : (byte)0;
            bool typeBit = (incompatible & Qcow2Format.IncompatCompressionType) != 0;
            if (compressionType > Qcow2Format.CompressionZstd)
            {
                throw Damaged(path, "compression_type", $"is {compressionType}; known are 0 (zlib) and 1 (zstd). Convert the image with qemu-img convert -O qcow2");
            }

            if (typeBit != (compressionType != 0))
            {
                throw Damaged(path, "compression_type", $"is {compressionType} while the compression type bit of incompatible_features is {(typeBit ? "set" : "clear")}; the bit must be set exactly when the type is not zlib");
            }

            if ((incompatible & Qcow2Format.IncompatExternalData) != 0)
            {
                throw Damaged(path, "incompatible_features", "has the external data file bit; external data files are not supported");
            }

            if ((incompatible & Qcow2Format.IncompatExtendedL2) != 0 && cs < 1L << Qcow2Format.MinExtendedClusterBits)
            {
                throw Damaged(path, "cluster_bits", $"is {System.Numerics.BitOperations.Log2((ulong)cs)} in an image with extended L2 entries, which need clusters of at least {1 << Qcow2Format.MinExtendedClusterBits} bytes");
            }

            ulong unknown = incompatible & ~(Qcow2Format.IncompatDirty | Qcow2Format.IncompatCorrupt | Qcow2Format.IncompatCompressionType | Qcow2Format.IncompatExtendedL2);
            if (unknown != 0)
            {
                throw Damaged(path, "incompatible_features", $"has unknown bits 0x{unknown:x}");
            }

            return (incompatible, autoclear, refcountOrder, headerLength);
        }

        private static string? ParseExtensions(string path, byte[] first, long pos)
        {
            string? backingFormat = null;
            while (pos + 8 <= first.Length)
            {
                uint type = BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan((int)pos));
                uint length = BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan((int)pos + 4));
                if (type == Qcow2Format.ExtEnd)
                {
                    break;
                }

                if (length > first.Length - pos - 8)
                {
                    throw Damaged(path, "header extension", $"0x{type:x8} at {pos} is {length} bytes long, past the end of the first cluster");
                }

                if (type == Qcow2Format.ExtBackingFormat)
                {
                    backingFormat = DecodeString(path, "backing file format extension", first.AsSpan((int)pos + 8, (int)length));
                }

                pos += 8 + ((length + 7L) & ~7L);
            }

            return backingFormat;
        }

        private static void CheckTable(string path, string field, ulong offset, long bytes, long cs, long fileLength)
        {
            if (bytes == 0)
            {
                return;
            }

            if (offset % (ulong)cs != 0 || offset < (ulong)cs || offset > (ulong)fileLength || (ulong)bytes > (ulong)fileLength - offset)
            {
                throw Damaged(path, field, $"is {offset}: the table of {bytes} bytes must start on a cluster boundary after the header and lie inside the file of {fileLength} bytes");
            }
        }

        private static string DecodeString(string path, string field, ReadOnlySpan<byte> bytes)
        {
            try
            {
                string s = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
                if (s.Contains('\0', StringComparison.Ordinal))
                {
                    throw Damaged(path, field, "contains a NUL character");
                }

                return s;
            }
            catch (DecoderFallbackException e)
            {
                throw new DiskImageException(path, DiskImageError.InvalidFormat, $"The qcow2 image '{path}' is damaged or unsupported: {field} is not valid UTF-8.", e);
            }
        }

        private static List<Qcow2Snapshot> ReadSnapshots(ImageStore store, string path, uint count, ulong offset, long cs, long fileLength, uint version)
        {
            var list = new List<Qcow2Snapshot>();
            if (count == 0)
            {
                return list;
            }

            if (count > Qcow2Format.MaxSnapshots)
            {
                throw Damaged(path, "nb_snapshots", $"is {count}; at most {Qcow2Format.MaxSnapshots}");
            }

            if (offset % (ulong)cs != 0 || offset < (ulong)cs || offset >= (ulong)fileLength)
            {
                throw Damaged(path, "snapshots_offset", $"is {offset}; it must be cluster-aligned, after the header, and inside the file");
            }

            long pos = (long)offset;
            Span<byte> fixedPart = stackalloc byte[40];
            for (uint i = 0; i < count; i++)
            {
                if (pos + 40 > fileLength)
                {
                    throw Damaged(path, "snapshot table", $"entry {i} runs past the end of the file");
                }

                store.Read(pos, fixedPart);
                uint dateSeconds = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[16..]);
                uint vmState = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[28..]);
                ushort idSize = BinaryPrimitives.ReadUInt16BigEndian(fixedPart[12..]);
                ushort nameSize = BinaryPrimitives.ReadUInt16BigEndian(fixedPart[14..]);
                uint extraSize = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[36..]);
                if (extraSize > Qcow2Format.MaxSnapshotExtraData || (version >= 3 && extraSize < 16))
                {
                    throw Damaged(path, "snapshot table", $"entry {i} has extra_data_size {extraSize}; it must be {(version >= 3 ? 16 : 0)} to {Qcow2Format.MaxSnapshotExtraData}");
                }

                long variable = extraSize + idSize + nameSize;
                if (pos + 40 + variable > fileLength)
                {
                    throw Damaged(path, "snapshot table", $"entry {i} runs past the end of the file");
                }

                byte[] rest = new byte[variable];
                store.Read(pos + 40, rest);
                long? diskSize = extraSize >= 16 ? (long)Math.Min(BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(8)), long.MaxValue) : null;
                long vmStateSize = extraSize >= 8 ? (long)Math.Min(BinaryPrimitives.ReadUInt64BigEndian(rest), long.MaxValue) : vmState;
                string id = DecodeString(path, "snapshot id", rest.AsSpan((int)extraSize, idSize));
                string name = DecodeString(path, "snapshot name", rest.AsSpan((int)extraSize + idSize, nameSize));
                list.Add(new Qcow2Snapshot(id, name, DateTimeOffset.FromUnixTimeSeconds(dateSeconds), Math.Max(vmStateSize, vmState), diskSize));
                pos += (40 + variable + 7) & ~7L;
            }

            return list;
        }
    }
}

/// <summary>Synchronous reads of a backing image, used under the overlaying image's lock.</summary>
internal interface IBackingReader : IAsyncDisposable
{
    long Capacity { get; }

    void ReadAt(long offset, Span<byte> destination);
}

/// <summary>A backend that moves data between the image and host memory spans with one call (preadv/pwritev).</summary>
internal interface IVectoredBlockBackend
{
    /// <summary>Whether every file the backend reads or writes lives in host memory (see <see cref="HostIo.IsInMemory"/>).</summary>
    bool IsInMemory { get; }

    void ReadVector(long offset, ReadOnlySpan<HostBuffer> buffers);

    void WriteVector(long offset, ReadOnlySpan<HostBuffer> buffers);

    /// <summary>
    /// Whether <see cref="TryVectorNoWait"/> in this direction may succeed: false once the image's file refused
    /// RWF_NOWAIT for it, and for writes to a read-only image.
    /// </summary>
    bool MayTransferWithoutWaiting(bool write);

    /// <summary>
    /// <see cref="ReadVector"/> or <see cref="WriteVector"/> only if it can be done without waiting: for a storage
    /// device (RWF_NOWAIT: the data is in the page cache), for image metadata not in memory, for a lock another thread
    /// holds. False when it must be redone the waiting way, in which case a read may have filled part of the buffers
    /// and a write may have written part of the range (both are redone whole).
    /// </summary>
    /// <exception cref="IOException">The file failed.</exception>
    /// <exception cref="ObjectDisposedException">The backend was disposed.</exception>
    bool TryVectorNoWait(long offset, ReadOnlySpan<HostBuffer> buffers, bool write);

    /// <summary>
    /// <see cref="WriteVector"/> only where it writes the data in place without waiting for image metadata or for a lock
    /// another thread holds (a raw image always; a qcow2 image when the clusters are allocated, written in place and
    /// their L2 tables in memory); it may wait for the file itself (a plain write into the page cache). False when it
    /// must be redone the waiting way, in which case part of the range may have been written (it is redone whole).
    /// </summary>
    /// <exception cref="IOException">The file failed.</exception>
    /// <exception cref="ObjectDisposedException">The backend was disposed.</exception>
    bool TryWriteInPlace(long offset, ReadOnlySpan<HostBuffer> buffers);

    /// <summary>
    /// Whether <see cref="TryMapToFile"/> may map anything in this direction (RWF_NOWAIT seen to work on the file and never
    /// refused; for a write, a writable image): a check without a lock, made before a batch is started.
    /// </summary>
    bool MayMapToFile(bool write);

    /// <summary>
    /// Starts a batch of <see cref="TryMapToFile"/> lookups whose answers hold until <see cref="ExitFileMapping"/>
    /// (qcow2: takes the image's lock, so no cluster moves meanwhile); false, holding nothing, when that would wait or
    /// the backend has no file to map to. The caller moves the data (an io_uring batch) before it exits.
    /// </summary>
    bool TryEnterFileMapping();

    /// <summary>Ends what <see cref="TryEnterFileMapping"/> started.</summary>
    void ExitFileMapping();

    /// <summary>
    /// The one range of one host file that holds the guest range <paramref name="offset"/>..+<paramref name="length"/>,
    /// when a no-wait transfer in this direction may go straight there: RWF_NOWAIT was seen to work on the file in this
    /// direction (and was never refused), the range is in bounds, and (qcow2) it lies in data clusters contiguous in the
    /// image file, written in place for a write, with their L2 tables in memory. False for anything else (a backing file,
    /// zero or compressed clusters, an allocating write, damage), which then goes the single-request way. Call only
    /// between <see cref="TryEnterFileMapping"/> and <see cref="ExitFileMapping"/>.
    /// </summary>
    bool TryMapToFile(long offset, long length, bool write, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Microsoft.Win32.SafeHandles.SafeFileHandle? file, out long fileOffset);
}
