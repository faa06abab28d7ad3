using System.Buffers.Binary;

namespace Virt.Sandbox.Linux;

// Signals: rt_sigaction records actions, rt_sigprocmask the mask; a signal the program raises (kill, tgkill, SIGPIPE) takes its
// default action (end the run, or nothing) or is ignored. Handlers are recorded but never run: a signal whose action is a handler
// ends the run as ForbiddenOperation, so a program never carries on as if its handler had run.
internal sealed partial class LinuxAbi
{
    private const ulong SigDfl = 0, SigIgn = 1;

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

        _state.SignalActions[signal] = new SignalAction(
            BinaryPrimitives.ReadUInt64LittleEndian(a), BinaryPrimitives.ReadUInt64LittleEndian(a[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(a[16..]), BinaryPrimitives.ReadUInt64LittleEndian(a[24..]));
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
            BinaryPrimitives.WriteInt32LittleEndian(ss[8..], _state.AltStack.Size == 0 ? 2 : 0); // SS_DISABLE
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
            if ((flags & 2) != 0)
            {
                _state.AltStack = default;
            }
            else if (flags != 0)
            {
                return -Errno.EINVAL;
            }
            else if (size < 2048)
            {
                return -Errno.ENOMEM;
            }
            else
            {
                _state.AltStack = (BinaryPrimitives.ReadUInt64LittleEndian(ss), size);
            }
        }

        return 0;
    }

    private bool IsSelf(ulong pid) => (long)pid is 0 or -1 || pid == (ulong)CurrentProcess.Pid;

    private bool IsOwnThread(ulong tid) => _threads.Exists(t => (ulong)t.Tid == tid && t.State != GuestThreadState.Exited);

    private long Kill(ulong pid, int signal)
    {
        if (!IsSelf(pid) && signal is >= 0 and <= 64 && _processes.Find(p => (ulong)p.Pid == pid || (ulong)(-p.Pid) == pid) is { } target)
        {
            return KillProcess(target, signal);
        }

        return SelfSignal(IsSelf(pid), signal);
    }

    private long Tkill(ulong tid, int signal) => SelfSignal(IsOwnThread(tid), signal);

    private long Tgkill(ulong tgid, ulong tid, int signal) => SelfSignal(tgid == (ulong)CurrentProcess.Pid && IsOwnThread(tid), signal);

    private long SelfSignal(bool self, int signal)
    {
        if (signal is < 0 or > 64)
        {
            return -Errno.EINVAL;
        }

        if (!self)
        {
            return -Errno.ESRCH;
        }

        if (signal != 0)
        {
            RaiseSignal(signal);
        }

        return 0;
    }

    /// <summary>Signals whose default action is to do nothing: SIGCHLD, SIGCONT, SIGURG, SIGWINCH.</summary>
    private static bool IgnoredByDefault(int signal) => signal is 17 or 18 or 23 or 28;

    /// <summary>Applies the action of <paramref name="signal"/>: the default (end the run or nothing), ignore, or a handler the sandbox cannot run.</summary>
    private void RaiseSignal(int signal)
    {
        var action = _state.SignalActions[signal];
        bool blocked = (_state.SignalMask & (1UL << (signal - 1))) != 0 && signal is not (9 or 19);
        if (signal is 9 or 19 || action.Handler == SigDfl)
        {
            if (blocked && signal is not (9 or 19))
            {
                return; // stays pending for ever: the program never unblocks what it cannot receive here
            }

            if (!IgnoredByDefault(signal) && signal is not (19 or 20 or 21 or 22))
            {
                ExitProcess(signal, new StopRequest(SandboxStatus.Signaled, -1, signal, $"The program received signal {signal}."));
            }

            return;
        }

        if (action.Handler == SigIgn || blocked)
        {
            return;
        }

        Stop = new StopRequest(SandboxStatus.ForbiddenOperation, -1, signal,
            $"The program raised signal {signal} to a handler it installed; the sandbox does not run signal handlers.");
    }
}
