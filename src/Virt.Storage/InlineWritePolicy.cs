namespace Virt.Storage;

/// <summary>
/// Decides whether a virtio-blk write that the image's file system refuses RWF_NOWAIT for (ext4's buffered writes) is
/// served on the notifying vCPU thread as a plain write into the page cache, or handed to the queue's worker.
/// </summary>
/// <remarks>
/// <para>
/// A buffered write normally copies into the page cache in microseconds, less than the hand-off to the worker costs; but
/// the kernel can make it wait (dirty-page throttling while writeback catches up, a page that must first be read, a full
/// journal), and then the vCPU that made it waits too. So inline writes are timed: one that takes longer than
/// <see cref="SlowTicks"/> sends the image's writes back to the worker for <see cref="FirstBackoffTicks"/>, doubled
/// after every further slow write up to <see cref="MaxBackoffTicks"/>, and reset by a fast one. The cost of a stalling
/// disk to a vCPU is thus one write per back-off period.
/// </para>
/// <para>Threading: thread-safe without a lock (queues of one device may record at once; a lost update only shifts a
/// back-off by one write).</para>
/// </remarks>
internal sealed class InlineWritePolicy
{
    private long _resumeAt;
    private long _backoff;
    private long _slowWrites;

    /// <summary>Creates a policy on <paramref name="clock"/> (the system's by default).</summary>
    public InlineWritePolicy(TimeProvider? clock = null)
    {
        Clock = clock ?? TimeProvider.System;
        long frequency = Clock.TimestampFrequency;
        SlowTicks = frequency * 5 / 1000;
        FirstBackoffTicks = frequency / 10;
        MaxBackoffTicks = frequency * 64 / 10;
        _backoff = FirstBackoffTicks;
    }

    /// <summary>The clock that times writes.</summary>
    public TimeProvider Clock { get; }

    /// <summary>
    /// An inline write that takes longer than this (5 ms) sends writes to the worker for a while: longer than a copy into
    /// the page cache ever takes, and than most scheduling delays of a busy host (a preempted write measures those too),
    /// shorter than a pause of the kernel's dirty-page throttling.
    /// </summary>
    public long SlowTicks { get; }

    /// <summary>The first back-off after a slow write (100 ms).</summary>
    public long FirstBackoffTicks { get; }

    /// <summary>The longest back-off (6.4 s, after seven slow writes in a row).</summary>
    public long MaxBackoffTicks { get; }

    /// <summary>Slow inline writes seen so far.</summary>
    public long SlowWrites => Volatile.Read(ref _slowWrites);

    /// <summary>The clock's timestamp now.</summary>
    public long Now() => Clock.GetTimestamp();

    /// <summary>
    /// Whether a write may be served inline now (not inside a back-off), and if so the timestamp it starts at, for
    /// <see cref="Record"/>: the one clock read serves both, so a write served inline reads the clock twice in all.
    /// </summary>
    public bool TryStart(out long started)
    {
        started = Now();
        return started >= Volatile.Read(ref _resumeAt);
    }

    /// <summary>Records an inline write that started at <paramref name="started"/> (a <see cref="Now"/> timestamp) and just ended.</summary>
    public void Record(long started)
    {
        long now = Now();
        long backoff = Volatile.Read(ref _backoff);
        if (now - started <= SlowTicks)
        {
            if (backoff != FirstBackoffTicks)
            {
                Volatile.Write(ref _backoff, FirstBackoffTicks);
            }

            return;
        }

        Interlocked.Increment(ref _slowWrites);
        Volatile.Write(ref _resumeAt, now + backoff);
        Volatile.Write(ref _backoff, Math.Min(backoff * 2, MaxBackoffTicks));
    }
}
