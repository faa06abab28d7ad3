using BenchmarkDotNet.Attributes;
using Virt.Sandbox;

namespace Virt.Benchmarks.Sandbox;

/// <summary>
/// Debian's busybox-static in the sandbox: a warm <c>md5sum</c> of 1 KiB (reset to the snapshot at the first read of
/// stdin, then hash) is the baseline; a cold <c>md5sum</c> (build, load, run, dispose) and a cold shell pipeline that
/// forks and execs (<c>sh -c 'echo a | md5sum'</c>) are compared to it. Needs busybox-static (/bin/busybox, or the
/// path in VIRT_SANDBOX_BUSYBOX).
/// Run: dotnet run -c Release --project tests/Virt.Benchmarks -- --filter '*SandboxBusyboxBenchmarks*'
/// </summary>
[SimpleJob(warmupCount: 2, iterationCount: 5)]
[MemoryDiagnoser]
public class SandboxBusyboxBenchmarks
{
    private static readonly byte[] Kilobyte = [.. Enumerable.Range(0, 1024).Select(i => (byte)i)];
    private byte[] _busybox = [];
    private Virt.Sandbox.Sandbox? _md5sum;

    /// <summary>The backend measured.</summary>
    [Params(BackendKind.Kvm, BackendKind.Interpreter)]
    public BackendKind Backend { get; set; }

    /// <summary>Reads busybox and warms an md5sum sandbox.</summary>
    [GlobalSetup]
    public void Setup()
    {
        string path = new[] { Environment.GetEnvironmentVariable("VIRT_SANDBOX_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox" }
            .FirstOrDefault(p => p is not null && File.Exists(p))
            ?? throw new InvalidOperationException("No busybox: install the Debian package busybox-static or set VIRT_SANDBOX_BUSYBOX.");
        _busybox = File.ReadAllBytes(path);
        _md5sum = Builder("md5sum").Build();
        var r = _md5sum.WarmUpAsync().GetAwaiter().GetResult();
        if (!_md5sum.IsWarm)
        {
            throw new InvalidOperationException($"busybox md5sum did not reach its ready point: {r} {r.Message}");
        }
    }

    private SandboxBuilder Builder(params string[] arguments) =>
        Virt.Sandbox.Sandbox.CreateBuilder().WithExecutable(_busybox).WithExecutablePath("/bin/busybox").WithArguments(arguments)
            .WithBackend(Backend).WithMemoryLimit(32 << 20).WithStackSize(256 * 1024);

    /// <summary>Releases the warm sandbox.</summary>
    [GlobalCleanup]
    public void Cleanup() => _md5sum?.Dispose();

    /// <summary>Reset to the snapshot, md5sum 1 KiB.</summary>
    [Benchmark(Baseline = true)]
    public async Task<int> WarmMd5sum() => (await _md5sum!.RunAsync(Kilobyte).ConfigureAwait(false)).Stdout.Length;

    /// <summary>Build, load, md5sum 1 KiB, dispose.</summary>
    [Benchmark]
    public async Task<int> ColdMd5sum()
    {
        await using var s = Builder("md5sum").WithSnapshotReset(false).Build();
        return (await s.RunAsync(Kilobyte).ConfigureAwait(false)).Stdout.Length;
    }

    /// <summary>Build, run a two-process shell pipeline (fork, execve, pipe, wait4), dispose.</summary>
    [Benchmark]
    public async Task<int> ColdPipeline()
    {
        await using var s = Builder("sh", "-c", "echo a | md5sum").WithSnapshotReset(false).Build();
        var r = await s.RunAsync().ConfigureAwait(false);
        return r.Status == SandboxStatus.Exited ? r.Stdout.Length : throw new InvalidOperationException($"{r} {r.Message}");
    }
}
