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

    /// <summary>
    /// A long-mode machine at CPL 0 whose first <paramref name="mapped"/> bytes are identity-mapped (nothing above), with
    /// <paramref name="program"/> at <see cref="CodeAddress"/> and a handler for each vector 0-31 that halts at
    /// <paramref name="handler"/> + 16 * vector.
    /// </summary>
    public static Machine Long64Mapped(IHypervisor hypervisor, Action<Assembler> program, ulong mapped, ulong handler)
    {
        var m = new Machine(hypervisor);
        m.Memory.Write(new GuestAddress(CodeAddress), GuestProgram.Assemble(64, CodeAddress, program));
        m.Vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(m.Memory, m.Vcpu.GetSpecialRegisters(), StartMode.Long64,
            new ProcessorSetupOptions { KernelStack = KernelStackTop, IdentityMapSize = mapped }));
        m.Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = CodeAddress, Rsp = StackTop, Rflags = FlagsReserved });
        m.InstallIdt(handler);
        for (int v = 0; v < 32; v++)
        {
            m.Memory.Write(new GuestAddress(handler + (ulong)(v * 16)), (byte)0xF4);
        }

        return m;
    }

    public void Start(StartMode mode, byte[] code, ulong address = CodeAddress, ulong stack = StackTop)
    {
        Memory.Write(new GuestAddress(address), code);
        Vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(Memory, Vcpu.GetSpecialRegisters(), mode, new ProcessorSetupOptions { KernelStack = KernelStackTop }));
        Vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = address, Rsp = stack, Rflags = FlagsReserved });
    }

    /// <summary>Where <see cref="InstallHaltingIdt"/> puts its handlers: vector v's is the HLT at + 16 * v.</summary>
    public const ulong HaltingHandlers = 0x30000;

    /// <summary>Gives every vector 0-31 a handler that halts in its own 16-byte slot, so <see cref="HaltedVector"/> tells which one ran.</summary>
    public void InstallHaltingIdt()
    {
        for (int v = 0; v < 32; v++)
        {
            Memory.Write(new GuestAddress(HaltingHandlers + (ulong)(v * 16)), (byte)0xF4);
        }

        InstallIdt(HaltingHandlers);
    }

    /// <summary>After a halt: the vector whose <see cref="InstallHaltingIdt"/> handler the vCPU halted in, or -2 when it halted elsewhere.</summary>
    public int HaltedVector
    {
        get
        {
            ulong rip = Regs.Rip;
            return rip > HaltingHandlers && rip <= HaltingHandlers + (32 * 16) ? (int)((rip - HaltingHandlers - 1) / 16) : -2;
        }
    }

    /// <summary>
    /// Runs <paramref name="emit"/> then HLT at CPL 0 on the interpreter, with halting handlers and <paramref name="cr0Set"/>
    /// set in CR0; the vector of the exception it raised, or -2 when none.
    /// </summary>
    public static int VectorRaisedAtCpl0(Action<Iced.Intel.Assembler> emit, PartitionOptions? options, ulong cr0Set = 0)
    {
        using var m = new Machine(new Virt.Cpu.Interpreter.InterpreterHypervisor(), options: options);
        m.Start(StartMode.Long64, GuestProgram.Assemble(64, CodeAddress, a =>
        {
            emit(a);
            a.hlt();
        }));
        m.InstallHaltingIdt();
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cr0 |= cr0Set;
        m.Vcpu.SetSpecialRegisters(s);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        return m.HaltedVector;
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
