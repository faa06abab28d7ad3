using System.Buffers.Binary;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

// Signals: rt_sigaction, rt_sigprocmask, rt_sigpending, rt_sigsuspend, pause, sigaltstack, kill, tkill, tgkill. How a signal is
// generated and delivered to a handler is in LinuxAbi.SignalDelivery.cs; ITIMER_REAL and alarm in LinuxAbi.Timers.cs.
// The mask and the alternate stack are per thread (the running thread's live in AbiState, swapped as threads switch, as
// the FS base is); actions are per process; pending signals are per process and per thread.
internal sealed partial class LinuxAbi
{
    private const ulong SigDfl = 0, SigIgn = 1;
    private const int SsAutodisarm = unchecked((int)0x8000_0000);

    private long RtSigaction(int signal, ulong action, ulong oldAction, ulong size)
    {
        if (signal < 1 || signal > 64 || size != 8)
        {
            return -Errno.EINVAL;
        }

        var current = _state.SignalActions[signal];
        if (oldAction != 0)
        {
            Span<byte> old = stackalloc byte[32];
            BinaryPrimitives.WriteUInt64LittleEndian(old, current.Handler);
            BinaryPrimitives.WriteUInt64LittleEndian(old[8..], current.Flags);
            BinaryPrimitives.WriteUInt64LittleEndian(old[16..], current.Restorer);
            BinaryPrimitives.WriteUInt64LittleEndian(old[24..], current.Mask);
            if (!WriteUser(oldAction, old))
            {
                return -Errno.EFAULT;
            }
        }

        if (action == 0)
        {
            return 0;
        }

        if (signal is 9 or 19)
        {
            return -Errno.EINVAL; // SIGKILL and SIGSTOP keep their actions
        }

        Span<byte> a = stackalloc byte[32];
        if (!ReadUser(action, a))
        {
            return -Errno.EFAULT;
        }

        var updated = new SignalAction(
            BinaryPrimitives.ReadUInt64LittleEndian(a), BinaryPrimitives.ReadUInt64LittleEndian(a[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(a[16..]), BinaryPrimitives.ReadUInt64LittleEndian(a[24..]) & ~(Bit(9) | Bit(19)));
        _state.SignalActions[signal] = updated;
        if (Discards(updated, signal))
        {
            // POSIX: setting an action that ignores a pending signal discards it, blocked or not.
            Discard(_state.Signals, signal);
            foreach (var t in _threads.Where(t => t.Process == CurrentProcess))
            {
                Discard(t.Signals, signal);
            }
        }

        return 0;
    }

    private long RtSigprocmask(int how, ulong set, ulong oldSet, ulong size)
    {
        if (size != 8)
        {
            return -Errno.EINVAL;
        }

        if (oldSet != 0 && !WriteU64(oldSet, _state.SignalMask))
        {
            return -Errno.EFAULT;
        }

        if (set == 0)
        {
            return 0;
        }

        if (!ReadU64(set, out ulong mask))
        {
            return -Errno.EFAULT;
        }

        const ulong Unblockable = (1UL << 8) | (1UL << 18); // SIGKILL, SIGSTOP
        mask &= ~Unblockable;
        switch (how)
        {
            case 0: _state.SignalMask |= mask; return 0; // SIG_BLOCK
            case 1: _state.SignalMask &= ~mask; return 0; // SIG_UNBLOCK
            case 2: _state.SignalMask = mask; return 0; // SIG_SETMASK
            default: return -Errno.EINVAL;
        }
    }

    private long Sigaltstack(ulong newStack, ulong oldStack)
    {
        if (oldStack != 0)
        {
            Span<byte> ss = stackalloc byte[24];
            ss.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(ss, _state.AltStack.Base);
            BinaryPrimitives.WriteInt32LittleEndian(ss[8..], _state.AltStack.Size == 0 ? 2 : _state.AltStackFlags); // SS_DISABLE, SS_AUTODISARM
            BinaryPrimitives.WriteUInt64LittleEndian(ss[16..], _state.AltStack.Size);
            if (!WriteUser(oldStack, ss))
            {
                return -Errno.EFAULT;
            }
        }

        if (newStack != 0)
        {
            Span<byte> ss = stackalloc byte[24];
            if (!ReadUser(newStack, ss))
            {
                return -Errno.EFAULT;
            }

            int flags = BinaryPrimitives.ReadInt32LittleEndian(ss[8..]);
            ulong size = BinaryPrimitives.ReadUInt64LittleEndian(ss[16..]);
            int mode = flags & ~SsAutodisarm;
            ulong sp = BinaryPrimitives.ReadUInt64LittleEndian(ss);
            if (mode == 2)
            {
                _state.AltStack = default;
                _state.AltStackFlags = 0;
            }
            else if (mode is not (0 or 1)) // SS_ONSTACK is accepted as 0, as Linux does for old programs
            {
                return -Errno.EINVAL;
            }
            else if (size < 2048)
            {
                return -Errno.ENOMEM;
            }
            else if (!GuestLayout.IsUserCanonical(sp) || !GuestLayout.IsUserCanonical(sp + size))
            {
                return -Errno.EFAULT;
            }
            else
            {
                _state.AltStack = (sp, size);
                _state.AltStackFlags = flags & SsAutodisarm;
            }
        }

        return 0;
    }

    private long Kill(ulong pid, int signal)
    {
        if (signal is < 0 or > 64)
        {
            return -Errno.EINVAL;
        }

        long p = (long)(int)(uint)pid;
        List<GuestProcess> targets = p switch
        {
            // 0, -1 and the one process group: every process of the program (they share one group and session).
            0 or -1 => [.. _processes.Where(x => !x.Zombie)],
            > 0 => [.. _processes.Where(x => x.Pid == p && !x.Zombie)],
            _ => [],
        };
        if (targets.Count == 0)
        {
            return -Errno.ESRCH;
        }

        if (signal == 0)
        {
            return 0;
        }

        var info = UserInfo(signal, SiUser);
        // The caller last: a signal that ends it must not stop the others from getting theirs.
        foreach (var target in targets.OrderBy(t => t == CurrentProcess))
        {
            SendSignal(target, null, info);
        }

        return 0;
    }

    private long Tkill(ulong tid, int signal) => Tgkill(ulong.MaxValue, tid, signal);

    private long Tgkill(ulong tgid, ulong tid, int signal)
    {
        if (signal is < 0 or > 64 || (long)tid <= 0 || (tgid != ulong.MaxValue && (long)tgid <= 0))
        {
            return -Errno.EINVAL;
        }

        var thread = _threads.Find(t => (ulong)t.Tid == tid && t.State != GuestThreadState.Exited && !t.Process.Zombie
            && (tgid == ulong.MaxValue || (ulong)t.Process.Pid == tgid));
        if (thread is null)
        {
            return -Errno.ESRCH;
        }

        if (signal != 0)
        {
            SendSignal(thread.Process, thread, UserInfo(signal, SiTkill));
        }

        return 0;
    }

    /// <summary>Signals whose default action is to do nothing: SIGCHLD, SIGCONT, SIGURG, SIGWINCH.</summary>
    private static bool IgnoredByDefault(int signal) => signal is 17 or 18 or 23 or 28;

    /// <summary>A signal the kernel raises at the calling thread (SIGPIPE on a write to a pipe nobody reads).</summary>
    private void RaiseSignal(int signal) => SendSignal(CurrentProcess, _current, new SignalInfo(signal, SiUser, (ulong)(uint)CurrentProcess.Pid | ((ulong)HostUid << 32), 0));

    private long RtSigpending(ulong set, ulong size)
    {
        if (size > 8)
        {
            return -Errno.EINVAL;
        }

        ulong pending = (_current.Signals.Pending | _state.Signals.Pending) & _state.SignalMask;
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, pending);
        return WriteUser(set, b[..(int)size]) ? 0 : -Errno.EFAULT;
    }

    /// <summary>rt_sigsuspend: waits with <paramref name="set"/> as the mask until a handler runs; the old mask comes back with the handler's frame.</summary>
    private long RtSigsuspend(ulong set, ulong size)
    {
        if (size != 8)
        {
            return -Errno.EINVAL;
        }

        if (!ReadU64(set, out ulong mask))
        {
            return -Errno.EFAULT;
        }

        // A repeated call (the thread waited and runs again) keeps the mask it saved first.
        _current.Signals.SavedMask ??= _state.SignalMask;
        _state.SignalMask = mask & ~(Bit(9) | Bit(19));
        return Block(long.MaxValue, onDescriptors: false);
    }

    /// <summary>pause: waits until a signal is delivered (always EINTR).</summary>
    private long Pause() => Block(long.MaxValue, onDescriptors: false);
}
