using System.Buffers;
using System.Buffers.Binary;
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
/// <see cref="SyscallTable"/> lists what is supported; the handlers live in one file per family
/// (<c>LinuxAbi.Files.cs</c>, <c>LinuxAbi.Memory.cs</c>, ...).
/// </summary>
internal sealed partial class LinuxAbi
{
    private const int MaxFds = 256;
    private const int MaxPath = 4096;
    private const int MaxIoChunk = 1 << 20;
    private const long HostUid = 1000;

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
    private System.Diagnostics.Stopwatch _runClock = new();

    public LinuxAbi(SandboxConfiguration config, GuestMemory memory, AddressSpace space, ArenaAllocator arena, Action<ulong> setFsBase)
    {
        _config = config;
        _memory = memory;
        _space = space;
        _arena = arena;
        _setFsBase = setFsBase;
        _state = AbiState.Initial(config);
        ResetThreads();
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
        _runClock = System.Diagnostics.Stopwatch.StartNew();
        _unsupported.Clear();
        Stop = null;
    }

    /// <summary>A copy of the state that a snapshot must bring back.</summary>
    public AbiState SaveState() => _state.Clone();

    /// <summary>Returns to a saved state.</summary>
    public void RestoreState(AbiState state)
    {
        _state = state.Clone();
        ResetThreads();
    }

    /// <summary>Whether the pending call at <paramref name="r"/> is the program's ready point (a read of stdin, or the ready call).</summary>
    public bool IsReadyPoint(in GeneralRegisters r) =>
        SingleThreaded && (r.Rax == ReadyNumber ||
        ((r.Rax == Sys.Read || r.Rax == Sys.Readv) && r.Rdi == 0 && _state.Fds[0] is { Kind: FdKind.Stdin }));

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
        long nr = (long)r.Rax;
        try
        {
            if (FireDueTimers() && (Stop is not null || PendingSwitch is not null))
            {
                return Stop is null; // SIGALRM's default action ended the caller's process
            }

            result = Handle(nr, r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9);
            if (result == Blocked && Deliverable(_current) != 0)
            {
                result = Interrupted(nr, r.Rsi, r.R10);
            }

            if (result == Blocked)
            {
                // The thread waits: another runs (the machine switches and this call is made again later), or time jumps.
                if (BlockCurrent(nr, r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9) is not { } late)
                {
                    return Stop is null;
                }

                result = late;
            }
            else
            {
                MaybeRotate();
            }
        }
        catch (GuestMemoryException)
        {
            // Defence in depth: every access is translated first, so this means a bug, not a guest error.
            result = -Errno.EFAULT;
        }

        _current.TimedOut = false;
        _current.Woken = false;
        if (_current.State == GuestThreadState.Blocked)
        {
            _current.State = GuestThreadState.Runnable;
        }

        r.Rax = (ulong)result;
        return Stop is null;
    }

    private long Handle(long nr, ulong a0, ulong a1, ulong a2, ulong a3, ulong a4, ulong a5) =>
        SyscallTable.Find(nr) is { } handler ? handler(this, a0, a1, a2, a3, a4, a5) : NotImplemented(nr);

    private long NotImplemented(long nr) => Count(nr, -Errno.ENOSYS);

    private long Denied(long nr) => Count(nr, -Errno.EPERM);

    private long Count(long nr, long result)
    {
        string name = SyscallNames.Name(nr);
        _unsupported[name] = _unsupported.GetValueOrDefault(name) + 1;
        return result;
    }

    // ---- guest memory -------------------------------------------------------------------

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
}
