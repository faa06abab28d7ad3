using System.Buffers.Binary;
using Virt.Memory;
using Virt.Snapshots;

namespace Virt.Devices.Virtio;

/// <summary>
/// A virtio memory balloon (virtio 1.2, section 5.5): the host sets a target number of pages the guest should give up
/// (<see cref="SetTargetPages"/>); the guest's driver allocates that many pages and lists them on the inflate queue, and
/// the device hands each listed page back to the host through the release callback (on Linux, <c>madvise(MADV_DONTNEED)</c>
/// on the guest memory mapping), so the host's resident memory shrinks. Lowering the target lets the guest take pages
/// back (the deflate queue); they read as zero when the guest touches them again.
/// </summary>
/// <remarks>
/// <para>
/// Also offered: memory statistics (<c>VIRTIO_BALLOON_F_STATS_VQ</c>, <see cref="RequestStatisticsAsync"/>), free page
/// reporting (<c>VIRTIO_BALLOON_F_REPORTING</c>: the guest reports ranges of free memory on its own and the device
/// releases them) and deflate on out-of-memory (<c>VIRTIO_BALLOON_F_DEFLATE_ON_OOM</c>, by option).
/// </para>
/// <para>
/// The guest is not trusted: a page number outside guest RAM, a reported range that is not RAM, a buffer whose length
/// is not a whole number of entries, or an <c>actual</c> above the guest's page count is refused with a logged reason
/// and otherwise ignored. Releasing a page the guest still uses harms only that guest (it reads zeros).
/// </para>
/// </remarks>
public sealed class VirtioBalloonDevice : VirtioDevice, IPersistentState
{
    /// <summary>Feature bit 1: the statistics queue.</summary>
    public const ulong FeatureStatsQueue = 1UL << 1;

    /// <summary>Feature bit 2: the guest may deflate when it runs out of memory.</summary>
    public const ulong FeatureDeflateOnOom = 1UL << 2;

    /// <summary>Feature bit 5: free page reporting.</summary>
    public const ulong FeatureReporting = 1UL << 5;

    /// <summary>The size of a balloon page: 4 KiB, whatever the guest's page size.</summary>
    public const int BalloonPageSize = 4096;

    private const ushort QueueSize = 256;
    private const int StatEntrySize = 10;
    private const int MaxStatEntries = 64;

    private readonly Action<GuestAddress, ulong>? _release;
    private readonly ulong _guestPages;
    private readonly bool _deflateOnOom;
    private readonly bool _statistics;
    private readonly Lock _statsSync = new();
    private TaskCompletionSource<IReadOnlyDictionary<BalloonStatistic, ulong>>? _statsWaiter;
    private bool _statsRequested;
    private int _targetPages;
    private int _actualPages;
    private long _releasedPages;
    private long _reportedBytes;
    private long _inflatedPages;
    private long _deflatedPages;

    /// <summary>Creates the device.</summary>
    /// <param name="guestMemoryBytes">The guest's RAM size; the target and the guest's <c>actual</c> are bounded by it.</param>
    /// <param name="releasePages">
    /// Gives a range of guest RAM back to the host (called with page-aligned ranges on a device worker thread);
    /// <see langword="null"/> to only account pages (the host keeps them).
    /// </param>
    /// <param name="deflateOnOom">Whether to offer <c>VIRTIO_BALLOON_F_DEFLATE_ON_OOM</c>: the guest may take pages back when it runs out of memory.</param>
    /// <param name="statistics">
    /// Whether to offer the statistics queue (<c>VIRTIO_BALLOON_F_STATS_VQ</c>). Off by default: it is tested against a
    /// scripted driver only, and a request to Linux's driver has not been seen to complete.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="guestMemoryBytes"/> is not positive.</exception>
    public VirtioBalloonDevice(ulong guestMemoryBytes, Action<GuestAddress, ulong>? releasePages, bool deflateOnOom = false, bool statistics = false)
    {
        _statistics = statistics;
        ArgumentOutOfRangeException.ThrowIfZero(guestMemoryBytes);
        _guestPages = guestMemoryBytes / BalloonPageSize;
        _release = releasePages;
        _deflateOnOom = deflateOnOom;

        // One worker serves every queue; which queue plays which role depends on the negotiated features.
        AddWorker(DrainAsync, 0, 1, 2, 3);
    }

    /// <summary>Raised (on a device worker thread) when the guest reports a new number of pages in the balloon.</summary>
    public event EventHandler? ActualChanged;

    /// <inheritdoc />
    public override VirtioDeviceType DeviceType => VirtioDeviceType.Balloon;

    /// <inheritdoc />
    public override ulong DeviceFeatures => FeatureReporting | (_statistics ? FeatureStatsQueue : 0) | (_deflateOnOom ? FeatureDeflateOnOom : 0);

    /// <inheritdoc />
    public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize, QueueSize, QueueSize, QueueSize];

    /// <inheritdoc />
    public override int ConfigSize => 16;

    /// <summary>The number of 4 KiB pages the host asks the guest to hold in the balloon.</summary>
    public int TargetPages => Volatile.Read(ref _targetPages);

    /// <summary>The number of 4 KiB pages the guest says the balloon holds (its <c>actual</c> field).</summary>
    public int ActualPages => Volatile.Read(ref _actualPages);

    /// <summary>Pages given back to the host through the inflate queue so far.</summary>
    public long ReleasedPages => Interlocked.Read(ref _releasedPages);

    /// <summary>Bytes of free guest memory reported by the guest and given back to the host so far.</summary>
    public long ReportedBytes => Interlocked.Read(ref _reportedBytes);

    /// <summary>Pages the guest listed on the inflate queue so far.</summary>
    public long InflatedPages => Interlocked.Read(ref _inflatedPages);

    /// <summary>Pages the guest took back through the deflate queue so far.</summary>
    public long DeflatedPages => Interlocked.Read(ref _deflatedPages);

    /// <summary>Whether the driver accepted the statistics queue (known once the device is activated).</summary>
    public bool HasStatistics => Context?.HasFeature(FeatureStatsQueue) == true;

    /// <summary>The part of a snapshot this device writes.</summary>
    public string StateName => "virtio-balloon";

    /// <summary>The layout <see cref="SaveState"/> writes: 1.</summary>
    public int StateVersion => 1;

    /// <summary>
    /// Asks the guest to hold <paramref name="pages"/> 4 KiB pages in the balloon (a configuration-change interrupt);
    /// the guest inflates or deflates towards it at its own pace. Returns at once.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="pages"/> is negative or above the guest's page count.</exception>
    public void SetTargetPages(int pages)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(pages);
        ArgumentOutOfRangeException.ThrowIfGreaterThan((ulong)pages, _guestPages, nameof(pages));
        if (Interlocked.Exchange(ref _targetPages, pages) != pages)
        {
            Context?.SignalConfigChanged();
        }
    }

    /// <summary>
    /// Asks the guest for fresh memory statistics and returns them (tag to value; sizes in bytes as the guest reports
    /// them). Fails if the driver did not accept the statistics queue.
    /// </summary>
    /// <exception cref="InvalidOperationException">The device is not active or the guest has no statistics queue.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    public async Task<IReadOnlyDictionary<BalloonStatistic, ulong>> RequestStatisticsAsync(CancellationToken cancellationToken = default)
    {
        var context = Context ?? throw new InvalidOperationException("The balloon is not active yet: the guest's driver has not started it.");
        if (!context.HasFeature(FeatureStatsQueue))
        {
            throw new InvalidOperationException("The guest's balloon driver did not accept the statistics queue.");
        }

        Task<IReadOnlyDictionary<BalloonStatistic, ulong>> task;
        lock (_statsSync)
        {
            _statsWaiter ??= new TaskCompletionSource<IReadOnlyDictionary<BalloonStatistic, ulong>>(TaskCreationOptions.RunContinuationsAsynchronously);
            task = _statsWaiter.Task;
            _statsRequested = true;
        }

        QueueNotified(StatsQueueIndex(context) ?? 0);
        return await task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public override void ReadConfig(int offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[16];
        config.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(config, (uint)TargetPages);
        BinaryPrimitives.WriteUInt32LittleEndian(config[4..], (uint)ActualPages);
        config.Slice(offset, data.Length).CopyTo(data);
    }

    /// <inheritdoc />
    public override void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        // Only `actual` (bytes 4..8) is the driver's to write; a partial write updates the bytes it covers.
        if (offset + data.Length <= 4 || offset >= 8)
        {
            return;
        }

        Span<byte> actual = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(actual, (uint)ActualPages);
        for (int i = 0; i < data.Length; i++)
        {
            int at = offset + i - 4;
            if (at is >= 0 and < 4)
            {
                actual[at] = data[i];
            }
        }

        uint value = BinaryPrimitives.ReadUInt32LittleEndian(actual);
        if (value > _guestPages)
        {
            Context?.LogRefusedRequest($"balloon 'actual' of {value} pages exceeds the guest's {_guestPages} pages");
            return;
        }

        if (Interlocked.Exchange(ref _actualPages, (int)value) != (int)value)
        {
            ActualChanged?.Invoke(this, EventArgs.Empty);
        }
    }

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteInt32(TargetPages);
        writer.WriteInt32(ActualPages);
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        if (version != StateVersion)
        {
            throw reader.UnsupportedVersion(version, StateVersion);
        }

        int target = reader.ReadInt32InRange("target pages", 0, (int)Math.Min(_guestPages, int.MaxValue));
        int actual = reader.ReadInt32InRange("actual pages", 0, (int)Math.Min(_guestPages, int.MaxValue));
        reader.EnsureEnd();
        Volatile.Write(ref _targetPages, target);
        Volatile.Write(ref _actualPages, actual);
    }

    /// <inheritdoc />
    protected override void OnReset()
    {
        Volatile.Write(ref _actualPages, 0);
        lock (_statsSync)
        {
            _statsRequested = false;
        }
    }

    // Queue roles: inflate 0, deflate 1, then the statistics queue if negotiated, then the reporting queue if negotiated
    // (absent queues take no index, as drivers number them).
    private static int? StatsQueueIndex(VirtioDeviceContext c) => c.HasFeature(FeatureStatsQueue) ? 2 : null;

    private static int? ReportingQueueIndex(VirtioDeviceContext c) =>
        c.HasFeature(FeatureReporting) ? (c.HasFeature(FeatureStatsQueue) ? 3 : 2) : null;

    private Task DrainAsync(VirtioDeviceContext context)
    {
        var token = context.Stopping;
        DrainPageList(context, context.Queues[0], inflate: true, token);
        DrainPageList(context, context.Queues[1], inflate: false, token);
        if (StatsQueueIndex(context) is int s && s < context.Queues.Count)
        {
            ServeStatistics(context, context.Queues[s]);
        }

        if (ReportingQueueIndex(context) is int r && r < context.Queues.Count)
        {
            DrainReports(context, context.Queues[r], token);
        }

        return Task.CompletedTask;
    }

    private void DrainPageList(VirtioDeviceContext context, Virtqueue queue, bool inflate, CancellationToken token)
    {
        Span<byte> pfnBytes = stackalloc byte[4 * 64];
        while (!token.IsCancellationRequested && queue.TryPop(out var chain))
        {
            long length = chain.ReadableLength;
            if (length % 4 != 0)
            {
                context.LogRefusedRequest($"balloon page list of {length} bytes is not a whole number of 32-bit page numbers");
            }

            ulong runStart = 0;
            ulong runPages = 0;
            for (long offset = 0; offset + 4 <= length; offset += pfnBytes.Length)
            {
                int n = chain.Read(offset, pfnBytes[..(int)Math.Min(pfnBytes.Length, (length - offset) & ~3L)]);
                for (int i = 0; i + 4 <= n; i += 4)
                {
                    ulong pfn = BinaryPrimitives.ReadUInt32LittleEndian(pfnBytes[i..]);
                    ulong address = pfn * BalloonPageSize;
                    if (!context.Memory.Contains(new GuestAddress(address), BalloonPageSize))
                    {
                        context.LogRefusedRequest($"balloon page 0x{pfn:x} is not guest RAM");
                        continue;
                    }

                    if (inflate)
                    {
                        Interlocked.Increment(ref _inflatedPages);
                        if (runPages > 0 && runStart + (runPages * BalloonPageSize) == address)
                        {
                            runPages++;
                            continue;
                        }

                        Release(context, runStart, runPages);
                        runStart = address;
                        runPages = 1;
                    }
                    else
                    {
                        Interlocked.Increment(ref _deflatedPages);
                    }
                }
            }

            Release(context, runStart, runPages);
            queue.AddUsed(chain, 0);
            context.SignalUsed(queue);
        }
    }

    private void Release(VirtioDeviceContext context, ulong start, ulong pages)
    {
        if (pages == 0)
        {
            return;
        }

        if (_release is not null)
        {
            try
            {
                _release(new GuestAddress(start), pages * BalloonPageSize);
            }
            catch (GuestMemoryException e)
            {
                // A run that crosses a region boundary (not one mapping): it is left with the guest and logged.
                context.LogRefusedRequest($"balloon range 0x{start:x}+{pages} pages: {e.Message}");
                return;
            }
        }

        Interlocked.Add(ref _releasedPages, (long)pages);
    }

    private void DrainReports(VirtioDeviceContext context, Virtqueue queue, CancellationToken token)
    {
        while (!token.IsCancellationRequested && queue.TryPop(out var chain))
        {
            for (int i = 0; i < chain.DescriptorCount; i++)
            {
                var (address, length, _) = chain.GetBuffer(i);
                if (length == 0 || !context.Memory.Contains(address, length))
                {
                    context.LogRefusedRequest($"reported free range 0x{address.Value:x}+{length} is not guest RAM");
                    continue;
                }

                ulong start = (address.Value + BalloonPageSize - 1) & ~(ulong)(BalloonPageSize - 1);
                ulong end = (address.Value + length) & ~(ulong)(BalloonPageSize - 1);
                if (end > start)
                {
                    try
                    {
                        _release?.Invoke(new GuestAddress(start), end - start);
                        Interlocked.Add(ref _reportedBytes, (long)(end - start));
                    }
                    catch (GuestMemoryException e)
                    {
                        context.LogRefusedRequest($"reported free range 0x{start:x}..0x{end:x}: {e.Message}");
                    }
                }
            }

            queue.AddUsed(chain, 0);
            context.SignalUsed(queue);
        }
    }

    private void ServeStatistics(VirtioDeviceContext context, Virtqueue queue)
    {
        // The driver keeps one buffer of statistics on the queue. The device reads it and leaves it there (rewinds)
        // until the host wants fresh values; then it returns the buffer, and the driver refills and re-adds it.
        if (!queue.TryPop(out var chain))
        {
            return;
        }

        var stats = ParseStatistics(context, chain);
        TaskCompletionSource<IReadOnlyDictionary<BalloonStatistic, ulong>>? waiter = null;
        bool refresh;
        lock (_statsSync)
        {
            refresh = _statsRequested;
            _statsRequested = false;
            if (!refresh && _statsWaiter is not null)
            {
                waiter = _statsWaiter;
                _statsWaiter = null;
            }
        }

        if (refresh)
        {
            queue.AddUsed(chain, 0);
            context.SignalUsed(queue);
            return;
        }

        queue.Rewind(1);
        waiter?.TrySetResult(stats);
    }

    private static Dictionary<BalloonStatistic, ulong> ParseStatistics(VirtioDeviceContext context, DescriptorChain chain)
    {
        var result = new Dictionary<BalloonStatistic, ulong>();
        long length = chain.ReadableLength;
        if (length % StatEntrySize != 0 || length > MaxStatEntries * StatEntrySize)
        {
            context.LogRefusedRequest($"balloon statistics buffer of {length} bytes is not a whole number of 10-byte entries (at most {MaxStatEntries})");
            return result;
        }

        Span<byte> entry = stackalloc byte[StatEntrySize];
        for (long offset = 0; offset < length; offset += StatEntrySize)
        {
            chain.Read(offset, entry);
            var tag = (BalloonStatistic)BinaryPrimitives.ReadUInt16LittleEndian(entry);
            result[tag] = BinaryPrimitives.ReadUInt64LittleEndian(entry[2..]);
        }

        return result;
    }
}

/// <summary>Memory statistics a balloon driver reports (virtio 1.2, section 5.5.6.3).</summary>
public enum BalloonStatistic : ushort
{
    /// <summary>Bytes swapped in.</summary>
    SwapIn = 0,

    /// <summary>Bytes swapped out.</summary>
    SwapOut = 1,

    /// <summary>Major page faults.</summary>
    MajorFaults = 2,

    /// <summary>Minor page faults.</summary>
    MinorFaults = 3,

    /// <summary>Free memory in bytes.</summary>
    FreeMemory = 4,

    /// <summary>Total memory in bytes.</summary>
    TotalMemory = 5,

    /// <summary>Memory available to new work without swapping, in bytes.</summary>
    AvailableMemory = 6,

    /// <summary>Disk caches that can be reclaimed, in bytes.</summary>
    DiskCaches = 7,

    /// <summary>Successful huge page allocations.</summary>
    HugePageAllocations = 8,

    /// <summary>Failed huge page allocations.</summary>
    HugePageFailures = 9,
}
