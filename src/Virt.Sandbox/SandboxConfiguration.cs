using Virt.Cpu;

namespace Virt.Sandbox;

/// <summary>A host function a sandboxed program can call: bytes in, bytes out. Runs on the sandbox's vCPU thread.</summary>
public delegate ReadOnlyMemory<byte> SandboxHostFunction(ReadOnlyMemory<byte> input);

/// <summary>The validated, immutable settings of a sandbox (built by <see cref="SandboxBuilder"/>).</summary>
internal sealed record SandboxConfiguration
{
    public required byte[] Executable { get; init; }

    public string ExecutablePath { get; init; } = "/bin/program";

    public IReadOnlyList<string> Arguments { get; init; } = [];

    /// <summary>Further guest paths of the executable (symbolic links to <see cref="ExecutablePath"/>).</summary>
    public IReadOnlyList<string> ExecutableAliases { get; init; } = [];

    public IReadOnlyList<string> Environment { get; init; } = [];

    public ulong MemoryBytes { get; init; } = 64UL << 20;

    /// <summary>Stack bytes; 0 until <see cref="SandboxBuilder.Build"/> chooses the default for the memory limit.</summary>
    public int StackBytes { get; init; }

    public TimeSpan TimeLimit { get; init; } = TimeSpan.FromSeconds(10);

    public long? InstructionLimit { get; init; }

    public long MaxOutputBytes { get; init; } = 16L << 20;

    public long MaxSystemCalls { get; init; } = 10_000_000;

    public long MaxFileBytes { get; init; } = 64L << 20;

    /// <summary>The most bytes the program's own files (written or created in a run) may hold together.</summary>
    public long MaxFileSystemBytes { get; init; } = 64L << 20;

    /// <summary>The most files, directories and links a program may create in a run.</summary>
    public int MaxFileSystemEntries { get; init; } = 4096;

    public int MaxHostCallBytes { get; init; } = 16 << 20;

    public IReadOnlyList<(string Path, byte[] Content, bool Writable)> Files { get; init; } = [];

    /// <summary>Host directories granted read-only, each at a guest path (a host root at <c>/</c>).</summary>
    public IReadOnlyList<(Linux.HostTree Tree, string GuestPath)> HostDirectories { get; init; } = [];

    /// <summary>The program interpreter of a dynamically linked executable, found in the file tree when the sandbox is built.</summary>
    public Loader.ElfImage? Interpreter { get; init; }

    public IReadOnlyDictionary<string, SandboxHostFunction> HostFunctions { get; init; } = new Dictionary<string, SandboxHostFunction>();

    public BackendKind Backend { get; init; } = BackendKind.Auto;

    public IHypervisor? Hypervisor { get; init; }

    public bool SnapshotReset { get; init; } = true;

    public int? RandomSeed { get; init; }
}
