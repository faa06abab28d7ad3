using Iced.Intel;
using Virt.Boot;
using Virt.Cpu.Interpreter;
using Virt.Memory;
using Virt.Testing;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>A partition with one vCPU over fresh guest RAM, started in a chosen mode; disposed together.</summary>
internal sealed class Machine : IDisposable
{
    public const ulong CodeAddress = 0x10000;
    public const ulong StackTop = 0x8000;
    public const ulong KernelStackTop = 0x7000;
    public const ulong IdtAddress = 0x3000;
    public const ulong FlagsReserved = 0x2;

    public Machine(IHypervisor? hypervisor = null, ulong memorySize = 4UL << 20, PartitionOptions? options = null)
    {
        Memory = GuestMemory.CreateRam(memorySize);
        Partition = (hypervisor ?? new InterpreterHypervisor()).CreatePartition(Memory, options ?? new PartitionOptions());
        Vcpu = Partition.CreateVcpu(0);
    }

    public GuestMemory Memory { get; }

    public IPartition Partition { get; }

    public IVirtualCpu Vcpu { get; }

    public static Machine Long64(Action<Assembler> emit, ulong address = CodeAddress, IHypervisor? hypervisor = null, ulong memorySize = 4UL << 20)
    {
        var m = new Machine(hypervisor, memorySize);
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, address, emit), address);
        return m;
    }

    public void Start(StartMode mode, byte[] code, ulong address = CodeAddress, ulong stack = StackTop)
    {
        Memory.Write(new GuestAddress(address), code);
        Vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(Memory, Vcpu.GetSpecialRegisters(), mode, new ProcessorSetupOptions { KernelStack = KernelStackTop }));
        Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = address, Rsp = stack, Rflags = FlagsReserved });
    }

    /// <summary>Installs 64-bit interrupt gates for vectors 0-31 pointing at <paramref name="handler"/> + 16 * vector.</summary>
    public void InstallIdt(ulong handler, int ist = 0)
    {
        for (int v = 0; v < 32; v++)
        {
            ulong target = handler + (ulong)(v * 16);
            ulong low = (target & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | ((ulong)ist << 32) | (0xEEUL << 40) | (((target >> 16) & 0xFFFF) << 48);
            Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16)), low);
            Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16) + 8), target >> 32);
        }

        var s = Vcpu.GetSpecialRegisters();
        s.Idt = new DescriptorTable { Base = IdtAddress, Limit = (32 * 16) - 1 };
        Vcpu.SetSpecialRegisters(s);
    }

    public VcpuExit Run()
    {
        while (true)
        {
            var exit = Vcpu.Run();
            if (exit.Reason != VcpuExitReason.Interrupted)
            {
                return exit;
            }
        }
    }

    public GeneralRegisters Regs => Vcpu.GetGeneralRegisters();

    public void Dispose()
    {
        Vcpu.Dispose();
        Partition.Dispose();
        Memory.Dispose();
    }
}
