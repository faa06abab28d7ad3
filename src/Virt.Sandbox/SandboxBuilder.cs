using Virt.Cpu;

namespace Virt.Sandbox;

/// <summary>
/// Immutable fluent builder for a <see cref="Sandbox"/>: every <c>With*</c> returns a new builder.
/// <see cref="Build"/> validates and loads the executable.
/// </summary>
public sealed class SandboxBuilder
{
    private readonly SandboxConfiguration? _config;
    private readonly byte[]? _executable;

    /// <summary>Creates an empty builder; give it an executable with <see cref="WithExecutable(byte[])"/>.</summary>
    public SandboxBuilder()
    {
    }

    private SandboxBuilder(SandboxConfiguration? config, byte[]? executable)
    {
        _config = config;
        _executable = executable;
    }

    private SandboxConfiguration Config => _config ?? new SandboxConfiguration { Executable = [] };

    private SandboxBuilder With(Func<SandboxConfiguration, SandboxConfiguration> change) => new(change(Config), _executable);

    /// <summary>The static x86-64 Linux executable to run, as bytes.</summary>
    public SandboxBuilder WithExecutable(byte[] executable)
    {
        ArgumentNullException.ThrowIfNull(executable);
        return new SandboxBuilder(Config, (byte[])executable.Clone());
    }

    /// <summary>The static x86-64 Linux executable to run, read from the host file <paramref name="path"/> now.</summary>
    public SandboxBuilder WithExecutable(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new SandboxBuilder(Config, File.ReadAllBytes(path));
    }

    /// <summary>The path the program sees for itself (<c>argv[0]</c>, <c>/proc/self/exe</c>); default <c>/bin/program</c>.</summary>
    public SandboxBuilder WithExecutablePath(string guestPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(guestPath);
        return With(c => c with { ExecutablePath = guestPath });
    }

    /// <summary>Arguments after <c>argv[0]</c>.</summary>
    public SandboxBuilder WithArguments(params string[] arguments)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        return With(c => c with { Arguments = [.. arguments] });
    }

    /// <summary>Environment strings, each <c>NAME=value</c>. The default environment is empty.</summary>
    public SandboxBuilder WithEnvironment(params string[] variables)
    {
        ArgumentNullException.ThrowIfNull(variables);
        foreach (var v in variables)
        {
            if (v is null || !v.Contains('=', StringComparison.Ordinal))
            {
                throw new ArgumentException($"Environment entry '{v}' is not NAME=value.", nameof(variables));
            }
        }

        return With(c => c with { Environment = [.. variables] });
    }

    /// <summary>
    /// Largest memory limit: 4064 MiB. A sandbox's RAM is one block from guest physical address 0, and it must end
    /// below the 32-bit system area where KVM keeps its TSS pages (0xFEFFC000), on every backend alike.
    /// </summary>
    public const ulong MaxMemoryLimit = 4064UL << 20;

    /// <summary>Smallest memory limit: 1 MiB.</summary>
    public const ulong MinMemoryLimit = 1UL << 20;

    /// <summary>Stack size when <see cref="WithStackSize"/> is not called: 8 MiB (Linux's default RLIMIT_STACK), or a quarter of a smaller memory limit.</summary>
    public const int DefaultStackSize = 8 << 20;

    /// <summary>Guest RAM, which is the memory limit (heap, mappings, stack, image and page tables). Default 64 MiB.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a multiple of 4096 between <see cref="MinMemoryLimit"/> and <see cref="MaxMemoryLimit"/>.</exception>
    public SandboxBuilder WithMemoryLimit(ulong bytes)
    {
        if (bytes < MinMemoryLimit || bytes > MaxMemoryLimit || bytes % 4096 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, $"The memory limit must be a multiple of 4096 between 1 MiB and {MaxMemoryLimit >> 20} MiB (the sandbox's RAM ends below the 32-bit system area).");
        }

        return With(c => c with { MemoryBytes = bytes });
    }

    /// <summary>
    /// Stack mapped at the top of the arena, above an unmapped 1 MiB guard gap (a program that overflows it ends
    /// with SIGSEGV). It counts against the memory limit. Default <see cref="DefaultStackSize"/>, or a quarter
    /// of a memory limit below 32 MiB.
    /// </summary>
    public SandboxBuilder WithStackSize(int bytes)
    {
        if (bytes < 16 * 1024 || bytes % 4096 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "The stack must be a multiple of 4096 and at least 16 KiB.");
        }

        return With(c => c with { StackBytes = bytes });
    }

    /// <summary>Wall-time limit of one run. Default 10 s.</summary>
    public SandboxBuilder WithTimeLimit(TimeSpan limit)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(limit, TimeSpan.Zero);
        return With(c => c with { TimeLimit = limit });
    }

    /// <summary>Instruction limit of one run, on backends that count instructions (the interpreter).</summary>
    public SandboxBuilder WithInstructionLimit(long instructions)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(instructions, 0);
        return With(c => c with { InstructionLimit = instructions });
    }

    /// <summary>Most bytes of stdout plus stderr kept; reaching it ends the run. Default 16 MiB.</summary>
    public SandboxBuilder WithOutputLimit(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 0);
        return With(c => c with { MaxOutputBytes = bytes });
    }

    /// <summary>Most system calls in one run. Default 10,000,000.</summary>
    public SandboxBuilder WithSystemCallLimit(long calls)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(calls, 0);
        return With(c => c with { MaxSystemCalls = calls });
    }

    /// <summary>
    /// Makes the executable visible at <paramref name="guestPaths"/> too (symbolic links to its path), so that the program
    /// can run itself by those names: for busybox, <c>/bin/sh</c> lets <c>awk</c>'s <c>system()</c> and <c>popen()</c> work.
    /// </summary>
    public SandboxBuilder WithExecutableAliases(params string[] guestPaths)
    {
        ArgumentNullException.ThrowIfNull(guestPaths);
        foreach (var p in guestPaths)
        {
            if (string.IsNullOrEmpty(p) || !p.StartsWith('/'))
            {
                throw new ArgumentException($"Guest path '{p}' must be absolute.", nameof(guestPaths));
            }
        }

        var copy = guestPaths.ToArray();
        return With(c => c with { ExecutableAliases = [.. c.ExecutableAliases, .. copy] });
    }

    /// <summary>
    /// Limits what the program may store in its in-memory file system in one run: <paramref name="bytes"/> in the files it
    /// writes or creates together, and <paramref name="entries"/> files, directories and links it creates. A write or
    /// create beyond either fails with <c>ENOSPC</c>. Defaults 64 MiB and 4096.
    /// </summary>
    public SandboxBuilder WithFileSystemLimit(long bytes, int entries)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 0);
        ArgumentOutOfRangeException.ThrowIfLessThan(entries, 0);
        return With(c => c with { MaxFileSystemBytes = bytes, MaxFileSystemEntries = entries });
    }

    /// <summary>Makes <paramref name="content"/> visible to the program at <paramref name="guestPath"/> (read-only unless <paramref name="writable"/>).</summary>
    public SandboxBuilder WithFile(string guestPath, byte[] content, bool writable = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(guestPath);
        ArgumentNullException.ThrowIfNull(content);
        if (!guestPath.StartsWith('/'))
        {
            throw new ArgumentException($"Guest path '{guestPath}' must be absolute.", nameof(guestPath));
        }

        var copy = (byte[])content.Clone();
        return With(c => c with { Files = [.. c.Files.Where(f => f.Path != guestPath), (guestPath, copy, writable)] });
    }

    /// <summary>
    /// Makes the host directory <paramref name="hostDirectory"/> visible to the program at <paramref name="guestPath"/>,
    /// read-only: what a dynamically linked program needs (its interpreter, <c>/etc/ld.so.cache</c>, its libraries and
    /// data files) comes from such grants. Directories are listed and files read from the host when the program first
    /// uses them, once per builder; a run's own writes go to its in-memory tree and never reach the host. The program
    /// reaches nothing outside the directory: symbolic links in it (absolute ones too) and <c>..</c> are resolved in the
    /// sandbox's tree, and devices, FIFOs and sockets are left out.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="guestPath"/> is not absolute.</exception>
    /// <exception cref="DirectoryNotFoundException"><paramref name="hostDirectory"/> does not exist.</exception>
    public SandboxBuilder WithHostDirectory(string hostDirectory, string guestPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(hostDirectory);
        ArgumentException.ThrowIfNullOrEmpty(guestPath);
        if (!guestPath.StartsWith('/'))
        {
            throw new ArgumentException($"Guest path '{guestPath}' must be absolute.", nameof(guestPath));
        }

        var tree = new Linux.HostTree(hostDirectory);
        string normalized = Linux.VirtualFileSystem.Normalize("/", guestPath)!;
        return With(c => c with { HostDirectories = [.. c.HostDirectories.Where(h => h.GuestPath != normalized), (tree, normalized)] });
    }

    /// <summary>
    /// Makes the host directory <paramref name="hostDirectory"/> (for example <c>/</c>, or an unpacked Debian root) the
    /// program's root file system, read-only (see <see cref="WithHostDirectory"/>). The sandbox's own <c>/dev</c>,
    /// <c>/tmp</c> and <c>/proc/self</c> take the place of the host's; the host's <c>/sys</c> is left out.
    /// </summary>
    /// <exception cref="DirectoryNotFoundException"><paramref name="hostDirectory"/> does not exist.</exception>
    public SandboxBuilder WithRootFileSystem(string hostDirectory) => WithHostDirectory(hostDirectory, "/");

    /// <summary>Registers a host function the program can call by <paramref name="name"/> (see virt_sandbox.h).</summary>
    public SandboxBuilder WithHostFunction(string name, SandboxHostFunction handler)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(handler);
        return With(c => c with { HostFunctions = new Dictionary<string, SandboxHostFunction>(c.HostFunctions) { [name] = handler } });
    }

    /// <summary>
    /// Picks the CPU backend through Virt.Sdk's selection. Default <see cref="BackendKind.Auto"/>: KVM, then the Windows
    /// Hypervisor Platform, then the interpreter. A named backend that is not available makes the first run throw
    /// <see cref="InvalidOperationException"/> with the reason and what to do.
    /// </summary>
    public SandboxBuilder WithBackend(BackendKind backend) => With(c => c with { Backend = backend, Hypervisor = null });

    /// <summary>Uses a specific backend instance.</summary>
    public SandboxBuilder WithBackend(IHypervisor hypervisor)
    {
        ArgumentNullException.ThrowIfNull(hypervisor);
        return With(c => c with { Hypervisor = hypervisor });
    }

    /// <summary>
    /// Whether runs after the first reset to a snapshot taken at the program's ready point (its first read of
    /// stdin, or <c>virt_sandbox_ready()</c>). Default on. Off: every run starts the program from its entry point.
    /// </summary>
    public SandboxBuilder WithSnapshotReset(bool enabled) => With(c => c with { SnapshotReset = enabled });

    /// <summary>Seeds <c>getrandom</c> and <c>AT_RANDOM</c> for reproducible runs (default: host randomness).</summary>
    public SandboxBuilder WithRandomSeed(int seed) => With(c => c with { RandomSeed = seed });

    /// <summary>
    /// Validates the settings and parses the executable; for a dynamically linked one, also finds and parses its
    /// interpreter (<c>PT_INTERP</c>) in the sandbox's file tree.
    /// </summary>
    /// <exception cref="InvalidOperationException">No executable was given.</exception>
    /// <exception cref="ElfImageException">
    /// The executable is not an x86-64 ELF the sandbox can load, or it is dynamically linked and its interpreter is not
    /// in the granted directories (see <see cref="WithRootFileSystem"/>) or is not a usable interpreter.
    /// </exception>
    public Sandbox Build()
    {
        if (_executable is null)
        {
            throw new InvalidOperationException("No executable: call WithExecutable(path or bytes) before Build().");
        }

        var config = Config with { Executable = _executable };
        if (config.StackBytes == 0)
        {
            ulong quarter = config.MemoryBytes / 4 / 4096 * 4096;
            config = config with { StackBytes = (int)Math.Max(16 * 1024, Math.Min((ulong)DefaultStackSize, quarter)) };
        }

        if ((ulong)config.StackBytes * 2 > config.MemoryBytes)
        {
            throw new InvalidOperationException($"The stack ({config.StackBytes} bytes) must be at most half the memory limit ({config.MemoryBytes} bytes); lower WithStackSize or raise WithMemoryLimit.");
        }

        var image = Loader.ElfImage.Parse(config.Executable);
        if (image.InterpreterPath is { } interpreterPath)
        {
            config = config with { Interpreter = FindInterpreter(config, interpreterPath) };
        }

        return new Sandbox(config, image);
    }

    /// <summary>Reads and parses the interpreter at <paramref name="path"/> from the tree the program will see.</summary>
    private static Loader.ElfImage FindInterpreter(SandboxConfiguration config, string path)
    {
        var tree = new Linux.VirtualFileSystem(config.HostDirectories, config.Files, config.Executable, config.ExecutablePath, config.ExecutableAliases, config.MaxFileSystemBytes, config.MaxFileSystemEntries);
        if (tree.Lookup(tree.Root, path, followLast: true, out var node, out _, out _) < 0 || node is not Linux.VfsFile file)
        {
            throw new ElfImageException("PT_INTERP", $"the executable is dynamically linked and its interpreter {path} is not in the sandbox's file tree; grant a root file system (WithRootFileSystem(\"/\"), or WithHostDirectory for /lib, /lib64, /usr and /etc) or link the program statically (gcc -static).");
        }

        long e = file.Load();
        if (e < 0)
        {
            throw new ElfImageException("PT_INTERP", $"the interpreter {path} could not be read (errno {-e}).");
        }

        return Loader.ElfImage.ParseInterpreter(file.Content.AsSpan(0, (int)file.Length).ToArray());
    }
}
