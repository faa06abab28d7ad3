using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace Virt.Benchmarks.Virtio;

/// <summary>
/// A short job (2 warm-up, 5 measured iterations) run in the benchmark process itself: the virtio benchmarks need
/// no separate build of the benchmark project, which keeps them runnable while other benchmarks build it.
/// </summary>
public sealed class InProcessShortJob : ManualConfig
{
    /// <summary>Creates the configuration.</summary>
    public InProcessShortJob() =>
        AddJob(Job.Default.WithWarmupCount(2).WithIterationCount(5).WithToolchain(InProcessEmitToolchain.Instance).WithId("InProcessShort"));
}
