using BenchmarkDotNet.Running;

// Run with: dotnet run -c Release --project tests/Virt.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);

/// <summary>Entry point type for the benchmark switcher.</summary>
internal sealed partial class Program;
