using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

/// <summary>
/// Reads and writes of an image file on tmpfs through a shared mapping of the file: a memory copy between guest
/// memory and the file's pages instead of a <c>pread</c>/<c>pwrite</c> system call, with the system calls as the
/// fallback for whatever the mapping may not touch. Thread-safe.
/// </summary>
/// <remarks>
/// <para>
/// Touching a page of a shared file mapping raises <c>SIGBUS</c>, which would end the host process, when the page
/// lies past the end of the file (another process truncated it) or when the page is a hole the file system cannot
/// fill (tmpfs full). The mapping is therefore used only under three guarantees:
/// </para>
/// <list type="bullet">
/// <item>The file lives on tmpfs (fstatfs), so its pages are memory: no storage device to wait for or fail, and no
/// durability to lose (fdatasync of a tmpfs file does nothing, through either path).</item>
/// <item>The process holds a lease on the file (F_SETLEASE: a write lease for a writable image, which needs the file
/// open nowhere else; a read lease for a read-only one, which needs it open for writing nowhere). Another process
/// that opens the file (for writing, with a read lease) or truncates it then waits until the lease is released. The
/// lease is set without a signal owner, and a poller thread checks every <see cref="PollInterval"/> whether a break
/// is pending; it then stops the mapping (waiting for copies under way), unmaps it and releases the lease, after
/// which the file is served by system calls only.</item>
/// <item>Only pages known to be allocated are copied: a bitmap learns allocated ranges with
/// <c>lseek(SEEK_HOLE)</c> after a transfer that fell back to a system call, and forgets a range (waiting for copies
/// under way) before this process punches a hole in it. A read of a hole therefore never allocates a page, and a
/// write never fills a hole through the mapping.</item>
/// </list>
/// <para>
/// What is left is the kernel's own bound on a lease break, /proc/sys/fs/lease-break-time (45 s by default): a host
/// process stopped (SIGSTOP, a debugger) for longer while another truncates the image may fault when it resumes. And
/// a tmpfs page swapped out and unreadable from swap faults as guest RAM would.
/// </para>
/// </remarks>
internal sealed unsafe class ImageMapping : IDisposable
{
    /// <summary>How often the poller checks the leases of all mapped images for a pending break.</summary>
    internal static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(10);

    /// <summary>Largest range of a file mapped (address space, not memory); the rest is served by system calls.</summary>
    private const long MaxMappedLength = 256L << 30;

    /// <summary>Pages per bitmap chunk (2^15: 512 words; 128 MiB of file with 4 KiB pages).</summary>
    private const int ChunkPageBits = 15;

    private static readonly List<ImageMapping> s_polled = [];
    private static Thread? s_poller;

    private readonly SafeFileHandle _handle;
    private readonly bool _writable;
    private readonly long _limit;
    private readonly int _pageShift = System.Numerics.BitOperations.Log2((uint)Environment.SystemPageSize);
    private readonly Lock _sync = new();

    /// <summary>0 until the first transfer tried to map the file; 1 mapped; 2 not mapped (never, or no longer).</summary>
    private int _state;
    private nint _base;
    private long _length;
    private short _leaseType;
    private long[]?[] _chunks = [];

    /// <summary>Copies through the mapping under way; <see cref="Stop"/> waits for them.</summary>
    private int _users;
    private long _copies;

    /// <summary>Creates the mapping's state for <paramref name="handle"/>; the file is mapped on the first transfer.</summary>
    /// <param name="handle">The image file (kept open by its owner until after <see cref="Dispose"/>).</param>
    /// <param name="writable">Whether the handle is open for writing (a write lease and a writable mapping).</param>
    /// <param name="limit">How much of the file the mapping may cover (at most 256 GiB are mapped).</param>
    public ImageMapping(SafeFileHandle handle, bool writable, long limit)
    {
        _handle = handle;
        _writable = writable;
        _limit = Math.Min(limit, MaxMappedLength);
    }

    /// <summary>Transfers served by a copy through the mapping (tests; not exact under concurrency).</summary>
    internal long Copies => _copies;

    /// <summary>Whether the file is mapped now (tests).</summary>
    internal bool IsMapped => Volatile.Read(ref _state) == 1;

    /// <summary>Reads into <paramref name="buffers"/> from <paramref name="offset"/>: a copy from the mapping when it may, else preadv.</summary>
    /// <exception cref="IOException">The file failed.</exception>
    public void ReadVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (TryCopy(offset, buffers, write: false))
        {
            return;
        }

        HostIo.ReadVector(_handle, offset, buffers);
        Learn(offset, buffers);
    }

    /// <summary>Writes <paramref name="buffers"/> at <paramref name="offset"/>: a copy into the mapping when it may, else pwritev.</summary>
    /// <exception cref="IOException">The file failed.</exception>
    public void WriteVector(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (TryCopy(offset, buffers, write: true))
        {
            return;
        }

        HostIo.WriteVector(_handle, offset, buffers);
        Learn(offset, buffers);
    }

    /// <summary>
    /// Punches a hole (fallocate PUNCH_HOLE | KEEP_SIZE) after forgetting the range, so no copy touches its pages
    /// once they are gone; false when the file system cannot punch (remembered in <paramref name="unsupported"/>).
    /// </summary>
    public bool TryPunchHole(long offset, long length, ref bool unsupported)
    {
        lock (_sync)
        {
            if (Volatile.Read(ref _state) == 1 && length > 0)
            {
                long first = offset >> _pageShift;
                long last = (offset + length - 1) >> _pageShift;
                for (long page = first; page <= last && page < (_length >> _pageShift); page++)
                {
                    ClearBit(page);
                }

                WaitForCopies();
            }

            return RawFileBlockBackend.TryPunchHole(_handle, offset, length, ref unsupported);
        }
    }

    /// <summary>Stops using the mapping for good (waiting for copies under way), unmaps it and releases the lease.</summary>
    public void Dispose() => Stop();

    private bool TryCopy(long offset, ReadOnlySpan<HostBuffer> buffers, bool write)
    {
        int state = Volatile.Read(ref _state);
        if (state == 0)
        {
            state = Start();
        }

        if (state != 1 || (write && !_writable))
        {
            return false;
        }

        long total = HostBuffer.Total(buffers);
        Interlocked.Increment(ref _users);
        try
        {
            // The increment comes first, so Stop either sees this copy or this copy sees Stop's state.
            if (Volatile.Read(ref _state) != 1 || offset < 0 || total <= 0 || offset > _length - total || !Allocated(offset, total))
            {
                return false;
            }

            byte* file = (byte*)_base + offset;
            foreach (var b in buffers)
            {
                var mapped = new Span<byte>(file, b.Length);
                if (write)
                {
                    b.Span.CopyTo(mapped);
                }
                else
                {
                    mapped.CopyTo(b.Span);
                }

                file += b.Length;
            }

            _copies++;
            return true;
        }
        finally
        {
            Interlocked.Decrement(ref _users);
        }
    }

    /// <summary>Maps the file if it qualifies (tmpfs, a lease granted); returns the new state.</summary>
    private int Start()
    {
        lock (_sync)
        {
            if (_state != 0)
            {
                return _state;
            }

            _state = TryMap() ? 1 : 2;
            if (_state == 1)
            {
                Register(this);
            }

            return _state;
        }
    }

    private bool TryMap()
    {
        if (!OperatingSystem.IsLinux() || nint.Size != 8 || _handle.IsInvalid || _handle.IsClosed || HostIo.FileSystemType(_handle) != Interop.Libc.TMPFS_MAGIC)
        {
            return false;
        }

        long length = Math.Min(_limit, MaxMappedLength) >> _pageShift << _pageShift;
        if (length <= 0)
        {
            return false;
        }

        short lease = _writable ? Interop.Libc.F_WRLCK : Interop.Libc.F_RDLCK;
        try
        {
            if (Interop.Libc.FcntlInt(_handle, Interop.Libc.F_SETLEASE, lease) != 0)
            {
                // Open elsewhere (EAGAIN), not the file's owner (EACCES), leases disabled: system calls only.
                return false;
            }

            // No signal on a break (SIGIO would end the process): the poller finds it.
            if (Interop.Libc.FcntlInt(_handle, Interop.Libc.F_SETOWN, 0) != 0)
            {
                Interop.Libc.FcntlInt(_handle, Interop.Libc.F_SETLEASE, Interop.Libc.F_UNLCK);
                return false;
            }

            nint address = Interop.Libc.Mmap(0, (nuint)length, Interop.Libc.PROT_READ | (_writable ? Interop.Libc.PROT_WRITE : 0), Interop.Libc.MAP_SHARED | Interop.Libc.MAP_NORESERVE, _handle, 0);
            if (address == -1)
            {
                Interop.Libc.FcntlInt(_handle, Interop.Libc.F_SETLEASE, Interop.Libc.F_UNLCK);
                return false;
            }

            _base = address;
            _length = length;
            _leaseType = lease;
            _chunks = new long[]?[(int)(((length >> _pageShift) + (1L << ChunkPageBits) - 1) >> ChunkPageBits)];
            return true;
        }
        catch (Exception e) when (e is ObjectDisposedException or EntryPointNotFoundException or DllNotFoundException)
        {
            return false;
        }
    }

    /// <summary>Whether every page of the range is known to be allocated.</summary>
    private bool Allocated(long offset, long length)
    {
        long first = offset >> _pageShift;
        long last = (offset + length - 1) >> _pageShift;
        for (long page = first; page <= last; page++)
        {
            long[]? chunk = Volatile.Read(ref _chunks[(int)(page >> ChunkPageBits)]);
            if (chunk is null || (Volatile.Read(ref chunk[(int)(page >> 6) & ((1 << (ChunkPageBits - 6)) - 1)]) & (1L << (int)(page & 63))) == 0)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>After a system call moved the range: marks the allocated pages from its first page on (up to the next hole).</summary>
    private void Learn(long offset, ReadOnlySpan<HostBuffer> buffers)
    {
        if (Volatile.Read(ref _state) != 1 || buffers.IsEmpty)
        {
            return;
        }

        long total = HostBuffer.Total(buffers);
        if (total <= 0 || offset < 0 || offset >= _length)
        {
            return;
        }

        lock (_sync)
        {
            if (_state != 1)
            {
                return;
            }

            long start = offset >> _pageShift << _pageShift;
            long data;
            long hole;
            try
            {
                data = Interop.Libc.Lseek(_handle, start, Interop.Libc.SEEK_DATA);
                if (data != start)
                {
                    return;
                }

                hole = Interop.Libc.Lseek(_handle, start, Interop.Libc.SEEK_HOLE);
            }
            catch (ObjectDisposedException)
            {
                return;
            }

            // The last page before a hole may be partly data, partly hole; only whole pages count.
            long end = Math.Min(hole, _length) >> _pageShift;
            for (long page = start >> _pageShift; page < end; page++)
            {
                SetBit(page);
            }
        }
    }

    private void SetBit(long page)
    {
        ref long[]? chunk = ref _chunks[(int)(page >> ChunkPageBits)];
        chunk ??= new long[1 << (ChunkPageBits - 6)];
        ref long word = ref chunk[(int)(page >> 6) & ((1 << (ChunkPageBits - 6)) - 1)];
        Volatile.Write(ref word, word | (1L << (int)(page & 63)));
    }

    private void ClearBit(long page)
    {
        long[]? chunk = _chunks[(int)(page >> ChunkPageBits)];
        if (chunk is not null)
        {
            ref long word = ref chunk[(int)(page >> 6) & ((1 << (ChunkPageBits - 6)) - 1)];
            Volatile.Write(ref word, word & ~(1L << (int)(page & 63)));
        }
    }

    private void WaitForCopies()
    {
        // Interlocked gives the store before it a full fence: a copy that starts later reads the cleared bits.
        Interlocked.MemoryBarrier();
        var spin = default(SpinWait);
        while (Volatile.Read(ref _users) != 0)
        {
            spin.SpinOnce();
        }
    }

    /// <summary>Whether another process waits for the lease (a break is pending), or the lease is gone.</summary>
    private bool LeaseBroken()
    {
        try
        {
            return Interop.Libc.FcntlInt(_handle, Interop.Libc.F_GETLEASE, 0) != _leaseType;
        }
        catch (ObjectDisposedException)
        {
            return true;
        }
    }

    /// <summary>Ends the mapping: no new copies, waits for those under way, unmaps, releases the lease.</summary>
    private void Stop()
    {
        lock (_sync)
        {
            int was = Interlocked.Exchange(ref _state, 2);
            if (was != 1)
            {
                return;
            }

            WaitForCopies();
            _ = Interop.Libc.Munmap(_base, (nuint)_length);
            _base = 0;
            _chunks = [];
            try
            {
                Interop.Libc.FcntlInt(_handle, Interop.Libc.F_SETLEASE, Interop.Libc.F_UNLCK);
            }
            catch (ObjectDisposedException)
            {
                // The handle is closed: the lease went with it (with the mapping gone, nothing holds the file).
            }
        }

        lock (s_polled)
        {
            s_polled.Remove(this);
        }
    }

    private static void Register(ImageMapping mapping)
    {
        lock (s_polled)
        {
            s_polled.Add(mapping);
            if (s_poller is null)
            {
                s_poller = new Thread(Poll) { IsBackground = true, Name = "virt-image-leases" };
                s_poller.Start();
            }
        }
    }

    /// <summary>The poller: stops every mapping whose lease another process is waiting for; ends when none are left.</summary>
    private static void Poll()
    {
        var broken = new List<ImageMapping>();
        while (true)
        {
            Thread.Sleep(PollInterval);
            lock (s_polled)
            {
                if (s_polled.Count == 0)
                {
                    s_poller = null;
                    return;
                }

                foreach (var m in s_polled)
                {
                    if (m.LeaseBroken())
                    {
                        broken.Add(m);
                    }
                }
            }

            foreach (var m in broken)
            {
                m.Stop();
            }

            broken.Clear();
        }
    }
}
