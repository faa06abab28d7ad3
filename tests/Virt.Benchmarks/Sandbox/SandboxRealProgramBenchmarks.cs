using BenchmarkDotNet.Attributes;
using Virt.Sandbox;

namespace Virt.Benchmarks.Sandbox;

/// <summary>
/// Real programs in the sandbox against a warm busybox <c>md5sum</c> of 1 KiB (the baseline): the same call through a
/// <see cref="SandboxPool"/> of two (hand-out, reset, run, return), and cold starts (build, load, run, dispose) of
/// Debian's dynamically linked <c>python3 -c pass</c> (root file system granted) and of the static Go program
/// <c>shfmt</c> formatting one line. Needs busybox-static, python3-minimal and shfmt.
/// Run: dotnet run -c Release --project tests/Virt.Benchmarks -- --filter '*SandboxRealProgramBenchmarks*'
/// </summary>
[SimpleJob(warmupCount: 1, iterationCount: 5)]
[MemoryDiagnoser]
public class SandboxRealProgramBenchmarks
{
    private static readonly byte[] Kilobyte = [.. Enumerable.Range(0, 1024).Select(i => (byte)i)];
    private static readonly byte[] Script = "if true;then  echo  hi;fi\n"u8.ToArray();
    private Virt.Sandbox.Sandbox? _md5sum;
    private SandboxPool? _pool;

    /// <summary>The backend measured.</summary>
    [Params(BackendKind.Kvm, BackendKind.Interpreter)]
    public BackendKind Backend { get; set; }

    /// <summary>Warms an md5sum sandbox and a pool of two.</summary>
    [GlobalSetup]
    public void Setup()
    {
        foreach (var program in new[] { "/bin/busybox", "/usr/bin/python3", "/usr/bin/shfmt" })
        {
            if (!File.Exists(program))
            {
                throw new InvalidOperationException($"{program} is missing: install busybox-static, python3-minimal and shfmt.");
            }
        }

        _md5sum = Md5sum().Build();
        _md5sum.WarmUpAsync().GetAwaiter().GetResult();
        _pool = SandboxPool.CreateAsync(Md5sum(), 2).GetAwaiter().GetResult();
    }

    private SandboxBuilder Md5sum() =>
        Virt.Sandbox.Sandbox.CreateBuilder().WithExecutable("/bin/busybox").WithExecutablePath("/bin/busybox").WithArguments("md5sum")
            .WithBackend(Backend).WithMemoryLimit(32 << 20).WithStackSize(256 * 1024);

    /// <summary>Releases the warm sandboxes.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _md5sum?.Dispose();
        _pool?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    /// <summary>Reset to the snapshot, md5sum 1 KiB.</summary>
    [Benchmark(Baseline = true)]
    public async Task<int> WarmMd5sum() => (await _md5sum!.RunAsync(Kilobyte).ConfigureAwait(false)).Stdout.Length;

    /// <summary>The same call through a pool of two warm sandboxes.</summary>
    [Benchmark]
    public async Task<int> PooledMd5sum() => (await _pool!.RunAsync(Kilobyte).ConfigureAwait(false)).Stdout.Length;

    /// <summary>Build with the host's root granted, load python3 and its libraries, run <c>-c pass</c>, dispose.</summary>
    [Benchmark]
    public async Task<int> ColdPython3Pass()
    {
        await using var s = Virt.Sandbox.Sandbox.CreateBuilder().WithRootFileSystem("/").WithExecutable("/usr/bin/python3")
            .WithExecutablePath("/usr/bin/python3").WithArguments("-c", "pass").WithMemoryLimit(256 << 20).WithBackend(Backend)
            .WithSnapshotReset(false).Build();
        var r = await s.RunAsync().ConfigureAwait(false);
        return r.Status == SandboxStatus.Exited ? r.ExitCode : throw new InvalidOperationException($"{r} {r.Message}");
    }

    /// <summary>Build, start Go's runtime, format one line with shfmt, dispose.</summary>
    [Benchmark]
    public async Task<int> ColdShfmt()
    {
        await using var s = Virt.Sandbox.Sandbox.CreateBuilder().WithExecutable("/usr/bin/shfmt").WithExecutablePath("/usr/bin/shfmt")
            .WithMemoryLimit(128 << 20).WithBackend(Backend).WithSnapshotReset(false).Build();
        var r = await s.RunAsync(Script).ConfigureAwait(false);
        return r.Status == SandboxStatus.Exited ? r.Stdout.Length : throw new InvalidOperationException($"{r} {r.Message}");
    }
}
