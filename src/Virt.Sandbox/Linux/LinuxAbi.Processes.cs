using System.Buffers.Binary;

namespace Virt.Sandbox.Linux;

/// <summary>
/// One process of the program: its own descriptor table, working directory and signal actions (<see cref="AbiState"/>;
/// the file tree is shared), its children, and, while another process has the vCPU, its memory (<see cref="Image"/>).
/// </summary>
internal sealed class GuestProcess(int pid, GuestProcess? parent, AbiState state)
{
    public int Pid { get; } = pid;

    public GuestProcess? Parent { get; set; } = parent;

    public AbiState State { get; set; } = state;

    public List<GuestProcess> Children { get; } = [];

    /// <summary>Exited, waiting for its parent's <c>wait4</c>.</summary>
    public bool Zombie { get; set; }

    /// <summary>The wait status (exit code &lt;&lt; 8, or the signal).</summary>
    public int WaitStatus { get; set; }

    /// <summary>The machine's copy of the process's memory while it is off the vCPU (null while it runs).</summary>
    public object? Image { get; set; }
}

// Processes: fork, vfork, clone without CLONE_VM, clone3, execve of the sandbox's own executable, wait4, waitid, exit_group of a child.
internal sealed partial class LinuxAbi
{
    /// <summary>The most processes a program may have at once (each keeps a copy of the memory it uses).</summary>
    private const int MaxProcesses = 16;

    private readonly List<GuestProcess> _processes = [];

    /// <summary>Set by <c>fork</c>: the child's thread and its stack pointer (0: the parent's).</summary>
    public (GuestThread Thread, ulong Stack)? PendingFork { get; private set; }

    /// <summary>Set by <c>execve</c>: the arguments and environment of the program the calling process becomes.</summary>
    public (IReadOnlyList<string> Arguments, IReadOnlyList<string> Environment, string Path)? PendingExec { get; private set; }

    private GuestProcess CurrentProcess => _current.Process;

    /// <summary>Whether another process holds an end of <paramref name="pipe"/>.</summary>
    private bool OtherProcessHoldsPipeEnd(PipeBuffer pipe, FdKind end)
    {
        foreach (var p in _processes)
        {
            if (p.Zombie || p.State == _state)
            {
                continue;
            }

            foreach (var d in p.State.Fds)
            {
                if (d is not null && d.Pipe == pipe && d.Kind == end)
                {
                    return true;
                }
            }
        }

        return false;
    }

    private long Fork(ulong stack)
    {
        if (_processes.Count(p => !p.Zombie) >= MaxProcesses)
        {
            return -Errno.EAGAIN;
        }

        var parent = CurrentProcess;
        var child = new GuestProcess(_nextTid++, parent, _state.ForkCopy());
        var thread = new GuestThread(child.Pid) { Process = child, FsBase = _current.FsBase };
        thread.Signals.Mask = _state.SignalMask;
        thread.Signals.AltStack = _state.AltStack;
        thread.Signals.AltStackFlags = _state.AltStackFlags;
        parent.Children.Add(child);
        _processes.Add(child);
        _threads.Add(thread);
        PendingFork = (thread, stack);
        return child.Pid;
    }

    private long Execve(int dirfd, ulong pathPointer, ulong argvPointer, ulong envpPointer, int flags)
    {
        string? path = ReadString(pathPointer);
        if (path is null)
        {
            return -Errno.EFAULT;
        }

        long e = Resolve(dirfd, pathPointer, (flags & AtSymlinkNoFollow) == 0, out var node, out _, out _);
        if (e < 0)
        {
            return e;
        }

        if (node is null)
        {
            return -Errno.ENOENT;
        }

        if (node is VfsDirectory)
        {
            return -Errno.EACCES;
        }

        if (node != _state.Vfs.Executable)
        {
            // Only the sandbox's own executable runs here; another file would need its own address space layout.
            return node is VfsFile { Permissions: var p } && (p & 0x49) != 0 ? Count(Sys.Execve, -Errno.ENOEXEC) : -Errno.EACCES;
        }

        var argv = ReadStringArray(argvPointer);
        var envp = ReadStringArray(envpPointer);
        if (argv is null || envp is null)
        {
            return -Errno.EFAULT;
        }

        // Linux allows a quarter of the stack limit for the strings; the rest of the entry stack needs room too.
        if (argv.Sum(a => a.Length + 1 + 8) + envp.Sum(a => a.Length + 1 + 8) + path.Length + 4096 > _config.StackBytes / 4)
        {
            return -Errno.E2BIG;
        }

        // The point of no return: descriptors marked close-on-exec go, handlers fall back to the default, other threads end.
        for (int fd = 0; fd < MaxFds; fd++)
        {
            if (_state.CloseOnExec[fd] && _state.Fds[fd] is not null)
            {
                Close(fd);
            }
        }

        for (int s = 1; s < _state.SignalActions.Length; s++)
        {
            if (_state.SignalActions[s].Handler > SigIgn)
            {
                _state.SignalActions[s] = default;
            }
        }

        _state.AltStack = default;
        foreach (var t in _threads)
        {
            if (t.Process == CurrentProcess && t != _current)
            {
                t.State = GuestThreadState.Exited;
            }
        }

        _current.ClearChildTid = 0;
        _current.FsBase = 0;
        _state.FsBase = 0;
        PendingExec = (argv, envp, path);
        return 0;
    }

    /// <summary>A NULL-terminated array of string pointers (argv, envp); null on a bad pointer or more than 4096 entries.</summary>
    private List<string>? ReadStringArray(ulong pointer)
    {
        var result = new List<string>();
        if (pointer == 0)
        {
            return result;
        }

        for (int i = 0; i < 4096; i++)
        {
            if (!ReadU64(pointer + ((ulong)i * 8), out ulong p))
            {
                return null;
            }

            if (p == 0)
            {
                return result;
            }

            string? s = ReadString(p, 128 * 1024);
            if (s is null)
            {
                return null;
            }

            result.Add(s);
        }

        return null;
    }

    /// <summary>Ends the calling process with <paramref name="waitStatus"/>; the first process ends the run.</summary>
    private long ExitProcess(int waitStatus, StopRequest stop)
    {
        var process = CurrentProcess;
        if (process.Parent is null)
        {
            Stop = stop;
            return 0;
        }

        process.Zombie = true;
        process.WaitStatus = waitStatus;
        process.Image = null;
        for (int fd = 0; fd < MaxFds; fd++)
        {
            process.State.Fds[fd] = null;
        }

        foreach (var orphan in process.Children)
        {
            orphan.Parent = _processes[0];
            _processes[0].Children.Add(orphan);
        }

        process.Children.Clear();
        var parent = process.Parent;
        bool killed = (waitStatus & 0x7F) != 0;
        // SIGCHLD to the parent (CLD_EXITED or CLD_KILLED); its default action ignores it.
        SendSignal(parent, null, new SignalInfo(17, killed ? 2 : 1, (ulong)(uint)process.Pid | ((ulong)HostUid << 32),
            (ulong)(uint)(killed ? waitStatus & 0x7F : (waitStatus >> 8) & 0xFF)));
        foreach (var t in _threads)
        {
            if (t.Process == process)
            {
                t.State = GuestThreadState.Exited;
            }
            else if (t.Process == process.Parent && t.State == GuestThreadState.Blocked && t.WaitsForChild)
            {
                t.State = GuestThreadState.Runnable;
            }
        }

        DescriptorsChanged();
        HandOverAfterExit();
        return 0;
    }

    /// <summary>The calling thread is gone: the vCPU goes to the next runnable thread, or time jumps to the earliest deadline.</summary>
    private void HandOverAfterExit()
    {
        var next = NextRunnable();
        if (next is null)
        {
            GuestThread? earliest = _threads.Where(t => t.State == GuestThreadState.Blocked && t.Deadline != long.MaxValue).MinBy(t => t.Deadline);
            if (earliest is null)
            {
                Stop = new StopRequest(SandboxStatus.TimeLimitExceeded, -1, null, "Every remaining thread of the program waits for something no thread can do (deadlock after an exit).");
                return;
            }

            Shared.SleepOffsetNanoseconds += Math.Max(0, earliest.Deadline - MonotonicNanoseconds());
            earliest.State = GuestThreadState.Runnable;
            earliest.TimedOut = true;
            earliest.FutexAddress = 0;
            next = earliest;
        }

        PendingSwitch = new ThreadSwitch(_current, next, PreviousRepeatsCall: false);
    }

    private long Wait4(long pid, ulong statusPointer, int options, ulong rusage)
    {
        const int WNoHang = 1;
        if ((options & ~(WNoHang | 2 | 8 | 0x01000000 | 0x40000000 | unchecked((int)0x80000000) | 0x20000000)) != 0)
        {
            return -Errno.EINVAL;
        }

        var process = CurrentProcess;
        var matching = process.Children.Where(c => pid <= 0 || c.Pid == pid).ToList();
        if (matching.Count == 0)
        {
            return -Errno.ECHILD;
        }

        var zombie = matching.Find(c => c.Zombie);
        if (zombie is null)
        {
            if ((options & WNoHang) != 0)
            {
                return 0;
            }

            _current.WaitsForChild = true;
            return Block(long.MaxValue, onDescriptors: false);
        }

        if (statusPointer != 0 && !WriteU32(statusPointer, (uint)zombie.WaitStatus))
        {
            return -Errno.EFAULT;
        }

        if (rusage != 0 && !WriteUser(rusage, new byte[144]))
        {
            return -Errno.EFAULT;
        }

        process.Children.Remove(zombie);
        _processes.Remove(zombie);
        _threads.RemoveAll(t => t.Process == zombie && t != _current);
        return zombie.Pid;
    }

    private long Waitid(int idType, long id, ulong infoPointer, int options)
    {
        const int PAll = 0, PPid = 1, WNoHang = 1, WExited = 4;
        if (idType is not (PAll or PPid) || (options & WExited) == 0)
        {
            return -Errno.EINVAL;
        }

        var process = CurrentProcess;
        var matching = process.Children.Where(c => idType == PAll || c.Pid == id).ToList();
        if (matching.Count == 0)
        {
            return -Errno.ECHILD;
        }

        var zombie = matching.Find(c => c.Zombie);
        if (zombie is null)
        {
            if ((options & WNoHang) != 0)
            {
                return infoPointer == 0 || WriteUser(infoPointer, new byte[128]) ? 0 : -Errno.EFAULT;
            }

            _current.WaitsForChild = true;
            return Block(long.MaxValue, onDescriptors: false);
        }

        Span<byte> info = stackalloc byte[128];
        info.Clear();
        bool signaled = (zombie.WaitStatus & 0x7F) != 0;
        BinaryPrimitives.WriteInt32LittleEndian(info, 17); // SIGCHLD
        BinaryPrimitives.WriteInt32LittleEndian(info[8..], signaled ? 2 : 1); // CLD_KILLED, CLD_EXITED
        BinaryPrimitives.WriteInt32LittleEndian(info[16..], zombie.Pid);
        BinaryPrimitives.WriteInt32LittleEndian(info[20..], (int)HostUid);
        BinaryPrimitives.WriteInt32LittleEndian(info[24..], signaled ? zombie.WaitStatus & 0x7F : (zombie.WaitStatus >> 8) & 0xFF);
        if (infoPointer != 0 && !WriteUser(infoPointer, info))
        {
            return -Errno.EFAULT;
        }

        if ((options & 0x01000000) == 0) // WNOWAIT keeps the zombie
        {
            process.Children.Remove(zombie);
            _processes.Remove(zombie);
        }

        return 0;
    }
}
