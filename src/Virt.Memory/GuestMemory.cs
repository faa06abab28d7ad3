using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Virt.Memory;

/// <summary>
/// Guest physical memory: RAM and ROM regions backed by anonymous host mappings, with holes between
/// them. Thread-safe for concurrent access; <see cref="Dispose"/> must not race with accesses
/// (stop the vCPUs and devices first).
/// </summary>
public sealed class GuestMemory : IGuestMemoryBacking, IDisposable
{
    /// <summary>The page size used for alignment, dirty tracking and write watches.</summary>
    public const ulong PageSize = 4096;

    /// <summary>log2 of <see cref="PageSize"/>.</summary>
    public const int PageShift = 12;

    private readonly Region[] _regions;
    private readonly GuestMemoryRegionInfo[] _infos;
    private IGuestWriteWatcher? _watcher;
    private int _disposed;

    private GuestMemory(Region[] regions)
    {
        _regions = regions;
        _infos = new GuestMemoryRegionInfo[regions.Length];
        for (int i = 0; i < regions.Length; i++)
        {
            var r = regions[i];
            _infos[i] = new GuestMemoryRegionInfo(new GuestAddress(r.Start), r.Size, r.IsReadOnly, r.Host);
            TotalSize += r.Size;
        }
    }

    /// <summary>Creates guest memory with one RAM region of <paramref name="size"/> bytes at address 0.</summary>
    /// <exception cref="ArgumentException">The size is zero or not a multiple of 4 KiB.</exception>
    /// <exception cref="GuestMemoryException">The host refused the mapping.</exception>
    public static GuestMemory CreateRam(ulong size) => Create(GuestMemoryRegionSpec.Ram(GuestAddress.Zero, size));

    /// <summary>Creates guest memory with the given regions.</summary>
    /// <exception cref="ArgumentException">
    /// No regions, a start or size not a multiple of 4 KiB, a zero size, a region past 2^52 (the
    /// architectural physical-address limit), or overlapping regions.
    /// </exception>
    /// <exception cref="GuestMemoryException">The host refused a mapping.</exception>
    public static GuestMemory Create(params GuestMemoryRegionSpec[] specs)
    {
        ArgumentNullException.ThrowIfNull(specs);
        if (specs.Length == 0)
        {
            throw new ArgumentException("Guest memory needs at least one region.", nameof(specs));
        }

        // By start address, stable, as an insertion sort: a machine has a handful of regions, and LINQ's or Array's sort
        // over this struct would be framework generic code that no ReadyToRun image holds (compiled in every process).
        var sorted = (GuestMemoryRegionSpec[])specs.Clone();
        for (int i = 1; i < sorted.Length; i++)
        {
            var s = sorted[i];
            int j = i - 1;
            for (; j >= 0 && sorted[j].Start.Value > s.Start.Value; j--)
            {
                sorted[j + 1] = sorted[j];
            }

            sorted[j + 1] = s;
        }

        const ulong maxPhysical = 1UL << 52;
        for (int i = 0; i < sorted.Length; i++)
        {
            var s = sorted[i];
            if (s.Size == 0)
            {
                throw new ArgumentException($"Region at {s.Start} has size 0; give every region a size of at least 4 KiB.", nameof(specs));
            }

            if (s.Start.Value % PageSize != 0 || s.Size % PageSize != 0)
            {
                throw new ArgumentException($"Region at {s.Start} of size 0x{s.Size:x}: start and size must be multiples of 4 KiB (0x1000).", nameof(specs));
            }

            if (s.Size > maxPhysical || s.Start.Value > maxPhysical - s.Size)
            {
                throw new ArgumentException($"Region at {s.Start} of size 0x{s.Size:x} ends beyond the 52-bit physical address space.", nameof(specs));
            }

            if (i > 0 && sorted[i - 1].Start.Value + sorted[i - 1].Size > s.Start.Value)
            {
                throw new ArgumentException($"Regions at {sorted[i - 1].Start} (size 0x{sorted[i - 1].Size:x}) and {s.Start} overlap; move one of them.", nameof(specs));
            }
        }

        var regions = new List<Region>(sorted.Length);
        try
        {
            foreach (var s in sorted)
            {
                regions.Add(new Region(s.Start.Value, s.Size, s.IsReadOnly, s.File is null ? MapAnonymous(s.Size) : MapFile(s), s.File is not null && OperatingSystem.IsLinux()));
            }
        }
        catch
        {
            foreach (var r in regions)
            {
                Unmap(r.Host, r.Size);
            }

            throw;
        }

        return new GuestMemory([.. regions]);
    }

    /// <inheritdoc />
    public IReadOnlyList<GuestMemoryRegionInfo> Regions => _infos;

    /// <inheritdoc />
    public ulong TotalSize { get; }

    /// <summary>
    /// How many bytes of guest memory the host holds in RAM right now (pages the guest or the host touched and that
    /// were not given back), or <see langword="null"/> where the host cannot tell (only Linux reports it, with
    /// <c>mincore</c>). Pages of a file-backed region count when they are in the page cache.
    /// </summary>
    public ulong? ResidentBytes
    {
        get
        {
            ThrowIfDisposed();
            if (!OperatingSystem.IsLinux())
            {
                return null;
            }

            const ulong chunk = 1UL << 30;
            var vec = new byte[chunk / PageSize];
            ulong resident = 0;
            foreach (var r in _regions)
            {
                for (ulong offset = 0; offset < r.Size; offset += chunk)
                {
                    ulong length = Math.Min(chunk, r.Size - offset);
                    unsafe
                    {
                        fixed (byte* v = vec)
                        {
                            // SAFETY: [offset, offset + length) lies in region r's live mapping; vec holds a byte per page.
                            if (Interop.Libc.Mincore(r.Host + (nint)offset, (nuint)length, v) != 0)
                            {
                                return null;
                            }
                        }
                    }

                    int pages = (int)((length + PageSize - 1) / PageSize);
                    for (int i = 0; i < pages; i++)
                    {
                        resident += (ulong)(vec[i] & 1);
                    }
                }
            }

            return resident * PageSize;
        }
    }

    /// <summary>Whether <see cref="Dispose"/> has run.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <inheritdoc />
    public bool Contains(GuestAddress address, ulong length) => TryResolve(address.Value, length, out _, out _);

    /// <summary>Whether <paramref name="address"/> is in a ROM region.</summary>
    public bool IsReadOnly(GuestAddress address) => FindRegion(address.Value) is int i && _regions[i].IsReadOnly;

    /// <inheritdoc />
    public void Read(GuestAddress address, Span<byte> destination)
    {
        if (!TryRead(address, destination))
        {
            throw Fail(address, (ulong)destination.Length, false);
        }
    }

    /// <inheritdoc />
    public void Write(GuestAddress address, ReadOnlySpan<byte> source)
    {
        if (!TryWrite(address, source))
        {
            throw Fail(address, (ulong)source.Length, true);
        }
    }

    /// <inheritdoc />
    public bool TryRead(GuestAddress address, Span<byte> destination)
    {
        ThrowIfDisposed();
        ulong addr = address.Value;
        int done = 0;
        while (done < destination.Length)
        {
            if (!TryResolveChunk(addr, (ulong)(destination.Length - done), out var region, out ulong chunk))
            {
                return false;
            }

            Host(region, addr, (int)chunk).CopyTo(destination[done..]);
            done += (int)chunk;
            addr += chunk;
        }

        return true;
    }

    /// <inheritdoc />
    public bool TryWrite(GuestAddress address, ReadOnlySpan<byte> source)
    {
        ThrowIfDisposed();
        if (!CanWrite(address.Value, (ulong)source.Length))
        {
            return false;
        }

        ulong addr = address.Value;
        int done = 0;
        while (done < source.Length)
        {
            TryResolveChunk(addr, (ulong)(source.Length - done), out var region, out ulong chunk);
            source.Slice(done, (int)chunk).CopyTo(Host(region, addr, (int)chunk));
            region.MarkWritten(addr - region.Start, chunk, this);
            done += (int)chunk;
            addr += chunk;
        }

        return true;
    }

    /// <inheritdoc />
    public T Read<T>(GuestAddress address) where T : unmanaged
    {
        Unsafe.SkipInit(out T value);
        Read(address, MemoryMarshal.AsBytes(new Span<T>(ref value)));
        return value;
    }

    /// <inheritdoc />
    public void Write<T>(GuestAddress address, T value) where T : unmanaged =>
        Write(address, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));

    /// <inheritdoc />
    public Span<byte> GetSpan(GuestAddress address, int length, bool forWrite)
    {
        if (!TryGetSpan(address, length, forWrite, out var span))
        {
            throw Fail(address, (ulong)Math.Max(length, 0), forWrite, "the range is not inside one region");
        }

        return span;
    }

    /// <inheritdoc />
    public bool TryGetSpan(GuestAddress address, int length, bool forWrite, out Span<byte> span)
    {
        ThrowIfDisposed();
        span = default;
        if (length < 0 || !TryResolve(address.Value, (ulong)length, out int index, out bool single) || !single)
        {
            return false;
        }

        var region = _regions[index];
        if (forWrite)
        {
            if (region.IsReadOnly)
            {
                return false;
            }

            region.MarkWritten(address.Value - region.Start, (ulong)length, this);
        }

        span = Host(region, address.Value, length);
        return true;
    }

    /// <summary>
    /// Copies <paramref name="image"/> into a ROM (or RAM) region at <paramref name="address"/>. The host
    /// may write ROM; the guest may not.
    /// </summary>
    /// <exception cref="GuestMemoryException">The range is not guest memory.</exception>
    public void LoadRom(GuestAddress address, ReadOnlySpan<byte> image)
    {
        ThrowIfDisposed();
        ulong addr = address.Value;
        int done = 0;
        while (done < image.Length)
        {
            if (!TryResolveChunk(addr, (ulong)(image.Length - done), out var region, out ulong chunk))
            {
                throw Fail(new GuestAddress(addr), (ulong)(image.Length - done), true, "the range is not guest memory");
            }

            image.Slice(done, (int)chunk).CopyTo(Host(region, addr, (int)chunk));
            region.MarkWritten(addr - region.Start, chunk, this);
            done += (int)chunk;
            addr += chunk;
        }
    }

    /// <summary>
    /// The host pointer for <paramref name="address"/> and how many bytes follow it in the same region, or
    /// <see langword="false"/> outside guest memory. For backends that access guest memory directly.
    /// </summary>
    public bool TryGetHostPointer(GuestAddress address, out nint pointer, out ulong available, out bool isReadOnly)
    {
        pointer = 0;
        available = 0;
        isReadOnly = false;
        if (FindRegion(address.Value) is not int i)
        {
            return false;
        }

        var r = _regions[i];
        ulong offset = address.Value - r.Start;
        pointer = r.Host + (nint)offset;
        available = r.Size - offset;
        isReadOnly = r.IsReadOnly;
        return true;
    }

    /// <summary>Index of the region holding <paramref name="address"/>, or <see langword="null"/> in a hole.</summary>
    public int? FindRegion(ulong address)
    {
        var regions = _regions;
        int lo = 0, hi = regions.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            var r = regions[mid];
            if (address < r.Start)
            {
                hi = mid - 1;
            }
            else if (address - r.Start >= r.Size)
            {
                lo = mid + 1;
            }
            else
            {
                return mid;
            }
        }

        return null;
    }

    /// <summary>
    /// Copies into <paramref name="bitmap"/> (one bit per page, 64 pages per element) the pages of region
    /// <paramref name="regionIndex"/> written through this object since the last call, and clears them.
    /// Writes that a hypervisor performs for the guest are not seen here: ask the partition's dirty log.
    /// </summary>
    public void CollectDirtyPages(int regionIndex, Span<ulong> bitmap)
    {
        var r = _regions[regionIndex];
        if (bitmap.Length < r.Dirty.Length)
        {
            throw new ArgumentException($"The bitmap needs {r.Dirty.Length} elements for region {regionIndex}.", nameof(bitmap));
        }

        for (int i = 0; i < r.Dirty.Length; i++)
        {
            bitmap[i] = Interlocked.Exchange(ref r.Dirty[i], 0);
        }
    }

    /// <summary>Number of <see cref="ulong"/> elements of a dirty bitmap for region <paramref name="regionIndex"/>.</summary>
    public int DirtyBitmapLength(int regionIndex) => _regions[regionIndex].Dirty.Length;

    /// <summary>
    /// Sets the object told when a watched page is written through this object (not by the guest under a
    /// hypervisor). An interpreter uses it to drop code it decoded from that page.
    /// </summary>
    public void SetWriteWatcher(IGuestWriteWatcher? watcher) => _watcher = watcher;

    /// <summary>Watches the page holding <paramref name="address"/>: the next write to it calls the watcher once.</summary>
    /// <returns><see langword="false"/> when the address is not guest memory.</returns>
    public bool WatchPage(GuestAddress address)
    {
        if (FindRegion(address.Value) is not int i)
        {
            return false;
        }

        var r = _regions[i];
        ulong page = (address.Value - r.Start) >> PageShift;
        Interlocked.Or(ref r.Watched[page >> 6], 1UL << (int)(page & 63));
        Volatile.Write(ref r.AnyWatched, true);
        return true;
    }

    /// <summary>Whether the page holding <paramref name="address"/> is watched.</summary>
    public bool IsPageWatched(GuestAddress address)
    {
        if (FindRegion(address.Value) is not int i)
        {
            return false;
        }

        var r = _regions[i];
        ulong page = (address.Value - r.Start) >> PageShift;
        return (Volatile.Read(ref r.Watched[page >> 6]) & (1UL << (int)(page & 63))) != 0;
    }

    /// <summary>Unmaps every region exactly once. Later accesses throw <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        foreach (var r in _regions)
        {
            Unmap(r.Host, r.Size);
        }
    }

    internal void NotifyWatched(ulong pageAddress) => _watcher?.OnWatchedPageWritten(new GuestAddress(pageAddress));

    private bool CanWrite(ulong addr, ulong length)
    {
        while (length > 0)
        {
            if (!TryResolveChunk(addr, length, out var region, out ulong chunk) || region.IsReadOnly)
            {
                return false;
            }

            addr += chunk;
            length -= chunk;
        }

        return true;
    }

    // Resolves the largest chunk starting at addr that lies in one region, up to length bytes.
    private bool TryResolveChunk(ulong addr, ulong length, out Region region, out ulong chunk)
    {
        region = null!;
        chunk = 0;
        if (FindRegion(addr) is not int i)
        {
            return false;
        }

        region = _regions[i];
        chunk = Math.Min(length, region.Size - (addr - region.Start));
        return true;
    }

    // Whether [addr, addr+length) is guest memory; single says it lies in one region.
    private bool TryResolve(ulong addr, ulong length, out int index, out bool single)
    {
        single = false;
        index = -1;
        if (FindRegion(addr) is not int i)
        {
            return false;
        }

        index = i;
        var r = _regions[i];
        ulong room = r.Size - (addr - r.Start);
        if (length <= room)
        {
            single = true;
            return true;
        }

        // Continue through physically contiguous regions only.
        ulong remaining = length - room;
        for (int j = i + 1; j < _regions.Length && remaining > 0; j++)
        {
            if (_regions[j].Start != _regions[j - 1].Start + _regions[j - 1].Size)
            {
                return false;
            }

            remaining -= Math.Min(remaining, _regions[j].Size);
        }

        return remaining == 0;
    }

    private static unsafe Span<byte> Host(Region region, ulong addr, int length)
    {
        // SAFETY: callers resolved [addr, addr+length) inside region, whose mapping lives until Dispose.
        return new Span<byte>((void*)(region.Host + (nint)(addr - region.Start)), length);
    }

    private GuestMemoryException Fail(GuestAddress address, ulong length, bool write, string? reason = null)
    {
        if (reason is null)
        {
            if (FindRegion(address.Value) is int i)
            {
                reason = write && _regions[i].IsReadOnly ? "the region is read-only (ROM)" : "the range runs past the end of its region into a hole";
                if (write && !_regions[i].IsReadOnly && !CanWrite(address.Value, length))
                {
                    reason = "the range runs into a hole or a read-only region";
                }
            }
            else
            {
                reason = "the address is not in any guest memory region";
            }
        }

        return new GuestMemoryException(address, length, reason);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    private static nint MapAnonymous(ulong size)
    {
        if (OperatingSystem.IsWindows())
        {
            nint p = Interop.Kernel32.VirtualAlloc(0, (nuint)size, Interop.Kernel32.MEM_RESERVE | Interop.Kernel32.MEM_COMMIT, Interop.Kernel32.PAGE_READWRITE);
            if (p == 0)
            {
                throw new GuestMemoryException($"VirtualAlloc of {size} bytes for guest memory failed (error {Marshal.GetLastPInvokeError()}).");
            }

            return p;
        }

        nint addr = Interop.Libc.Mmap(0, (nuint)size, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE,
            Interop.Libc.MAP_PRIVATE | Interop.Libc.MAP_ANONYMOUS | Interop.Libc.MAP_NORESERVE, -1, 0);
        if (addr == -1)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new GuestMemoryException($"mmap of {size} bytes for guest memory failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}). Use a smaller memory size or raise the process's address-space limit.");
        }

        return addr;
    }

    /// <summary>
    /// Maps <paramref name="spec"/>'s file region copy-on-write (Linux: <c>mmap(MAP_PRIVATE)</c> of the file). Elsewhere the
    /// contents are read into anonymous memory, which gives the same guest-visible result without the sharing.
    /// </summary>
    private static nint MapFile(in GuestMemoryRegionSpec spec)
    {
        var file = spec.File!;
        if (spec.FileOffset % (long)PageSize != 0)
        {
            throw new ArgumentException($"Region at {spec.Start}: file offset 0x{spec.FileOffset:x} must be a multiple of 4 KiB.", nameof(spec));
        }

        long length = RandomAccess.GetLength(file);
        if ((ulong)length < (ulong)spec.FileOffset + spec.Size)
        {
            throw new ArgumentException($"Region at {spec.Start}: the file has {length} bytes, fewer than offset 0x{spec.FileOffset:x} plus the region's 0x{spec.Size:x}; it is truncated.", nameof(spec));
        }

        if (OperatingSystem.IsLinux())
        {
            int fd = (int)file.DangerousGetHandle();
            nint addr = Interop.Libc.Mmap(0, (nuint)spec.Size, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE,
                Interop.Libc.MAP_PRIVATE | Interop.Libc.MAP_NORESERVE, fd, spec.FileOffset);
            if (addr == -1)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new GuestMemoryException($"mmap of {spec.Size} bytes of a file for guest memory failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
            }

            return addr;
        }

        nint host = MapAnonymous(spec.Size);
        try
        {
            unsafe
            {
                // SAFETY: host is a fresh mapping of spec.Size bytes; the copy writes at most that many, in chunks below 2 GiB.
                for (ulong done = 0; done < spec.Size;)
                {
                    int chunk = (int)Math.Min(spec.Size - done, 1UL << 30);
                    int read = RandomAccess.Read(file, new Span<byte>((byte*)host + done, chunk), spec.FileOffset + (long)done);
                    if (read <= 0)
                    {
                        throw new GuestMemoryException($"The file ended at offset {spec.FileOffset + (long)done} while reading guest memory.");
                    }

                    done += (ulong)read;
                }
            }

            return host;
        }
        catch
        {
            Unmap(host, spec.Size);
            throw;
        }
    }

    private static void Unmap(nint host, ulong size)
    {
        if (OperatingSystem.IsWindows())
        {
            Interop.Kernel32.VirtualFree(host, 0, Interop.Kernel32.MEM_RELEASE);
        }
        else
        {
            Interop.Libc.Munmap(host, (nuint)size);
        }
    }

    /// <summary>
    /// Returns the pages of <paramref name="address"/>..+<paramref name="length"/> to the host (they read as
    /// zero afterwards, also in memory mapped from a file, which gets fresh zero pages there rather than the file's).
    /// Both ends are rounded to whole pages inside the range.
    /// </summary>
    public void DiscardPages(GuestAddress address, ulong length)
    {
        ThrowIfDisposed();
        if (!TryResolve(address.Value, length, out int i, out bool single) || !single)
        {
            throw Fail(address, length, true, "the range is not inside one region");
        }

        var r = _regions[i];
        ulong start = (address.Value - r.Start + PageSize - 1) & ~(PageSize - 1);
        ulong end = (address.Value - r.Start + length) & ~(PageSize - 1);
        if (end <= start)
        {
            return;
        }

        if (OperatingSystem.IsWindows())
        {
            ZeroInPlace(r.Host, start, end);
        }
        else if (!r.FileBacked)
        {
            Interop.Libc.Madvise(r.Host + (nint)start, (nuint)(end - start), Interop.Libc.MADV_DONTNEED);
        }
        else if (!ReplaceWithZeroPages(r.Host + (nint)start, end - start))
        {
            // MADV_DONTNEED on a private file mapping would only drop the copies: the pages would read as the file's
            // again. Without a fresh mapping, zero them (correct contents; the memory is not given back).
            ZeroInPlace(r.Host, start, end);
        }

        r.MarkWritten(start, end - start, this);
    }

    /// <summary>Zeroes <paramref name="start"/>..<paramref name="end"/> of the mapping at <paramref name="host"/>, a gibibyte at a time.</summary>
    private static unsafe void ZeroInPlace(nint host, ulong start, ulong end)
    {
        // SAFETY: the caller's [start, end) lies in the region's live mapping at host.
        for (ulong at = start; at < end; at += 1UL << 30)
        {
            new Span<byte>((void*)(host + (nint)at), (int)Math.Min(end - at, 1UL << 30)).Clear();
        }
    }

    /// <summary>
    /// Maps fresh anonymous memory over <paramref name="length"/> bytes at <paramref name="host"/>, inside a private file
    /// mapping: the pages read as zero and hold no memory until written (what <c>MADV_DONTNEED</c> gives anonymous
    /// memory; on a file mapping it would bring the file's pages back). The addresses stay the same, so a KVM memory slot
    /// over them follows through its MMU notifier. False when the kernel refuses (a process has a bounded number of mappings).
    /// </summary>
    private static bool ReplaceWithZeroPages(nint host, ulong length)
    {
        nint addr = Interop.Libc.Mmap(host, (nuint)length, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE,
            Interop.Libc.MAP_PRIVATE | Interop.Libc.MAP_ANONYMOUS | Interop.Libc.MAP_NORESERVE | Interop.Libc.MAP_FIXED, -1, 0);
        return addr == host;
    }

    private sealed class Region
    {
        public readonly ulong Start;
        public readonly ulong Size;
        public readonly bool IsReadOnly;
        public readonly nint Host;

        /// <summary>Mapped copy-on-write from a file (Linux): discarded pages need a fresh mapping to read as zero.</summary>
        public readonly bool FileBacked;
        public readonly ulong[] Dirty;
        public readonly ulong[] Watched;
        public bool AnyWatched;

        public Region(ulong start, ulong size, bool isReadOnly, nint host, bool fileBacked)
        {
            FileBacked = fileBacked;
            Start = start;
            Size = size;
            IsReadOnly = isReadOnly;
            Host = host;
            ulong pages = size >> PageShift;
            Dirty = new ulong[(pages + 63) / 64];
            Watched = new ulong[(pages + 63) / 64];
        }

        public void MarkWritten(ulong offset, ulong length, GuestMemory owner)
        {
            if (length == 0)
            {
                return;
            }

            ulong first = offset >> PageShift;
            ulong last = (offset + length - 1) >> PageShift;
            bool watched = Volatile.Read(ref AnyWatched);
            for (ulong p = first; p <= last; p++)
            {
                ulong bit = 1UL << (int)(p & 63);
                ref ulong word = ref Dirty[p >> 6];
                if ((Volatile.Read(ref word) & bit) == 0)
                {
                    Interlocked.Or(ref word, bit);
                }

                if (watched && (Volatile.Read(ref Watched[p >> 6]) & bit) != 0)
                {
                    Interlocked.And(ref Watched[p >> 6], ~bit);
                    owner.NotifyWatched(Start + (p << PageShift));
                }
            }
        }
    }
}
