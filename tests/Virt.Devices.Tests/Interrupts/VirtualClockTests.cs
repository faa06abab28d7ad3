using Virt.Devices.Interrupts;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

public sealed class VirtualClockTests
{
    [Fact]
    public void Timers_fire_in_deadline_order_at_their_own_tick()
    {
        var clock = new VirtualClock();
        var fired = new List<(string, long, long)>();
        var a = clock.CreateTimer(t => fired.Add(("a", t, clock.Now)));
        var b = clock.CreateTimer(t => fired.Add(("b", t, clock.Now)));
        a.Schedule(300);
        b.Schedule(100);
        clock.AdvanceTo(250);
        Assert.Equal([("b", 100L, 100L)], fired);
        Assert.Equal(250, clock.Now);
        Assert.Equal(300, clock.NextDeadline);
        clock.Advance(100);
        Assert.Equal(("a", 300L, 300L), fired[1]);
        Assert.Null(clock.NextDeadline);
    }

    [Fact]
    public void A_callback_may_rearm_its_timer_and_each_period_fires()
    {
        var clock = new VirtualClock();
        int count = 0;
        ClockTimer? t = null;
        t = clock.CreateTimer(d =>
        {
            count++;
            t!.Schedule(d + 10);
        });
        t.Schedule(10);
        clock.AdvanceTo(55);
        Assert.Equal(5, count);
        Assert.Equal(60, t.ScheduledAt);
    }

    [Fact]
    public void Cancelled_timer_does_not_fire_and_time_never_goes_back()
    {
        var clock = new VirtualClock();
        bool fired = false;
        var t = clock.CreateTimer(_ => fired = true);
        t.Schedule(5);
        t.Cancel();
        clock.AdvanceTo(10);
        clock.AdvanceTo(3);
        Assert.False(fired);
        Assert.Equal(10, clock.Now);
    }

    [Fact]
    public void Cycle_conversion_rounds_deadlines_up()
    {
        var clock = new VirtualClock(1_000_000_000);
        Assert.Equal(839, clock.FromCycles(1, 1_193_182)); // 838.1 ns, rounded up
        Assert.Equal(1_193_182, clock.ToCycles(1_000_000_000, 1_193_182));
    }
}
