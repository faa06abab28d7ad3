using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Virt.Devices.Virtio;

namespace Virt.Storage;

/// <summary>
/// Batched inline service: when one notification makes several reads or writes available on an image on a disk file
/// system, their page-cache hits are submitted to the kernel together, through an io_uring of the queue, with one
/// system call for all of them instead of one preadv2/pwritev2 each.
/// </summary>
public sealed partial class VirtioBlockDevice
{
    /// <summary>Entries of a queue's ring: the most requests one notification serves inline.</summary>
    internal const int RingEntries = InlineMaxRequests;

    private static readonly Action<ILogger, string, Exception?> s_logBatchPath = LoggerMessage.Define<string>(
        LogLevel.Information, new EventId(1, "VirtioBlockBatching"), "virtio-blk inline batches of page-cache hits: {Path}");

    private readonly Lock _ringSync = new();
    private IoUring?[]? _rings;
    private string? _ringStatus;
    private bool _ringUnavailable;
    private long _ringBatches;
    private long _ringServed;
    private readonly int[] _ringRefused = new int[2];

    /// <summary>Creates a queue's ring (tests replace it to make setup fail); the ring or null, and what the device uses.</summary>
    internal Func<int, (IoUring? Ring, string Status)> RingSetup { get; set; } = static entries =>
    {
        var ring = IoUring.TryCreate(entries, out string status);
        return (ring, status);
    };

    /// <summary>Test hook: a guest byte offset for which the ring's result is replaced by EAGAIN, as if that data were not cached.</summary>
    internal Func<long, bool>? RingReportsWouldBlock { get; set; }

    /// <summary>
    /// How several page-cache hits of one notification are served: "io_uring (32 entries)" once a queue's ring was
    /// created, "preadv2 per request (...)" with the reason when none could be (the device then serves each request
    /// with its own system call, as at depth 1), null before the first notification with several requests.
    /// </summary>
    internal string? InlineBatchPath => Volatile.Read(ref _ringStatus);

    /// <summary>Batches submitted through a ring and the requests they completed (tests and benchmarks).</summary>
    internal (long Batches, long Requests) RingCounts => (Interlocked.Read(ref _ringBatches), Interlocked.Read(ref _ringServed));

    /// <summary>
    /// A new activation brought the queue new chain objects: the queue's ring of the last activation goes with the old
    /// ones (the last activation's ring is released with the device, a <see cref="SafeHandle"/>). Called by the thread
    /// holding the queue's worker, so no batch of this queue uses the ring meanwhile.
    /// </summary>
    private void DropRing(int queueIndex)
    {
        IoUring? ring;
        lock (_ringSync)
        {
            ring = _rings?[queueIndex];
            if (ring is not null)
            {
                _rings![queueIndex] = null;
            }
        }

        ring?.Dispose();
    }

    /// <summary>The queue's ring, created on first use; null when the host offers none (remembered, and said once in the log).</summary>
    private IoUring? RingFor(VirtioDeviceContext context, int queueIndex)
    {
        if (Volatile.Read(ref _ringUnavailable))
        {
            return null;
        }

        lock (_ringSync)
        {
            _rings ??= new IoUring?[_workers.Length];
            if (_rings[queueIndex] is { IsBroken: false } ring)
            {
                return ring;
            }

            if (_ringUnavailable)
            {
                return null;
            }

            var (created, status) = RingSetup(RingEntries);
            if (created is null)
            {
                _ringUnavailable = true;
                Volatile.Write(ref _ringStatus, $"preadv2 per request ({status})");
                s_logBatchPath(context.Logger, _ringStatus, null);
                return null;
            }

            _rings[queueIndex] = created;
            if (_ringStatus is null)
            {
                Volatile.Write(ref _ringStatus, status);
                s_logBatchPath(context.Logger, status, null);
            }

            return created;
        }
    }

    /// <summary>A ring whose kernel side failed: dropped for good (the device goes back to single calls), said in the log.</summary>
    private void RetireRing(VirtioDeviceContext context, IoUring ring)
    {
        lock (_ringSync)
        {
            _ringUnavailable = true;
            Volatile.Write(ref _ringStatus, "preadv2 per request (io_uring_enter failed; the ring was retired)");
            s_logBatchPath(context.Logger, _ringStatus, null);
        }

        ring.Dispose();
    }

    /// <summary>
    /// Serves the requests from <paramref name="first"/> on (before <paramref name="limit"/>) that the host can do from
    /// its page cache, as one io_uring batch, and completes them (status byte, Written) in order. Returns how many were
    /// served. <paramref name="wouldWait"/>: the next one would wait (EAGAIN or a short transfer), so it and everything
    /// after it go to the worker, as when a single preadv2(RWF_NOWAIT) fails. Otherwise the single-request path takes
    /// the requests before <paramref name="resumeBatchAt"/> (one that is no batch candidate, or whose entry failed for
    /// another reason: that path redoes it and reports the file's error), and batching may resume there.
    /// </summary>
    private int ServeBatch(VirtioDeviceContext context, InlineState state, int queueIndex, int first, int limit, ref long budget, out bool wouldWait, out int resumeBatchAt)
    {
        wouldWait = false;
        resumeBatchAt = int.MaxValue;
        if (_backend is not IVectoredBlockBackend vectored || Limited)
        {
            return 0;
        }

        if (RingFor(context, queueIndex) is not { } ring)
        {
            return 0;
        }

        bool referenced = false;
        try
        {
            ring.DangerousAddRef(ref referenced);
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }

        try
        {
            return ServeBatch(context, state, vectored, ring, first, limit, ref budget, out wouldWait, out resumeBatchAt);
        }
        finally
        {
            if (referenced)
            {
                ring.DangerousRelease();
            }
        }
    }

    private int ServeBatch(VirtioDeviceContext context, InlineState state, IVectoredBlockBackend vectored, IoUring ring, int first, int limit, ref long budget, out bool wouldWait, out int resumeBatchAt)
    {
        wouldWait = false;
        resumeBatchAt = int.MaxValue;
        int count = Math.Min(limit - first, ring.Capacity);
        Span<long> lengths = stackalloc long[RingEntries];
        Span<ulong> sectors = stackalloc ulong[RingEntries];
        ulong writes = 0;
        Span<int> results = stackalloc int[RingEntries];
        Span<HostBuffer> buffers = stackalloc HostBuffer[SmallChain];
        if (!vectored.TryEnterFileMapping())
        {
            // qcow2's lock is taken (the worker of another queue, a flush): the single path fails the same way and
            // hands the requests to the worker.
            resumeBatchAt = first + 1;
            return 0;
        }

        int k = 0;
        SafeFileHandle? file = null;
        bool fileReferenced = false;
        bool stoppedAtNonCandidate = false;
        ulong forcedWouldBlock = 0;
        long pending = budget;
        try
        {
            for (; k < count; k++)
            {
                if (!TryAddToBatch(context, state.Chains[first + k], vectored, ring, pending, buffers, ref file, ref fileReferenced, out lengths[k], out sectors[k], out bool write, out bool forced))
                {
                    stoppedAtNonCandidate = true;
                    break;
                }

                forcedWouldBlock |= forced ? 1UL << k : 0;
                writes |= write ? 1UL << k : 0;
                pending -= lengths[k];
            }

            if (k < 2)
            {
                // Nothing to gain over a single call: drop what was added, the single path serves it.
                ring.Discard();
                resumeBatchAt = first + k + 1;
                return 0;
            }

            if (!ring.SubmitAndWait(results))
            {
                RetireRing(context, ring);
                resumeBatchAt = int.MaxValue;
                return 0;
            }
        }
        catch (Exception e) when (IsHostFailure(e))
        {
            // A damaged qcow2 entry or a disposed backend while collecting: nothing was submitted; the single path meets
            // the same and answers IOERR.
            ring.Discard();
            resumeBatchAt = first + k + 1;
            return 0;
        }
        finally
        {
            if (fileReferenced)
            {
                file!.DangerousRelease();
            }

            vectored.ExitFileMapping();
        }

        Interlocked.Increment(ref _ringBatches);
        for (int i = 0; i < k; i++)
        {
            if ((forcedWouldBlock & (1UL << i)) != 0)
            {
                results[i] = -Interop.Libc.EAGAIN;
            }
        }

        int done = 0;
        for (; done < k; done++)
        {
            var chain = state.Chains[first + done];
            int result = results[done];
            if (result != lengths[done])
            {
                // EAGAIN (not cached), a short count (partly cached, or the end of the file), a cancellation: the worker
                // redoes this request whole, and every one after it, in order. Any other error: the single path redoes
                // it and reports the file's own verdict (EOPNOTSUPP recorded per file, EIO answered with IOERR).
                wouldWait = result >= 0 || result is -Interop.Libc.EAGAIN or -Interop.Libc.EINTR or -Interop.IoUringSys.ECANCELED;
                if (result is -Interop.Libc.EOPNOTSUPP or -Interop.Libc.EINVAL)
                {
                    // The ring refuses what preadv2/pwritev2 took on this file: that direction is not batched again.
                    Volatile.Write(ref _ringRefused[(writes >> done) & 1], 1);
                }

                resumeBatchAt = first + done + 1;
                break;
            }

            // The header as it was read when the entry was made (the guest may have changed it since).
            bool write = (writes & (1UL << done)) != 0;
            long statusOffset = chain.WritableLength - 1;
            state.Written[first + done] = Finish(chain, write ? RequestOut : RequestIn, sectors[done], StatusOk, write ? 0 : lengths[done], statusOffset, context);
            budget -= lengths[done];
        }

        if (done == k)
        {
            resumeBatchAt = stoppedAtNonCandidate ? first + k + 1 : first + k;
        }

        Interlocked.Add(ref _ringServed, done);
        return done;
    }

    /// <summary>
    /// The first look, made with the header the single path reads anyway, so a stream of requests no batch can take
    /// (ext4's writes) pays no lock and no resolution twice: a batch starts only with a read or write in a direction the
    /// file was seen to take RWF_NOWAIT for (and the ring did not refuse).
    /// </summary>
    private bool MayStartBatch(uint type)
    {
        bool write = type == RequestOut;
        return type is RequestIn or RequestOut && Volatile.Read(ref _ringRefused[write ? 1 : 0]) == 0
            && _backend is IVectoredBlockBackend vectored && vectored.MayMapToFile(write);
    }

    /// <summary>
    /// Adds <paramref name="chain"/> to the ring's batch when it is a read (or a write the file takes RWF_NOWAIT for) that
    /// fits <paramref name="budget"/>, whose buffers are guest RAM (validated as on the single path) and whose range is
    /// one range of the batch's file; false, adding nothing, for anything else.
    /// </summary>
    private bool TryAddToBatch(VirtioDeviceContext context, DescriptorChain chain, IVectoredBlockBackend vectored, IoUring ring, long budget, Span<HostBuffer> buffers, ref SafeFileHandle? file, ref bool fileReferenced, out long length, out ulong sector, out bool write, out bool forceWouldBlock)
    {
        length = 0;
        sector = 0;
        write = false;
        forceWouldBlock = false;
        if (chain.ReadableLength < HeaderSize || chain.WritableLength < 1 || chain.DescriptorCount > SmallChain)
        {
            return false;
        }

        ReadHeader(context.Memory, chain, out uint type, out sector);
        write = type == RequestOut;
        length = write ? chain.ReadableLength - HeaderSize : chain.WritableLength - 1;
        if (type is not (RequestIn or RequestOut) || length <= 0 || length > budget || (write && IsReadOnly) || !InBounds(sector, length)
            || Volatile.Read(ref _ringRefused[write ? 1 : 0]) != 0)
        {
            return false;
        }

        // The same resolution as the single path: every data byte in guest RAM (readable, or writable for a read), so an
        // entry names no host memory outside the guest's.
        if (!TryGetHostBuffers(context.Memory, chain, writable: !write, write ? HeaderSize : 0, length, buffers, out int count)
            || count > IoUring.MaxVectorsPerEntry)
        {
            return false;
        }

        long offset = (long)sector * DiskImage.SectorSize;
        if (!vectored.TryMapToFile(offset, length, write, out var target, out long fileOffset) || (file is not null && target != file))
        {
            return false;
        }

        if (file is null)
        {
            // The file stays open until the batch completed, whatever another thread disposes meanwhile.
            target.DangerousAddRef(ref fileReferenced);
            file = target;
        }

        if (!ring.TryAdd(write, (int)file.DangerousGetHandle(), fileOffset, buffers[..count], Interop.Libc.RWF_NOWAIT))
        {
            return false;
        }

        // Test hook: the entry still runs; its result is then taken as EAGAIN.
        forceWouldBlock = RingReportsWouldBlock is { } hook && hook(offset);
        return true;
    }
}
