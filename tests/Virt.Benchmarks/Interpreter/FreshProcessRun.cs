using System.Diagnostics;
using Virt.Cpu;
using Virt.Cpu.Interpreter;

namespace Virt.Benchmarks.Interpreter;

/// <summary>
/// One workload, one run, in a process that has run nothing before: what a short-lived sandbox call sees
/// (tiered JIT at tier 0, cold block cache). Run with
/// <c>dotnet tests/Virt.Benchmarks/bin/Release/net10.0/Virt.Benchmarks.dll fresh loop|checksum|sieve [runs]</c>;
/// with a run count above one, the best of the further runs is printed as well (the steady state, for quick A/B
/// comparisons of two builds run alternately on a noisy machine).
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
            _ => throw new ArgumentException($"Unknown workload '{workload}': use loop, checksum or sieve.", nameof(workload)),
        };
        using var guest = new GuestWorkloads.Guest(new InterpreterHypervisor(), code);
        var counter = (IInstructionCounting)guest.Vcpu;
        long before = counter.InstructionsRetired;
        long start = Stopwatch.GetTimestamp();
        ulong result = guest.RunOnce();
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        long count = counter.InstructionsRetired - before;
        Console.WriteLine($"{workload}: {count} instructions in {seconds * 1000:F1} ms = {count / seconds / 1e6:F1} MIPS (result {result})");
        double best = double.MaxValue;
        for (int i = 1; i < runs; i++)
        {
            start = Stopwatch.GetTimestamp();
            guest.RunOnce();
            best = Math.Min(best, Stopwatch.GetElapsedTime(start).TotalSeconds);
        }

        if (runs > 1)
        {
            Console.WriteLine($"{workload} steady: best of {runs - 1} runs {best * 1000:F1} ms = {count / best / 1e6:F1} MIPS");
        }
    }
}
