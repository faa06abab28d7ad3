namespace Virt.Devices.Interrupts;

/// <summary>
/// Virtual time for timers: a tick count that only moves when the CPU advances it (by instructions
/// retired, by skipping ahead while halted, or from the host clock), so timer behaviour is
/// deterministic and testable. One tick is one TSC cycle at <see cref="Frequency"/>.
/// </summary>
/// <remarks>
/// Thread-safe. Timer callbacks run on the thread that calls <see cref="AdvanceTo"/>, outside the
/// clock's lock, in deadline order; a callback may reschedule its own or another timer.
/// </remarks>
public sealed partial class VirtualClock : Virt.Platform.IPlatformClock
{
    private readonly Lock _lock = new();
    private readonly List<ClockTimer> _timers = [];
    private long _now;
    private long _target;

    /// <summary>Creates a clock that runs at <paramref name="frequency"/> ticks per second, starting at tick 0.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The frequency is not positive.</exception>
    public VirtualClock(long frequency = DefaultFrequency)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(frequency);
        Frequency = frequency;
    }

    /// <summary>The default frequency: 1 GHz, so a tick is a nanosecond.</summary>
    public const long DefaultFrequency = 1_000_000_000;

    /// <summary>Ticks per second (the TSC frequency the guest is told).</summary>
    public long Frequency { get; }

    /// <summary>The current tick (the guest's TSC).</summary>
    public long Now
    {
        get
        {
            lock (_lock)
            {
                return _now;
            }
        }
    }

    /// <summary>
    /// The tick the current <see cref="AdvanceTo"/> is moving to (equal to <see cref="Now"/> outside an
    /// advance). A periodic timer's callback re-arms past it to coalesce the periods a large jump
    /// skipped, as an overloaded host loses ticks, instead of firing once per missed period.
    /// </summary>
    public long AdvanceTarget
    {
        get
        {
            lock (_lock)
            {
                return Math.Max(_target, _now);
            }
        }
    }

    /// <summary>The earliest scheduled deadline, or <see langword="null"/> when no timer is armed. A halted CPU may jump here.</summary>
    public long? NextDeadline
    {
        get
        {
            lock (_lock)
            {
                long? best = null;
                foreach (var t in _timers)
                {
                    if (t.Deadline is long d && (best is null || d < best))
                    {
                        best = d;
                    }
                }

                return best;
            }
        }
    }

    /// <summary>Moves time forward by <paramref name="ticks"/> and fires the timers that fall due.</summary>
    public void Advance(long ticks)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(ticks);
        AdvanceTo(checked(Now + ticks));
    }

    /// <summary>Moves time forward to <paramref name="tick"/> (never backwards) and fires the timers that fall due, each at its own deadline.</summary>
    public void AdvanceTo(long tick)
    {
        lock (_lock)
        {
            _target = Math.Max(_target, tick);
        }

        while (true)
        {
            ClockTimer? due = null;
            long deadline = 0;
            lock (_lock)
            {
                foreach (var t in _timers)
                {
                    if (t.Deadline is long d && d <= tick && (due is null || d < deadline))
                    {
                        due = t;
                        deadline = d;
                    }
                }

                if (due is null)
                {
                    _now = Math.Max(_now, tick);
                    return;
                }

                _now = Math.Max(_now, deadline);
                due.Deadline = null;
            }

            due.Callback(deadline);
        }
    }

    /// <summary>Creates a timer that calls <paramref name="callback"/> with its deadline when it fires.</summary>
    public ClockTimer CreateTimer(Action<long> callback)
    {
        ArgumentNullException.ThrowIfNull(callback);
        var t = new ClockTimer(this, callback);
        lock (_lock)
        {
            _timers.Add(t);
        }

        return t;
    }

    /// <summary>Converts <paramref name="ticks"/> of this clock to cycles of a <paramref name="hz"/> clock (rounded down).</summary>
    public long ToCycles(long ticks, long hz) => (long)((UInt128)(ulong)ticks * (ulong)hz / (ulong)Frequency);

    /// <summary>Converts <paramref name="cycles"/> of a <paramref name="hz"/> clock to ticks of this clock (rounded up, so a deadline is never early).</summary>
    public long FromCycles(long cycles, long hz)
    {
        UInt128 product = (UInt128)(ulong)cycles * (ulong)Frequency;
        UInt128 result = (product + (ulong)hz - 1) / (ulong)hz;
        return result > long.MaxValue ? long.MaxValue : (long)result;
    }

    internal void Set(ClockTimer timer, long? deadline)
    {
        lock (_lock)
        {
            timer.Deadline = deadline;
        }
    }

    internal long? Get(ClockTimer timer)
    {
        lock (_lock)
        {
            return timer.Deadline;
        }
    }
}

/// <summary>A one-shot deadline on a <see cref="VirtualClock"/>; periodic devices re-arm it from the callback.</summary>
public sealed class ClockTimer
{
    private readonly VirtualClock _clock;

    internal ClockTimer(VirtualClock clock, Action<long> callback)
    {
        _clock = clock;
        Callback = callback;
    }

    internal Action<long> Callback { get; }

    internal long? Deadline { get; set; }

    /// <summary>The armed deadline, or <see langword="null"/>.</summary>
    public long? ScheduledAt => _clock.Get(this);

    /// <summary>Arms the timer for tick <paramref name="deadline"/> (a deadline in the past fires on the next advance).</summary>
    public void Schedule(long deadline) => _clock.Set(this, deadline);

    /// <summary>Disarms the timer.</summary>
    public void Cancel() => _clock.Set(this, null);
}
