using System.Buffers.Binary;
using System.Text;

namespace Virt.Sandbox.Linux;

// What the program learns of its host and itself: getgroups, getresuid, sysinfo, getrusage, times, prctl, close_range, wait4 (no children).
internal sealed partial class LinuxAbi
{
    /// <summary><c>getgroups</c>: one supplementary group, the program's own gid.</summary>
    private long Getgroups(int size, ulong list)
    {
        if (size < 0)
        {
            return -Errno.EINVAL;
        }

        if (size == 0)
        {
            return 1;
        }

        return WriteU32(list, (uint)HostUid) ? 1 : -Errno.EFAULT;
    }

    private long Getresid(ulong real, ulong effective, ulong saved) =>
        WriteU32(real, (uint)HostUid) && WriteU32(effective, (uint)HostUid) && WriteU32(saved, (uint)HostUid) ? 0 : -Errno.EFAULT;

    /// <summary><c>setuid</c> family: the program may "change" to the ids it has; anything else needs privileges it lacks.</summary>
    private static long SetId(params ulong[] ids)
    {
        foreach (var id in ids)
        {
            if ((uint)id != uint.MaxValue && (uint)id != (uint)HostUid)
            {
                return -Errno.EPERM;
            }
        }

        return 0;
    }

    /// <summary><c>sysinfo</c>: uptime from the guest's monotonic clock, RAM from the memory limit, one process.</summary>
    private long Sysinfo(ulong pointer)
    {
        Span<byte> s = stackalloc byte[112];
        s.Clear();
        ulong total = _config.MemoryBytes;
        ulong used = (ulong)(_arena.UsedPages + (int)_space.StackPages) * Machine.GuestLayout.PageSize;
        BinaryPrimitives.WriteInt64LittleEndian(s, MonotonicNanoseconds() / 1_000_000_000);
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], total);
        BinaryPrimitives.WriteUInt64LittleEndian(s[40..], total > used ? total - used : 0);
        BinaryPrimitives.WriteUInt16LittleEndian(s[80..], (ushort)ThreadCount);
        BinaryPrimitives.WriteUInt32LittleEndian(s[104..], 1); // mem_unit
        return WriteUser(pointer, s) ? 0 : -Errno.EFAULT;
    }

    /// <summary><c>getrusage</c>: user time as the run's wall time so far, peak memory, no children.</summary>
    private long Getrusage(int who, ulong pointer)
    {
        const int Self = 0, Children = -1, Thread = 1;
        if (who is not (Self or Children or Thread))
        {
            return -Errno.EINVAL;
        }

        Span<byte> r = stackalloc byte[144];
        r.Clear();
        if (who != Children)
        {
            long us = (long)_runClock.Elapsed.TotalMicroseconds;
            BinaryPrimitives.WriteInt64LittleEndian(r, us / 1_000_000);
            BinaryPrimitives.WriteInt64LittleEndian(r[8..], us % 1_000_000);
            long maxRssKb = (long)((ulong)(_arena.PeakPages + (int)_space.StackPages) * Machine.GuestLayout.PageSize / 1024);
            BinaryPrimitives.WriteInt64LittleEndian(r[32..], maxRssKb);
        }

        return WriteUser(pointer, r) ? 0 : -Errno.EFAULT;
    }

    /// <summary><c>times</c>: clock ticks (100 per second) of the run so far.</summary>
    private long Times(ulong pointer)
    {
        long ticks = (long)(_runClock.Elapsed.TotalMilliseconds / 10);
        if (pointer != 0)
        {
            Span<byte> t = stackalloc byte[32];
            t.Clear();
            BinaryPrimitives.WriteInt64LittleEndian(t, ticks);
            if (!WriteUser(pointer, t))
            {
                return -Errno.EFAULT;
            }
        }

        return (MonotonicNanoseconds() / 10_000_000) & long.MaxValue;
    }

    private long Prctl(int option, ulong a1)
    {
        const int SetPdeathsig = 1, GetPdeathsig = 2, GetDumpable = 3, SetDumpable = 4, SetName = 15, GetName = 16,
            GetSeccomp = 21, SetNoNewPrivs = 38, GetNoNewPrivs = 39, CapbsetRead = 23, GetTimerslack = 30, SetTimerslack = 29;
        switch (option)
        {
            case SetPdeathsig:
                return a1 <= 64 ? 0 : -Errno.EINVAL;
            case GetPdeathsig:
                return WriteU32(a1, 0) ? 0 : -Errno.EFAULT;
            case GetDumpable:
                return _state.Dumpable ? 1 : 0;
            case SetDumpable:
                if (a1 > 1)
                {
                    return -Errno.EINVAL;
                }

                _state.Dumpable = a1 == 1;
                return 0;
            case SetName:
            {
                string? name = ReadString(a1, 4096);
                if (name is null)
                {
                    return -Errno.EFAULT;
                }

                byte[] bytes = Encoding.UTF8.GetBytes(name);
                _state.ThreadName = Encoding.UTF8.GetString(bytes, 0, Math.Min(bytes.Length, 15));
                return 0;
            }

            case GetName:
            {
                var buffer = new byte[16];
                Encoding.UTF8.GetBytes(_state.ThreadName ?? Path.GetFileName(_config.ExecutablePath)).AsSpan(0, Math.Min(15, Encoding.UTF8.GetByteCount(_state.ThreadName ?? Path.GetFileName(_config.ExecutablePath)))).CopyTo(buffer);
                return WriteUser(a1, buffer) ? 0 : -Errno.EFAULT;
            }

            case GetSeccomp:
                return 0;
            case SetNoNewPrivs:
                return a1 == 1 ? 0 : -Errno.EINVAL;
            case GetNoNewPrivs:
                return 1; // the sandbox can never gain privileges
            case CapbsetRead:
                return a1 <= 40 ? 0 : -Errno.EINVAL;
            case GetTimerslack:
                return 50_000;
            case SetTimerslack:
                return 0;
            default:
                return Count(Sys.Prctl, -Errno.EINVAL);
        }
    }

    private long CloseRange(uint first, uint last, uint flags)
    {
        const uint Cloexec = 4, Unshare = 2;
        if (first > last || (flags & ~(Cloexec | Unshare)) != 0)
        {
            return -Errno.EINVAL;
        }

        for (uint fd = first; fd <= Math.Min(last, MaxFds - 1); fd++)
        {
            if ((flags & Cloexec) != 0)
            {
                _state.CloseOnExec[fd] = _state.Fds[fd] is not null;
            }
            else if (_state.Fds[fd] is not null)
            {
                Close((int)fd);
            }
        }

        return 0;
    }

}
