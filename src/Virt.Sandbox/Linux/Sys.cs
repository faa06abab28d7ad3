namespace Virt.Sandbox.Linux;

/// <summary>x86-64 Linux system-call numbers the ABI layer handles (asm/unistd_64.h).</summary>
internal static class Sys
{
#pragma warning disable CS1591 // Each constant is the syscall of the same name.
    public const long Read = 0, Write = 1, Open = 2, Close = 3, Stat = 4, Fstat = 5, Lstat = 6, Lseek = 8, Mmap = 9,
        Mprotect = 10, Munmap = 11, Brk = 12, RtSigaction = 13, RtSigprocmask = 14, Ioctl = 16, Pread64 = 17, Readv = 19,
        Writev = 20, Access = 21, SchedYield = 24, Mremap = 25, Madvise = 28, Dup = 32, Dup2 = 33, Nanosleep = 35,
        Getpid = 39, Clone = 56, Fork = 57, Vfork = 58, Execve = 59, Exit = 60, Kill = 62, Uname = 63, Fcntl = 72,
        Fsync = 74, Fdatasync = 75, Getcwd = 79, Readlink = 89, Umask = 95, Gettimeofday = 96, Getrlimit = 97,
        Getuid = 102, Getgid = 104, Geteuid = 107, Getegid = 108, Getppid = 110, Getpgrp = 111, Getpgid = 121,
        Getsid = 124, Sigaltstack = 131, ArchPrctl = 158, Gettid = 186, Tkill = 200, Time = 201, Futex = 202,
        SchedGetaffinity = 204, Getdents64 = 217, SetTidAddress = 218, ClockGettime = 228, ClockGetres = 229,
        ClockNanosleep = 230, ExitGroup = 231, Tgkill = 234, Openat = 257, Newfstatat = 262, Readlinkat = 267,
        Faccessat = 269, SetRobustList = 273, Dup3 = 292, Prlimit64 = 302, Getrandom = 318, Execveat = 322,
        Rseq = 334, Clone3 = 435, Faccessat2 = 439,
        Poll = 7, Select = 23, Pipe = 22, Pselect6 = 270, Ppoll = 271, Pipe2 = 293, Eventfd = 284, Eventfd2 = 290,
        EpollCreate = 213, EpollCreate1 = 291, EpollCtl = 233, EpollWait = 232, EpollPwait = 281, EpollPwait2 = 441,
        Chdir = 80, Fchdir = 81, Rename = 82, Mkdir = 83, Rmdir = 84, Creat = 85, Link = 86, Unlink = 87, Symlink = 88,
        Chmod = 90, Fchmod = 91, Chown = 92, Fchown = 93, Lchown = 94, Truncate = 76, Ftruncate = 77,
        Mkdirat = 258, Fchownat = 260, Unlinkat = 263, Renameat = 264, Linkat = 265, Symlinkat = 266, Fchmodat = 268,
        Utimensat = 280, Renameat2 = 316, Pwrite64 = 18, Preadv = 295, Pwritev = 296, Sendfile = 40,
        Fadvise64 = 221, Fallocate = 285, Statfs = 137, Fstatfs = 138, Flock = 73, Sync = 162, Syncfs = 306,
        Getgroups = 115, Prctl = 157, Sysinfo = 99, Getrusage = 98, Times = 100,
        
        Setpgid = 109, Setsid = 112, Wait4 = 61, Waitid = 247, SchedSetaffinity = 203,
        Getpriority = 140, Setpriority = 141, Setuid = 105, Setgid = 106, Setresuid = 117, Setresgid = 119,
        Getresuid = 118, Getresgid = 120, Mlock = 149, Munlock = 150, 
        Readahead = 187, CloseRange = 436,
        RtSigreturn = 15, Pause = 34, Getitimer = 36, Alarm = 37, Setitimer = 38, RtSigpending = 127, RtSigsuspend = 130, Getcpu = 309,
        RtSigtimedwait = 128, RtSigqueueinfo = 129, RtTgsigqueueinfo = 297, Signalfd = 282, Signalfd4 = 289;
#pragma warning restore CS1591
}

/// <summary>Name lookup for logging unsupported calls.</summary>
internal static partial class SyscallNames
{
    /// <summary>The name of system call <paramref name="number"/>, or <c>syscall_N</c>.</summary>
    public static string Name(long number) => number switch
    {
        LinuxAbi.HostCallNumber => "virt_host_call",
        LinuxAbi.ReadyNumber => "virt_ready",
        _ => Names.TryGetValue(number, out var n) ? n : $"syscall_{number}",
    };
}

/// <summary>What a file descriptor refers to.</summary>
internal enum FdKind
{
    Stdin,
    Stdout,
    Stderr,
    File,
    Directory,
    Device,
    PipeRead,
    PipeWrite,
    EventFd,
    Epoll,
    SignalFd,
}

/// <summary>open(2) flags the layer looks at.</summary>
[Flags]
internal enum OpenFlags
{
    ReadOnly = 0,
    WriteOnly = 1,
    ReadWrite = 2,
    AccessMask = 3,
    Create = 0x40,
    Exclusive = 0x80,
    NoCtty = 0x100,
    Truncate = 0x200,
    Append = 0x400,
    NonBlock = 0x800,
    Directory = 0x10000,
    NoFollow = 0x20000,
    CloseOnExec = 0x80000,
    Path = 0x200000,
    TmpFile = 0x400000,
}

/// <summary>A pipe's buffer, shared by its read and write ends (Linux's default capacity, 64 KiB).</summary>
internal sealed class PipeBuffer
{
    public const int Capacity = 64 * 1024;

    public byte[] Data { get; private set; } = new byte[Capacity];

    public int Start { get; set; }

    public int Count { get; set; }

    /// <summary>Appends up to <see cref="Capacity"/> - <see cref="Count"/> bytes; returns how many fit.</summary>
    public int Write(ReadOnlySpan<byte> source)
    {
        int n = Math.Min(source.Length, Capacity - Count);
        for (int i = 0; i < n; i++)
        {
            Data[(Start + Count + i) % Capacity] = source[i];
        }

        Count += n;
        return n;
    }

    /// <summary>Takes up to <paramref name="destination"/>.Length bytes; returns how many.</summary>
    public int Peek(Span<byte> destination)
    {
        int n = Math.Min(destination.Length, Count);
        for (int i = 0; i < n; i++)
        {
            destination[i] = Data[(Start + i) % Capacity];
        }

        return n;
    }

    public void Consume(int n)
    {
        Start = (Start + n) % Capacity;
        Count -= n;
    }

    public PipeBuffer Clone() => new() { Data = (byte[])Data.Clone(), Start = Start, Count = Count };
}

/// <summary>An eventfd's counter.</summary>
internal sealed class EventCounter
{
    public ulong Value { get; set; }

    public bool Semaphore { get; init; }
}

/// <summary>One registration in an epoll set: the descriptor number and description it watches, the events, the user data.</summary>
internal sealed class EpollEntry
{
    public required int Fd { get; init; }

    public required FileDescription Description { get; set; }

    public uint Events { get; set; }

    public ulong Data { get; set; }

    /// <summary>For EPOLLET and EPOLLONESHOT: the readiness last reported (edge) or that the entry fired (one-shot).</summary>
    public uint LastReported { get; set; }

    public bool Disabled { get; set; }
}

/// <summary>An open file description: what it refers to, its flags and offset. Descriptors made by <c>dup</c> share one.</summary>
internal sealed class FileDescription(FdKind kind, OpenFlags flags)
{
    public FdKind Kind { get; } = kind;

    public OpenFlags Flags { get; set; } = flags;

    public long Position { get; set; }

    /// <summary>The file, directory or device node (File, Directory, Device).</summary>
    public VfsNode? Node { get; init; }

    /// <summary>The pipe (PipeRead, PipeWrite).</summary>
    public PipeBuffer? Pipe { get; init; }

    /// <summary>The counter (EventFd).</summary>
    public EventCounter? Counter { get; init; }

    /// <summary>The registrations (Epoll).</summary>
    public List<EpollEntry>? Interest { get; init; }

    /// <summary>The signals a signalfd reads (SignalFd).</summary>
    public ulong SignalMask { get; set; }

    /// <summary>A copy for a snapshot; shared objects (nodes, pipes, descriptions) come from <paramref name="map"/> once copied.</summary>
    public FileDescription CloneInto(Dictionary<object, object> map)
    {
        if (map.TryGetValue(this, out var done))
        {
            return (FileDescription)done;
        }

        var copy = new FileDescription(Kind, Flags)
        {
            Position = Position,
            Node = Node?.CloneInto(map),
            Pipe = Pipe is null ? null : (PipeBuffer)(map.TryGetValue(Pipe, out var p) ? p : map[Pipe] = Pipe.Clone()),
            Counter = Counter is null ? null : (EventCounter)(map.TryGetValue(Counter, out var c) ? c : map[Counter] = new EventCounter { Value = Counter.Value, Semaphore = Counter.Semaphore }),
            Interest = Interest is null ? null : [],
            SignalMask = SignalMask,
        };
        map[this] = copy;
        if (Interest is not null)
        {
            foreach (var e in Interest)
            {
                copy.Interest!.Add(new EpollEntry { Fd = e.Fd, Description = e.Description.CloneInto(map), Events = e.Events, Data = e.Data, LastReported = e.LastReported, Disabled = e.Disabled });
            }
        }

        return copy;
    }
}

/// <summary>The ABI layer's state that a snapshot saves and a reset restores.</summary>
internal sealed class AbiState
{
    public required FileDescription?[] Fds { get; init; }

    /// <summary>FD_CLOEXEC of each descriptor.</summary>
    public required bool[] CloseOnExec { get; init; }

    public required VirtualFileSystem Vfs { get; init; }

    public required Random Random { get; init; }

    /// <summary>The working directory.</summary>
    public required VfsDirectory Cwd { get; set; }

    public int Umask { get; set; } = 0x12;

    public ulong FsBase { get; set; }

    public long SleepOffsetNanoseconds { get; set; }

    /// <summary>The blocked signals.</summary>
    public ulong SignalMask { get; set; }

    /// <summary>sigaltstack's stack (size 0: none).</summary>
    public (ulong Base, ulong Size) AltStack { get; set; }

    /// <summary>sigaltstack's flags besides SS_DISABLE (SS_AUTODISARM).</summary>
    public int AltStackFlags { get; set; }

    /// <summary>Pending signals and ITIMER_REAL (a fork's child starts with none).</summary>
    public SignalState Signals { get; init; } = new();

    /// <summary>PR_SET_DUMPABLE.</summary>
    public bool Dumpable { get; set; } = true;

    /// <summary>PR_SET_NAME, or null for the executable's name.</summary>
    public string? ThreadName { get; set; }

    /// <summary>Signal actions by number (1-64): handler, flags, restorer, mask.</summary>
    public required SignalAction[] SignalActions { get; init; }

    public static AbiState Initial(SandboxConfiguration config)
    {
        var fds = new FileDescription?[256];
        fds[0] = new FileDescription(FdKind.Stdin, OpenFlags.ReadOnly);
        fds[1] = new FileDescription(FdKind.Stdout, OpenFlags.WriteOnly);
        fds[2] = new FileDescription(FdKind.Stderr, OpenFlags.WriteOnly);
        var vfs = new VirtualFileSystem(config.HostDirectories, config.Files, config.Executable, config.ExecutablePath, config.ExecutableAliases, config.MaxFileSystemBytes, config.MaxFileSystemEntries);
#pragma warning disable CA5394 // Seeded on purpose: a fixed seed makes runs reproducible.
        return new AbiState
        {
            Fds = fds,
            CloseOnExec = new bool[256],
            Vfs = vfs,
            Cwd = vfs.Root,
            Random = config.RandomSeed is int seed ? new Random(seed) : new Random(),
            SignalActions = new SignalAction[65],
        };
#pragma warning restore CA5394
    }

    /// <summary>The state a forked child starts with: the same open descriptions, file tree and directory; copies of the rest.</summary>
    public AbiState ForkCopy() => new()
    {
        Fds = (FileDescription?[])Fds.Clone(),
        CloseOnExec = (bool[])CloseOnExec.Clone(),
        Vfs = Vfs,
        Cwd = Cwd,
        Random = Random,
        Umask = Umask,
        FsBase = FsBase,
        Dumpable = Dumpable,
        ThreadName = ThreadName,
        SignalMask = SignalMask,
        AltStack = AltStack,
        AltStackFlags = AltStackFlags,
        SignalActions = (SignalAction[])SignalActions.Clone(),
    };

    public AbiState Clone()
    {
        var map = new Dictionary<object, object>(ReferenceEqualityComparer.Instance);
        var vfs = Vfs.Clone(map);
        var fds = new FileDescription?[Fds.Length];
        for (int i = 0; i < Fds.Length; i++)
        {
            fds[i] = Fds[i]?.CloneInto(map);
        }

#pragma warning disable CA5394
        return new AbiState
        {
            Fds = fds,
            CloseOnExec = (bool[])CloseOnExec.Clone(),
            Vfs = vfs,
            Cwd = (VfsDirectory)Cwd.CloneInto(map),
            Random = new Random(Random.Next()),
            Umask = Umask,
            FsBase = FsBase,
            SleepOffsetNanoseconds = SleepOffsetNanoseconds,
            Dumpable = Dumpable,
            SignalMask = SignalMask,
            AltStack = AltStack,
            AltStackFlags = AltStackFlags,
            Signals = Signals.Clone(),
            ThreadName = ThreadName,
            SignalActions = (SignalAction[])SignalActions.Clone(),
        };
#pragma warning restore CA5394
    }
}

/// <summary>A signal's action as <c>rt_sigaction</c> set it (the kernel's <c>struct sigaction</c>).</summary>
internal readonly record struct SignalAction(ulong Handler, ulong Flags, ulong Restorer, ulong Mask);
