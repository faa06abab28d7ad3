using System.Buffers.Binary;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

/// <summary>Where a thread stands in the cooperative scheduler.</summary>
internal enum GuestThreadState
{
    /// <summary>Can run (or runs).</summary>
    Runnable,

    /// <summary>Waits in a system call (futex, read, poll, ...), which it makes again when woken or timed out.</summary>
    Blocked,

    /// <summary>Gone (its <c>exit</c> ran).</summary>
    Exited,
}

/// <summary>One thread of the program. Its registers live in the machine (<see cref="Context"/>) while another thread runs.</summary>
internal sealed class GuestThread(int tid)
{
    public int Tid { get; } = tid;

    /// <summary>The process the thread belongs to.</summary>
    public GuestProcess Process { get; set; } = null!;

    /// <summary>Whether the wait is a <c>wait4</c>/<c>waitid</c> for a child.</summary>
    public bool WaitsForChild { get; set; }

    /// <summary>The call the thread waits in (for messages).</summary>
    public long BlockedCall { get; set; }

    public GuestThreadState State { get; set; }

    /// <summary>The machine's saved user context while the thread is not on the vCPU.</summary>
    public object? Context { get; set; }

    public ulong FsBase { get; set; }

    /// <summary>CLONE_CHILD_CLEARTID / set_tid_address: zeroed and woken when the thread exits.</summary>
    public ulong ClearChildTid { get; set; }

    /// <summary>When a blocked call gives up (monotonic nanoseconds), or long.MaxValue.</summary>
    public long Deadline { get; set; } = long.MaxValue;

    /// <summary>The futex word a blocked FUTEX_WAIT waits on (0: the thread waits for descriptors).</summary>
    public ulong FutexAddress { get; set; }

    public uint FutexBitset { get; set; }

    /// <summary>Whether the wait ends when descriptors change (read, write, poll, select, epoll_wait).</summary>
    public bool WaitsOnDescriptors { get; set; }

    /// <summary>Set when the wait was ended by a FUTEX_WAKE: the repeated FUTEX_WAIT returns 0.</summary>
    public bool Woken { get; set; }

    /// <summary>Set when the wait's deadline passed: the repeated call returns its timeout answer.</summary>
    public bool TimedOut { get; set; }

    /// <summary>Signals sent to this thread, and what an interrupted call left for delivery.</summary>
    public ThreadSignals Signals { get; } = new();

    /// <summary>Calls since the thread last got the vCPU (the scheduler rotates after <see cref="LinuxAbi.Quantum"/>).</summary>
    public int CallsInQuantum { get; set; }
}

/// <summary>What the machine must do after a call: give the vCPU to <see cref="Next"/>, and whether the caller repeats its call when it next runs.</summary>
internal sealed record ThreadSwitch(GuestThread Previous, GuestThread Next, bool PreviousRepeatsCall);

// Threads: clone (CLONE_VM | CLONE_THREAD), clone3, exit, futex, set_tid_address, arch_prctl, gettid, sched_yield, and the cooperative scheduler.
internal sealed partial class LinuxAbi
{
    /// <summary>System calls a thread makes before the scheduler hands the vCPU to the next runnable thread.</summary>
    internal const int Quantum = 64;

    /// <summary>The most threads a program may have at once.</summary>
    private const int MaxThreads = 64;

    /// <summary>Marks a call that must wait; <see cref="Dispatch"/> blocks the thread (never reaches the program).</summary>
    private const long Blocked = long.MinValue + 1;

    private readonly List<GuestThread> _threads = [];
    private GuestThread _current = null!;
    private int _nextTid = 2;
    private long _blockDeadline;

    /// <summary>Set by a call that hands the vCPU to another thread; the machine switches contexts and clears it.</summary>
    public ThreadSwitch? PendingSwitch { get; private set; }

    /// <summary>Set by <c>clone</c>: the new thread, its stack pointer (0: the parent's) and TLS (null: the parent's FS base).</summary>
    public (GuestThread Thread, ulong Stack, ulong? Tls)? PendingClone { get; private set; }

    /// <summary>The thread on the vCPU.</summary>
    public GuestThread CurrentThread => _current;

    /// <summary>Live threads of the calling process.</summary>
    private int ThreadCount => _threads.Count(t => t.State != GuestThreadState.Exited && t.Process == _current.Process);

    /// <summary>Whether the program runs as one process with one thread (the only state a snapshot can hold).</summary>
    public bool SingleThreaded => _threads.Count == 1 && _processes.Count == 1;

    public void ClearPending()
    {
        PendingSwitch = null;
        PendingClone = null;
        PendingFork = null;
        PendingExec = null;
    }

    private void ResetThreads()
    {
        _threads.Clear();
        _processes.Clear();
        var init = new GuestProcess((int)ProcessId, null, _state);
        _processes.Add(init);
        _current = new GuestThread((int)ProcessId) { FsBase = _state.FsBase, Process = init };
        _current.Signals.Mask = _state.SignalMask;
        _threads.Add(_current);
        _nextTid = 2;
        ClearPending();
    }

    /// <summary>Whether another process might still use a pipe end (threads share the descriptor table).</summary>
    private bool ThreadsHoldPipeEnd(PipeBuffer pipe, FdKind end) => OtherProcessHoldsPipeEnd(pipe, end);

    private bool TimedOut(long deadline) => deadline == 0 || _current.TimedOut || (deadline != long.MaxValue && MonotonicNanoseconds() >= deadline);

    private long Block(long deadline, bool onDescriptors = true)
    {
        _blockDeadline = deadline;
        _current.WaitsOnDescriptors = onDescriptors;
        return Blocked;
    }

    /// <summary>Descriptors changed (data written, an end closed): every thread waiting on descriptors tries its call again.</summary>
    private void DescriptorsChanged()
    {
        foreach (var t in _threads)
        {
            if (t.State == GuestThreadState.Blocked && t.WaitsOnDescriptors && t != _current)
            {
                t.State = GuestThreadState.Runnable;
            }
        }
    }

    /// <summary>
    /// The calling thread must wait: hand the vCPU to a runnable thread, or, when none is, let the virtual clock jump to
    /// the earliest deadline. Returns the call's result when the caller itself timed out at once, or null when the machine
    /// switches threads (or the run stops: every thread waits with no deadline).
    /// </summary>
    private long? BlockCurrent(long nr, ulong a0, ulong a1, ulong a2, ulong a3, ulong a4, ulong a5)
    {
        int timerJumps = 0;
        while (true)
        {
            _current.State = GuestThreadState.Blocked;
            _current.Deadline = _blockDeadline;
            _current.BlockedCall = nr;
            var next = NextRunnable();
            if (next is not null)
            {
                PendingSwitch = new ThreadSwitch(_current, next, PreviousRepeatsCall: true);
                return null;
            }

            GuestThread? earliest = null;
            foreach (var t in _threads)
            {
                if (t.State == GuestThreadState.Blocked && t.Deadline != long.MaxValue && (earliest is null || t.Deadline < earliest.Deadline))
                {
                    earliest = t;
                }
            }

            long timer = EarliestTimer();
            if (timer != long.MaxValue && (earliest is null || timer < earliest.Deadline) && ++timerJumps <= 10_000)
            {
                // An interval timer expires before any wait ends: time jumps there and SIGALRM goes out.
                long at = MonotonicNanoseconds();
                if (timer > at)
                {
                    Shared.SleepOffsetNanoseconds += timer - at;
                }

                FireDueTimers();
                if (Stop is not null || PendingSwitch is not null || _current.State == GuestThreadState.Exited)
                {
                    return null;
                }

                if (Deliverable(_current) != 0)
                {
                    _current.State = GuestThreadState.Runnable;
                    return Interrupted(nr, a1, a3);
                }

                continue;
            }

            if (earliest is null)
            {
                Stop = new StopRequest(SandboxStatus.TimeLimitExceeded, -1, null,
                    $"Every thread of the program waits for something no thread can do (deadlock): " +
                    string.Join(", ", _threads.Where(t => t.State == GuestThreadState.Blocked).Select(t => $"thread {t.Tid} of process {t.Process.Pid} waits in {SyscallNames.Name(t.BlockedCall)}")) + ".");
                return null;
            }

            // Nothing can run before the earliest deadline: time jumps there, as nanosleep does.
            long now = MonotonicNanoseconds();
            if (earliest.Deadline > now)
            {
                Shared.SleepOffsetNanoseconds += earliest.Deadline - now;
            }

            earliest.State = GuestThreadState.Runnable;
            earliest.TimedOut = true;
            earliest.FutexAddress = 0;
            if (earliest != _current)
            {
                PendingSwitch = new ThreadSwitch(_current, earliest, PreviousRepeatsCall: true);
                return null;
            }

            long result = Handle(nr, a0, a1, a2, a3, a4, a5);
            _current.TimedOut = false;
            if (result != Blocked)
            {
                return result;
            }
        }
    }

    /// <summary>The next runnable thread after the current one, round robin; null when no other can run.</summary>
    private GuestThread? NextRunnable(bool sameProcess = false)
    {
        int start = _threads.IndexOf(_current);
        for (int i = 1; i <= _threads.Count; i++)
        {
            var t = _threads[(start + i) % _threads.Count];
            if (t != _current && t.State == GuestThreadState.Runnable && (!sameProcess || t.Process == _current.Process))
            {
                return t;
            }
        }

        return null;
    }

    /// <summary>The machine switched to <paramref name="thread"/>.</summary>
    public void Switched(GuestThread thread)
    {
        SwitchSignalState(_current, thread);
        _current = thread;
        _current.CallsInQuantum = 0;
        _state = thread.Process.State;
        _state.FsBase = thread.FsBase;
        _threads.RemoveAll(t => t.State == GuestThreadState.Exited && !t.Process.Zombie);
    }

    /// <summary>After a call: a thread that used its quantum gives way to the next runnable one.</summary>
    private void MaybeRotate()
    {
        // Only among the threads of one process: a switch to another process copies memory, so processes change at waits.
        if (PendingSwitch is null && _threads.Count > 1 && ++_current.CallsInQuantum >= Quantum && NextRunnable(sameProcess: true) is { } next)
        {
            PendingSwitch = new ThreadSwitch(_current, next, PreviousRepeatsCall: false);
        }
    }

    private long Yield()
    {
        if (NextRunnable() is { } next)
        {
            PendingSwitch = new ThreadSwitch(_current, next, PreviousRepeatsCall: false);
        }

        return 0;
    }

    private long Clone(ulong flags, ulong stack, ulong parentTid, ulong childTid, ulong tls)
    {
        const ulong CloneVm = 0x100, CloneFs = 0x200, CloneFiles = 0x400, CloneSighand = 0x800, CloneVfork = 0x4000, CloneThread = 0x10000,
            CloneSysvsem = 0x40000, CloneSettls = 0x80000, CloneParentSettid = 0x100000, CloneChildCleartid = 0x200000,
            CloneDetached = 0x400000, CloneChildSettid = 0x1000000;
        const ulong ThreadFlags = CloneVm | CloneFs | CloneFiles | CloneSighand | CloneThread;
        const ulong Allowed = ThreadFlags | CloneSysvsem | CloneSettls | CloneParentSettid | CloneChildCleartid | CloneDetached | CloneChildSettid;
        if ((flags & CloneThread) == 0)
        {
            return CloneProcess(flags, stack, parentTid, tls);
        }

        if ((flags & ThreadFlags) != ThreadFlags || (flags & ~Allowed & ~0xFFUL) != 0 || (flags & CloneVfork) != 0)
        {
            return Denied(Sys.Clone);
        }

        if (ThreadCount >= MaxThreads)
        {
            return -Errno.EAGAIN;
        }

        if ((flags & CloneSettls) != 0 && !GuestLayout.IsUserCanonical(tls))
        {
            return -Errno.EPERM;
        }

        var child = new GuestThread(_nextTid++) { FsBase = (flags & CloneSettls) != 0 ? tls : _state.FsBase, Process = _current.Process };
        child.Signals.Mask = _state.SignalMask; // the mask is inherited; the alternate stack is not (CLONE_VM)
        if ((flags & CloneParentSettid) != 0 && !WriteU32(parentTid, (uint)child.Tid))
        {
            return -Errno.EFAULT;
        }

        if ((flags & CloneChildSettid) != 0 && !WriteU32(childTid, (uint)child.Tid))
        {
            return -Errno.EFAULT;
        }

        if ((flags & CloneChildCleartid) != 0)
        {
            child.ClearChildTid = childTid;
        }

        _threads.Add(child);
        PendingClone = (child, stack, (flags & CloneSettls) != 0 ? tls : null);
        return child.Tid;
    }

    /// <summary>A new process (fork, vfork, posix_spawn's CLONE_VM | CLONE_VFORK): it gets a copy of the caller's memory.</summary>
    private long CloneProcess(ulong flags, ulong stack, ulong parentTid, ulong tls)
    {
        const ulong CloneVm = 0x100, CloneFs = 0x200, CloneFiles = 0x400, CloneVfork = 0x4000, CloneSettls = 0x80000, CloneParentSettid = 0x100000,
            CloneChildCleartid = 0x200000, CloneChildSettid = 0x1000000;
        const ulong ProcessFlags = CloneVm | CloneVfork | CloneParentSettid | CloneChildSettid | CloneChildCleartid | CloneSettls | CloneFs | 0xFF;
        if ((flags & ~ProcessFlags) != 0 || (flags & CloneFiles) != 0)
        {
            return Denied(Sys.Clone);
        }

        long pid = Fork(stack);
        if (pid > 0 && (flags & CloneParentSettid) != 0 && !WriteU32(parentTid, (uint)pid))
        {
            return -Errno.EFAULT;
        }

        if (pid > 0 && (flags & CloneSettls) != 0)
        {
            PendingFork!.Value.Thread.FsBase = tls;
        }

        return pid;
    }

    private long Clone3(ulong args, ulong size)
    {
        if (size < 64 || size > 4096)
        {
            return -Errno.EINVAL;
        }

        Span<byte> a = stackalloc byte[64];
        if (!ReadUser(args, a))
        {
            return -Errno.EFAULT;
        }

        ulong flags = BinaryPrimitives.ReadUInt64LittleEndian(a);
        ulong childTid = BinaryPrimitives.ReadUInt64LittleEndian(a[16..]);
        ulong parentTid = BinaryPrimitives.ReadUInt64LittleEndian(a[24..]);
        ulong stack = BinaryPrimitives.ReadUInt64LittleEndian(a[40..]);
        ulong stackSize = BinaryPrimitives.ReadUInt64LittleEndian(a[48..]);
        ulong tls = BinaryPrimitives.ReadUInt64LittleEndian(a[56..]);
        if ((flags & 0x1000) != 0)
        {
            return Denied(Sys.Clone3); // CLONE_PIDFD
        }

        return Clone(flags, stack == 0 ? 0 : stack + stackSize, parentTid, childTid, tls);
    }

    /// <summary><c>exit</c>: ends the calling thread; the last one ends the process.</summary>
    private long ExitThread(ulong status)
    {
        if (ThreadCount <= 1)
        {
            return Exit(status);
        }

        _current.State = GuestThreadState.Exited;
        if (_current.ClearChildTid != 0 && WriteU32(_current.ClearChildTid, 0))
        {
            WakeFutex(_current.ClearChildTid, int.MaxValue, uint.MaxValue);
        }

        HandOverAfterExit();
        return 0;
    }

    private long SetTidAddress(ulong address)
    {
        _current.ClearChildTid = address;
        return _current.Tid;
    }

    private bool WriteU32(ulong va, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return WriteUser(va, b);
    }

    private long ArchPrctl(int code, ulong address)
    {
        const int ArchSetGs = 0x1001, ArchSetFs = 0x1002, ArchGetFs = 0x1003, ArchGetGs = 0x1004;
        switch (code)
        {
            case ArchSetFs:
                if (!GuestLayout.IsUserCanonical(address))
                {
                    return -Errno.EPERM;
                }

                _state.FsBase = address;
                _current.FsBase = address;
                _setFsBase(address);
                return 0;
            case ArchGetFs:
                return WriteU64(address, _state.FsBase) ? 0 : -Errno.EFAULT;
            case ArchSetGs:
            case ArchGetGs:
                return Count(Sys.ArchPrctl, -Errno.EINVAL);
            default:
                return -Errno.EINVAL;
        }
    }

    private long Futex(ulong address, int op, uint value, ulong timeout, ulong address2, uint value3)
    {
        const int FutexWait = 0, FutexWake = 1, FutexRequeue = 3, FutexCmpRequeue = 4, FutexWaitBitset = 9, FutexWakeBitset = 10;
        int cmd = op & 0x7F;
        if ((address & 3) != 0)
        {
            return -Errno.EINVAL;
        }

        switch (cmd)
        {
            case FutexWake:
                return WakeFutex(address, (int)Math.Min(value, int.MaxValue), uint.MaxValue);
            case FutexWakeBitset:
                return value3 == 0 ? -Errno.EINVAL : WakeFutex(address, (int)Math.Min(value, int.MaxValue), value3);
            case FutexWait or FutexWaitBitset:
                return WaitFutex(address, op, value, timeout, cmd == FutexWait ? uint.MaxValue : value3);
            case FutexRequeue or FutexCmpRequeue:
            {
                if (cmd == FutexCmpRequeue)
                {
                    Span<byte> b = stackalloc byte[4];
                    if (!ReadUser(address, b))
                    {
                        return -Errno.EFAULT;
                    }

                    if (BinaryPrimitives.ReadUInt32LittleEndian(b) != value3)
                    {
                        return -Errno.EAGAIN;
                    }
                }

                long woken = WakeFutex(address, (int)Math.Min(value, int.MaxValue), uint.MaxValue);
                long moved = 0;
                foreach (var t in _threads)
                {
                    if (moved >= (long)Math.Min(timeout, int.MaxValue))
                    {
                        break;
                    }

                    if (t.State == GuestThreadState.Blocked && t.FutexAddress == address)
                    {
                        t.FutexAddress = address2;
                        moved++;
                    }
                }

                return woken + moved;
            }

            default:
                return NotImplemented(Sys.Futex);
        }
    }

    private long WaitFutex(ulong address, int op, uint value, ulong timeout, uint bitset)
    {
        if (bitset == 0)
        {
            return -Errno.EINVAL;
        }

        if (_current.Woken)
        {
            _current.Woken = false;
            return 0;
        }

        if (_current.TimedOut)
        {
            return -Errno.ETIMEDOUT;
        }

        Span<byte> b = stackalloc byte[4];
        if (!ReadUser(address, b))
        {
            return -Errno.EFAULT;
        }

        if (BinaryPrimitives.ReadUInt32LittleEndian(b) != value)
        {
            return -Errno.EAGAIN;
        }

        long deadline = long.MaxValue;
        if (timeout != 0)
        {
            if (!ReadU64(timeout, out ulong s) || !ReadU64(timeout + 8, out ulong ns))
            {
                return -Errno.EFAULT;
            }

            if ((long)s < 0 || ns >= 1_000_000_000)
            {
                return -Errno.EINVAL;
            }

            long span = ((long)Math.Min(s, 1UL << 32) * 1_000_000_000) + (long)ns;
            // FUTEX_WAIT takes a relative timeout; FUTEX_WAIT_BITSET an absolute one on CLOCK_MONOTONIC (or CLOCK_REALTIME).
            deadline = (op & 0x7F) == 0 ? MonotonicNanoseconds() + span
                : (op & 256) != 0 ? span - RealtimeNanoseconds() + MonotonicNanoseconds() : span;
            if (deadline <= MonotonicNanoseconds())
            {
                return -Errno.ETIMEDOUT;
            }
        }

        _current.FutexAddress = address;
        _current.FutexBitset = bitset;
        return Block(deadline, onDescriptors: false);
    }

    private long WakeFutex(ulong address, int count, uint bitset)
    {
        int woken = 0;
        foreach (var t in _threads)
        {
            if (woken >= count)
            {
                break;
            }

            if (t.State == GuestThreadState.Blocked && t.FutexAddress == address && (t.FutexBitset & bitset) != 0)
            {
                t.State = GuestThreadState.Runnable;
                t.FutexAddress = 0;
                t.Woken = true;
                woken++;
            }
        }

        return woken;
    }

    private long SchedGetaffinity(ulong size, ulong mask)
    {
        if (size < 8 || (size & 7) != 0)
        {
            return -Errno.EINVAL;
        }

        return WriteU64(mask, 1) ? 8 : -Errno.EFAULT;
    }
}
