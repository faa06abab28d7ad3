using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>KVM runs on any <see cref="IGuestMemoryBacking"/>: its dirty log merges host writes made through the seam.</summary>
public sealed class CustomMemoryTests
{
    [Fact]
    public void Dirty_log_covers_guest_writes_and_host_writes_through_a_custom_memory()
    {
        HostRequirements.RequireKvm();
        using var inner = GuestMemory.CreateRam(4UL << 20);
        var memory = new DelegatingGuestMemory(inner);
        using var partition = new KvmHypervisor().CreatePartition(memory, new PartitionOptions { TrackDirtyPages = true });
        using var vcpu = partition.CreateVcpu(0);
        memory.Write(new GuestAddress(TestVm.CodeAddress), GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(__dword_ptr[0x30000], 7);
            a.hlt();
        }));
        vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), StartMode.Long64));
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = TestVm.CodeAddress, Rsp = TestVm.StackTop, Rflags = TestVm.FlagsReserved });
        var log = (IDirtyPageLog)partition;
        var bitmap = new ulong[memory.DirtyBitmapLength(0)];
        log.CollectDirtyPages(0, bitmap);

        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vcpu).Reason);
        memory.Write(new GuestAddress(0x50000), 9);
        log.CollectDirtyPages(0, bitmap);
        Assert.True(IsSet(bitmap, 0x30000), "the guest's write is missing from KVM's dirty log");
        Assert.True(IsSet(bitmap, 0x50000), "the host's write through the custom memory is missing from the dirty log");
    }

    private static bool IsSet(ulong[] bitmap, ulong address) => (bitmap[(int)(address >> 18)] & (1UL << (int)((address >> 12) & 63))) != 0;
}
