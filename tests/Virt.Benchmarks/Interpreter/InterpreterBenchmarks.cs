using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Virt.Cpu;
using Virt.Cpu.Interpreter;
using Virt.Cpu.Kvm;

namespace Virt.Benchmarks.Interpreter;

/// <summary>
/// Guest instructions per second of the interpreter on four CPL 3 workloads, each next to the same guest on
/// KVM (the baseline of its category). Every benchmark method runs one workload once; the console prints the
/// exact guest instruction count of each workload (counted by the interpreter), so instructions per second =
/// count / mean time.
/// </summary>
[SimpleJob(warmupCount: 2, iterationCount: 5)]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class InterpreterBenchmarks
{
    private GuestWorkloads.Guest? _loopI, _sumI, _sieveI, _callsI, _loopK, _sumK, _sieveK, _callsK;

    [GlobalSetup]
    public void Setup()
    {
        var interp = new InterpreterHypervisor();
        _loopI = new GuestWorkloads.Guest(interp, GuestWorkloads.TightLoop());
        _sumI = new GuestWorkloads.Guest(interp, GuestWorkloads.Checksum());
        _sieveI = new GuestWorkloads.Guest(interp, GuestWorkloads.Sieve());
        _callsI = new GuestWorkloads.Guest(interp, GuestWorkloads.Calls());
        foreach (var (name, g) in new[] { ("loop", _loopI), ("checksum", _sumI), ("sieve", _sieveI), ("calls", _callsI) })
        {
            var counter = (IInstructionCounting)g.Vcpu;
            long before = counter.InstructionsRetired;
            ulong result = g.RunOnce();
            Console.WriteLine($"// guest instructions per run: {name} = {counter.InstructionsRetired - before} (result {result})");
        }

        var kvm = new KvmHypervisor();
        if (kvm.GetAvailability().IsAvailable)
        {
            _loopK = new GuestWorkloads.Guest(kvm, GuestWorkloads.TightLoop());
            _sumK = new GuestWorkloads.Guest(kvm, GuestWorkloads.Checksum());
            _sieveK = new GuestWorkloads.Guest(kvm, GuestWorkloads.Sieve());
            _callsK = new GuestWorkloads.Guest(kvm, GuestWorkloads.Calls());
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var g in new[] { _loopI, _sumI, _sieveI, _callsI, _loopK, _sumK, _sieveK, _callsK })
        {
            g?.Dispose();
        }
    }

    [Benchmark(Baseline = true), BenchmarkCategory("a-tight-loop")]
    public ulong TightLoop_Kvm() => _loopK?.RunOnce() ?? 0;

    [Benchmark, BenchmarkCategory("a-tight-loop")]
    public ulong TightLoop_Interpreter() => _loopI!.RunOnce();

    [Benchmark(Baseline = true), BenchmarkCategory("b-checksum-1MiB")]
    public ulong Checksum_Kvm() => _sumK?.RunOnce() ?? 0;

    [Benchmark, BenchmarkCategory("b-checksum-1MiB")]
    public ulong Checksum_Interpreter() => _sumI!.RunOnce();

    [Benchmark(Baseline = true), BenchmarkCategory("c-sieve-1MiB")]
    public ulong Sieve_Kvm() => _sieveK?.RunOnce() ?? 0;

    [Benchmark, BenchmarkCategory("c-sieve-1MiB")]
    public ulong Sieve_Interpreter() => _sieveI!.RunOnce();

    [Benchmark(Baseline = true), BenchmarkCategory("d-calls")]
    public ulong Calls_Kvm() => _callsK?.RunOnce() ?? 0;

    [Benchmark, BenchmarkCategory("d-calls")]
    public ulong Calls_Interpreter() => _callsI!.RunOnce();
}
