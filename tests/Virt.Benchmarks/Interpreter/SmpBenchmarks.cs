using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Virt.Boot;
using Virt.Cpu;
using Virt.Cpu.Interpreter;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Interpreter;

/// <summary>
/// The interpreter with several vCPUs, one host thread each. (a) A parallel compute job (integer work and stores to a
/// buffer of the vCPU's own) of a fixed total size, split evenly over 1 or 2 vCPUs: the ratio is the 2-vCPU time over
/// the 1-vCPU time, so the speed-up is 1 / ratio. (b) LOCK XADD on one shared counter, a fixed total of increments split
/// over the vCPUs: on 1 vCPU (the baseline) the instruction needs no host atomic; on 2 vCPUs every one is a host
/// compare-and-exchange on a cache line both threads write.
/// </summary>
[SimpleJob(warmupCount: 1, iterationCount: 5)]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class SmpBenchmarks
{
    /// <summary>Iterations of the compute loop in total (6 instructions each).</summary>
    public const int ComputeIterations = 24_000_000;

    /// <summary>LOCK XADD executions in total (4 instructions per iteration).</summary>
    public const int XaddIterations = 8_000_000;

    private SmpGuest? _compute1, _compute2, _xadd1, _xadd2;

    [GlobalSetup]
    public void Setup()
    {
        _compute1 = new SmpGuest(1, Compute(ComputeIterations));
        _compute2 = new SmpGuest(2, Compute(ComputeIterations / 2));
        _xadd1 = new SmpGuest(1, Xadd(XaddIterations));
        _xadd2 = new SmpGuest(2, Xadd(XaddIterations / 2));
        Console.WriteLine($"// compute: {ComputeIterations} iterations x 6 instructions; lock xadd: {XaddIterations} in total");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var g in new[] { _compute1, _compute2, _xadd1, _xadd2 })
        {
            g?.Dispose();
        }
    }

    [Benchmark(Baseline = true), BenchmarkCategory("a-parallel-compute")]
    public void Compute_1_vCPU() => _compute1!.RunOnce();

    [Benchmark, BenchmarkCategory("a-parallel-compute")]
    public void Compute_2_vCPUs() => _compute2!.RunOnce();

    [Benchmark(Baseline = true), BenchmarkCategory("b-lock-xadd-one-counter")]
    public ulong LockXadd_1_vCPU() => _xadd1!.RunOnce();

    [Benchmark, BenchmarkCategory("b-lock-xadd-one-counter")]
    public ulong LockXadd_2_vCPUs_contended() => _xadd2!.RunOnce();

    /// <summary>Integer work and a store per iteration into the vCPU's own 64 KiB buffer (RDI is the vCPU index).</summary>
    public static byte[] Compute(int iterations) => GuestProgram.Assemble(64, SmpGuest.CodeAddress, a =>
    {
        var l = a.CreateLabel();
        a.mov(esi, (uint)SmpGuest.DataAddress);
        a.shl(rdi, 16);
        a.add(rsi, rdi);
        a.mov(ecx, iterations);
        a.xor(eax, eax);
        a.Label(ref l);
        a.imul(rax, rcx, 7);
        a.xor(rax, rcx);
        a.mov(edx, ecx);
        a.and(edx, 0xFFF8);
        a.mov(__qword_ptr[rsi + rdx], rax);
        a.dec(rcx);
        a.jnz(l);
        a.hlt();
    });

    /// <summary>LOCK XADD of 1 to one shared counter, <paramref name="iterations"/> times.</summary>
    public static byte[] Xadd(int iterations) => GuestProgram.Assemble(64, SmpGuest.CodeAddress, a =>
    {
        var l = a.CreateLabel();
        a.mov(ecx, iterations);
        a.Label(ref l);
        a.mov(eax, 1);
        a.@lock.xadd(__qword_ptr[SmpGuest.CounterAddress], rax);
        a.dec(rcx);
        a.jnz(l);
        a.hlt();
    });

    /// <summary>A partition with <c>n</c> vCPUs at CPL 0 in long mode, all running the same code until HLT, each on its own thread.</summary>
    internal sealed class SmpGuest : IDisposable
    {
        public const ulong CodeAddress = 0x10000;
        public const ulong CounterAddress = 0x100000;
        public const ulong DataAddress = 0x200000;

        private readonly IVirtualCpu[] _vcpus;
        private readonly SpecialRegisters[] _sregs;

        public SmpGuest(int n, byte[] code)
        {
            Memory = GuestMemory.CreateRam(8UL << 20);
            Partition = new InterpreterHypervisor().CreatePartition(Memory, new PartitionOptions { VcpuCount = n });
            _vcpus = [.. Enumerable.Range(0, n).Select(Partition.CreateVcpu)];
            _sregs = new SpecialRegisters[n];
            Memory.Write(new GuestAddress(CodeAddress), code);
            for (int i = 0; i < n; i++)
            {
                _sregs[i] = ProcessorSetup.Prepare(Memory, _vcpus[i].GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions { KernelStack = 0x7000 });
            }
        }

        public GuestMemory Memory { get; }

        public IPartition Partition { get; }

        /// <summary>Runs every vCPU from the start to its HLT; returns the shared counter.</summary>
        public ulong RunOnce()
        {
            Memory.Write(new GuestAddress(CounterAddress), 0UL);
            var threads = new Thread[_vcpus.Length];
            for (int i = 0; i < _vcpus.Length; i++)
            {
                var cpu = _vcpus[i];
                cpu.SetSpecialRegisters(_sregs[i]);
                cpu.SetGeneralRegisters(new GeneralRegisters { Rip = CodeAddress, Rsp = 0x80000 - ((ulong)i * 0x1000), Rdi = (ulong)i, Rflags = 2 });
                threads[i] = new Thread(() =>
                {
                    while (cpu.Run().Reason == VcpuExitReason.Interrupted)
                    {
                    }
                });
                threads[i].Start();
            }

            foreach (var t in threads)
            {
                t.Join();
            }

            return Memory.Read<ulong>(new GuestAddress(CounterAddress));
        }

        public void Dispose()
        {
            foreach (var v in _vcpus)
            {
                v.Dispose();
            }

            Partition.Dispose();
            Memory.Dispose();
        }
    }
}
