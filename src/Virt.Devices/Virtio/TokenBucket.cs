namespace Virt.Devices.Virtio;

/// <summary>
/// A rate limiter for device I/O: a token bucket that refills at <see cref="RatePerSecond"/> tokens a second and holds
/// at most <see cref="Burst"/>. A token is whatever the device counts: a byte, a request, a frame.
/// </summary>
/// <remarks>
/// <para>
/// Two ways to take tokens. <see cref="Consume"/> and <see cref="ConsumeAsync"/> always take them and may run the
/// bucket into debt; the caller waits until the debt is repaid, so a request larger than the burst still passes and
/// the long-run rate holds (use it for work the guest waits for: disk requests, transmitted frames).
/// <see cref="TryConsume"/> takes tokens only if they are there now (use it for input that may be dropped instead:
/// frames arriving for the guest).
/// </para>
/// <para>Threading: every member is thread-safe; the lock is held only for arithmetic, never while waiting.</para>
/// </remarks>
public sealed class TokenBucket
{
    private readonly Lock _sync = new();
    private readonly TimeProvider _time;
    private double _tokens;
    private long _last;
    private long _consumed;
    private long _throttled;

    /// <summary>Creates a full bucket.</summary>
    /// <param name="ratePerSecond">Tokens added per second; must be positive.</param>
    /// <param name="burst">Most tokens the bucket holds; 0 (the default) for one second's worth.</param>
    /// <param name="timeProvider">The clock that measures refills and waits; <see cref="TimeProvider.System"/> by default.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="ratePerSecond"/> is not positive or <paramref name="burst"/> is negative.</exception>
    public TokenBucket(long ratePerSecond, long burst = 0, TimeProvider? timeProvider = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(ratePerSecond);
        ArgumentOutOfRangeException.ThrowIfNegative(burst);
        _time = timeProvider ?? TimeProvider.System;
        RatePerSecond = ratePerSecond;
        Burst = burst > 0 ? burst : ratePerSecond;
        _tokens = Burst;
        _last = _time.GetTimestamp();
    }

    /// <summary>Tokens added per second.</summary>
    public long RatePerSecond { get; }

    /// <summary>Most tokens the bucket holds (and so the most that pass at once after a quiet spell).</summary>
    public long Burst { get; }

    /// <summary>Tokens taken so far (what passed through the limit: bytes, requests or frames).</summary>
    public long TotalConsumed => Interlocked.Read(ref _consumed);

    /// <summary>
    /// Times the limit held something back: a <see cref="Consume"/> that ran into debt (its caller waits) or a
    /// <see cref="TryConsume"/> that was refused.
    /// </summary>
    public long ThrottledCount => Interlocked.Read(ref _throttled);

    /// <summary>
    /// Takes <paramref name="amount"/> tokens, running into debt if there are not enough, and returns how long the
    /// caller must wait before acting (<see cref="TimeSpan.Zero"/> when the tokens were there).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="amount"/> is negative.</exception>
    public TimeSpan Consume(long amount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(amount);
        lock (_sync)
        {
            Refill();
            _tokens -= amount;
            _consumed += amount;
            if (_tokens >= 0)
            {
                return TimeSpan.Zero;
            }

            _throttled++;
            return TimeSpan.FromSeconds(-_tokens / RatePerSecond);
        }
    }

    /// <summary>
    /// Takes <paramref name="amount"/> tokens as <see cref="Consume"/> does and waits out the debt on the bucket's
    /// clock. Completes synchronously when no wait is needed.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="amount"/> is negative.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled during the wait
    /// (the tokens stay taken).</exception>
    public ValueTask ConsumeAsync(long amount, CancellationToken cancellationToken = default)
    {
        var wait = Consume(amount);
        return wait > TimeSpan.Zero ? new ValueTask(Task.Delay(wait, _time, cancellationToken)) : ValueTask.CompletedTask;
    }

    /// <summary>Takes <paramref name="amount"/> tokens if they are there now and returns true; otherwise takes nothing and returns false.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="amount"/> is negative.</exception>
    public bool TryConsume(long amount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(amount);
        lock (_sync)
        {
            Refill();
            if (_tokens < amount)
            {
                _throttled++;
                return false;
            }

            _tokens -= amount;
            _consumed += amount;
            return true;
        }
    }

    private void Refill()
    {
        long now = _time.GetTimestamp();
        double seconds = _time.GetElapsedTime(_last, now).TotalSeconds;
        _last = now;
        _tokens = Math.Min(Burst, _tokens + (seconds * RatePerSecond));
    }
}
