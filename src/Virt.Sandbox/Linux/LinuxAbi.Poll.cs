using System.Buffers.Binary;

namespace Virt.Sandbox.Linux;

// Pipes, eventfds and readiness: pipe, pipe2, eventfd, eventfd2, poll, ppoll, select, pselect6, epoll_create(1), epoll_ctl, epoll_wait, epoll_pwait(2).
internal sealed partial class LinuxAbi
{
    private const uint PollIn = 0x1, PollOut = 0x4, PollErr = 0x8, PollHup = 0x10, PollNval = 0x20, PollRdNorm = 0x40, PollWrNorm = 0x100;
    private const uint EpollEdge = 1u << 31, EpollOneShot = 1u << 30;

    private bool HasPipeEnd(PipeBuffer pipe, FdKind end)
    {
        foreach (var d in _state.Fds)
        {
            if (d is not null && d.Pipe == pipe && d.Kind == end)
            {
                return true;
            }
        }

        return ThreadsHoldPipeEnd(pipe, end);
    }

    private long Pipe2(ulong fdsPointer, int flags)
    {
        if ((flags & ~(int)(OpenFlags.CloseOnExec | OpenFlags.NonBlock | (OpenFlags)0x4000)) != 0)
        {
            return -Errno.EINVAL;
        }

        int r = LowestFreeFd(0);
        if (r < 0)
        {
            return -Errno.EMFILE;
        }

        var o = (OpenFlags)flags & (OpenFlags.CloseOnExec | OpenFlags.NonBlock);
        var pipe = new PipeBuffer();
        _state.Fds[r] = new FileDescription(FdKind.PipeRead, OpenFlags.ReadOnly | (o & OpenFlags.NonBlock)) { Pipe = pipe };
        int w = LowestFreeFd(0);
        if (w < 0)
        {
            _state.Fds[r] = null;
            return -Errno.EMFILE;
        }

        _state.Fds[w] = new FileDescription(FdKind.PipeWrite, OpenFlags.WriteOnly | (o & OpenFlags.NonBlock)) { Pipe = pipe };
        Span<byte> pair = stackalloc byte[8];
        BinaryPrimitives.WriteInt32LittleEndian(pair, r);
        BinaryPrimitives.WriteInt32LittleEndian(pair[4..], w);
        if (!WriteUser(fdsPointer, pair))
        {
            _state.Fds[r] = _state.Fds[w] = null;
            return -Errno.EFAULT;
        }

        _state.CloseOnExec[r] = _state.CloseOnExec[w] = (o & OpenFlags.CloseOnExec) != 0;
        return 0;
    }

    private long Eventfd(ulong initial, int flags)
    {
        const int EfdSemaphore = 1;
        if ((flags & ~(int)(OpenFlags.CloseOnExec | OpenFlags.NonBlock) & ~EfdSemaphore) != 0)
        {
            return -Errno.EINVAL;
        }

        var o = (OpenFlags)flags;
        return Install(new FileDescription(FdKind.EventFd, OpenFlags.ReadWrite | (o & OpenFlags.NonBlock))
        {
            Counter = new EventCounter { Value = (uint)initial, Semaphore = (flags & EfdSemaphore) != 0 },
        }, o);
    }

    /// <summary>What <paramref name="d"/> is ready for now, as poll bits (POLLIN, POLLOUT, POLLHUP, POLLERR, with the RDNORM/WRNORM twins).</summary>
    private uint Readiness(FileDescription d)
    {
        switch (d.Kind)
        {
            case FdKind.Stdin:
                // All of stdin is there from the start and nobody writes more: readable, and hung up like a pipe whose writer left.
                return (_stdinPosition < _stdin.Length ? PollIn | PollRdNorm : 0) | PollHup;
            case FdKind.Stdout or FdKind.Stderr:
                return PollOut | PollWrNorm;
            case FdKind.PipeRead:
                return (d.Pipe!.Count > 0 ? PollIn | PollRdNorm : 0) | (HasPipeEnd(d.Pipe, FdKind.PipeWrite) ? 0 : PollHup);
            case FdKind.PipeWrite:
                return !HasPipeEnd(d.Pipe!, FdKind.PipeRead) ? PollErr : d.Pipe!.Count < PipeBuffer.Capacity ? PollOut | PollWrNorm : 0;
            case FdKind.EventFd:
                return (d.Counter!.Value > 0 ? PollIn | PollRdNorm : 0) | (d.Counter.Value < ulong.MaxValue - 1 ? PollOut | PollWrNorm : 0);
            case FdKind.Epoll:
                return CollectEpoll(d, null, 0) > 0 ? PollIn | PollRdNorm : 0;
            case FdKind.SignalFd:
                return ((_current.Signals.Pending | _state.Signals.Pending) & d.SignalMask) != 0 ? PollIn | PollRdNorm : 0;
            default:
                return PollIn | PollRdNorm | PollOut | PollWrNorm; // files and devices never wait
        }
    }

    /// <summary>Reads a timeout in milliseconds (negative: none) as a deadline on the monotonic clock, or long.MaxValue.</summary>
    private long DeadlineAfterMilliseconds(long milliseconds) =>
        milliseconds < 0 ? long.MaxValue : MonotonicNanoseconds() + Math.Min(milliseconds, 1L << 40) * 1_000_000;

    /// <summary>Reads a <c>struct timespec</c> timeout (null: none) as a deadline; -errno on a bad one.</summary>
    private long DeadlineAfterTimespec(ulong pointer, out long deadline)
    {
        deadline = long.MaxValue;
        if (pointer == 0)
        {
            return 0;
        }

        if (!ReadU64(pointer, out ulong s) || !ReadU64(pointer + 8, out ulong ns))
        {
            return -Errno.EFAULT;
        }

        if ((long)s < 0 || ns >= 1_000_000_000)
        {
            return -Errno.EINVAL;
        }

        deadline = s == 0 && ns == 0 ? 0 : MonotonicNanoseconds() + ((long)Math.Min(s, 1UL << 32) * 1_000_000_000) + (long)ns;
        return 0;
    }

    private long Poll(ulong fdsPointer, ulong count, long deadline)
    {
        if (count > MaxFds * 16UL)
        {
            return -Errno.EINVAL;
        }

        var fds = new byte[(int)count * 8];
        if (!ReadUser(fdsPointer, fds))
        {
            return -Errno.EFAULT;
        }

        int ready = 0;
        for (int i = 0; i < (int)count; i++)
        {
            var entry = fds.AsSpan(i * 8, 8);
            int fd = BinaryPrimitives.ReadInt32LittleEndian(entry);
            uint events = BinaryPrimitives.ReadUInt16LittleEndian(entry[4..]);
            uint revents = 0;
            if (fd >= 0)
            {
                revents = !ValidFd(fd) ? PollNval : Readiness(_state.Fds[fd]!) & (events | PollErr | PollHup);
            }

            BinaryPrimitives.WriteUInt16LittleEndian(entry[6..], (ushort)revents);
            if (revents != 0)
            {
                ready++;
            }
        }

        if (ready == 0 && !TimedOut(deadline))
        {
            return Block(deadline);
        }

        return WriteUser(fdsPointer, fds) ? ready : -Errno.EFAULT;
    }

    private long PollMilliseconds(ulong fds, ulong count, long timeout) => Poll(fds, count, timeout == 0 ? 0 : DeadlineAfterMilliseconds((int)timeout));

    private long Ppoll(ulong fds, ulong count, ulong timeout)
    {
        long e = DeadlineAfterTimespec(timeout, out long deadline);
        return e < 0 ? e : Poll(fds, count, deadline);
    }

    private long Select(int count, ulong readSet, ulong writeSet, ulong exceptSet, long deadline)
    {
        if (count < 0 || count > MaxFds)
        {
            return count < 0 ? -Errno.EINVAL : Select(MaxFds, readSet, writeSet, exceptSet, deadline);
        }

        int words = (count + 63) / 64;
        var sets = new ulong[3][];
        ulong[] pointers = [readSet, writeSet, exceptSet];
        for (int s = 0; s < 3; s++)
        {
            sets[s] = new ulong[words];
            for (int w = 0; w < words && pointers[s] != 0; w++)
            {
                if (!ReadU64(pointers[s] + (ulong)(w * 8), out sets[s][w]))
                {
                    return -Errno.EFAULT;
                }
            }
        }

        var result = new ulong[3][];
        int ready = 0;
        for (int s = 0; s < 3; s++)
        {
            result[s] = new ulong[words];
        }

        for (int fd = 0; fd < count; fd++)
        {
            ulong bit = 1UL << (fd & 63);
            int w = fd / 64;
            bool any = ((sets[0][w] | sets[1][w] | sets[2][w]) & bit) != 0;
            if (!any)
            {
                continue;
            }

            if (!ValidFd(fd))
            {
                return -Errno.EBADF;
            }

            uint r = Readiness(_state.Fds[fd]!);
            if ((sets[0][w] & bit) != 0 && (r & (PollIn | PollHup | PollErr)) != 0)
            {
                result[0][w] |= bit;
                ready++;
            }

            if ((sets[1][w] & bit) != 0 && (r & (PollOut | PollErr)) != 0)
            {
                result[1][w] |= bit;
                ready++;
            }
        }

        if (ready == 0 && !TimedOut(deadline))
        {
            return Block(deadline);
        }

        for (int s = 0; s < 3; s++)
        {
            for (int w = 0; w < words && pointers[s] != 0; w++)
            {
                if (!WriteU64(pointers[s] + (ulong)(w * 8), result[s][w]))
                {
                    return -Errno.EFAULT;
                }
            }
        }

        return ready;
    }

    private long SelectTimeval(int count, ulong readSet, ulong writeSet, ulong exceptSet, ulong timeval)
    {
        long deadline = long.MaxValue;
        if (timeval != 0)
        {
            if (!ReadU64(timeval, out ulong s) || !ReadU64(timeval + 8, out ulong us))
            {
                return -Errno.EFAULT;
            }

            if ((long)s < 0 || us >= 1_000_000)
            {
                return -Errno.EINVAL;
            }

            deadline = s == 0 && us == 0 ? 0 : MonotonicNanoseconds() + ((long)Math.Min(s, 1UL << 32) * 1_000_000_000) + ((long)us * 1000);
        }

        long r = Select(count, readSet, writeSet, exceptSet, deadline);
        if (r == 0 && timeval != 0 && !WriteUser(timeval, new byte[16]))
        {
            return -Errno.EFAULT;
        }

        return r;
    }

    private long Pselect6(int count, ulong readSet, ulong writeSet, ulong exceptSet, ulong timespec)
    {
        long e = DeadlineAfterTimespec(timespec, out long deadline);
        if (e < 0)
        {
            return e;
        }

        return Select(count, readSet, writeSet, exceptSet, deadline);
    }

    // ---- epoll ---------------------------------------------------------------------------

    private long EpollCreate(int flags)
    {
        if ((flags & ~(int)OpenFlags.CloseOnExec) != 0)
        {
            return -Errno.EINVAL;
        }

        return Install(new FileDescription(FdKind.Epoll, OpenFlags.ReadOnly) { Interest = [] }, (OpenFlags)flags);
    }

    private long EpollCtl(int epfd, int op, int fd, ulong eventPointer)
    {
        const int Add = 1, Del = 2, Mod = 3;
        if (!ValidFd(epfd) || !ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var ep = _state.Fds[epfd]!;
        var target = _state.Fds[fd]!;
        if (ep.Kind != FdKind.Epoll || epfd == fd || target == ep)
        {
            return -Errno.EINVAL;
        }

        if (target.Kind is FdKind.File or FdKind.Directory)
        {
            return -Errno.EPERM; // as on Linux: regular files are always ready and cannot be watched
        }

        PruneEpoll(ep);
        var entry = ep.Interest!.Find(e => e.Fd == fd && e.Description == target);
        uint events = 0;
        ulong data = 0;
        if (op != Del)
        {
            Span<byte> ev = stackalloc byte[12];
            if (!ReadUser(eventPointer, ev))
            {
                return -Errno.EFAULT;
            }

            events = BinaryPrimitives.ReadUInt32LittleEndian(ev);
            data = BinaryPrimitives.ReadUInt64LittleEndian(ev[4..]);
        }

        switch (op)
        {
            case Add:
                if (entry is not null)
                {
                    return -Errno.EEXIST;
                }

                if (ep.Interest.Count >= MaxFds * 4)
                {
                    return -Errno.ENOSPC;
                }

                ep.Interest.Add(new EpollEntry { Fd = fd, Description = target, Events = events, Data = data });
                return 0;
            case Mod:
                if (entry is null)
                {
                    return -Errno.ENOENT;
                }

                entry.Events = events;
                entry.Data = data;
                entry.Disabled = false;
                entry.LastReported = 0;
                return 0;
            case Del:
                return entry is null ? -Errno.ENOENT : ep.Interest.Remove(entry) ? 0 : -Errno.ENOENT;
            default:
                return -Errno.EINVAL;
        }
    }

    /// <summary>Drops registrations whose description no descriptor holds any more (Linux drops them at the last close).</summary>
    private void PruneEpoll(FileDescription ep) =>
        ep.Interest!.RemoveAll(e => Array.IndexOf(_state.Fds, e.Description) < 0);

    /// <summary>Ready registrations of <paramref name="ep"/>, written to <paramref name="output"/> (12-byte records) when given.</summary>
    private int CollectEpoll(FileDescription ep, byte[]? output, int max)
    {
        PruneEpoll(ep);
        int n = 0;
        foreach (var e in ep.Interest!)
        {
            if (e.Disabled)
            {
                continue;
            }

            uint ready = Readiness(e.Description) & (e.Events | PollErr | PollHup) & 0xFFFF;
            if ((e.Events & EpollEdge) != 0)
            {
                uint fresh = ready & ~e.LastReported;
                if (output is not null)
                {
                    e.LastReported = ready;
                }

                ready = fresh;
            }

            if (ready == 0)
            {
                continue;
            }

            if (output is null)
            {
                return 1;
            }

            if (n >= max)
            {
                break;
            }

            BinaryPrimitives.WriteUInt32LittleEndian(output.AsSpan(n * 12), ready);
            BinaryPrimitives.WriteUInt64LittleEndian(output.AsSpan((n * 12) + 4), e.Data);
            if ((e.Events & EpollOneShot) != 0)
            {
                e.Disabled = true;
            }

            n++;
        }

        return n;
    }

    private long EpollWait(int epfd, ulong events, int max, long deadline)
    {
        if (!ValidFd(epfd))
        {
            return -Errno.EBADF;
        }

        var ep = _state.Fds[epfd]!;
        if (ep.Kind != FdKind.Epoll || max <= 0 || max > 4096)
        {
            return -Errno.EINVAL;
        }

        var output = new byte[max * 12];
        int n = CollectEpoll(ep, output, max);
        if (n == 0 && !TimedOut(deadline))
        {
            return Block(deadline);
        }

        return WriteUser(events, output.AsSpan(0, n * 12)) ? n : -Errno.EFAULT;
    }

    private long EpollWaitMilliseconds(int epfd, ulong events, int max, int timeout) =>
        EpollWait(epfd, events, max, timeout == 0 ? 0 : DeadlineAfterMilliseconds(timeout));

    private long EpollPwait2(int epfd, ulong events, int max, ulong timeout)
    {
        long e = DeadlineAfterTimespec(timeout, out long deadline);
        return e < 0 ? e : EpollWait(epfd, events, max, deadline);
    }
}
