using BenchmarkDotNet.Attributes;
using Iced.Intel;
using Virt.Boot;
using Virt.Devices;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Sdk;

/// <summary>
/// The whole VM path on each backend: build (memory, partition, vCPU, start state), start the vCPU thread,
/// run, stop through the debug-exit port, dispose. <c>Lifecycle</c> runs a guest that exits at once (the
/// baseline); <c>PortExits</c> runs one that first writes <see cref="Exits"/> bytes to a port device, each an
/// exit dispatched by the VM's run loop and port bus. (PortExits - Lifecycle) / Exits is the cost of one
/// port-I/O exit through the .NET run loop.
/// </summary>
[SimpleJob(warmupCount: 2, iterationCount: 8)]
public class VirtualMachineBenchmarks
{
    private const int Exits = 10_000;
    private const ulong Load = 0x100000;

    private byte[] _immediateExit = [];
    private byte[] _portLoop = [];

    /// <summary>The backend to measure.</summary>
    [Params(BackendKind.Kvm, BackendKind.Interpreter)]
    public BackendKind Backend { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _immediateExit = GuestProgram.Assemble(64, Load, a => ExitGuest(a));
        _portLoop = GuestProgram.Assemble(64, Load, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, Exits);
            a.mov(dx, 0x80);
            a.Label(ref loop);
            a.@out(dx, al);
            a.dec(ecx);
            a.jnz(loop);
            ExitGuest(a);
        });
    }

    [Benchmark(Baseline = true, Description = "build + run + dispose")]
    public Task<int> Lifecycle() => Run(_immediateExit);

    [Benchmark(Description = "same + 10,000 port exits")]
    public Task<int> PortExits() => Run(_portLoop);

    private async Task<int> Run(byte[] code)
    {
        await using var vm = VirtualMachine.CreateBuilder()
            .WithBackend(Backend)
            .WithMemoryMiB(4)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .WithPortIoDevice(0x80, 1, SinkDevice.Instance, "sink")
            .WithDebugExit()
            .Build();
        var exit = await vm.RunAsync().ConfigureAwait(false);
        return exit.ExitCode ?? -1;
    }

    private static void ExitGuest(Assembler a)
    {
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.xor(eax, eax);
        a.@out(dx, al);
        a.hlt();
    }

    private sealed class SinkDevice : IPortIoDevice
    {
        public static readonly SinkDevice Instance = new();

        public void Read(ushort offset, Span<byte> data) => data.Clear();

        public void Write(ushort offset, ReadOnlySpan<byte> data) { }
    }
}
