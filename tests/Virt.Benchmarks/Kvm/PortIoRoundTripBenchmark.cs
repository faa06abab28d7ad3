using BenchmarkDotNet.Attributes;
using Iced.Intel;
using Virt.Boot;
using Virt.Cpu;
using Virt.Cpu.Kvm;
using Virt.Memory;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Kvm;

/// <summary>
/// Round trip of a guest port-I/O exit through <see cref="IVirtualCpu.Run"/> and <see cref="IVirtualCpu.ExitData"/>
/// on KVM: the guest executes <c>out dx, al</c> <see cref="ExitsPerInvoke"/> times per invocation, and every
/// result is per exit. The baseline runs the same loop without the <c>OUT</c> (one exit per invocation), so
/// the difference is the cost of the exits themselves.
/// </summary>
/// <remarks>
/// The user-mode guest runs at CPL 3 with IOPL 3, where <c>OUT</c> exits directly on hardware KVM. KVMs that
/// run CPL 3 as host user mode (PVM) ignore IOPL; there the OUT raises #GP and a four-instruction CPL 0
/// handler repeats it, so each exit also pays for that fault. The kernel-mode variant executes the loop at
/// CPL 0, like the C measurement it is compared with.
/// </remarks>
[SimpleJob(warmupCount: 2, iterationCount: 5)]
public class PortIoRoundTripBenchmark
{
    /// <summary>Exits per benchmark invocation.</summary>
    public const int ExitsPerInvoke = 1000;

    private const ulong CodeAddress = 0x10000;
    private const ulong IdtAddress = 0x3000;
    private const ulong GpHandlerAddress = 0x4000;
    private const ulong KernelStack = 0x7000;
    private const ulong UserStack = 0x70000;
    private const ushort LoopPort = 0x80;
    private const ushort DonePort = 0x81;
    private const ulong Iopl3 = 3UL << 12;
    private const ulong FlagsReserved = 2;
    private const int GeneralProtectionVector = 13;

    private Guest? _userWithOut;
    private Guest? _userWithoutOut;
    private Guest? _kernelWithOut;
    private Guest? _realModeWithOut;

    [GlobalSetup]
    public void Setup()
    {
        var availability = new KvmHypervisor().GetAvailability();
        if (!availability.IsAvailable)
        {
            throw new InvalidOperationException("This benchmark needs KVM: " + availability.Reason);
        }

        _userWithOut = new Guest(withOut: true, userMode: true);
        _userWithoutOut = new Guest(withOut: false, userMode: true);
        _kernelWithOut = new Guest(withOut: true, userMode: false);
        _realModeWithOut = new Guest(withOut: true, userMode: false, realMode: true);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _userWithOut?.Dispose();
        _userWithoutOut?.Dispose();
        _kernelWithOut?.Dispose();
        _realModeWithOut?.Dispose();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = ExitsPerInvoke, Description = "CPL 3 loop, no OUT")]
    public int UserLoopWithoutOut() => _userWithoutOut!.RunOneRound();

    [Benchmark(OperationsPerInvoke = ExitsPerInvoke, Description = "CPL 3 OUT exit")]
    public int UserPortWrite() => _userWithOut!.RunOneRound();

    [Benchmark(OperationsPerInvoke = ExitsPerInvoke, Description = "CPL 0 OUT exit")]
    public int KernelPortWrite() => _kernelWithOut!.RunOneRound();

    /// <summary>The guest of <c>c-baseline/portio.c</c>, for a like-for-like comparison with C on the same host.</summary>
    [Benchmark(OperationsPerInvoke = ExitsPerInvoke, Description = "real-mode OUT exit")]
    public int RealModePortWrite() => _realModeWithOut!.RunOneRound();

    /// <summary>The .NET and syscall cost alone: RequestExit, then a Run whose KVM_RUN returns at once.</summary>
    [Benchmark(Description = "Run with immediate exit")]
    public VcpuExitReason ImmediateExit() => _userWithOut!.RunInterrupted();

    /// <summary>A one-vCPU VM whose guest loops forever: N port writes (or none), then one write to <see cref="DonePort"/>.</summary>
    private sealed class Guest : IDisposable
    {
        private readonly GuestMemory _memory;
        private readonly IPartition _partition;
        private readonly IVirtualCpu _vcpu;

        public Guest(bool withOut, bool userMode, bool realMode = false)
        {
            _memory = GuestMemory.CreateRam(1 << 20);
            _partition = new KvmHypervisor().CreatePartition(_memory, new PartitionOptions());
            _vcpu = _partition.CreateVcpu(0);
            if (realMode)
            {
                SetUpRealMode();
                return;
            }

            _memory.Write(new GuestAddress(CodeAddress), GuestProgram.Assemble(64, CodeAddress, a =>
            {
                var top = a.CreateLabel();
                var loop = a.CreateLabel();
                a.Label(ref top);
                a.mov(ecx, ExitsPerInvoke);
                a.mov(dx, LoopPort);
                a.Label(ref loop);
                if (withOut)
                {
                    a.@out(dx, al);
                }

                a.inc(eax);
                a.dec(ecx);
                a.jnz(loop);
                a.mov(dx, DonePort);
                a.@out(dx, al);
                a.jmp(top);
            }));
            _memory.Write(new GuestAddress(GpHandlerAddress), GuestProgram.Assemble(64, GpHandlerAddress, a =>
            {
                a.add(rsp, 8); // drop the error code
                a.@out(dx, al); // the faulting instruction is always the one-byte out dx, al
                a.add(__qword_ptr[rsp], 1);
                a.iretq();
            }));
            ulong gate = (GpHandlerAddress & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | ((GpHandlerAddress >> 16 & 0xFFFF) << 48);
            _memory.Write(new GuestAddress(IdtAddress + (GeneralProtectionVector * 16)), gate);
            _memory.Write(new GuestAddress(IdtAddress + (GeneralProtectionVector * 16) + 8), 0UL);

            var s = ProcessorSetup.Prepare(_memory, _vcpu.GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions { KernelStack = KernelStack });
            s.Idt = new DescriptorTable { Base = IdtAddress, Limit = (16 * (GeneralProtectionVector + 1)) - 1 };
            if (userMode)
            {
                s.Cs = ProcessorSetup.UserSegment(code: true);
                s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
            }

            _vcpu.SetSpecialRegisters(s);
            _vcpu.SetGeneralRegisters(new GeneralRegisters
            {
                Rip = CodeAddress,
                Rsp = userMode ? UserStack : KernelStack,
                Rflags = (userMode ? Iopl3 : 0) | FlagsReserved,
            });
        }

        private void SetUpRealMode()
        {
            const ulong realModeCode = 0x1000;
            _memory.Write(new GuestAddress(realModeCode), GuestProgram.Assemble(16, realModeCode, a =>
            {
                var top = a.CreateLabel();
                var loop = a.CreateLabel();
                a.Label(ref top);
                a.mov(cx, ExitsPerInvoke);
                a.mov(dx, LoopPort);
                a.Label(ref loop);
                a.@out(dx, al);
                a.inc(ax);
                a.dec(cx);
                a.jnz(loop);
                a.mov(dx, DonePort);
                a.@out(dx, al);
                a.jmp(top);
            }));
            _vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(_memory, _vcpu.GetSpecialRegisters(), StartMode.Real));
            _vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = realModeCode, Rsp = KernelStack, Rflags = FlagsReserved });
        }

        public VcpuExitReason RunInterrupted()
        {
            _vcpu.RequestExit();
            return _vcpu.Run().Reason;
        }

        /// <summary>Runs until the guest writes <see cref="DonePort"/>, consuming every exit's data like a device would.</summary>
        public int RunOneRound()
        {
            int sum = 0;
            while (true)
            {
                var exit = _vcpu.Run();
                if (exit.Reason != VcpuExitReason.PortIo)
                {
                    if (exit.Reason == VcpuExitReason.Interrupted)
                    {
                        continue;
                    }

                    throw new InvalidOperationException("Unexpected exit: " + exit);
                }

                sum += _vcpu.ExitData[0];
                if (exit.Port == DonePort)
                {
                    return sum;
                }
            }
        }

        public void Dispose()
        {
            _vcpu.Dispose();
            _partition.Dispose();
            _memory.Dispose();
        }
    }
}
