namespace Virt.Devices.Virtio;

/// <summary>
/// A token bucket: <c>rate</c> tokens a second, holding at most <c>burst</c>. Consuming may run the bucket into
/// debt, and the caller waits the time the debt takes to repay, so a request larger than the burst still passes.
/// </summary>
internal sealed class TokenBucket
{
    private readonly Lock _sync = new();
    private readonly TimeProvider _time;
    private readonly double _rate;
    private readonly double _burst;
    private double _tokens;
    private long _last;

    public TokenBucket(long ratePerSecond, long burst = 0, TimeProvider? time = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(ratePerSecond);
        _time = time ?? TimeProvider.System;
        _rate = ratePerSecond;
        _burst = burst > 0 ? burst : ratePerSecond;
        _tokens = _burst;
        _last = _time.GetTimestamp();
    }

    /// <summary>Takes <paramref name="amount"/> tokens and returns how long the caller must wait before acting.</summary>
    public TimeSpan Consume(long amount)
    {
        lock (_sync)
        {
            Refill();
            _tokens -= amount;
            return _tokens >= 0 ? TimeSpan.Zero : TimeSpan.FromSeconds(-_tokens / _rate);
        }
    }

    /// <summary>Takes <paramref name="amount"/> tokens if they are there now; otherwise takes nothing.</summary>
    public bool TryConsume(long amount)
    {
        lock (_sync)
        {
            Refill();
            if (_tokens < amount)
            {
                return false;
            }

            _tokens -= amount;
            return true;
        }
    }

    private void Refill()
    {
        long now = _time.GetTimestamp();
        double seconds = _time.GetElapsedTime(_last, now).TotalSeconds;
        _last = now;
        _tokens = Math.Min(_burst, _tokens + (seconds * _rate));
    }
}
