using System.Diagnostics;
using Virt.Cpu;
using Virt.Cpu.Interpreter;

namespace Virt.Benchmarks.Interpreter;

/// <summary>
/// One workload, one run, in a process that has run nothing before: what a short-lived sandbox call sees
/// (tiered JIT at tier 0, cold block cache). Run with
/// <c>dotnet tests/Virt.Benchmarks/bin/Release/net10.0/Virt.Benchmarks.dll fresh loop|checksum|sieve|calls|fpu|vec-sse|vec-avx [runs]</c>;
/// with a run count above one, the best of the further runs is printed as well (the steady state, for quick A/B
/// comparisons of two builds run alternately on a noisy machine). <c>VIRT_INTERPRETER_JIT=0</c> turns the JIT tier off;
/// <c>VIRT_INTERPRETER_JIT_THRESHOLD=n</c> sets its threshold.
/// </summary>
internal static class FreshProcessRun
{
    public static void Run(string workload, int runs = 1)
    {
        byte[] code = workload switch
        {
            "loop" => GuestWorkloads.TightLoop(),
            "checksum" => GuestWorkloads.Checksum(),
            "sieve" => GuestWorkloads.Sieve(),
            "calls" => GuestWorkloads.Calls(),
            "fpu" => GuestWorkloads.Fpu(),
            "vec-sse" => GuestWorkloads.VectorSse(),
            "vec-avx" => GuestWorkloads.VectorAvx(),
            _ => throw new ArgumentException($"Unknown workload '{workload}': use loop, checksum, sieve, calls, fpu, vec-sse or vec-avx.", nameof(workload)),
        };
        var options = new InterpreterOptions();
        var hypervisor = new InterpreterHypervisor(options);
        Console.WriteLine(hypervisor.GetAvailability().Reason);
        using var guest = new GuestWorkloads.Guest(hypervisor, code, avx: workload == "vec-avx");
        var counter = (IInstructionCounting)guest.Vcpu;
        long before = counter.InstructionsRetired;
        long start = Stopwatch.GetTimestamp();
        double cpuStart = ThreadCpuSeconds();
        ulong result = guest.RunOnce();
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        double cpu = ThreadCpuSeconds() - cpuStart;
        long count = counter.InstructionsRetired - before;
        Console.WriteLine($"{workload}: {count} instructions in {seconds * 1000:F1} ms = {count / seconds / 1e6:F1} MIPS (result {result}); on the vCPU thread's CPU time {count / cpu / 1e6:F1} MIPS");
        double best = double.MaxValue;
        double bestCpu = double.MaxValue;
        for (int i = 1; i < runs; i++)
        {
            start = Stopwatch.GetTimestamp();
            cpuStart = ThreadCpuSeconds();
            guest.RunOnce();
            best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalSeconds);
            bestCpu = Math.Min(bestCpu, ThreadCpuSeconds() - cpuStart);
        }

        if (runs > 1)
        {
            Console.WriteLine($"{workload} steady: best of {runs - 1} runs {best * 1000:F1} ms = {count / best / 1e6:F1} MIPS; on the vCPU thread's CPU time {count / bestCpu / 1e6:F1} MIPS");
        }

        if (options.EnableJit && Virt.Cpu.Interpreter.Jit.JitCompilerThread.Shared is { Compiled: > 0 } jit)
        {
            Console.WriteLine($"jit: {jit.Describe()}");
        }
    }

    /// <summary>
    /// CPU time of the calling thread (Linux: the scheduler's nanosecond count in /proc/thread-self/schedstat), so a run
    /// can be rated by the time it had a core on a machine shared with other work; NaN where that file is missing.
    /// </summary>
    private static double ThreadCpuSeconds()
    {
        const string Path = "/proc/thread-self/schedstat";
        if (!File.Exists(Path))
        {
            return double.NaN;
        }

        string text = File.ReadAllText(Path);
        int end = text.IndexOf(' ', StringComparison.Ordinal);
        return long.Parse(end < 0 ? text : text[..end], System.Globalization.CultureInfo.InvariantCulture) / 1e9;
    }
}
