using System.Buffers.Binary;

namespace Virt.Sandbox.Linux;

// Interval timers: alarm, setitimer and getitimer for ITIMER_REAL, which sends SIGALRM on the guest's monotonic clock
// (host time plus the time waits skipped). ITIMER_VIRTUAL and ITIMER_PROF count CPU time the sandbox does not track:
// they are refused with EINVAL. A timer expires when the program next makes a system call after its deadline, or, when
// every thread waits, at once: the guest's clocks jump to the deadline as they do for nanosleep.
internal sealed partial class LinuxAbi
{
    private const int Sigalrm = 14;
    private const int ItimerReal = 0;

    /// <summary>The earliest ITIMER_REAL deadline of any live process, or long.MaxValue.</summary>
    private long EarliestTimer()
    {
        long earliest = long.MaxValue;
        foreach (var p in _processes)
        {
            if (!p.Zombie && p.State.Signals.AlarmDeadline < earliest)
            {
                earliest = p.State.Signals.AlarmDeadline;
            }
        }

        return earliest;
    }

    /// <summary>Sends SIGALRM for every timer whose deadline has passed and reloads interval timers; true when one fired.</summary>
    private bool FireDueTimers()
    {
        long earliest = EarliestTimer();
        if (earliest == long.MaxValue)
        {
            return false;
        }

        long now = MonotonicNanoseconds();
        if (earliest > now)
        {
            return false;
        }

        foreach (var p in _processes.ToArray())
        {
            var s = p.State.Signals;
            if (p.Zombie || s.AlarmDeadline > now)
            {
                continue;
            }

            if (s.AlarmInterval > 0)
            {
                // Expirations missed while nothing asked are one signal, as for a pending standard signal.
                long missed = ((now - s.AlarmDeadline) / s.AlarmInterval) + 1;
                s.AlarmDeadline += missed * s.AlarmInterval;
            }
            else
            {
                s.AlarmDeadline = long.MaxValue;
            }

            SendSignal(p, null, new SignalInfo(Sigalrm, SiKernel, 0, 0));
        }

        return true;
    }

    /// <summary>The time left on the caller's ITIMER_REAL, in nanoseconds (0: disarmed).</summary>
    private long TimerLeft()
    {
        long deadline = _state.Signals.AlarmDeadline;
        return deadline == long.MaxValue ? 0 : Math.Max(1000, deadline - MonotonicNanoseconds());
    }

    private void ArmTimer(long value, long interval)
    {
        _state.Signals.AlarmDeadline = value == 0 ? long.MaxValue : MonotonicNanoseconds() + value;
        _state.Signals.AlarmInterval = value == 0 ? 0 : interval;
    }

    /// <summary>alarm: ITIMER_REAL once after <paramref name="seconds"/>; returns the seconds the old one had left, rounded as Linux rounds.</summary>
    private long Alarm(ulong seconds)
    {
        long left = TimerLeft();
        long s = (long)Math.Min(seconds & 0xFFFF_FFFF, int.MaxValue);
        ArmTimer(s * 1_000_000_000, 0);
        long oldSeconds = left / 1_000_000_000;
        if ((left % 1_000_000_000 >= 500_000_000) || (left > 0 && oldSeconds == 0))
        {
            oldSeconds++;
        }

        return oldSeconds;
    }

    private bool WriteItimerval(ulong pointer, long interval, long value)
    {
        Span<byte> b = stackalloc byte[32];
        BinaryPrimitives.WriteInt64LittleEndian(b, interval / 1_000_000_000);
        BinaryPrimitives.WriteInt64LittleEndian(b[8..], interval % 1_000_000_000 / 1000);
        BinaryPrimitives.WriteInt64LittleEndian(b[16..], value / 1_000_000_000);
        BinaryPrimitives.WriteInt64LittleEndian(b[24..], value % 1_000_000_000 / 1000);
        return WriteUser(pointer, b);
    }

    private long Getitimer(int which, ulong current)
    {
        if (which != ItimerReal)
        {
            return which is 1 or 2 ? Count(Sys.Getitimer, -Errno.EINVAL) : -Errno.EINVAL;
        }

        return WriteItimerval(current, _state.Signals.AlarmInterval, TimerLeft()) ? 0 : -Errno.EFAULT;
    }

    private long Setitimer(int which, ulong value, ulong old)
    {
        if (which != ItimerReal)
        {
            return which is 1 or 2 ? Count(Sys.Setitimer, -Errno.EINVAL) : -Errno.EINVAL;
        }

        long interval = 0, first = 0;
        if (value != 0)
        {
            Span<byte> b = stackalloc byte[32];
            if (!ReadUser(value, b))
            {
                return -Errno.EFAULT;
            }

            long isec = BinaryPrimitives.ReadInt64LittleEndian(b), iusec = BinaryPrimitives.ReadInt64LittleEndian(b[8..]);
            long vsec = BinaryPrimitives.ReadInt64LittleEndian(b[16..]), vusec = BinaryPrimitives.ReadInt64LittleEndian(b[24..]);
            if (isec < 0 || vsec < 0 || iusec is < 0 or >= 1_000_000 || vusec is < 0 or >= 1_000_000)
            {
                return -Errno.EINVAL;
            }

            const long MaxSeconds = 1L << 32;
            interval = (Math.Min(isec, MaxSeconds) * 1_000_000_000) + (iusec * 1000);
            first = (Math.Min(vsec, MaxSeconds) * 1_000_000_000) + (vusec * 1000);
        }

        if (old != 0 && !WriteItimerval(old, _state.Signals.AlarmInterval, TimerLeft()))
        {
            return -Errno.EFAULT;
        }

        ArmTimer(first, interval);
        return 0;
    }
}
