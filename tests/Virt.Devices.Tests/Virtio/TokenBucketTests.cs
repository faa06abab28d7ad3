using Virt.Devices.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio;

public sealed class TokenBucketTests
{
    [Fact]
    public void Burst_passes_then_debt_is_repaid_at_the_rate()
    {
        var clock = new ManualClock();
        var bucket = new TokenBucket(ratePerSecond: 1000, burst: 1000, clock);

        Assert.Equal(TimeSpan.Zero, bucket.Consume(1000));
        Assert.Equal(TimeSpan.FromSeconds(0.5), bucket.Consume(500));

        clock.Advance(TimeSpan.FromSeconds(0.5));
        Assert.Equal(TimeSpan.FromSeconds(0.1), bucket.Consume(100));
    }

    [Fact]
    public void Try_consume_takes_nothing_when_short()
    {
        var clock = new ManualClock();
        var bucket = new TokenBucket(ratePerSecond: 100, burst: 100, clock);
        Assert.True(bucket.TryConsume(80));
        Assert.False(bucket.TryConsume(30));
        Assert.True(bucket.TryConsume(20));
        clock.Advance(TimeSpan.FromSeconds(10));
        Assert.True(bucket.TryConsume(100));
        Assert.False(bucket.TryConsume(1));
    }

    [Fact]
    public async Task Consume_async_waits_out_the_debt_on_the_bucket_clock()
    {
        var clock = new ManualClock();
        var bucket = new TokenBucket(ratePerSecond: 1000, burst: 1000, clock);

        Assert.True(bucket.ConsumeAsync(1000, TestContext.Current.CancellationToken).AsTask().IsCompletedSuccessfully);
        var wait = bucket.ConsumeAsync(500, TestContext.Current.CancellationToken).AsTask();
        clock.Advance(TimeSpan.FromSeconds(0.4));
        Assert.False(wait.IsCompleted);
        clock.Advance(TimeSpan.FromSeconds(0.1));
        await wait.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task Consume_async_ends_with_cancellation_when_cancelled()
    {
        var bucket = new TokenBucket(ratePerSecond: 1, burst: 1, new ManualClock());
        using var cts = new CancellationTokenSource();
        var wait = bucket.ConsumeAsync(100, cts.Token).AsTask();
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait);
    }

    [Fact]
    public void Bad_arguments_are_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new TokenBucket(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new TokenBucket(10, burst: -1));
        var bucket = new TokenBucket(10);
        Assert.Equal(10, bucket.Burst);
        Assert.Throws<ArgumentOutOfRangeException>(() => bucket.Consume(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => bucket.TryConsume(-1));
    }

    /// <summary>A clock the test moves by hand; its timers fire when it passes their due time.</summary>
    private sealed class ManualClock : TimeProvider
    {
        private readonly List<ManualTimer> _timers = [];
        private long _ticks;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;
        public override long GetTimestamp() => Interlocked.Read(ref _ticks);

        public void Advance(TimeSpan by)
        {
            long now = Interlocked.Add(ref _ticks, by.Ticks);
            ManualTimer[] timers;
            lock (_timers)
            {
                timers = [.. _timers];
            }

            foreach (var timer in timers)
            {
                timer.FireIfDue(now);
            }
        }

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = new ManualTimer(this, callback, state);
            timer.Change(dueTime, period);
            lock (_timers)
            {
                _timers.Add(timer);
            }

            return timer;
        }

        private sealed class ManualTimer(ManualClock clock, TimerCallback callback, object? state) : ITimer
        {
            private long _due = long.MaxValue;

            public bool Change(TimeSpan dueTime, TimeSpan period)
            {
                Interlocked.Exchange(ref _due, dueTime == Timeout.InfiniteTimeSpan ? long.MaxValue : clock.GetTimestamp() + dueTime.Ticks);
                return true;
            }

            public void FireIfDue(long now)
            {
                long due = Interlocked.Read(ref _due);
                if (due <= now && Interlocked.CompareExchange(ref _due, long.MaxValue, due) == due)
                {
                    callback(state);
                }
            }

            public void Dispose() => Interlocked.Exchange(ref _due, long.MaxValue);

            public ValueTask DisposeAsync()
            {
                Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }
}
