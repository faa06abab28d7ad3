using Virt.Boot;
using Virt.Memory;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>A KVM partition over fresh guest RAM with its vCPUs, disposed together.</summary>
internal sealed class TestVm : IDisposable
{
    /// <summary>Where test programs are loaded (above the GDT, TSS and page tables ProcessorSetup writes).</summary>
    public const ulong CodeAddress = 0x10000;

    /// <summary>Initial kernel stack pointer.</summary>
    public const ulong StackTop = 0x8000;

    /// <summary>RFLAGS bit 1, architecturally always set.</summary>
    public const ulong FlagsReserved = 0x2;

    public const ushort Com1 = 0x3F8;

    /// <summary>RFLAGS.IOPL = 3: CPL 3 code may use IN/OUT.</summary>
    public const ulong Iopl3 = 3UL << 12;

    /// <summary>Where <see cref="InstallPortWriteFallback"/> puts the IDT.</summary>
    public const ulong IdtAddress = 0x3000;

    /// <summary>Where <see cref="InstallPortWriteFallback"/> puts the #GP handler.</summary>
    public const ulong GpHandlerAddress = 0x4000;

    /// <summary>Kernel stack used when an exception arrives from CPL 3 (TSS RSP0).</summary>
    public const ulong KernelStackTop = 0x7000;

    /// <summary>#GP vector.</summary>
    private const int GeneralProtectionVector = 13;

    private TestVm(GuestMemory memory, IPartition partition)
    {
        Memory = memory;
        Partition = partition;
    }

    public GuestMemory Memory { get; }

    public IPartition Partition { get; }

    public List<IVirtualCpu> Vcpus { get; } = [];

    public IVirtualCpu Vcpu => Vcpus[0];

    public static TestVm Create(PartitionOptions? options = null, ulong memorySize = 4UL << 20)
    {
        var memory = GuestMemory.CreateRam(memorySize);
        try
        {
            options ??= new PartitionOptions();
            var vm = new TestVm(memory, new KvmHypervisor().CreatePartition(memory, options));
            for (int i = 0; i < options.VcpuCount; i++)
            {
                vm.Vcpus.Add(vm.Partition.CreateVcpu(i));
            }

            return vm;
        }
        catch
        {
            memory.Dispose();
            throw;
        }
    }

    /// <summary>Loads <paramref name="code"/> at <paramref name="address"/> and points vCPU <paramref name="index"/> at it in <paramref name="mode"/>.</summary>
    public void Start(StartMode mode, byte[] code, ulong address = CodeAddress, int index = 0, ulong stack = StackTop)
    {
        Memory.Write(new GuestAddress(address), code);
        var vcpu = Vcpus[index];
        vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(Memory, vcpu.GetSpecialRegisters(), mode, SetupOptions(index)));
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = address, Rsp = stack, Rflags = FlagsReserved });
    }

    /// <summary>
    /// Each vCPU gets its own GDT, TSS and kernel stack (a TSS is busy while loaded, and two vCPUs taking
    /// exceptions on one kernel stack would overwrite each other's frames); the identity map is shared.
    /// </summary>
    private static ProcessorSetupOptions SetupOptions(int index) => new()
    {
        GdtAddress = new GuestAddress(0x500 + (ulong)(index * 0x100)),
        TssAddress = new GuestAddress(0x580 + (ulong)(index * 0x100)),
        KernelStack = KernelStackTop - (ulong)(index * 0x400),
    };

    /// <summary>
    /// Gives long-mode vCPU <paramref name="index"/> an IDT whose #GP handler performs the one-byte
    /// <c>out dx, al</c> that faulted at CPL 3 and returns past it. With IOPL 3 the OUT exits directly on
    /// hardware KVM; KVMs that run CPL 3 as host user mode (PVM) ignore IOPL, and the fault then takes
    /// this short CPL 0 path to the same port exit.
    /// </summary>
    public void InstallPortWriteFallback(int index = 0)
    {
        Memory.Write(new GuestAddress(GpHandlerAddress), Testing.GuestProgram.Assemble(64, GpHandlerAddress, a =>
        {
            a.add(Iced.Intel.AssemblerRegisters.rsp, 8); // drop the error code; RIP is now at [rsp]
            a.@out(Iced.Intel.AssemblerRegisters.dx, Iced.Intel.AssemblerRegisters.al);
            a.add(Iced.Intel.AssemblerRegisters.__qword_ptr[Iced.Intel.AssemblerRegisters.rsp], 1); // skip the 0xEE opcode
            a.iretq();
        }));
        for (int v = 0; v <= GeneralProtectionVector; v++)
        {
            ulong gate = v == GeneralProtectionVector ? GpHandlerAddress : 0;
            // 64-bit interrupt gate: offset 15:0, selector, type 0xE, present, offset 31:16; then offset 63:32.
            ulong low = (gate & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((gate >> 16) & 0xFFFF) << 48);
            Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16)), gate == 0 ? 0UL : low);
            Memory.Write(new GuestAddress(IdtAddress + (ulong)(v * 16) + 8), gate >> 32);
        }

        var vcpu = Vcpus[index];
        var s = vcpu.GetSpecialRegisters();
        s.Idt = new DescriptorTable { Base = IdtAddress, Limit = (ushort)((16 * (GeneralProtectionVector + 1)) - 1) };
        vcpu.SetSpecialRegisters(s);
    }

    /// <summary>Switches long-mode vCPU <paramref name="index"/> straight to CPL 3 at <paramref name="rip"/> with IOPL 3.</summary>
    public void EnterUserMode(ulong rip, ulong stack, int index = 0)
    {
        var vcpu = Vcpus[index];
        var s = vcpu.GetSpecialRegisters();
        s.Cs = ProcessorSetup.UserSegment(code: true);
        s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
        vcpu.SetSpecialRegisters(s);
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = rip, Rsp = stack, Rflags = Iopl3 | FlagsReserved });
    }

    /// <summary>Runs until an exit other than <see cref="VcpuExitReason.Interrupted"/>.</summary>
    public static VcpuExit RunToExit(IVirtualCpu vcpu)
    {
        while (true)
        {
            var exit = vcpu.Run();
            if (exit.Reason != VcpuExitReason.Interrupted)
            {
                return exit;
            }
        }
    }

    public void Dispose()
    {
        foreach (var v in Vcpus)
        {
            v.Dispose();
        }

        Partition.Dispose();
        Memory.Dispose();
    }
}
