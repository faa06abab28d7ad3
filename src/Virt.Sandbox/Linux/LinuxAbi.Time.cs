using System.Buffers.Binary;
using System.Diagnostics;

namespace Virt.Sandbox.Linux;

// The guest's clocks: clock_gettime, clock_getres, gettimeofday, time, nanosleep, clock_nanosleep, getcpu.
internal sealed partial class LinuxAbi
{
    /// <summary>The first process's state, which holds what all processes share (the guest's clock offset).</summary>
    private AbiState Shared => _processes.Count > 0 ? _processes[0].State : _state;

    private long MonotonicNanoseconds() =>
        (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency)) + Shared.SleepOffsetNanoseconds;

    private long RealtimeNanoseconds() =>
        ((DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks) * 100) + Shared.SleepOffsetNanoseconds;

    private long WriteTimespec(ulong pointer, long seconds, long nanoseconds)
    {
        if (pointer == 0)
        {
            return 0;
        }

        Span<byte> ts = stackalloc byte[16];
        BinaryPrimitives.WriteInt64LittleEndian(ts, seconds);
        BinaryPrimitives.WriteInt64LittleEndian(ts[8..], nanoseconds);
        return WriteUser(pointer, ts) ? 0 : -Errno.EFAULT;
    }

    private long ClockGettime(int clock, ulong pointer)
    {
        const int Realtime = 0, Monotonic = 1, ProcessCpu = 2, ThreadCpu = 3, MonotonicRaw = 4, RealtimeCoarse = 5, MonotonicCoarse = 6, Boottime = 7;
        long ns = clock switch
        {
            Realtime or RealtimeCoarse => RealtimeNanoseconds(),
            Monotonic or MonotonicRaw or MonotonicCoarse or Boottime or ProcessCpu or ThreadCpu => MonotonicNanoseconds(),
            _ => -1,
        };
        return ns < 0 ? -Errno.EINVAL : WriteTimespec(pointer, ns / 1_000_000_000, ns % 1_000_000_000);
    }

    /// <summary>Every clock reports a resolution of one nanosecond.</summary>
    private long ClockGetres(ulong pointer) => WriteTimespec(pointer, 0, 1);

    private long Gettimeofday(ulong pointer)
    {
        long ns = RealtimeNanoseconds();
        return WriteTimespec(pointer, ns / 1_000_000_000, ns % 1_000_000_000 / 1000);
    }

    private long Time(ulong pointer)
    {
        long s = RealtimeNanoseconds() / 1_000_000_000;
        return pointer == 0 || WriteU64(pointer, (ulong)s) ? s : -Errno.EFAULT;
    }

    /// <summary>
    /// <c>nanosleep</c> and <c>clock_nanosleep</c>: the thread waits while other threads run; when none can, the
    /// guest's clocks jump to the end of the sleep instead of burning the caller's wall time.
    /// </summary>
    private long Nanosleep(ulong request, bool absolute = false, int clock = 1)
    {
        if (_current.TimedOut)
        {
            return 0;
        }

        if (!ReadU64(request, out ulong s) || !ReadU64(request + 8, out ulong ns))
        {
            return -Errno.EFAULT;
        }

        if ((long)s < 0 || ns >= 1_000_000_000)
        {
            return -Errno.EINVAL;
        }

        long span = ((long)Math.Min(s, 1UL << 32) * 1_000_000_000) + (long)ns;
        long now = MonotonicNanoseconds();
        long deadline = !absolute ? now + span : clock == 0 ? span - RealtimeNanoseconds() + now : span;
        return deadline <= now ? 0 : Block(deadline, onDescriptors: false);
    }

    private long ClockNanosleep(int clock, int flags, ulong request)
    {
        const int TimerAbstime = 1;
        if (clock is < 0 or > 11)
        {
            return -Errno.EINVAL;
        }

        return Nanosleep(request, (flags & TimerAbstime) != 0, clock);
    }

    /// <summary>getcpu: one CPU, one NUMA node (the vDSO answers the same without a call).</summary>
    private long Getcpu(ulong cpu, ulong node) =>
        (cpu == 0 || WriteU32(cpu, 0)) && (node == 0 || WriteU32(node, 0)) ? 0 : -Errno.EFAULT;
}
