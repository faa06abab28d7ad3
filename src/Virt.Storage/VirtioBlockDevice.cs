using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Extensions.Logging;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Snapshots;

namespace Virt.Storage;

/// <summary>Where a <see cref="VirtioBlockDevice"/> serves small reads and writes (<see cref="VirtioBlockOptions.Inline"/>).</summary>
public enum VirtioBlockInline
{
    /// <summary>
    /// On the notifying vCPU thread when the image (and every backing file) lives in host memory (tmpfs, ramfs,
    /// hugetlbfs), where a request only copies memory and never waits for a storage device. For an image on a disk file
    /// system (Linux), on the notifying thread only when the host can do it without waiting for the disk: the request
    /// is tried with RWF_NOWAIT (data in the page cache, metadata in memory) and goes to the queue's worker, with every
    /// request after it, when it would wait or when the file system refuses RWF_NOWAIT for that direction (ext4 does
    /// for buffered writes). Elsewhere on the queue's worker. The default.
    /// </summary>
    Automatic = 0,

    /// <summary>Always on the queue's worker: the vCPU thread only records the notification.</summary>
    Never,

    /// <summary>
    /// On the notifying vCPU thread for any raw or qcow2 image, like a synchronous block engine: the fastest path while
    /// the data is in the host's page cache, but a read that misses it, or a write the kernel throttles for writeback,
    /// stalls the vCPU that made it for as long as the storage takes.
    /// </summary>
    Always,
}

/// <summary>Settings of a <see cref="VirtioBlockDevice"/>.</summary>
public sealed record VirtioBlockOptions
{
    /// <summary>Presents the disk read-only even if the backend is writable.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>The disk's serial number as the guest reads it with GET_ID (at most 20 ASCII bytes).</summary>
    public string Serial { get; init; } = "virt-disk";

    /// <summary>Queue size offered to the driver (a power of two, 4 to 32768).</summary>
    public ushort QueueSize { get; init; } = 256;

    /// <summary>Bandwidth limit in bytes per second for reads and writes together; null for none.</summary>
    public long? BytesPerSecond { get; init; }

    /// <summary>Request limit in operations per second; null for none.</summary>
    public long? OperationsPerSecond { get; init; }

    /// <summary>
    /// Request queues offered to the driver (1 to 64; default 1). Above 1 the device offers VIRTIO_BLK_F_MQ and serves
    /// each queue on its own worker, so a guest with several vCPUs submits from each without a shared lock (Linux maps
    /// one queue to each CPU, up to this count). VMs built with <c>WithVirtioBlock(path)</c> get one queue per vCPU.
    /// </summary>
    public int QueueCount { get; init; } = 1;

    /// <summary>
    /// Whether reads and writes of up to 1 MiB are served on the vCPU thread that notified the queue, with no
    /// hand-off to the queue's worker (see <see cref="VirtioBlockInline"/>; default
    /// <see cref="VirtioBlockInline.Automatic"/>: when the image lives in host memory, or the data is in the host's page
    /// cache). Applies to raw and qcow2 images
    /// without throttling; everything else (FLUSH, larger requests, requests that arrive while the worker is busy)
    /// goes to the worker, in order.
    /// </summary>
    public VirtioBlockInline Inline { get; init; }
}

/// <summary>
/// A virtio-blk device (virtio 1.2, section 5.2) over an <see cref="IBlockBackend"/>: IN, OUT, FLUSH, GET_ID,
/// DISCARD and WRITE_ZEROES. Requests are served by a worker per queue, off the vCPU thread: up to 16 reads and writes
/// at once, with raw and qcow2 images straight between guest memory and the file (preadv/pwritev, no copy); any other
/// request waits for every request before it. Small reads and writes of an image in host memory are served on the
/// notifying vCPU thread instead, while the worker is idle (<see cref="VirtioBlockOptions.Inline"/>). Requests complete (used ring and interrupt) in the order they were made available,
/// each once the backend finished it, so a completed FLUSH means every earlier write is durable.
/// </summary>
/// <remarks>
/// <para>Wrap it in a <see cref="VirtioMmioTransport"/> to give it to a VM.</para>
/// <para>
/// Snapshots: the disk's contents stay in the backend (the caller's image file), which
/// <see cref="QuiescedAsync"/> flushes before the snapshot is written; the device's state records the disk it was
/// given (size, read-only, serial, queue size) so a restore with another disk is refused. Restore with the same
/// image, unchanged since the save (or an overlay of the same base).
/// </para>
/// </remarks>
public sealed partial class VirtioBlockDevice : VirtioDevice, IPersistentState
{
    internal const ulong FeatureSegMax = 1UL << 2;
    internal const ulong FeatureReadOnly = 1UL << 5;
    internal const ulong FeatureBlockSize = 1UL << 6;
    internal const ulong FeatureFlush = 1UL << 9;
    internal const ulong FeatureMultiQueue = 1UL << 12;
    internal const ulong FeatureDiscard = 1UL << 13;
    internal const ulong FeatureWriteZeroes = 1UL << 14;

    internal const uint RequestIn = 0;
    internal const uint RequestOut = 1;
    internal const uint RequestFlush = 4;
    internal const uint RequestGetId = 8;
    internal const uint RequestDiscard = 11;
    internal const uint RequestWriteZeroes = 13;

    internal const byte StatusOk = 0;
    internal const byte StatusIoError = 1;
    internal const byte StatusUnsupported = 2;

    /// <summary>Size of the request header: type, reserved, sector.</summary>
    internal const int HeaderSize = 16;
    /// <summary>Size of one discard / write-zeroes segment: sector, sector count, flags.</summary>
    internal const int SegmentSize = 16;
    /// <summary>Length of the GET_ID answer.</summary>
    internal const int IdLength = 20;
    /// <summary>Write-zeroes segment flag: the device may deallocate the range.</summary>
    private const uint SegmentFlagUnmap = 1;
    /// <summary>Largest discard / write-zeroes range in sectors (2 GiB).</summary>
    private const uint MaxZeroSectors = 1u << 22;
    /// <summary>Most request queues a device offers (<see cref="VirtioBlockOptions.QueueCount"/>).</summary>
    public const int MaxQueueCount = 64;
    /// <summary>Requests of one queue served at the same time.</summary>
    private const int MaxInFlight = 16;
    /// <summary>Bytes moved between the backend and guest memory per step of a large request.</summary>
    private const int ChunkSize = 1 << 20;
    /// <summary>Chains of up to this many descriptors describe their host buffers on the stack.</summary>
    private const int SmallChain = 8;
    /// <summary>
    /// Most data bytes served on the notifying thread per notification (with <see cref="InlineMaxRequests"/>, what bounds
    /// the vCPU's stay in the device): one copy of at most 1 MiB between the page cache (or a tmpfs mapping) and guest
    /// memory, never a wait for a storage device. A request is served there only if it fits in what is left of it, so this
    /// is also the largest read or write served there.
    /// </summary>
    internal const int InlineMaxBytesPerNotification = 1 << 20;
    /// <summary>Most requests served on the notifying thread per notification; the worker takes the rest.</summary>
    internal const int InlineMaxRequests = 32;

    private readonly IBlockBackend _backend;
    private readonly byte[] _config;
    private readonly byte[] _id = new byte[IdLength];
    private readonly TokenBucket? _bytes;
    private readonly TokenBucket? _ops;
    private TokenBucket? _sharedBytes;
    private TokenBucket? _sharedOps;
    private readonly VirtqueueWorker[] _workers;
    private InlineMode _inline;
    private readonly InlineState?[] _inlineState;
    private long _notifiedWhileWorkerBusy;

    /// <summary>What the notifying thread serves (<see cref="VirtioBlockOptions.Inline"/> resolved for the backend).</summary>
    private enum InlineMode
    {
        /// <summary>Nothing: the worker serves every request.</summary>
        None,

        /// <summary>Small reads and writes, whatever the host must wait for.</summary>
        Any,

        /// <summary>Small reads and writes the host can do without waiting for the storage device (RWF_NOWAIT).</summary>
        Cached,
    }

    /// <summary>Creates the device over <paramref name="backend"/>.</summary>
    /// <exception cref="ArgumentException">The options are invalid (queue size, serial).</exception>
    public VirtioBlockDevice(IBlockBackend backend, VirtioBlockOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        options ??= new VirtioBlockOptions();
        if (options.QueueSize < 4 || (options.QueueSize & (options.QueueSize - 1)) != 0)
        {
            throw new ArgumentException($"QueueSize {options.QueueSize} must be a power of two of at least 4.", nameof(options));
        }

        if (options.QueueCount is < 1 or > MaxQueueCount)
        {
            throw new ArgumentException($"QueueCount {options.QueueCount} must be between 1 and {MaxQueueCount}.", nameof(options));
        }

        byte[] serial = Encoding.ASCII.GetBytes(options.Serial ?? string.Empty);
        if (serial.Length > IdLength)
        {
            throw new ArgumentException($"Serial '{options.Serial}' is longer than {IdLength} ASCII characters.", nameof(options));
        }

        serial.CopyTo(_id, 0);
        _backend = backend;
        IsReadOnly = options.ReadOnly || backend.IsReadOnly;
        _bytes = options.BytesPerSecond is long b ? new TokenBucket(b) : null;
        _ops = options.OperationsPerSecond is long o ? new TokenBucket(o) : null;
        _workers = new VirtqueueWorker[options.QueueCount];
        _inlineState = new InlineState?[options.QueueCount];
        for (int q = 0; q < _workers.Length; q++)
        {
            int index = q;
            _workers[q] = AddWorker(context => DrainAsync(context, index), index);
        }

        QueueMaxSizes = [.. Enumerable.Repeat(options.QueueSize, options.QueueCount)];
        DeviceFeatures = FeatureSegMax | FeatureBlockSize | FeatureFlush | (IsReadOnly ? FeatureReadOnly : FeatureDiscard | FeatureWriteZeroes)
            | (options.QueueCount > 1 ? FeatureMultiQueue : 0);
        _config = BuildConfig(backend.Capacity, options.QueueSize, options.QueueCount);
        _inline = options.Inline switch
        {
            VirtioBlockInline.Never => InlineMode.None,
            VirtioBlockInline.Always => backend is IVectoredBlockBackend ? InlineMode.Any : InlineMode.None,
            _ => backend switch
            {
                IVectoredBlockBackend { IsInMemory: true } => InlineMode.Any,
                IVectoredBlockBackend when OperatingSystem.IsLinux() => InlineMode.Cached,
                _ => InlineMode.None,
            },
        };
    }

    /// <summary>
    /// Whether small reads and writes may be served on the notifying thread (<see cref="VirtioBlockOptions.Inline"/>
    /// resolved for this backend). With <see cref="VirtioBlockInline.Automatic"/> and an image on a disk file system,
    /// only those the host can do from its page cache are (see <see cref="VirtioBlockInline.Automatic"/>).
    /// </summary>
    public bool ServesInline => _inline != InlineMode.None;

    /// <summary>
    /// When writes the file refuses RWF_NOWAIT for are served on the notifying thread (<see cref="VirtioBlockInline.Automatic"/>
    /// on a disk file system): while they stay fast.
    /// </summary>
    internal InlineWritePolicy InlineWrites { get; set; } = new();

    /// <summary>
    /// Requests served on the notifying thread, notifications that left a request to the worker, and notifications that
    /// found the worker busy (all theirs went to it), over all queues and activations (tests and benchmarks; read while the device is quiet, the counts are exact).
    /// </summary>
    internal (long Served, long LeftToWorker, long WorkerBusy) InlineCounts
    {
        get
        {
            long served = 0, left = 0;
            foreach (var state in _inlineState)
            {
                served += state?.Served ?? 0;
                left += state?.LeftToWorker ?? 0;
            }

            return (served, left, Interlocked.Read(ref _notifiedWhileWorkerBusy));
        }
    }

    /// <summary>Whether requests served inline must be ones the host does without waiting for the storage device (RWF_NOWAIT).</summary>
    internal bool ServesInlineOnlyFromCache => _inline == InlineMode.Cached;

    /// <summary>Tests: serve inline only what the host does without waiting, as on a disk file system, wherever the image is (tmpfs too). Call before the driver starts.</summary>
    internal void ServeInlineOnlyFromCache() => _inline = InlineMode.Cached;

    /// <summary>Whether the guest sees the disk read-only.</summary>
    public bool IsReadOnly { get; }

    /// <summary>The backend.</summary>
    public IBlockBackend Backend => _backend;

    /// <inheritdoc />
    public override VirtioDeviceType DeviceType => VirtioDeviceType.Block;

    /// <inheritdoc />
    public override ulong DeviceFeatures { get; }

    /// <inheritdoc />
    public override IReadOnlyList<ushort> QueueMaxSizes { get; }

    /// <inheritdoc />
    public override int ConfigSize => _config.Length;

    /// <summary>Whether requests are being served right now (for tests and orderly shutdown).</summary>
    internal bool IsBusy => _workers.Any(w => w.IsBusy);

    /// <inheritdoc />
    public override void ReadConfig(int offset, Span<byte> data) => _config.AsSpan(offset, data.Length).CopyTo(data);

    /// <inheritdoc />
    public override void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        // Only the writeback byte is writable, and only with CONFIG_WCE, which is not offered.
    }

    /// <summary>Flushes the backend, so the image holds every write the guest saw completed before the snapshot.</summary>
    /// <exception cref="IOException">The flush failed.</exception>
    public override async ValueTask QuiescedAsync(CancellationToken cancellationToken)
    {
        if (!_backend.IsReadOnly)
        {
            await _backend.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The device's part of a snapshot section: <c>virtio-blk</c>.</summary>
    public string StateName => "virtio-blk";

    /// <summary>The layout <see cref="SaveState"/> writes: 2 (version 1, without the queue count, is still read as one queue).</summary>
    public int StateVersion => 2;

    /// <summary>Writes the disk's description as the guest saw it: capacity in sectors, read-only, serial, queue size, queue count.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="writer"/> is null.</exception>
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteUInt64(BinaryPrimitives.ReadUInt64LittleEndian(_config));
        writer.WriteBoolean(IsReadOnly);
        writer.WriteBytes(_id);
        writer.WriteUInt16(QueueMaxSizes[0]);
        writer.WriteUInt16((ushort)QueueMaxSizes.Count);
    }

    /// <summary>
    /// Checks that this device presents the disk the snapshot's guest saw (its configuration comes from the backend
    /// and options, so nothing else is restored).
    /// </summary>
    /// <exception cref="SnapshotFormatException">The data is corrupt, or the disk differs (size, read-only, serial, queue size); the message names the field.</exception>
    public void RestoreState(ref StateReader reader, int version)
    {
        if (version is not (1 or 2))
        {
            throw reader.UnsupportedVersion(version, StateVersion);
        }

        ulong sectors = reader.ReadUInt64("capacity");
        bool readOnly = reader.ReadBoolean("read-only");
        var id = reader.ReadBytes("serial", IdLength);
        ushort queueSize = reader.ReadUInt16("queue size");
        int queueCount = version >= 2 ? reader.ReadUInt16("queue count") : 1;
        reader.EnsureEnd();
        if (queueCount != QueueMaxSizes.Count)
        {
            throw new SnapshotFormatException(reader.Section, "queue count", $"is {queueCount}, but the disk given to the restore offers {QueueMaxSizes.Count} (VirtioBlockOptions.QueueCount; one per vCPU for WithVirtioBlock(path)).");
        }

        ulong ourSectors = BinaryPrimitives.ReadUInt64LittleEndian(_config);
        if (sectors != ourSectors)
        {
            throw new SnapshotFormatException(reader.Section, "capacity", $"is {sectors} sectors, but the disk given to the restore has {ourSectors}; restore with the same image.");
        }

        if (readOnly != IsReadOnly)
        {
            throw new SnapshotFormatException(reader.Section, "read-only", $"is {readOnly}, but the disk given to the restore is {(IsReadOnly ? "read-only" : "writable")}.");
        }

        if (!id.SequenceEqual(_id))
        {
            throw new SnapshotFormatException(reader.Section, "serial", $"is '{Encoding.ASCII.GetString(id).TrimEnd('\0')}', but the disk given to the restore has '{Encoding.ASCII.GetString(_id).TrimEnd('\0')}'.");
        }

        if (queueSize != QueueMaxSizes[0])
        {
            throw new SnapshotFormatException(reader.Section, "queue size", $"is {queueSize}, but the disk given to the restore offers {QueueMaxSizes[0]} (VirtioBlockOptions.QueueSize).");
        }
    }

    private static byte[] BuildConfig(long capacity, ushort queueSize, int queueCount)
    {
        var c = new byte[60];
        BinaryPrimitives.WriteUInt64LittleEndian(c.AsSpan(0), (ulong)(capacity / DiskImage.SectorSize));
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(12), (uint)(queueSize - 2));              // seg_max: header and status take two
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(20), DiskImage.SectorSize);                // blk_size
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(34), (ushort)queueCount);                  // num_queues
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(36), MaxZeroSectors);                      // max_discard_sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(40), 1);                                   // max_discard_seg
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(44), 1);                                   // discard_sector_alignment
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(48), MaxZeroSectors);                      // max_write_zeroes_sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(52), 1);                                   // max_write_zeroes_seg
        c[56] = 1;                                                                                   // write_zeroes_may_unmap
        return c;
    }

    private async Task DrainAsync(VirtioDeviceContext context, int queueIndex)
    {
        var queue = context.Queues[queueIndex];
        var token = context.Stopping;
        var batch = new List<DescriptorChain>(MaxInFlight);
        var running = new List<Task<uint>>(MaxInFlight);
        while (!token.IsCancellationRequested)
        {
            batch.Clear();
            while (batch.Count < MaxInFlight && queue.TryPop(out var chain))
            {
                batch.Add(chain);
            }

            if (batch.Count == 0)
            {
                return;
            }

            // Reads and writes of one batch run concurrently; anything else (FLUSH above all) waits until every
            // request before it finished, and requests complete in the order the driver made them available.
            running.Clear();
            bool parallel = batch.Count > 1 && !Limited;
            int pendingStart = 0;
            for (int i = 0; i < batch.Count; i++)
            {
                var chain = batch[i];
                if (parallel && IsDataRequest(chain))
                {
                    running.Add(Task.Run(() => ServeAsync(context, chain, token).AsTask(), token));
                    continue;
                }

                if (!await CompleteAsync(context, queue, batch, running, pendingStart).ConfigureAwait(false))
                {
                    return;
                }

                uint written = await ServeAsync(context, chain, token).ConfigureAwait(false);
                if (written == uint.MaxValue)
                {
                    return;
                }

                queue.AddUsed(chain, written);
                context.SignalUsed(queue);
                pendingStart = i + 1;
            }

            if (!await CompleteAsync(context, queue, batch, running, pendingStart).ConfigureAwait(false))
            {
                return;
            }
        }
    }

    /// <summary>Waits for <paramref name="running"/> (the requests of <paramref name="batch"/> from <paramref name="first"/> on) and puts them in the used ring in order.</summary>
    private static async ValueTask<bool> CompleteAsync(VirtioDeviceContext context, Virtqueue queue, List<DescriptorChain> batch, List<Task<uint>> running, int first)
    {
        if (running.Count == 0)
        {
            return true;
        }

        try
        {
            await Task.WhenAll(running).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return false;
        }

        for (int i = 0; i < running.Count; i++)
        {
            uint written = running[i].Result;
            if (written == uint.MaxValue)
            {
                return false;
            }

            queue.AddUsed(batch[first + i], written);
        }

        context.SignalUsed(queue);
        running.Clear();
        return true;
    }

    private static bool IsDataRequest(DescriptorChain chain)
    {
        if (chain.ReadableLength < HeaderSize || chain.WritableLength < 1)
        {
            return false;
        }

        Span<byte> type = stackalloc byte[4];
        chain.Read(0, type);
        uint t = BinaryPrimitives.ReadUInt32LittleEndian(type);
        return t is RequestIn or RequestOut;
    }

    /// <summary>Serves one request; returns the bytes written into the chain, or uint.MaxValue when the chain was rejected.</summary>
    private async ValueTask<uint> ServeAsync(VirtioDeviceContext context, DescriptorChain chain, CancellationToken token)
    {
        if (chain.ReadableLength < HeaderSize || chain.WritableLength < 1)
        {
            // No header, or no device-writable byte for the status: answering would mean writing into a
            // buffer the driver marked read-only.
            context.Fail($"block request {chain.Head} has {chain.ReadableLength} readable and {chain.WritableLength} writable bytes; it needs a {HeaderSize}-byte header and a writable status byte");
            return uint.MaxValue;
        }

        ReadHeader(context.Memory, chain, out uint type, out ulong sector);
        long statusOffset = chain.WritableLength - 1;
        long dataWritten = 0;
        byte status;
        try
        {
            switch (type)
            {
                case RequestIn:
                    (status, dataWritten) = TryReadDirect(context.Memory, chain, sector, statusOffset, out long direct)
                        ? (StatusOk, direct)
                        : await ReadAsync(chain, sector, statusOffset, token).ConfigureAwait(false);
                    break;
                case RequestOut:
                    status = TryWriteDirect(context.Memory, chain, sector)
                        ? StatusOk
                        : await WriteAsync(chain, sector, token).ConfigureAwait(false);
                    break;
                case RequestFlush:
                    await ThrottleAsync(0, token).ConfigureAwait(false);
                    await _backend.FlushAsync(token).ConfigureAwait(false);
                    status = StatusOk;
                    break;
                case RequestGetId:
                    dataWritten = chain.Write(0, _id.AsSpan(0, (int)Math.Min(IdLength, statusOffset)));
                    status = StatusOk;
                    break;
                case RequestDiscard:
                case RequestWriteZeroes:
                    status = await ZeroAsync(chain, type, token).ConfigureAwait(false);
                    break;
                default:
                    status = StatusUnsupported;
                    break;
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
            return uint.MaxValue;
        }
        catch (Exception e) when (IsHostFailure(e))
        {
            context.LogHostIoFailure(e);
            status = StatusIoError;
        }

        return Finish(chain, type, sector, status, dataWritten, statusOffset, context);
    }

    /// <summary>Writes the status byte of a served request, logs a refusal, counts it; returns the bytes written into the chain.</summary>
    private static uint Finish(DescriptorChain chain, uint type, ulong sector, byte status, long dataWritten, long statusOffset, VirtioDeviceContext context)
    {
        if (status != StatusOk)
        {
            context.LogRefusedRequest($"request {chain.Head} of type {type} at sector {sector} answered with status {status}");
        }

        StorageTelemetry.Request(
            type switch
            {
                RequestIn => "read",
                RequestOut => "write",
                RequestFlush => "flush",
                RequestGetId => "get_id",
                RequestDiscard => "discard",
                RequestWriteZeroes => "write_zeroes",
                _ => "unsupported",
            },
            status switch { StatusOk => "ok", StatusUnsupported => "unsupported", _ => "error" },
            type == RequestIn ? dataWritten : 0,
            type == RequestOut && status == StatusOk ? chain.ReadableLength - HeaderSize : 0);
        chain.Write(statusOffset, [status]);
        return (uint)(dataWritten + 1);
    }

    /// <summary>An exception of the host side of a request (the file, the image's metadata), answered with IOERR.</summary>
    private static bool IsHostFailure(Exception e) =>
        e is IOException or UnauthorizedAccessException or InvalidOperationException or ArgumentException or ObjectDisposedException;

    /// <summary>
    /// Serves what the driver just made available on the notifying thread when the device serves inline and the
    /// queue's worker is idle; otherwise, and for whatever it leaves, kicks the worker.
    /// </summary>
    protected override void OnQueueNotified(int queueIndex, VirtqueueWorker worker)
    {
        ArgumentNullException.ThrowIfNull(worker);
        if (_inline == InlineMode.None || Limited || Context is not { } context || (uint)queueIndex >= (uint)context.Queues.Count)
        {
            worker.Kick();
            return;
        }

        if (!worker.TryEnterInline())
        {
            // The worker is serving the queue (a request the notifying thread left it, or one of its own): it takes these too.
            Interlocked.Increment(ref _notifiedWhileWorkerBusy);
            worker.Kick();
            return;
        }

        bool leftWork = false;
        try
        {
            leftWork = ServeInline(context, context.Queues[queueIndex], queueIndex);
        }
#pragma warning disable CA1031 // A device bug must not reach the vCPU thread; it stops the device instead, as on the worker.
        catch (Exception e)
        {
            context.Fail($"internal error: {e.GetType().Name}: {e.Message}");
        }
#pragma warning restore CA1031
        finally
        {
            worker.ExitInline(leftWork);
        }
    }

    /// <summary>
    /// Serves the queue's small reads and writes in order, up to <see cref="InlineMaxRequests"/> and
    /// <see cref="InlineMaxBytesPerNotification"/>; stops at the first request it cannot serve here and gives it back
    /// to the queue. Returns whether it left one (for the worker).
    /// </summary>
    private bool ServeInline(VirtioDeviceContext context, Virtqueue queue, int queueIndex)
    {
        // Chain objects of this queue, refilled for every notification: the notifying thread serves a queue only while
        // it holds the queue's worker, so one set per queue is never used twice at once. A new activation brings new
        // queues, and new chain objects with them.
        var state = _inlineState[queueIndex];
        if (state is null || !ReferenceEquals(state.Queue, queue))
        {
            state = new InlineState(queue, state);
            _inlineState[queueIndex] = state;
            DropRing(queueIndex);
        }

        // One lock round trip takes what the driver made available, one more completes what was served and decides the
        // interrupt. Fewer chains than asked means the ring was empty (and, with EVENT_IDX, the device asked to be
        // notified of the next one), so the driver notifies again for anything it adds later.
        int taken = queue.TryPopMany(state.Chains);
        if (taken == 0)
        {
            return false;
        }

        long budget = InlineMaxBytesPerNotification;
        int served = 0;
        int limit = Math.Min(taken, InlineMaxRequests);
        int noBatchBefore = 0;
        while (served < taken && served < InlineMaxRequests)
        {
            var chain = state.Chains[served];
            if (chain.ReadableLength < HeaderSize || chain.WritableLength < 1)
            {
                // Malformed: the worker refuses it.
                break;
            }

            // The header is read once here, for the batch's first look and for the single path.
            ReadHeader(context.Memory, chain, out uint type, out ulong sector);
            if (served >= noBatchBefore && limit - served >= 2 && _inline == InlineMode.Cached && MayStartBatch(type))
            {
                // Two or more requests: their page-cache hits go to the kernel together, through the queue's io_uring.
                served += ServeBatch(context, state, queueIndex, served, limit, ref budget, out bool wouldWait, out noBatchBefore);
                if (wouldWait)
                {
                    break;
                }

                // What the batch left before noBatchBefore takes the single path; batching may resume there.
                continue;
            }

            if (!TryServeInline(context, chain, type, sector, budget, out state.Written[served], out long length))
            {
                break;
            }

            budget -= length;
            served++;
        }

        state.Served += served;
        bool leftWork = served < taken;
        if (leftWork)
        {
            state.LeftToWorker++;
            // The first request not served here, and everything after it, go to the worker in order.
            queue.Rewind(taken - served);
        }

        if (served > 0)
        {
            context.CompleteAndSignal(queue, state.Chains.AsSpan(0, served), state.Written.AsSpan(0, served));
        }

        // One chain more than served is asked for, so a taken chain beyond the limit tells that the ring holds more: the
        // worker takes it, so the vCPU's stay here stays bounded (and is not woken when the ring was emptied).
        return leftWork;
    }

    /// <summary>The notifying thread's reusable chain objects and answers of one queue.</summary>
    private sealed class InlineState(Virtqueue queue, InlineState? previous)
    {
        public Virtqueue Queue { get; } = queue;

        /// <summary>Requests served on the notifying thread (written only by the thread holding the queue's worker).</summary>
        public long Served = previous?.Served ?? 0;

        /// <summary>Notifications that left a request (and those behind it) to the worker.</summary>
        public long LeftToWorker = previous?.LeftToWorker ?? 0;

        public DescriptorChain[] Chains { get; } = [.. Enumerable.Range(0, InlineMaxRequests + 1).Select(_ => queue.CreateChain())];

        public uint[] Written { get; } = new uint[InlineMaxRequests + 1];
    }

    /// <summary>
    /// Serves a read or write of at most <paramref name="budget"/> data bytes (what is left of
    /// <see cref="InlineMaxBytesPerNotification"/>) through the zero-copy path, writing its status, and gives its data
    /// length; false, having changed nothing, for any other request (the worker serves it, and refuses it if it must).
    /// </summary>
    private bool TryServeInline(VirtioDeviceContext context, DescriptorChain chain, uint type, ulong sector, long budget, out uint written, out long length)
    {
        written = 0;
        length = 0;
        long statusOffset = chain.WritableLength - 1;
        length = type == RequestIn ? statusOffset : chain.ReadableLength - HeaderSize;
        if (type is not (RequestIn or RequestOut) || length > budget)
        {
            return false;
        }

        bool write = type == RequestOut;
        var mode = _inline == InlineMode.Cached ? HostWait.None : HostWait.Any;
        long started = 0;
        if (mode == HostWait.None && _backend is IVectoredBlockBackend vectored && !vectored.MayTransferWithoutWaiting(write))
        {
            // The image's file refused RWF_NOWAIT in this direction (ext4's buffered writes, for one). A read goes to the
            // worker; a write is served here as a plain write while the image's inline writes stay fast (InlineWrites).
            // The clock read that checks the back-off also starts the write's timing (a clock read is a sizeable part
            // of a 4 KiB write's cost beside the page-cache copy).
            if (!write || !InlineWrites.TryStart(out started))
            {
                return false;
            }

            mode = HostWait.DataOnly;
        }

        byte status = StatusOk;
        long dataWritten = 0;
        try
        {
            if (write ? !TryWriteDirect(context.Memory, chain, sector, mode) : !TryReadDirect(context.Memory, chain, sector, statusOffset, out dataWritten, mode == HostWait.None))
            {
                return false;
            }
        }
        catch (Exception e) when (IsHostFailure(e))
        {
            context.LogHostIoFailure(e);
            status = StatusIoError;
            dataWritten = 0;
        }

        finally
        {
            if (mode == HostWait.DataOnly)
            {
                InlineWrites.Record(started);
            }
        }

        written = Finish(chain, type, sector, status, dataWritten, statusOffset, context);
        return true;
    }

    /// <summary>
    /// Reads the request header's type and sector, straight from host memory when the first buffer holds it whole
    /// (the usual layout), else through the chain. Each field is read from guest memory once.
    /// </summary>
    private static void ReadHeader(IGuestMemory memory, DescriptorChain chain, out uint type, out ulong sector)
    {
        var (address, size, writable) = chain.GetBuffer(0);
        if (!writable && size >= HeaderSize && memory.TryGetSpan(address, HeaderSize, forWrite: false, out Span<byte> header))
        {
            type = BinaryPrimitives.ReadUInt32LittleEndian(header);
            sector = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
            return;
        }

        Span<byte> copy = stackalloc byte[HeaderSize];
        chain.Read(0, copy);
        type = BinaryPrimitives.ReadUInt32LittleEndian(copy);
        sector = BinaryPrimitives.ReadUInt64LittleEndian(copy[8..]);
    }

    /// <summary>What a direct transfer on the notifying thread may wait for.</summary>
    private enum HostWait
    {
        /// <summary>Whatever the host waits for (the image is in host memory, or <see cref="VirtioBlockInline.Always"/>; also the worker).</summary>
        Any,

        /// <summary>Nothing: RWF_NOWAIT, image metadata in memory, the image's lock free.</summary>
        None,

        /// <summary>The data's file (a plain write into the page cache), but not image metadata or the image's lock.</summary>
        DataOnly,
    }

    private bool InBounds(ulong sector, long length)
    {
        ulong sectors = (ulong)(_backend.Capacity / DiskImage.SectorSize);
        ulong count = (ulong)length / DiskImage.SectorSize;
        return length % DiskImage.SectorSize == 0 && sector <= sectors && count <= sectors - sector;
    }

    /// <summary>
    /// The zero-copy path of an IN request: the guest's buffers go straight to the backend's vectored read
    /// (preadv on a file). False when it does not apply (no vectored backend, throttling, a buffer that is not one
    /// span of RAM, out of bounds): the copying path then serves the request and reports any error.
    /// </summary>
    private bool TryReadDirect(IGuestMemory memory, DescriptorChain chain, ulong sector, long length, out long done, bool noWait = false)
    {
        done = 0;
        if (_backend is not IVectoredBlockBackend vectored || Limited || length == 0 || !InBounds(sector, length))
        {
            return false;
        }

        HostBuffer[]? rented = null;
        Span<HostBuffer> buffers = chain.DescriptorCount <= SmallChain ? stackalloc HostBuffer[SmallChain] : (rented = ArrayPool<HostBuffer>.Shared.Rent(chain.DescriptorCount));
        try
        {
            if (!TryGetHostBuffers(memory, chain, writable: true, 0, length, buffers, out int count))
            {
                return false;
            }

            if (noWait)
            {
                if (!vectored.TryVectorNoWait((long)sector * DiskImage.SectorSize, buffers[..count], write: false))
                {
                    return false;
                }
            }
            else
            {
                vectored.ReadVector((long)sector * DiskImage.SectorSize, buffers[..count]);
            }
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<HostBuffer>.Shared.Return(rented);
            }
        }

        done = length;
        return true;
    }

    /// <summary>The zero-copy path of an OUT request (pwritev from the guest's buffers); see <see cref="TryReadDirect"/>.</summary>
    private bool TryWriteDirect(IGuestMemory memory, DescriptorChain chain, ulong sector, HostWait mode = HostWait.Any)
    {
        long length = chain.ReadableLength - HeaderSize;
        if (_backend is not IVectoredBlockBackend vectored || IsReadOnly || Limited || length <= 0 || !InBounds(sector, length))
        {
            return false;
        }

        HostBuffer[]? rented = null;
        Span<HostBuffer> buffers = chain.DescriptorCount <= SmallChain ? stackalloc HostBuffer[SmallChain] : (rented = ArrayPool<HostBuffer>.Shared.Rent(chain.DescriptorCount));
        try
        {
            if (!TryGetHostBuffers(memory, chain, writable: false, HeaderSize, length, buffers, out int count))
            {
                return false;
            }

            if (mode != HostWait.Any)
            {
                bool done = mode == HostWait.None
                    ? vectored.TryVectorNoWait((long)sector * DiskImage.SectorSize, buffers[..count], write: true)
                    : vectored.TryWriteInPlace((long)sector * DiskImage.SectorSize, buffers[..count]);
                if (!done)
                {
                    return false;
                }
            }
            else
            {
                vectored.WriteVector((long)sector * DiskImage.SectorSize, buffers[..count]);
            }
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<HostBuffer>.Shared.Return(rented);
            }
        }

        return true;
    }

    /// <summary>
    /// Host addresses of <paramref name="length"/> bytes of the chain's readable or writable part from
    /// <paramref name="skip"/> on. Guest memory stays mapped (and in place) while the VM runs, so the addresses hold
    /// for the duration of the request.
    /// </summary>
    private static unsafe bool TryGetHostBuffers(IGuestMemory memory, DescriptorChain chain, bool writable, long skip, long length, Span<HostBuffer> buffers, out int count)
    {
        count = 0;
        for (int i = 0; i < chain.DescriptorCount && length > 0; i++)
        {
            var (address, size, isWritable) = chain.GetBuffer(i);
            if (isWritable != writable)
            {
                continue;
            }

            if (skip >= size)
            {
                skip -= size;
                continue;
            }

            int take = (int)Math.Min(size - skip, length);
            if (!memory.TryGetSpan(new GuestAddress(address.Value + (ulong)skip), take, writable, out var span))
            {
                return false;
            }

            buffers[count++] = new HostBuffer((nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(span)), take);
            length -= take;
            skip = 0;
        }

        return length == 0;
    }

    private async ValueTask<(byte Status, long Written)> ReadAsync(DescriptorChain chain, ulong sector, long length, CancellationToken token)
    {
        if (!InBounds(sector, length))
        {
            return (StatusIoError, 0);
        }

        await ThrottleAsync(length, token).ConfigureAwait(false);
        long offset = (long)sector * DiskImage.SectorSize;
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkSize, Math.Max(length, 1)));
        try
        {
            long done = 0;
            while (done < length)
            {
                int n = (int)Math.Min(buffer.Length, length - done);
                await _backend.ReadAsync(offset + done, buffer.AsMemory(0, n), token).ConfigureAwait(false);
                if (chain.Write(done, buffer.AsSpan(0, n)) != n)
                {
                    return (StatusIoError, done);
                }

                done += n;
            }

            return (StatusOk, done);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async ValueTask<byte> WriteAsync(DescriptorChain chain, ulong sector, CancellationToken token)
    {
        long length = chain.ReadableLength - HeaderSize;
        if (IsReadOnly)
        {
            return StatusIoError;
        }

        if (!InBounds(sector, length))
        {
            return StatusIoError;
        }

        await ThrottleAsync(length, token).ConfigureAwait(false);
        long offset = (long)sector * DiskImage.SectorSize;
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkSize, Math.Max(length, 1)));
        try
        {
            long done = 0;
            while (done < length)
            {
                int n = (int)Math.Min(buffer.Length, length - done);
                if (chain.Read(HeaderSize + done, buffer.AsSpan(0, n)) != n)
                {
                    return StatusIoError;
                }

                await _backend.WriteAsync(offset + done, buffer.AsMemory(0, n), token).ConfigureAwait(false);
                done += n;
            }

            return StatusOk;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async ValueTask<byte> ZeroAsync(DescriptorChain chain, uint type, CancellationToken token)
    {
        if (IsReadOnly)
        {
            return StatusIoError;
        }

        long payload = chain.ReadableLength - HeaderSize;
        if (payload != SegmentSize)
        {
            // max_discard_seg and max_write_zeroes_seg are 1.
            return StatusUnsupported;
        }

        var segment = new byte[SegmentSize];
        chain.Read(HeaderSize, segment);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(segment);
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(segment.AsSpan(8));
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(segment.AsSpan(12));
        uint allowedFlags = type == RequestWriteZeroes ? SegmentFlagUnmap : 0;
        if ((flags & ~allowedFlags) != 0)
        {
            return StatusUnsupported;
        }

        long length = (long)count * DiskImage.SectorSize;
        if (count > MaxZeroSectors || !InBounds(sector, length))
        {
            return StatusIoError;
        }

        await ThrottleAsync(0, token).ConfigureAwait(false);
        long offset = (long)sector * DiskImage.SectorSize;
        if (type == RequestDiscard)
        {
            await _backend.DiscardAsync(offset, length, token).ConfigureAwait(false);
        }
        else
        {
            await _backend.WriteZeroesAsync(offset, length, token).ConfigureAwait(false);
        }

        return StatusOk;
    }

    /// <summary>
    /// Makes the device's requests also wait for <paramref name="bytes"/> and <paramref name="operations"/>, buckets it
    /// shares with other devices (a VM's disk budget in a resource pool, or one limit over several disks), on top of
    /// its own <see cref="VirtioBlockOptions.BytesPerSecond"/> and <see cref="VirtioBlockOptions.OperationsPerSecond"/>.
    /// A limited device serves requests one at a time through a copy, so that every byte is counted.
    /// </summary>
    /// <remarks>Call it before the guest starts using the device (a VM does it when it is built).</remarks>
    /// <param name="bytes">Bytes read and written, or null.</param>
    /// <param name="operations">Requests, or null.</param>
    public void ShareLimits(TokenBucket? bytes, TokenBucket? operations)
    {
        Volatile.Write(ref _sharedBytes, bytes);
        Volatile.Write(ref _sharedOps, operations);
    }

    private bool Limited => _bytes is not null || _ops is not null || _sharedBytes is not null || _sharedOps is not null;

    /// <summary>Waits for one operation and <paramref name="bytes"/> bytes; the buckets refill during each other's waits.</summary>
    private async ValueTask ThrottleAsync(long bytes, CancellationToken token)
    {
        await WaitAsync(_ops, 1, token).ConfigureAwait(false);
        await WaitAsync(Volatile.Read(ref _sharedOps), 1, token).ConfigureAwait(false);
        if (bytes > 0)
        {
            await WaitAsync(_bytes, bytes, token).ConfigureAwait(false);
            await WaitAsync(Volatile.Read(ref _sharedBytes), bytes, token).ConfigureAwait(false);
        }

        static ValueTask WaitAsync(TokenBucket? bucket, long amount, CancellationToken token) =>
            bucket is null ? ValueTask.CompletedTask : bucket.ConsumeAsync(amount, token);
    }
}
