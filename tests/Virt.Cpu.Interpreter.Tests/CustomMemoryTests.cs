using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>The interpreter runs on any <see cref="IGuestMemoryBacking"/>: decoded code is dropped and dirty pages are logged through the seam.</summary>
public sealed class CustomMemoryTests
{
    [Fact]
    public void Code_rewritten_by_the_host_through_a_custom_memory_is_decoded_again()
    {
        using var inner = GuestMemory.CreateRam(4UL << 20);
        var memory = new DelegatingGuestMemory(inner);
        using var partition = new InterpreterHypervisor().CreatePartition(memory, new PartitionOptions { TrackDirtyPages = true });
        using var vcpu = partition.CreateVcpu(0);
        const ulong code = 0x10000;
        byte[] Program(int value) => GuestProgram.Assemble(64, code, a =>
        {
            a.mov(eax, value);
            a.hlt();
        });

        memory.Write(new GuestAddress(code), Program(1));
        vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), StartMode.Long64));
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = code, Rsp = 0x8000, Rflags = 2 });
        Assert.Equal(VcpuExitReason.Halt, vcpu.Run().Reason);
        Assert.Equal(1UL, vcpu.GetGeneralRegisters().Rax);
        Assert.True(memory.WatchRequests > 0, "the interpreter did not watch the page it decoded code from");
        Assert.True(memory.IsPageWatched(new GuestAddress(code)));

        // The host rewrites the code through the wrapper; the interpreter must run the new instruction.
        memory.Write(new GuestAddress(code), Program(2));
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = code, Rsp = 0x8000, Rflags = 2 });
        Assert.Equal(VcpuExitReason.Halt, vcpu.Run().Reason);
        Assert.Equal(2UL, vcpu.GetGeneralRegisters().Rax);
    }

    [Fact]
    public void Dirty_log_covers_guest_writes_and_host_writes_through_a_custom_memory()
    {
        using var inner = GuestMemory.CreateRam(4UL << 20);
        var memory = new DelegatingGuestMemory(inner);
        using var partition = new InterpreterHypervisor().CreatePartition(memory, new PartitionOptions { TrackDirtyPages = true });
        using var vcpu = partition.CreateVcpu(0);
        const ulong code = 0x10000;
        memory.Write(new GuestAddress(code), GuestProgram.Assemble(64, code, a =>
        {
            a.mov(__dword_ptr[0x30000], 7);
            a.hlt();
        }));
        vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), StartMode.Long64));
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = code, Rsp = 0x8000, Rflags = 2 });
        var log = (IDirtyPageLog)partition;
        var bitmap = new ulong[memory.DirtyBitmapLength(0)];
        log.CollectDirtyPages(0, bitmap); // start clean

        Assert.Equal(VcpuExitReason.Halt, vcpu.Run().Reason);
        memory.Write(new GuestAddress(0x50000), 9);
        log.CollectDirtyPages(0, bitmap);
        Assert.True(IsSet(bitmap, 0x30000), "the guest's write is missing from the dirty log");
        Assert.True(IsSet(bitmap, 0x50000), "the host's write through the custom memory is missing from the dirty log");
        Assert.False(IsSet(bitmap, 0x70000));
    }

    private static bool IsSet(ulong[] bitmap, ulong address) => (bitmap[(int)(address >> 18)] & (1UL << (int)((address >> 12) & 63))) != 0;
}
