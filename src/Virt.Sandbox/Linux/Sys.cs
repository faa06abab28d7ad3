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
        Rseq = 334, Clone3 = 435, Faccessat2 = 439;
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
    Truncate = 0x200,
    Append = 0x400,
    Directory = 0x10000,
    CloseOnExec = 0x80000,
}

/// <summary>An open file description: kind, path, flags and offset (shared by <c>dup</c>ed descriptors).</summary>
internal sealed class FileDescription(FdKind kind, string path, OpenFlags flags)
{
    private long[] _position = [0];

    public FdKind Kind { get; } = kind;

    public string Path { get; } = path;

    public OpenFlags Flags { get; } = flags;

    public long Position
    {
        get => _position[0];
        set => _position[0] = value;
    }

    /// <summary>A descriptor for the same description (dup): the offset is shared.</summary>
    public FileDescription Share() => new(Kind, Path, Flags) { _position = _position };

    /// <summary>An independent copy (for snapshots).</summary>
    public FileDescription Copy() => new(Kind, Path, Flags) { _position = [_position[0]] };
}

/// <summary>The ABI layer's state that a snapshot saves and a reset restores.</summary>
internal sealed class AbiState
{
    public required FileDescription?[] Fds { get; init; }

    public required VirtualFileSystem Vfs { get; init; }

    public required Random Random { get; init; }

    public int Umask { get; set; } = 0x12;

    public ulong FsBase { get; set; }

    public long SleepOffsetNanoseconds { get; set; }

    public static AbiState Initial(SandboxConfiguration config)
    {
        var fds = new FileDescription?[256];
        fds[0] = new FileDescription(FdKind.Stdin, "", OpenFlags.ReadOnly);
        fds[1] = new FileDescription(FdKind.Stdout, "", OpenFlags.WriteOnly);
        fds[2] = new FileDescription(FdKind.Stderr, "", OpenFlags.WriteOnly);
#pragma warning disable CA5394 // Seeded on purpose: a fixed seed makes runs reproducible.
        return new AbiState
        {
            Fds = fds,
            Vfs = new VirtualFileSystem(config.Files),
            Random = config.RandomSeed is int seed ? new Random(seed) : new Random(),
        };
#pragma warning restore CA5394
    }

    public AbiState Clone()
    {
        // Each descriptor gets its own offset in the copy (dup'ed descriptors stop sharing one).
        var fds = new FileDescription?[Fds.Length];
        for (int i = 0; i < Fds.Length; i++)
        {
            if (Fds[i] is { } f)
            {
                fds[i] = f.Copy();
            }
        }

#pragma warning disable CA5394
        return new AbiState
        {
            Fds = fds,
            Vfs = Vfs.Clone(),
            Random = new Random(Random.Next()),
            Umask = Umask,
            FsBase = FsBase,
            SleepOffsetNanoseconds = SleepOffsetNanoseconds,
        };
#pragma warning restore CA5394
    }
}
