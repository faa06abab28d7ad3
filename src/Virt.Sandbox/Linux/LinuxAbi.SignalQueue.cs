using System.Buffers.Binary;

namespace Virt.Sandbox.Linux;

// Queued signals (signal(7), "Real-time signals"): a standard signal is pending at most once and keeps the siginfo of its
// first instance; real-time signals (32 to 64) queue every instance with its own siginfo and are taken oldest first.
// rt_sigqueueinfo and rt_tgsigqueueinfo send with a caller's siginfo, rt_sigtimedwait takes a pending signal instead of
// delivering it, and a signalfd reads pending signals as signalfd_siginfo records.
internal sealed partial class LinuxAbi
{
    private const int SigRtMin = 32;

    /// <summary>Queued real-time signals a process and its threads may hold (Linux's RLIMIT_SIGPENDING is larger; a program that reaches this gets EAGAIN).</summary>
    private const int MaxQueuedSignals = 1024;

    private const int SiQueue = -1;

    /// <summary>Marks <paramref name="info"/> pending in <paramref name="pending"/>: a standard signal once (the first siginfo stays), a real-time one queued.</summary>
    private static void Enqueue(IPendingSignals pending, SignalInfo info)
    {
        int signal = info.Signal;
        if (signal >= SigRtMin)
        {
            if (pending.Queue.Count < MaxQueuedSignals)
            {
                pending.Queue.Add(info);
                pending.Pending |= Bit(signal);
            }

            return;
        }

        if ((pending.Pending & Bit(signal)) == 0)
        {
            pending.Info[signal] = info;
            pending.Pending |= Bit(signal);
        }
    }

    /// <summary>Takes the oldest instance of <paramref name="signal"/>; its bit stays while more instances are queued.</summary>
    private static SignalInfo Dequeue(IPendingSignals pending, int signal)
    {
        if (signal < SigRtMin)
        {
            pending.Pending &= ~Bit(signal);
            return pending.Info[signal];
        }

        int i = pending.Queue.FindIndex(x => x.Signal == signal);
        var info = i >= 0 ? pending.Queue[i] : new SignalInfo(signal, SiKernel, 0, 0);
        if (i >= 0)
        {
            pending.Queue.RemoveAt(i);
        }

        if (!pending.Queue.Exists(x => x.Signal == signal))
        {
            pending.Pending &= ~Bit(signal);
        }

        return info;
    }

    /// <summary>Throws every pending instance of <paramref name="signal"/> away.</summary>
    private static void Discard(IPendingSignals pending, int signal)
    {
        pending.Pending &= ~Bit(signal);
        pending.Queue.RemoveAll(x => x.Signal == signal);
    }

    /// <summary>Takes the lowest pending signal in <paramref name="set"/>, the running thread's own first; 0 when none.</summary>
    private int TakeSignal(ulong set, out SignalInfo info)
    {
        foreach (IPendingSignals pending in (IPendingSignals[])[_current.Signals, _state.Signals])
        {
            ulong ready = pending.Pending & set;
            if (ready != 0)
            {
                int s = System.Numerics.BitOperations.TrailingZeroCount(ready) + 1;
                info = Dequeue(pending, s);
                return s;
            }
        }

        info = default;
        return 0;
    }

    /// <summary>Queued instances a process holds, its threads' included.</summary>
    private int QueuedCount(GuestProcess process) =>
        process.State.Signals.Queue.Count + _threads.Where(t => t.Process == process).Sum(t => t.Signals.Queue.Count);

    /// <summary>rt_sigqueueinfo (<paramref name="tid"/> 0) and rt_tgsigqueueinfo: sends <paramref name="signal"/> with the caller's siginfo.</summary>
    private long RtSigqueueinfo(ulong tgid, ulong tid, int signal, ulong infoPointer, bool toThread)
    {
        if (signal is < 1 or > 64 || (long)(int)(uint)tgid <= 0 || (toThread && (long)(int)(uint)tid <= 0))
        {
            return -Errno.EINVAL;
        }

        Span<byte> raw = stackalloc byte[SignalInfo.Size];
        if (!ReadUser(infoPointer, raw))
        {
            return -Errno.EFAULT;
        }

        var process = _processes.Find(p => p.Pid == (int)(uint)tgid && !p.Zombie);
        var thread = toThread ? _threads.Find(t => t.Tid == (int)(uint)tid && t.State != GuestThreadState.Exited && t.Process == process) : null;
        if (process is null || (toThread && thread is null))
        {
            return -Errno.ESRCH;
        }

        // As Linux: a caller may not pretend to be the kernel or kill(2) when it signals another process.
        int code = BinaryPrimitives.ReadInt32LittleEndian(raw[8..]);
        if ((code >= 0 || code == SiTkill) && process != CurrentProcess)
        {
            return -Errno.EPERM;
        }

        if (signal >= SigRtMin && QueuedCount(process) >= MaxQueuedSignals)
        {
            return -Errno.EAGAIN;
        }

        SendSignal(process, thread, new SignalInfo(signal, code, BinaryPrimitives.ReadUInt64LittleEndian(raw[16..]), BinaryPrimitives.ReadUInt64LittleEndian(raw[24..])));
        return 0;
    }

    /// <summary>rt_sigtimedwait: takes a pending signal of <paramref name="set"/> (blocked ones too) and returns its number, waiting up to the timeout.</summary>
    private long RtSigtimedwait(ulong set, ulong infoPointer, ulong timeout, ulong size)
    {
        if (size != 8)
        {
            return -Errno.EINVAL;
        }

        if (!ReadU64(set, out ulong wanted))
        {
            return -Errno.EFAULT;
        }

        wanted &= ~(Bit(9) | Bit(19));
        long error = DeadlineAfterTimespec(timeout, out long deadline);
        if (error != 0)
        {
            return error;
        }

        int signal = TakeSignal(wanted, out var info);
        if (signal != 0)
        {
            _current.Signals.WaitSet = 0;
            _current.TimedOut = false;
            if (infoPointer != 0)
            {
                Span<byte> b = stackalloc byte[SignalInfo.Size];
                info.Write(b);
                if (!WriteUser(infoPointer, b))
                {
                    return -Errno.EFAULT;
                }
            }

            return signal;
        }

        if (deadline == 0 || _current.TimedOut)
        {
            _current.Signals.WaitSet = 0;
            return -Errno.EAGAIN;
        }

        _current.Signals.WaitSet = wanted;
        return Block(deadline, onDescriptors: false);
    }

    /// <summary>signalfd and signalfd4: a descriptor that reads the pending signals of <paramref name="maskPointer"/>'s set (new, or an existing signalfd's set replaced).</summary>
    private long Signalfd(int fd, ulong maskPointer, ulong size, int flags)
    {
        if (size != 8 || (flags & ~(int)(OpenFlags.CloseOnExec | OpenFlags.NonBlock)) != 0)
        {
            return -Errno.EINVAL;
        }

        if (!ReadU64(maskPointer, out ulong mask))
        {
            return -Errno.EFAULT;
        }

        mask &= ~(Bit(9) | Bit(19));
        if (fd != -1)
        {
            if (!ValidFd(fd))
            {
                return -Errno.EBADF;
            }

            var existing = _state.Fds[fd]!;
            if (existing.Kind != FdKind.SignalFd)
            {
                return -Errno.EINVAL;
            }

            existing.SignalMask = mask;
            return fd;
        }

        var o = (OpenFlags)flags;
        return Install(new FileDescription(FdKind.SignalFd, OpenFlags.ReadOnly | (o & OpenFlags.NonBlock)) { SignalMask = mask }, o);
    }

    /// <summary>Reads as many signalfd_siginfo records as fit and are pending; waits (or EAGAIN) when none is.</summary>
    private long ReadSignalFd(FileDescription f, Span<byte> destination)
    {
        const int RecordSize = 128;
        if (destination.Length < RecordSize)
        {
            return -Errno.EINVAL;
        }

        int n = 0;
        while (destination.Length - n >= RecordSize && TakeSignal(f.SignalMask, out var info) is int signal and not 0)
        {
            var r = destination.Slice(n, RecordSize);
            r.Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(r, (uint)signal);
            BinaryPrimitives.WriteInt32LittleEndian(r[8..], info.Code);
            bool fault = info.Code > 0 && info.Code != SiKernel && signal is 4 or 5 or 7 or 8 or 11;
            if (fault)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(r[72..], info.Word0); // ssi_addr
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(r[12..], (uint)info.Word0); // ssi_pid
                BinaryPrimitives.WriteUInt32LittleEndian(r[16..], (uint)(info.Word0 >> 32)); // ssi_uid
                BinaryPrimitives.WriteInt32LittleEndian(r[40..], signal == 17 ? (int)info.Word1 : 0); // ssi_status
                BinaryPrimitives.WriteInt32LittleEndian(r[44..], (int)info.Word1); // ssi_int
                BinaryPrimitives.WriteUInt64LittleEndian(r[48..], info.Word1); // ssi_ptr
            }

            n += RecordSize;
        }

        if (n > 0)
        {
            return n;
        }

        return (f.Flags & OpenFlags.NonBlock) != 0 ? -Errno.EAGAIN : Block(long.MaxValue);
    }
}
