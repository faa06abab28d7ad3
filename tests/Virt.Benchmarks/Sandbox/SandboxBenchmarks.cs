using BenchmarkDotNet.Attributes;
using Virt.Sandbox;

namespace Virt.Benchmarks.Sandbox;

/// <summary>
/// Sandbox costs per backend: a warm call (reset to the snapshot plus a 1 KiB echo) is the baseline; cold
/// start (build, load, run hello, dispose), a host-function round trip and one system call are compared to it.
/// Run: dotnet run -c Release --project tests/Virt.Benchmarks -- --filter '*SandboxBenchmarks*'
/// </summary>
[SimpleJob(warmupCount: 2, iterationCount: 5)]
[MemoryDiagnoser]
public class SandboxBenchmarks
{
    private const int LoopCount = 200;
    private static readonly byte[] Kilobyte = new byte[1024];
    private static readonly byte[] One = [1];
    private Virt.Sandbox.Sandbox? _echo;
    private Virt.Sandbox.Sandbox? _hostCalls;
    private Virt.Sandbox.Sandbox? _syscalls;
    private byte[] _hello = [];

    /// <summary>The backend measured.</summary>
    [Params(BackendKind.Kvm, BackendKind.Interpreter)]
    public BackendKind Backend { get; set; }

    /// <summary>Builds warm sandboxes.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _hello = SandboxPrograms.Hello();
        _echo = Warm(Virt.Sandbox.Sandbox.CreateBuilder().WithExecutable(SandboxPrograms.Echo()));

        // virt_host_call("id", "x") in a loop: name at data+0, input at data+64, output at data+128.
        var data = new byte[8192];
        "id"u8.CopyTo(data);
        _hostCalls = Warm(Virt.Sandbox.Sandbox.CreateBuilder()
            .WithExecutable(SandboxPrograms.Loop(0x5653_0000, LoopCount, a0: 1, a1: 2, a2: 1, a3: 1, a4: 1, a5: 64, data: data))
            .WithHostFunction("id", input => input));
        _syscalls = Warm(Virt.Sandbox.Sandbox.CreateBuilder().WithExecutable(SandboxPrograms.Loop(39, LoopCount)));
    }

    private Virt.Sandbox.Sandbox Warm(SandboxBuilder builder)
    {
        var s = builder.WithBackend(Backend).WithMemoryLimit(16 << 20).WithStackSize(64 * 1024).Build();
        var r = s.WarmUpAsync().GetAwaiter().GetResult();
        if (!s.IsWarm)
        {
            throw new InvalidOperationException($"The benchmark program did not reach its ready point: {r} {r.Message}");
        }

        return s;
    }

    /// <summary>Releases the sandboxes.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _echo?.Dispose();
        _hostCalls?.Dispose();
        _syscalls?.Dispose();
    }

    /// <summary>Reset to the snapshot, echo 1 KiB, exit.</summary>
    [Benchmark(Baseline = true)]
    public async Task<int> WarmCall() => (await _echo!.RunAsync(Kilobyte).ConfigureAwait(false)).Stdout.Length;

    /// <summary>Build, load, run a static hello, dispose.</summary>
    [Benchmark]
    public async Task<int> ColdStart()
    {
        await using var s = Virt.Sandbox.Sandbox.CreateBuilder().WithExecutable(_hello).WithBackend(Backend)
            .WithMemoryLimit(16 << 20).WithStackSize(64 * 1024).WithSnapshotReset(false).Build();
        return (await s.RunAsync().ConfigureAwait(false)).Stdout.Length;
    }

    /// <summary>One host-function round trip (a warm call making 200 of them, per call).</summary>
    [Benchmark(OperationsPerInvoke = LoopCount)]
    public async Task<long> HostFunctionRoundTrip() => (await _hostCalls!.RunAsync(One).ConfigureAwait(false)).Usage.SystemCalls;

    /// <summary>One system call (getpid; a warm call making 200 of them, per call).</summary>
    [Benchmark(OperationsPerInvoke = LoopCount)]
    public async Task<long> SystemCall() => (await _syscalls!.RunAsync(One).ConfigureAwait(false)).Usage.SystemCalls;
}
