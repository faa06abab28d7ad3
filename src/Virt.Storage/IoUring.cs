using System.Runtime.InteropServices;
using static Virt.Storage.Interop.IoUringSys;

namespace Virt.Storage;

/// <summary>
/// One io_uring instance (Linux 5.18 or later) used to move a batch of reads or writes between files and host buffers
/// with one system call: entries are added with <see cref="TryAdd"/>, then <see cref="SubmitAndWait"/> submits them all
/// and waits for every completion. No SQPOLL thread, no registered files or buffers: the ring is a plain batch of
/// preadv2/pwritev2 calls.
/// </summary>
/// <remarks>
/// <para>
/// Threading: one user at a time (the virtio-blk queue's notifying thread while it holds the queue's worker). Users
/// hold a reference (<see cref="SafeHandle.DangerousAddRef"/>) for the length of a batch, so a <see cref="SafeHandle.Dispose()"/>
/// from another thread (a device reset) unmaps the rings only after the batch ended.
/// </para>
/// <para>
/// Every value the kernel returns (ring sizes, offsets, masks, completion tags and results) is checked before it is
/// used; a ring whose kernel side misbehaves is retired (<see cref="IsBroken"/>) and its users go back to single calls.
/// </para>
/// </remarks>
internal sealed unsafe class IoUring : SafeHandle
{
    /// <summary>Most host buffers one entry describes (a READV/WRITEV iovec array in the ring's own memory).</summary>
    public const int MaxVectorsPerEntry = 8;

    /// <summary>Upper bounds on what the kernel may report for a small ring, so a bad value cannot make us map or walk much.</summary>
    private const uint MaxRingEntries = 4096;
    private const long MaxRingBytes = 1 << 20;

    private byte* _sqRing;
    private nuint _sqRingSize;
    private byte* _cqRing;
    private nuint _cqRingSize;
    private byte* _sqes;
    private nuint _sqesSize;
    private uint* _sqHead;
    private uint* _sqTail;
    private uint* _sqArray;
    private uint* _cqHead;
    private uint* _cqTail;
    private byte* _cqes;
    private uint _sqMask;
    private uint _cqMask;
    private uint _cqEntries;
    private Interop.Libc.IoVec* _iovecs;
    private long* _expected;
    private int _count;

    public IoUring()
        : base(-1, ownsHandle: true)
    {
    }

    /// <summary>Entries one batch may hold.</summary>
    public int Capacity { get; private set; }

    /// <summary>Entries added since the last <see cref="SubmitAndWait"/>.</summary>
    public int Count => _count;

    /// <summary>The kernel side failed in a way that leaves the ring unusable; it takes no more batches.</summary>
    public bool IsBroken { get; private set; }

    /// <inheritdoc />
    public override bool IsInvalid => handle < 0;

    /// <summary>
    /// Creates a ring of at least <paramref name="entries"/> entries; null when the host offers none (not x86-64 Linux,
    /// <c>ENOSYS</c>, <c>EPERM</c> from seccomp or <c>/proc/sys/kernel/io_uring_disabled</c>, a kernel before 5.18,
    /// values that fail validation), with <paramref name="status"/> saying which.
    /// </summary>
    public static IoUring? TryCreate(int entries, out string status)
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            status = "io_uring: only on x86-64 Linux";
            return null;
        }

        if (entries is < 1 or > (int)MaxRingEntries)
        {
            throw new ArgumentOutOfRangeException(nameof(entries));
        }

        var p = default(Params);
        p.Flags = IORING_SETUP_SUBMIT_ALL;
        long fd = Syscall(SYS_io_uring_setup, entries, (nint)(&p), 0, 0, 0, 0);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            status = $"io_uring_setup failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}{(errno == Interop.Libc.EINVAL ? ", a kernel before 5.18" : string.Empty)})";
            return null;
        }

        var ring = new IoUring();
        ring.SetHandle((nint)fd);
        try
        {
            string? problem = ring.Map(in p, (uint)entries);
            if (problem is not null)
            {
                ring.Dispose();
                status = "io_uring: " + problem;
                return null;
            }
        }
        catch
        {
            ring.Dispose();
            throw;
        }

        status = $"io_uring ({ring.Capacity} entries)";
        return ring;
    }

    /// <summary>Validates the kernel's answer to io_uring_setup and maps the rings; the reason it refuses, or null.</summary>
    private string? Map(in Params p, uint requested)
    {
        if (!IsPowerOfTwo(p.SqEntries) || p.SqEntries < requested || p.SqEntries > MaxRingEntries)
        {
            return $"the kernel reported {p.SqEntries} submission entries for {requested} asked";
        }

        if (!IsPowerOfTwo(p.CqEntries) || p.CqEntries < p.SqEntries || p.CqEntries > 2 * MaxRingEntries)
        {
            return $"the kernel reported {p.CqEntries} completion entries for {p.SqEntries} submission entries";
        }

        // The layout liburing assumes: each field a 32-bit word before the array (SQ) or the entries (CQ).
        var sq = p.SqOff;
        long sqSize = sq.Array + ((long)p.SqEntries * 4);
        if (!WordsBefore(sq.Array, sq.Head, sq.Tail, sq.RingMask, sq.RingEntries, sq.Flags, sq.Dropped) || sq.Array % 4 != 0 || sqSize > MaxRingBytes)
        {
            return "the kernel reported submission ring offsets outside the ring";
        }

        var cq = p.CqOff;
        long cqSize = cq.Cqes + ((long)p.CqEntries * CqeSize);
        if (!WordsBefore(cq.Cqes, cq.Head, cq.Tail, cq.RingMask, cq.RingEntries, cq.Overflow) || cq.Cqes % 8 != 0 || cqSize > MaxRingBytes)
        {
            return "the kernel reported completion ring offsets outside the ring";
        }

        int fd = (int)handle;
        const int Prot = Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE;
        const int Flags = Interop.Libc.MAP_SHARED | MAP_POPULATE;
        _sqRingSize = (nuint)sqSize;
        _sqRing = (byte*)MmapOrNull(MmapFd(0, _sqRingSize, Prot, Flags, fd, IORING_OFF_SQ_RING));
        _cqRingSize = (nuint)cqSize;
        _cqRing = (byte*)MmapOrNull(MmapFd(0, _cqRingSize, Prot, Flags, fd, IORING_OFF_CQ_RING));
        _sqesSize = (nuint)((long)p.SqEntries * SqeSize);
        _sqes = (byte*)MmapOrNull(MmapFd(0, _sqesSize, Prot, Flags, fd, IORING_OFF_SQES));
        if (_sqRing is null || _cqRing is null || _sqes is null)
        {
            int errno = Marshal.GetLastPInvokeError();
            return $"mmap of the rings failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";
        }

        _sqHead = (uint*)(_sqRing + sq.Head);
        _sqTail = (uint*)(_sqRing + sq.Tail);
        _sqArray = (uint*)(_sqRing + sq.Array);
        _cqHead = (uint*)(_cqRing + cq.Head);
        _cqTail = (uint*)(_cqRing + cq.Tail);
        _cqes = _cqRing + cq.Cqes;
        _sqMask = p.SqEntries - 1;
        _cqMask = p.CqEntries - 1;
        _cqEntries = p.CqEntries;
        if (*(uint*)(_sqRing + sq.RingMask) != _sqMask || *(uint*)(_sqRing + sq.RingEntries) != p.SqEntries
            || *(uint*)(_cqRing + cq.RingMask) != _cqMask || *(uint*)(_cqRing + cq.RingEntries) != p.CqEntries
            || Volatile.Read(ref *_sqHead) != Volatile.Read(ref *_sqTail) || Volatile.Read(ref *_cqHead) != Volatile.Read(ref *_cqTail))
        {
            return "the mapped rings disagree with io_uring_setup's answer";
        }

        // A batch is at most Capacity entries, so the completion ring (at least as large) never overflows.
        Capacity = (int)requested;
        _iovecs = (Interop.Libc.IoVec*)NativeMemory.AllocZeroed((nuint)(Capacity * MaxVectorsPerEntry), (nuint)sizeof(Interop.Libc.IoVec));
        _expected = (long*)NativeMemory.AllocZeroed((nuint)Capacity, sizeof(long));
        return null;

        static bool IsPowerOfTwo(uint v) => v != 0 && (v & (v - 1)) == 0;

        static nint MmapOrNull(nint address) => address == -1 ? 0 : address;
    }

    /// <summary>Whether every offset is a 32-bit-aligned word that ends at or before <paramref name="end"/>.</summary>
    private static bool WordsBefore(uint end, params ReadOnlySpan<uint> offsets)
    {
        foreach (uint o in offsets)
        {
            if (o % 4 != 0 || (long)o + 4 > end)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Adds a read (into <paramref name="buffers"/>) or write (from them) of the file <paramref name="fd"/> at
    /// <paramref name="offset"/> with <paramref name="rwFlags"/> (RWF_NOWAIT) to the batch; its result is at index
    /// <see cref="Count"/> before the call. False, adding nothing, when the batch is full or the buffers too many.
    /// </summary>
    /// <remarks>
    /// The caller's duties: every buffer is host memory that stays mapped and writable (for a read) until
    /// <see cref="SubmitAndWait"/> returns (validated guest RAM), and <paramref name="fd"/> stays open until then.
    /// </remarks>
    public bool TryAdd(bool write, int fd, long offset, ReadOnlySpan<HostBuffer> buffers, int rwFlags)
    {
        if (_count >= Capacity || buffers.Length is 0 or > MaxVectorsPerEntry || offset < 0)
        {
            return false;
        }

        int index = _count;
        long total = 0;
        var iov = _iovecs + (index * MaxVectorsPerEntry);
        for (int i = 0; i < buffers.Length; i++)
        {
            iov[i] = new Interop.Libc.IoVec { Base = buffers[i].Address, Length = buffers[i].Length };
            total += buffers[i].Length;
        }

        // SAFETY: the tail slot is ours: everything submitted before was consumed (SubmitAndWait checks the SQ head),
        // and slot = (tail + index) & mask stays inside the SQE array the kernel sized.
        uint slot = (Volatile.Read(ref *_sqTail) + (uint)index) & _sqMask;
        byte* sqe = _sqes + ((long)slot * SqeSize);
        new Span<byte>(sqe, SqeSize).Clear();
        bool single = buffers.Length == 1;
        sqe[0] = write ? (single ? IORING_OP_WRITE : IORING_OP_WRITEV) : (single ? IORING_OP_READ : IORING_OP_READV);
        *(int*)(sqe + 4) = fd;
        *(long*)(sqe + 8) = offset;
        *(ulong*)(sqe + 16) = single ? (ulong)buffers[0].Address : (ulong)iov;
        *(uint*)(sqe + 24) = single ? (uint)buffers[0].Length : (uint)buffers.Length;
        *(int*)(sqe + 28) = rwFlags;
        *(ulong*)(sqe + 32) = (ulong)index;
        _sqArray[slot] = slot;
        _expected[index] = total;
        _count++;
        return true;
    }

    /// <summary>Forgets the entries added since the last submission; the kernel never saw them (the tail did not move).</summary>
    public void Discard() => _count = 0;

    /// <summary>
    /// Submits the batch with one io_uring_enter and waits for all of it; <paramref name="results"/>[i] is entry i's
    /// result: its full length when it moved everything, otherwise a short count or a negative errno (-EAGAIN: it would
    /// wait). False when the ring failed (<see cref="IsBroken"/>): then the results mean nothing and every entry must
    /// be redone another way. Either way the batch is empty afterwards.
    /// </summary>
    public bool SubmitAndWait(Span<int> results)
    {
        int n = _count;
        _count = 0;
        if (n == 0)
        {
            return true;
        }

        if (IsBroken || results.Length < n)
        {
            return false;
        }

        results[..n].Fill(int.MinValue);
        uint tail = Volatile.Read(ref *_sqTail);
        if (Volatile.Read(ref *_sqHead) != tail)
        {
            return Break();
        }

        // The entries' stores must be visible before the tail that publishes them (a release store).
        Volatile.Write(ref *_sqTail, tail + (uint)n);
        int submitted = 0;
        int reaped = 0;
        int idleRounds = 0;
        while (reaped < n)
        {
            long r = Syscall(SYS_io_uring_enter, handle, n - submitted, n - reaped, (nint)IORING_ENTER_GETEVENTS, 0, 0);
            if (r < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                // A signal (a vCPU kick) interrupts the wait; a full completion backlog asks to reap first.
                if (errno is not (Interop.Libc.EINTR or Interop.Libc.EAGAIN or EBUSY))
                {
                    return Break();
                }
            }
            else
            {
                submitted += (int)Math.Min(r, n - submitted);
            }

            if (++idleRounds > 1000)
            {
                return Break();
            }

            int got = Reap(results[..n]);
            if (got < 0)
            {
                return Break();
            }

            reaped += got;
            if (got > 0 || r > 0)
            {
                idleRounds = 0;
            }
        }

        // Every entry consumed (SUBMIT_ALL) and completed; a head that disagrees means the kernel did something else.
        // (With RWF_NOWAIT on every entry, each completes during the submission, never on a kernel worker, so a ring
        // retired after it submitted leaves no transfer running into the buffers.)
        return Volatile.Read(ref *_sqHead) == tail + (uint)n || Break();
    }

    /// <summary>Takes the completions that are there; how many, or -1 for one that is not ours.</summary>
    private int Reap(Span<int> results)
    {
        uint head = *_cqHead;
        uint tail = Volatile.Read(ref *_cqTail);
        if (tail - head > _cqEntries)
        {
            return -1;
        }

        int taken = 0;
        for (; head != tail; head++)
        {
            byte* cqe = _cqes + ((long)(head & _cqMask) * CqeSize);
            ulong tag = *(ulong*)cqe;
            int res = *(int*)(cqe + 8);
            if (tag >= (ulong)results.Length || results[(int)tag] != int.MinValue)
            {
                return -1;
            }

            // A count above what the entry asked for is as wrong as a foreign tag: treat it as a short transfer.
            results[(int)tag] = res > _expected[tag] ? -1 : res;
            taken++;
        }

        Volatile.Write(ref *_cqHead, head);
        return taken;
    }

    private bool Break()
    {
        IsBroken = true;
        return false;
    }

    /// <inheritdoc />
    protected override bool ReleaseHandle()
    {
        if (_sqes is not null)
        {
            Interop.Libc.Munmap((nint)_sqes, _sqesSize);
        }

        if (_cqRing is not null)
        {
            Interop.Libc.Munmap((nint)_cqRing, _cqRingSize);
        }

        if (_sqRing is not null)
        {
            Interop.Libc.Munmap((nint)_sqRing, _sqRingSize);
        }

        NativeMemory.Free(_iovecs);
        NativeMemory.Free(_expected);
        _sqes = _cqRing = _sqRing = null;
        _iovecs = null;
        _expected = null;
        return Interop.IoUringSys.Close((int)handle) == 0;
    }
}
