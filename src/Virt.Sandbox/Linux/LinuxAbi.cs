using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Virt.Cpu;
using Virt.Memory;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

/// <summary>Why the ABI layer stopped a run.</summary>
internal sealed record StopRequest(SandboxStatus Status, int ExitCode, int? Signal, string? Message);

/// <summary>
/// The host side of the Linux system-call interface for one sandbox. Every argument comes from the
/// guest and is validated: pointers are translated through <see cref="AddressSpace"/> with the
/// permission a CPL 3 access would need (a bad one is <c>EFAULT</c>), lengths are clamped, and nothing
/// here can throw for a guest value. Anything not implemented is <c>ENOSYS</c>, counted by name.
/// </summary>
internal sealed partial class LinuxAbi
{
    private const int MaxFds = 256;
    private const int MaxPath = 4096;
    private const int MaxIoChunk = 1 << 20;
    private const long HostUid = 1000;

    /// <summary>Reserved system call: call a host function (see virt_sandbox.h).</summary>
    public const long HostCallNumber = 0x5653_0000;

    /// <summary>Reserved system call: the program is initialised and ready; snapshot here.</summary>
    public const long ReadyNumber = 0x5653_0001;

    private readonly SandboxConfiguration _config;
    private readonly GuestMemory _memory;
    private readonly AddressSpace _space;
    private readonly ArenaAllocator _arena;
    private readonly Action<ulong> _setFsBase;
    private readonly Dictionary<string, int> _unsupported = new(StringComparer.Ordinal);
    private readonly byte[] _scratch = new byte[64 * 1024];
    private AbiState _state;
    private ReadOnlyMemory<byte> _stdin;
    private int _stdinPosition;
    private ArrayBufferWriter<byte> _stdout = new();
    private ArrayBufferWriter<byte> _stderr = new();
    private long _syscalls;

    public LinuxAbi(SandboxConfiguration config, GuestMemory memory, AddressSpace space, ArenaAllocator arena, Action<ulong> setFsBase)
    {
        _config = config;
        _memory = memory;
        _space = space;
        _arena = arena;
        _setFsBase = setFsBase;
        _state = AbiState.Initial(config);
    }

    /// <summary>Set when a system call ended the run.</summary>
    public StopRequest? Stop { get; private set; }

    /// <summary>System calls handled in this run.</summary>
    public long SystemCalls => _syscalls;

    /// <summary>Output written so far.</summary>
    public ReadOnlyMemory<byte> Stdout => _stdout.WrittenMemory;

    /// <summary>Error output written so far.</summary>
    public ReadOnlyMemory<byte> Stderr => _stderr.WrittenMemory;

    /// <summary>Unsupported or denied calls by name.</summary>
    public IReadOnlyDictionary<string, int> Unsupported => _unsupported;

    /// <summary>The FS base the program set last (kept host-side for snapshots).</summary>
    public ulong FsBase => _state.FsBase;

    /// <summary>Starts a run: new input, empty output, counters at zero.</summary>
    public void BeginRun(ReadOnlyMemory<byte> stdin)
    {
        _stdin = stdin;
        _stdinPosition = 0;
        _stdout = new ArrayBufferWriter<byte>();
        _stderr = new ArrayBufferWriter<byte>();
        _syscalls = 0;
        _unsupported.Clear();
        Stop = null;
    }

    /// <summary>A copy of the state that a snapshot must bring back.</summary>
    public AbiState SaveState() => _state.Clone();

    /// <summary>Returns to a saved state.</summary>
    public void RestoreState(AbiState state) => _state = state.Clone();

    /// <summary>Whether the pending call at <paramref name="r"/> is the program's ready point (a read of stdin, or the ready call).</summary>
    public bool IsReadyPoint(in GeneralRegisters r) =>
        r.Rax == ReadyNumber ||
        ((r.Rax == Sys.Read || r.Rax == Sys.Readv) && r.Rdi == 0 && _state.Fds[0] is { Kind: FdKind.Stdin });

    /// <summary>Handles the system call in <paramref name="r"/>; writes the result to RAX. Returns false when the run must stop (see <see cref="Stop"/>).</summary>
    public bool Dispatch(ref GeneralRegisters r)
    {
        _syscalls++;
        if (_syscalls > _config.MaxSystemCalls)
        {
            Stop = new StopRequest(SandboxStatus.SyscallLimitExceeded, -1, null, $"More than {_config.MaxSystemCalls} system calls.");
            return false;
        }

        long result;
        try
        {
            result = Handle((long)r.Rax, r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9);
        }
        catch (GuestMemoryException)
        {
            // Defence in depth: every access is translated first, so this means a bug, not a guest error.
            result = -Errno.EFAULT;
        }

        r.Rax = (ulong)result;
        return Stop is null;
    }

    private long Handle(long nr, ulong a0, ulong a1, ulong a2, ulong a3, ulong a4, ulong a5)
    {
        switch (nr)
        {
            case Sys.Read: return Read((int)a0, a1, a2, -1);
            case Sys.Pread64: return (long)a3 < 0 ? -Errno.EINVAL : Read((int)a0, a1, a2, (long)a3);
            case Sys.Write: return Write((int)a0, a1, a2);
            case Sys.Readv: return Vectored((int)a0, a1, a2, write: false);
            case Sys.Writev: return Vectored((int)a0, a1, a2, write: true);
            case Sys.Open: return OpenAt(AtFdCwd, a0, (int)a1);
            case Sys.Openat: return OpenAt((int)a0, a1, (int)a2);
            case Sys.Close: return Close((int)a0);
            case Sys.Stat: case Sys.Lstat: return StatPath(AtFdCwd, a0, a1, 0);
            case Sys.Fstat: return Fstat((int)a0, a1);
            case Sys.Newfstatat: return StatPath((int)a0, a1, a2, (int)a3);
            case Sys.Lseek: return Lseek((int)a0, (long)a1, (int)a2);
            case Sys.Getdents64: return Getdents((int)a0, a1, a2);
            case Sys.Readlink: return ReadLink(AtFdCwd, a0, a1, a2);
            case Sys.Readlinkat: return ReadLink((int)a0, a1, a2, a3);
            case Sys.Access: return Access(AtFdCwd, a0);
            case Sys.Faccessat: case Sys.Faccessat2: return Access((int)a0, a1);
            case Sys.Getcwd: return Getcwd(a0, a1);
            case Sys.Fcntl: return Fcntl((int)a0, (int)a1, a2);
            case Sys.Dup: return Dup((int)a0, -1, 0);
            case Sys.Dup2: return a0 == a1 ? (ValidFd((int)a0) ? (long)a0 : -Errno.EBADF) : Dup((int)a0, (int)a1, 0);
            case Sys.Dup3: return a0 == a1 ? -Errno.EINVAL : Dup((int)a0, (int)a1, (int)a2);
            case Sys.Ioctl: return ValidFd((int)a0) ? -Errno.ENOTTY : -Errno.EBADF;
            case Sys.Brk: return (long)_arena.Brk(a0);
            case Sys.Mmap: return Mmap(a0, a1, (int)a2, (int)a3, (int)a4, a5);
            case Sys.Munmap: return Munmap(a0, a1);
            case Sys.Mprotect: return Mprotect(a0, a1, (int)a2);
            case Sys.Madvise: return 0;
            case Sys.Mremap: return Mremap(a0, a1, a2, (int)a3);
            case Sys.ArchPrctl: return ArchPrctl((int)a0, a1);
            case Sys.SetTidAddress: return 1;
            case Sys.SetRobustList: return 0;
            case Sys.Rseq: return NotImplemented(nr);
            case Sys.Futex: return Futex(a0, (int)a1, (uint)a2);
            case Sys.ClockGettime: return ClockGettime((int)a0, a1);
            case Sys.ClockGetres: return WriteTimespec(a1, 0, 1);
            case Sys.Gettimeofday: return Gettimeofday(a0);
            case Sys.Time: return Time(a0);
            case Sys.Nanosleep: return Nanosleep(a0);
            case Sys.ClockNanosleep: return Nanosleep(a2);
            case Sys.Getrandom: return Getrandom(a0, a1);
            case Sys.Uname: return Uname(a0);
            case Sys.Getpid: case Sys.Gettid: case Sys.Getpgrp: case Sys.Getsid: case Sys.Getpgid: return 1;
            case Sys.Getppid: return 0;
            case Sys.Getuid: case Sys.Geteuid: case Sys.Getgid: case Sys.Getegid: return HostUid;
            case Sys.Umask: { long old = _state.Umask; _state.Umask = (int)(a0 & 0x1FF); return old; }
            case Sys.RtSigaction: return RtSigaction((int)a0, a2, a3);
            case Sys.RtSigprocmask: return RtSigprocmask(a2, a3);
            case Sys.Sigaltstack: return Sigaltstack(a1);
            case Sys.Prlimit64: return (a0 is 0 or 1) ? Prlimit((int)a1, a3) : -Errno.ESRCH;
            case Sys.Getrlimit: return Prlimit((int)a0, a1);
            case Sys.SchedGetaffinity: return SchedGetaffinity(a1, a2);
            case Sys.SchedYield: return 0;
            case Sys.Fsync: case Sys.Fdatasync: return ValidFd((int)a0) ? 0 : -Errno.EBADF;
            case Sys.Exit: case Sys.ExitGroup:
                Stop = new StopRequest(SandboxStatus.Exited, (int)(a0 & 0xFF), null, null);
                return 0;
            case Sys.Kill: case Sys.Tkill: return SelfSignal(a0 is 0 or 1, (int)a1);
            case Sys.Tgkill: return SelfSignal(a0 is 0 or 1 && a1 == 1, (int)a2);
            case Sys.Clone: case Sys.Clone3: case Sys.Fork: case Sys.Vfork: case Sys.Execve: case Sys.Execveat:
                return Denied(nr);
            case HostCallNumber: return HostCall(a0, a1, a2, a3, a4, a5);
            case ReadyNumber: return 0;
            default: return NotImplemented(nr);
        }
    }

    private long NotImplemented(long nr) => Count(nr, -Errno.ENOSYS);

    private long Denied(long nr) => Count(nr, -Errno.EPERM);

    private long Count(long nr, long result)
    {
        string name = SyscallNames.Name(nr);
        _unsupported[name] = _unsupported.GetValueOrDefault(name) + 1;
        return result;
    }

    // ---- memory helpers -------------------------------------------------------------------

    private bool ReadUser(ulong va, Span<byte> destination) => destination.IsEmpty || (va != 0 && _space.TryReadUser(va, destination, _memory));

    private bool WriteUser(ulong va, ReadOnlySpan<byte> source) => source.IsEmpty || (va != 0 && _space.TryWriteUser(va, source, _memory));

    private bool WriteU64(ulong va, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return WriteUser(va, b);
    }

    private bool ReadU64(ulong va, out ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        bool ok = ReadUser(va, b);
        value = ok ? BinaryPrimitives.ReadUInt64LittleEndian(b) : 0;
        return ok;
    }

    /// <summary>Reads a NUL-terminated string of at most <paramref name="max"/> bytes; null on a bad pointer or no terminator.</summary>
    private string? ReadString(ulong va, int max = MaxPath)
    {
        if (va == 0)
        {
            return null;
        }

        var bytes = new List<byte>(64);
        Span<byte> chunk = stackalloc byte[64];
        while (bytes.Count < max)
        {
            // Read up to the end of the page so an unmapped next page is not touched early.
            int n = (int)Math.Min(64UL, GuestLayout.PageSize - (va & 0xFFF));
            if (!ReadUser(va, chunk[..n]))
            {
                return null;
            }

            int zero = chunk[..n].IndexOf((byte)0);
            if (zero >= 0)
            {
                bytes.AddRange(chunk[..zero].ToArray());
                return Encoding.UTF8.GetString(bytes.ToArray());
            }

            bytes.AddRange(chunk[..n].ToArray());
            va += (ulong)n;
        }

        return null;
    }

    // ---- files ----------------------------------------------------------------------------

    private const int AtFdCwd = -100;

    private bool ValidFd(int fd) => fd >= 0 && fd < MaxFds && _state.Fds[fd] is not null;

    private long Read(int fd, ulong buffer, ulong count, long offset)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        int want = (int)Math.Min(count, MaxIoChunk);
        switch (f.Kind)
        {
            case FdKind.Stdin:
            {
                if (offset >= 0)
                {
                    return -Errno.ESPIPE;
                }

                int n = Math.Min(want, _stdin.Length - _stdinPosition);
                if (!WriteUser(buffer, _stdin.Span.Slice(_stdinPosition, n)))
                {
                    return -Errno.EFAULT;
                }

                _stdinPosition += n;
                return n;
            }

            case FdKind.File:
            {
                if ((f.Flags & OpenFlags.AccessMask) == OpenFlags.WriteOnly)
                {
                    return -Errno.EBADF;
                }

                var file = _state.Vfs.GetFile(f.Path)!;
                long pos = offset >= 0 ? offset : f.Position;
                if (pos >= file.Length)
                {
                    return 0;
                }

                int n = (int)Math.Min(want, file.Length - pos);
                if (!WriteUser(buffer, file.Content.AsSpan((int)pos, n)))
                {
                    return -Errno.EFAULT;
                }

                if (offset < 0)
                {
                    f.Position = pos + n;
                }

                return n;
            }

            case FdKind.Directory:
                return -Errno.EISDIR;
            default:
                return -Errno.EBADF;
        }
    }

    private long Write(int fd, ulong buffer, ulong count)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        int want = (int)Math.Min(count, MaxIoChunk);
        switch (f.Kind)
        {
            case FdKind.Stdout:
            case FdKind.Stderr:
            {
                long room = _config.MaxOutputBytes - _stdout.WrittenCount - _stderr.WrittenCount;
                int n = (int)Math.Min(want, Math.Max(room, 0));
                var target = f.Kind == FdKind.Stdout ? _stdout : _stderr;
                int done = 0;
                while (done < n)
                {
                    int c = Math.Min(n - done, _scratch.Length);
                    if (!ReadUser(buffer + (ulong)done, _scratch.AsSpan(0, c)))
                    {
                        return done > 0 ? done : -Errno.EFAULT;
                    }

                    target.Write(_scratch.AsSpan(0, c));
                    done += c;
                }

                if (n < want)
                {
                    Stop = new StopRequest(SandboxStatus.OutputLimitExceeded, -1, null, $"Output reached the limit of {_config.MaxOutputBytes} bytes.");
                }

                return n;
            }

            case FdKind.File:
            {
                var file = _state.Vfs.GetFile(f.Path)!;
                if (!file.Writable || (f.Flags & OpenFlags.AccessMask) == OpenFlags.ReadOnly)
                {
                    return -Errno.EBADF;
                }

                long pos = (f.Flags & OpenFlags.Append) != 0 ? file.Length : f.Position;
                if (pos + want > _config.MaxFileBytes)
                {
                    return -Errno.EFBIG;
                }

                var data = new byte[want];
                if (!ReadUser(buffer, data))
                {
                    return -Errno.EFAULT;
                }

                if (pos + want > file.Content.Length)
                {
                    var grown = new byte[Math.Max(pos + want, file.Content.Length * 2L)];
                    file.Content.AsSpan(0, (int)file.Length).CopyTo(grown);
                    file.Content = grown;
                }

                data.CopyTo(file.Content, pos);
                file.Length = Math.Max(file.Length, pos + want);
                f.Position = pos + want;
                return want;
            }

            default:
                return -Errno.EBADF;
        }
    }

    private long Vectored(int fd, ulong iov, ulong count, bool write)
    {
        if (count > 1024)
        {
            return -Errno.EINVAL;
        }

        long total = 0;
        for (ulong i = 0; i < count; i++)
        {
            if (!ReadU64(iov + (i * 16), out ulong b) || !ReadU64(iov + (i * 16) + 8, out ulong len))
            {
                return total > 0 ? total : -Errno.EFAULT;
            }

            if (len == 0)
            {
                continue;
            }

            long n = write ? Write(fd, b, len) : Read(fd, b, len, -1);
            if (n < 0)
            {
                return total > 0 ? total : n;
            }

            total += n;
            if ((ulong)n < len || Stop is not null)
            {
                break;
            }
        }

        return total;
    }

    private string? ResolvePath(int dirfd, ulong pathPointer, out long error)
    {
        error = 0;
        string? path = ReadString(pathPointer);
        if (path is null)
        {
            error = -Errno.EFAULT;
            return null;
        }

        if (path.Length == 0)
        {
            error = -Errno.ENOENT;
            return null;
        }

        string cwd = "/";
        if (!path.StartsWith('/') && dirfd != AtFdCwd)
        {
            if (!ValidFd(dirfd))
            {
                error = -Errno.EBADF;
                return null;
            }

            if (_state.Fds[dirfd]!.Kind != FdKind.Directory)
            {
                error = -Errno.ENOTDIR;
                return null;
            }

            cwd = _state.Fds[dirfd]!.Path;
        }

        return VirtualFileSystem.Normalize(cwd, path);
    }

    private long OpenAt(int dirfd, ulong pathPointer, int flags)
    {
        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        var o = (OpenFlags)flags;
        FileDescription desc;
        if (_state.Vfs.IsDirectory(path))
        {
            if ((o & OpenFlags.AccessMask) != OpenFlags.ReadOnly)
            {
                return -Errno.EISDIR;
            }

            desc = new FileDescription(FdKind.Directory, path, o);
        }
        else if (_state.Vfs.GetFile(path) is { } file)
        {
            if ((o & OpenFlags.AccessMask) != OpenFlags.ReadOnly && !file.Writable)
            {
                return -Errno.EACCES;
            }

            if ((o & OpenFlags.Directory) != 0)
            {
                return -Errno.ENOTDIR;
            }

            if ((o & OpenFlags.Truncate) != 0 && file.Writable)
            {
                file.Length = 0;
            }

            desc = new FileDescription(FdKind.File, path, o);
        }
        else if (path == "/proc/self/exe" || path == _config.ExecutablePath)
        {
            return -Errno.EACCES;
        }
        else
        {
            return (o & OpenFlags.Create) != 0 ? -Errno.EROFS : -Errno.ENOENT;
        }

        int fd = LowestFreeFd(0);
        if (fd < 0)
        {
            return -Errno.EMFILE;
        }

        _state.Fds[fd] = desc;
        return fd;
    }

    private int LowestFreeFd(int from)
    {
        for (int i = Math.Max(from, 0); i < MaxFds; i++)
        {
            if (_state.Fds[i] is null)
            {
                return i;
            }
        }

        return -1;
    }

    private long Close(int fd)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        _state.Fds[fd] = null;
        return 0;
    }

    private long Dup(int fd, int target, int flags)
    {
        if (!ValidFd(fd) || target >= MaxFds || (target < 0 && target != -1))
        {
            return -Errno.EBADF;
        }

        if ((flags & ~(int)OpenFlags.CloseOnExec) != 0)
        {
            return -Errno.EINVAL;
        }

        int t = target >= 0 ? target : LowestFreeFd(0);
        if (t < 0)
        {
            return -Errno.EMFILE;
        }

        _state.Fds[t] = _state.Fds[fd]!.Share();
        return t;
    }

    private long Fcntl(int fd, int cmd, ulong arg)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        const int FDupfd = 0, FGetfd = 1, FSetfd = 2, FGetfl = 3, FSetfl = 4, FDupfdCloexec = 1030;
        return cmd switch
        {
            FDupfd or FDupfdCloexec => arg >= MaxFds ? -Errno.EINVAL : DupFrom(fd, (int)arg),
            FGetfd => 0,
            FSetfd => 0,
            FGetfl => (long)(_state.Fds[fd]!.Flags & (OpenFlags.AccessMask | OpenFlags.Append)),
            FSetfl => 0,
            _ => -Errno.EINVAL,
        };
    }

    private long DupFrom(int fd, int from)
    {
        int t = LowestFreeFd(from);
        if (t < 0)
        {
            return -Errno.EMFILE;
        }

        _state.Fds[t] = _state.Fds[fd]!.Share();
        return t;
    }

    private long Lseek(int fd, long offset, int whence)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        if (f.Kind is FdKind.Stdin or FdKind.Stdout or FdKind.Stderr)
        {
            return -Errno.ESPIPE;
        }

        long size = f.Kind == FdKind.File ? _state.Vfs.GetFile(f.Path)!.Length : 0;
        long basePos = whence switch { 0 => 0, 1 => f.Position, 2 => size, _ => long.MinValue };
        if (basePos == long.MinValue)
        {
            return -Errno.EINVAL;
        }

        long pos = basePos + offset;
        if (pos < 0 || (offset > 0 && pos < basePos))
        {
            return -Errno.EINVAL;
        }

        f.Position = pos;
        return pos;
    }

    private long Getdents(int fd, ulong buffer, ulong count)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        if (f.Kind != FdKind.Directory)
        {
            return -Errno.ENOTDIR;
        }

        var entries = new List<(string Name, bool IsDir, ulong Inode)> { (".", true, 1), ("..", true, 1) };
        entries.AddRange(_state.Vfs.List(f.Path));
        int cap = (int)Math.Min(count, (ulong)_scratch.Length);
        int used = 0;
        while (f.Position < entries.Count)
        {
            var (name, isDir, inode) = entries[(int)f.Position];
            byte[] nameBytes = Encoding.UTF8.GetBytes(name);
            int reclen = (19 + nameBytes.Length + 1 + 7) & ~7;
            if (used + reclen > cap)
            {
                break;
            }

            var rec = _scratch.AsSpan(used, reclen);
            rec.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(rec, inode);
            BinaryPrimitives.WriteInt64LittleEndian(rec[8..], f.Position + 1);
            BinaryPrimitives.WriteUInt16LittleEndian(rec[16..], (ushort)reclen);
            rec[18] = isDir ? (byte)4 : (byte)8; // DT_DIR, DT_REG
            nameBytes.CopyTo(rec[19..]);
            used += reclen;
            f.Position++;
        }

        if (used == 0 && f.Position < entries.Count)
        {
            return -Errno.EINVAL;
        }

        return WriteUser(buffer, _scratch.AsSpan(0, used)) ? used : -Errno.EFAULT;
    }

    private long Fstat(int fd, ulong statPointer)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        return f.Kind switch
        {
            FdKind.File => WriteStat(statPointer, _state.Vfs.GetFile(f.Path)!),
            FdKind.Directory => WriteStat(statPointer, null),
            _ => WriteStatRaw(statPointer, 0x1000 | 0x180, 0, (ulong)(10 + fd)), // S_IFIFO, rw-------: stdio are pipes
        };
    }

    private long StatPath(int dirfd, ulong pathPointer, ulong statPointer, int flags)
    {
        const int AtEmptyPath = 0x1000;
        if ((flags & AtEmptyPath) != 0 && ReadString(pathPointer) == "")
        {
            return Fstat(dirfd, statPointer);
        }

        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        if (_state.Vfs.GetFile(path) is { } file)
        {
            return WriteStat(statPointer, file);
        }

        return _state.Vfs.IsDirectory(path) ? WriteStat(statPointer, null) : -Errno.ENOENT;
    }

    private long WriteStat(ulong pointer, VfsFile? file) => file is null
        ? WriteStatRaw(pointer, 0x4000 | 0x16D, 4096, 2) // S_IFDIR r-xr-xr-x
        : WriteStatRaw(pointer, 0x8000 | (file.Writable ? 0x1A4u : 0x124u), file.Length, file.Inode); // S_IFREG

    /// <summary>Writes a <c>struct stat</c> (x86-64 layout, 144 bytes).</summary>
    private long WriteStatRaw(ulong pointer, uint mode, long size, ulong inode)
    {
        Span<byte> st = stackalloc byte[144];
        st.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(st, 0x56); // st_dev
        BinaryPrimitives.WriteUInt64LittleEndian(st[8..], inode);
        BinaryPrimitives.WriteUInt64LittleEndian(st[16..], 1); // st_nlink
        BinaryPrimitives.WriteUInt32LittleEndian(st[24..], mode);
        BinaryPrimitives.WriteUInt32LittleEndian(st[28..], (uint)HostUid);
        BinaryPrimitives.WriteUInt32LittleEndian(st[32..], (uint)HostUid);
        BinaryPrimitives.WriteInt64LittleEndian(st[48..], size);
        BinaryPrimitives.WriteInt64LittleEndian(st[56..], 4096); // st_blksize
        BinaryPrimitives.WriteInt64LittleEndian(st[64..], (size + 511) / 512);
        return WriteUser(pointer, st) ? 0 : -Errno.EFAULT;
    }

    private long ReadLink(int dirfd, ulong pathPointer, ulong buffer, ulong size)
    {
        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        if (path != "/proc/self/exe")
        {
            return _state.Vfs.GetFile(path) is not null || _state.Vfs.IsDirectory(path) ? -Errno.EINVAL : -Errno.ENOENT;
        }

        if ((long)size <= 0)
        {
            return -Errno.EINVAL;
        }

        byte[] target = Encoding.UTF8.GetBytes(_config.ExecutablePath);
        int n = (int)Math.Min((ulong)target.Length, size);
        return WriteUser(buffer, target.AsSpan(0, n)) ? n : -Errno.EFAULT;
    }

    private long Access(int dirfd, ulong pathPointer)
    {
        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        return _state.Vfs.GetFile(path) is not null || _state.Vfs.IsDirectory(path) ? 0 : -Errno.ENOENT;
    }

    private long Getcwd(ulong buffer, ulong size)
    {
        if (size < 2)
        {
            return -Errno.ERANGE;
        }

        return WriteUser(buffer, "/\0"u8) ? 2 : -Errno.EFAULT;
    }

    // ---- memory ---------------------------------------------------------------------------

    private long Mmap(ulong address, ulong length, int prot, int flags, int fd, ulong offset)
    {
        const int MapShared = 1, MapPrivate = 2, MapFixed = 0x10, MapAnonymous = 0x20, MapFixedNoReplace = 0x100000;
        if (length == 0 || length > _arena.Pages * GuestLayout.PageSize || (offset & 0xFFF) != 0)
        {
            if (length > _arena.Pages * GuestLayout.PageSize)
            {
                _arena.LimitReached = true;
                return -Errno.ENOMEM;
            }

            return -Errno.EINVAL;
        }

        if ((flags & (MapShared | MapPrivate)) == 0)
        {
            return -Errno.EINVAL;
        }

        if ((prot & 4) != 0 && (_space.FlagsAt(GuestLayout.ArenaBase) & PageFlags.NoExecute) != 0)
        {
            // PROT_EXEC: arena pages are never executable (unless the image asked for an executable stack).
            return Count(Sys.Mmap, -Errno.EPERM);
        }

        VfsFile? file = null;
        if ((flags & MapAnonymous) == 0)
        {
            if (!ValidFd(fd) || _state.Fds[fd]!.Kind != FdKind.File)
            {
                return -Errno.EBADF;
            }

            if ((flags & MapShared) != 0 && (prot & 2) != 0)
            {
                return -Errno.EACCES;
            }

            file = _state.Vfs.GetFile(_state.Fds[fd]!.Path);
        }

        ulong pages = (length + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        ulong at;
        if ((flags & (MapFixed | MapFixedNoReplace)) != 0)
        {
            if ((address & 0xFFF) != 0)
            {
                return -Errno.EINVAL;
            }

            if (!_arena.Contains(address, pages))
            {
                return -Errno.ENOMEM;
            }

            _arena.AllocateAt(address, pages);
            at = address;
        }
        else
        {
            at = _arena.Allocate(pages);
            if (at == 0)
            {
                return -Errno.ENOMEM;
            }
        }

        if (file is not null && offset < (ulong)file.Length)
        {
            int n = (int)Math.Min((ulong)file.Length - offset, pages * GuestLayout.PageSize);
            _space.TryWriteUser(at, file.Content.AsSpan((int)offset, n), _memory);
        }

        return (long)at;
    }

    /// <summary>
    /// <c>mprotect</c> over the fixed page tables: a request that takes permissions away is accepted (the pages
    /// keep the access they have, see docs/sandbox.md), one that asks for a permission a page lacks (write on
    /// code, execute on data) is refused with <c>EPERM</c>, as <c>mmap</c> refuses it, and unmapped pages give
    /// <c>ENOMEM</c>, as on Linux.
    /// </summary>
    private long Mprotect(ulong address, ulong length, int prot)
    {
        const int ProtWrite = 2, ProtExec = 4, ProtGrowsDown = 0x0100_0000, ProtGrowsUp = 0x0200_0000;
        if ((address & 0xFFF) != 0 || (prot & ~(7 | ProtGrowsDown | ProtGrowsUp)) != 0 || length > (1UL << 47))
        {
            return -Errno.EINVAL;
        }

        ulong pages = (length + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        if (!GuestLayout.IsUserCanonical(address) || !GuestLayout.IsUserCanonical(address + (pages * GuestLayout.PageSize) - 1))
        {
            return pages == 0 ? 0 : -Errno.ENOMEM;
        }

        for (ulong i = 0; i < pages; i++)
        {
            ulong va = address + (i * GuestLayout.PageSize);
            var flags = _space.FlagsAt(va);
            if ((flags & (PageFlags.Present | PageFlags.User)) != (PageFlags.Present | PageFlags.User) ||
                (_arena.Contains(va, 1) && !_arena.IsAllocated(va, 1)))
            {
                return -Errno.ENOMEM;
            }

            if (((prot & ProtWrite) != 0 && (flags & PageFlags.Writable) == 0) || ((prot & ProtExec) != 0 && (flags & PageFlags.NoExecute) != 0))
            {
                return Count(Sys.Mprotect, -Errno.EPERM);
            }
        }

        return 0;
    }

    private long Munmap(ulong address, ulong length)
    {
        if ((address & 0xFFF) != 0 || length == 0 || !GuestLayout.IsUserCanonical(address) || length > (1UL << 47))
        {
            return -Errno.EINVAL;
        }

        _arena.Free(address, (length + GuestLayout.PageSize - 1) / GuestLayout.PageSize);
        return 0;
    }

    private long Mremap(ulong oldAddress, ulong oldLength, ulong newLength, int flags)
    {
        const int MremapMaymove = 1;
        ulong oldPages = (oldLength + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        ulong newPages = (newLength + GuestLayout.PageSize - 1) / GuestLayout.PageSize;
        if ((oldAddress & 0xFFF) != 0 || newPages == 0 || (flags & ~3) != 0 || !_arena.Contains(oldAddress, Math.Max(oldPages, 1)))
        {
            return -Errno.EINVAL;
        }

        if (newPages > _arena.Pages)
        {
            _arena.LimitReached = true;
            return -Errno.ENOMEM;
        }

        if (newPages <= oldPages)
        {
            _arena.Free(oldAddress + (newPages * GuestLayout.PageSize), oldPages - newPages);
            return (long)oldAddress;
        }

        if (_arena.TryGrowInPlace(oldAddress, oldPages, newPages))
        {
            return (long)oldAddress;
        }

        if ((flags & MremapMaymove) == 0)
        {
            return -Errno.ENOMEM;
        }

        ulong at = _arena.Allocate(newPages);
        if (at == 0)
        {
            return -Errno.ENOMEM;
        }

        for (ulong p = 0; p < oldPages; p++)
        {
            var page = _scratch.AsSpan(0, (int)GuestLayout.PageSize);
            if (_space.TryReadUser(oldAddress + (p * GuestLayout.PageSize), page, _memory))
            {
                _space.TryWriteUser(at + (p * GuestLayout.PageSize), page, _memory);
            }
        }

        _arena.Free(oldAddress, oldPages);
        return (long)at;
    }

    // ---- process, time, misc -------------------------------------------------------------

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

    private long Futex(ulong address, int op, uint value)
    {
        const int FutexWait = 0, FutexWake = 1, FutexWaitBitset = 9, FutexWakeBitset = 10;
        int cmd = op & 0x7F;
        if (cmd is FutexWake or FutexWakeBitset)
        {
            return 0;
        }

        if (cmd is FutexWait or FutexWaitBitset)
        {
            Span<byte> b = stackalloc byte[4];
            if (!ReadUser(address, b))
            {
                return -Errno.EFAULT;
            }

            // One thread: nobody could ever wake a matching wait, so it fails instead of hanging.
            return BinaryPrimitives.ReadUInt32LittleEndian(b) != value ? -Errno.EAGAIN : -Errno.EDEADLK;
        }

        return NotImplemented(Sys.Futex);
    }

    private long MonotonicNanoseconds() =>
        (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency)) + _state.SleepOffsetNanoseconds;

    private long RealtimeNanoseconds() =>
        ((DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks) * 100) + _state.SleepOffsetNanoseconds;

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

    /// <summary>Sleeping would only burn the caller's wall time, so the clock jumps instead.</summary>
    private long Nanosleep(ulong request)
    {
        if (!ReadU64(request, out ulong s) || !ReadU64(request + 8, out ulong ns))
        {
            return -Errno.EFAULT;
        }

        if ((long)s < 0 || ns >= 1_000_000_000)
        {
            return -Errno.EINVAL;
        }

        _state.SleepOffsetNanoseconds += (long)Math.Min(s, 1UL << 32) * 1_000_000_000 + (long)ns;
        return 0;
    }

    private long Getrandom(ulong buffer, ulong length)
    {
        int n = (int)Math.Min(length, 256UL * 1024);
        var bytes = n <= 256 ? stackalloc byte[n] : new byte[n];
        if (_config.RandomSeed is null)
        {
            RandomNumberGenerator.Fill(bytes);
        }
        else
        {
            _state.Random.NextBytes(bytes);
        }

        return WriteUser(buffer, bytes) ? n : -Errno.EFAULT;
    }

    private long Uname(ulong pointer)
    {
        var u = new byte[65 * 6];
        void Put(int field, string s) => Encoding.ASCII.GetBytes(s).CopyTo(u, field * 65);
        Put(0, "Linux");
        Put(1, "sandbox");
        Put(2, "6.1.0-virt-sandbox");
        Put(3, "#1 SMP");
        Put(4, "x86_64");
        Put(5, "(none)");
        return WriteUser(pointer, u) ? 0 : -Errno.EFAULT;
    }

    private long RtSigaction(int signal, ulong oldAction, ulong size)
    {
        if (signal < 1 || signal > 64 || size != 8 || signal is 9 or 19)
        {
            return -Errno.EINVAL;
        }

        // Handlers are recorded by the program's libc only; nothing is ever delivered, so the old action is "default".
        if (oldAction != 0 && !WriteUser(oldAction, new byte[32]))
        {
            return -Errno.EFAULT;
        }

        return 0;
    }

    private long RtSigprocmask(ulong oldSet, ulong size)
    {
        if (size != 8)
        {
            return -Errno.EINVAL;
        }

        return oldSet == 0 || WriteU64(oldSet, 0) ? 0 : -Errno.EFAULT;
    }

    private long Sigaltstack(ulong oldStack)
    {
        if (oldStack == 0)
        {
            return 0;
        }

        Span<byte> ss = stackalloc byte[24];
        ss.Clear();
        BinaryPrimitives.WriteInt32LittleEndian(ss[8..], 2); // SS_DISABLE
        return WriteUser(oldStack, ss) ? 0 : -Errno.EFAULT;
    }

    private long Prlimit(int resource, ulong oldLimit)
    {
        const int RlimitStack = 3, RlimitData = 2, RlimitAs = 9, RlimitNofile = 7;
        if (resource is < 0 or > 15)
        {
            return -Errno.EINVAL;
        }

        ulong value = resource switch
        {
            RlimitStack => (ulong)_config.StackBytes,
            RlimitData or RlimitAs => _arena.Pages * GuestLayout.PageSize,
            RlimitNofile => MaxFds,
            _ => ulong.MaxValue,
        };
        if (oldLimit == 0)
        {
            return 0;
        }

        return WriteU64(oldLimit, value) && WriteU64(oldLimit + 8, value) ? 0 : -Errno.EFAULT;
    }

    private long SchedGetaffinity(ulong size, ulong mask)
    {
        if (size < 8 || (size & 7) != 0)
        {
            return -Errno.EINVAL;
        }

        return WriteU64(mask, 1) ? 8 : -Errno.EFAULT;
    }

    private long SelfSignal(bool self, int signal)
    {
        if (!self)
        {
            return -Errno.EPERM;
        }

        if (signal is < 0 or > 64)
        {
            return -Errno.EINVAL;
        }

        if (signal == 0)
        {
            return 0;
        }

        Stop = new StopRequest(SandboxStatus.Signaled, -1, signal, $"The program sent itself signal {signal}.");
        return 0;
    }

    private long HostCall(ulong namePointer, ulong nameLength, ulong input, ulong inputLength, ulong output, ulong outputCapacity)
    {
        if (nameLength == 0 || nameLength > 256 || inputLength > (ulong)_config.MaxHostCallBytes)
        {
            return -Errno.EINVAL;
        }

        var nameBytes = new byte[nameLength];
        var inputBytes = new byte[inputLength];
        if (!ReadUser(namePointer, nameBytes) || !ReadUser(input, inputBytes))
        {
            return -Errno.EFAULT;
        }

        string name = Encoding.UTF8.GetString(nameBytes);
        if (!_config.HostFunctions.TryGetValue(name, out var function))
        {
            return -Errno.ENOENT;
        }

        ReadOnlyMemory<byte> result;
#pragma warning disable CA1031 // A host function's failure is reported to the guest as EIO; it must not unwind the vCPU loop.
        try
        {
            result = function(inputBytes);
        }
        catch (Exception)
        {
            return -Errno.EIO;
        }
#pragma warning restore CA1031

        if (result.Length > _config.MaxHostCallBytes)
        {
            return -Errno.EIO;
        }

        int n = (int)Math.Min((ulong)result.Length, outputCapacity);
        return WriteUser(output, result.Span[..n]) ? result.Length : -Errno.EFAULT;
    }
}
