using Virt.Boot;
using Virt.Cpu;
using Virt.Memory;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Testing;

/// <summary>
/// Guest programs with the exits every backend must produce for them. Each takes the backend as an
/// <see cref="IHypervisor"/>, so a shared conformance suite can run them on every backend the host has.
/// </summary>
public static class GuestScenarios
{
    private const ulong RealModeCode = 0x1000;
    private const ulong LongModeCode = 0x10000;
    private const ulong KernelStack = 0x7000;
    private const ulong MemorySize = 4UL << 20;

    /// <summary>A guest physical address with no RAM behind it.</summary>
    private const ulong MmioAddress = 0xD000_0000;

    /// <summary>RFLAGS bit 1, architecturally always set.</summary>
    private const ulong FlagsReserved = 0x2;

    /// <summary>Real mode: OUT imm8, IN imm8 (answered by the host), OUT of the answer, a 16-bit OUT DX, then HLT.</summary>
    public static void RealModePortIo(IHypervisor hypervisor)
    {
        ArgumentNullException.ThrowIfNull(hypervisor);
        using var memory = GuestMemory.CreateRam(MemorySize);
        using var partition = hypervisor.CreatePartition(memory, new PartitionOptions());
        using var vcpu = partition.CreateVcpu(0);
        var code = GuestProgram.Assemble(16, RealModeCode, a =>
        {
            a.mov(al, 0x42);
            a.@out(0x10, al);
            a.@in(al, 0x11);
            a.@out(0x12, al);
            a.mov(dx, 0x3F8);
            a.mov(ax, 0x1234);
            a.@out(dx, ax);
            a.hlt();
        });
        Start(memory, vcpu, StartMode.Real, code, RealModeCode);

        ExpectPortWrite(vcpu, 0x10, [0x42]);
        ExpectPortRead(vcpu, 0x11, 1, [0x99]);
        ExpectPortWrite(vcpu, 0x12, [0x99]);
        ExpectPortWrite(vcpu, 0x3F8, [0x34, 0x12]);
        Assert.Equal(VcpuExitReason.Halt, vcpu.Run().Reason);
    }

    /// <summary>Long mode: a 32-bit OUT, an MMIO store and load outside RAM, and the loaded value sent back out.</summary>
    public static void LongModePortIoAndMmio(IHypervisor hypervisor)
    {
        ArgumentNullException.ThrowIfNull(hypervisor);
        using var memory = GuestMemory.CreateRam(MemorySize);
        using var partition = hypervisor.CreatePartition(memory, new PartitionOptions());
        using var vcpu = partition.CreateVcpu(0);
        var code = GuestProgram.Assemble(64, LongModeCode, a =>
        {
            a.mov(eax, 0x11223344);
            a.@out(0x10, eax);
            a.mov(rbx, MmioAddress);
            a.mov(__dword_ptr[rbx], 0x55667788);
            a.mov(ecx, __dword_ptr[rbx + 4]);
            a.mov(eax, ecx);
            a.@out(0x12, eax);
            a.hlt();
        });
        Start(memory, vcpu, StartMode.Long64, code, LongModeCode);

        ExpectPortWrite(vcpu, 0x10, [0x44, 0x33, 0x22, 0x11]);

        var store = vcpu.Run();
        Assert.Equal(VcpuExitReason.Mmio, store.Reason);
        Assert.True(store.IsWrite);
        Assert.Equal(new GuestAddress(MmioAddress), store.Address);
        Assert.Equal(4, store.Size);
        Assert.Equal([0x88, 0x77, 0x66, 0x55], vcpu.ExitData.ToArray());

        var load = vcpu.Run();
        Assert.Equal(VcpuExitReason.Mmio, load.Reason);
        Assert.False(load.IsWrite);
        Assert.Equal(new GuestAddress(MmioAddress + 4), load.Address);
        Assert.Equal(4, load.Size);
        new byte[] { 0xBE, 0xBA, 0xFE, 0xCA }.CopyTo(vcpu.ExitData);

        ExpectPortWrite(vcpu, 0x12, [0xBE, 0xBA, 0xFE, 0xCA]);
        Assert.Equal(VcpuExitReason.Halt, vcpu.Run().Reason);
        Assert.Equal(0xCAFE_BABEUL, vcpu.GetGeneralRegisters().Rcx);
    }

    /// <summary>A request to exit made before <see cref="IVirtualCpu.Run"/> is kept and reported by the next run.</summary>
    public static void ExitRequestedBeforeRunInterruptsIt(IHypervisor hypervisor)
    {
        ArgumentNullException.ThrowIfNull(hypervisor);
        using var memory = GuestMemory.CreateRam(MemorySize);
        using var partition = hypervisor.CreatePartition(memory, new PartitionOptions());
        using var vcpu = partition.CreateVcpu(0);
        var code = GuestProgram.Assemble(16, RealModeCode, a =>
        {
            a.@out(0x10, al);
            a.hlt();
        });
        Start(memory, vcpu, StartMode.Real, code, RealModeCode);

        vcpu.RequestExit();
        Assert.Equal(VcpuExitReason.Interrupted, vcpu.Run().Reason);
        Assert.Equal(VcpuExitReason.PortIo, vcpu.Run().Reason);
    }

    private static void Start(GuestMemory memory, IVirtualCpu vcpu, StartMode mode, byte[] code, ulong address)
    {
        memory.Write(new GuestAddress(address), code);
        vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), mode, new ProcessorSetupOptions { KernelStack = KernelStack }));
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = address, Rsp = KernelStack, Rflags = FlagsReserved });
    }

    private static void ExpectPortWrite(IVirtualCpu vcpu, ushort port, byte[] data)
    {
        var exit = vcpu.Run();
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.True(exit.IsWrite, $"expected a write, got {exit}");
        Assert.Equal(port, exit.Port);
        Assert.Equal(data.Length, exit.Size);
        Assert.Equal(1, exit.Count);
        Assert.Equal(data, vcpu.ExitData.ToArray());
    }

    private static void ExpectPortRead(IVirtualCpu vcpu, ushort port, int size, byte[] answer)
    {
        var exit = vcpu.Run();
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.False(exit.IsWrite, $"expected a read, got {exit}");
        Assert.Equal(port, exit.Port);
        Assert.Equal(size, exit.Size);
        Assert.Equal(size, vcpu.ExitData.Length);
        answer.CopyTo(vcpu.ExitData);
    }
}
