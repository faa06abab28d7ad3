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

    private sealed class ManualClock : TimeProvider
    {
        private long _ticks;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;
        public override long GetTimestamp() => _ticks;
        public void Advance(TimeSpan by) => _ticks += by.Ticks;
    }
}
