using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

public sealed class PartitionTests
{
    [Fact]
    public void Availability_says_available_on_a_kvm_host()
    {
        HostRequirements.RequireKvm();
        var hypervisor = new KvmHypervisor();

        var availability = hypervisor.GetAvailability();

        Assert.True(availability.IsAvailable, availability.Reason);
        Assert.Contains("available", availability.Reason, StringComparison.Ordinal);
        Assert.Equal("kvm", hypervisor.Name);
    }

    [Fact]
    public void Msr_set_then_get_round_trips_and_an_unlisted_msr_is_rejected()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        uint index = vm.Partition.SupportedMsrs.Contains(MsrIndex.TscAux) ? MsrIndex.TscAux : MsrIndex.SysenterCs;
        Assert.Contains(index, vm.Partition.SupportedMsrs);

        vm.Vcpu.SetMsrs([new MsrEntry(index, 0x1234)]);
        Span<MsrEntry> read = [new MsrEntry(index, 0)];
        vm.Vcpu.GetMsrs(read);
        Assert.Equal(0x1234UL, read[0].Value);

        uint unlisted = Enumerable.Range(0x4000_0F00, 0x100).Select(i => (uint)i).First(i => !vm.Partition.SupportedMsrs.Contains(i));
        Assert.Throws<ArgumentException>(() => vm.Vcpu.SetMsrs([new MsrEntry(unlisted, 1)]));
        Assert.Throws<ArgumentException>(() =>
        {
            Span<MsrEntry> e = [new MsrEntry(unlisted, 0)];
            vm.Vcpu.GetMsrs(e);
        });
    }

    [Fact]
    public void Masked_cpuid_feature_is_removed_from_the_table_and_from_what_the_guest_sees()
    {
        HostRequirements.RequireKvm();
        CpuidFeature feature;
        using (var plain = TestVm.Create())
        {
            feature = new[] { CpuidFeature.Hypervisor, CpuidFeature.Xsave, CpuidFeature.X2Apic, CpuidFeature.Rdtscp }
                .First(f => IsSet(plain.Partition.SupportedCpuid, f));
        }

        using var vm = TestVm.Create(new PartitionOptions { MaskedCpuidFeatures = [feature] });
        Assert.False(IsSet(vm.Partition.SupportedCpuid, feature));
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(eax, feature.Function);
            a.mov(ecx, feature.Index);
            a.cpuid();
            a.hlt();
        }));

        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
        var r = vm.Vcpu.GetGeneralRegisters();
        ulong value = feature.Register switch
        {
            CpuidRegister.Eax => r.Rax,
            CpuidRegister.Ebx => r.Rbx,
            CpuidRegister.Ecx => r.Rcx,
            _ => r.Rdx,
        };
        Assert.Equal(0UL, value & (1UL << feature.Bit));
    }

    private static bool IsSet(IReadOnlyList<CpuidEntry> table, CpuidFeature f) => table.Any(e =>
        e.Function == f.Function && e.Index == f.Index && ((f.Register switch
        {
            CpuidRegister.Eax => e.Eax,
            CpuidRegister.Ebx => e.Ebx,
            CpuidRegister.Ecx => e.Ecx,
            _ => e.Edx,
        } >> f.Bit) & 1) != 0);

    [Fact]
    public void Dirty_log_reports_the_page_the_guest_wrote_and_then_clears()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create(new PartitionOptions { TrackDirtyPages = true });
        const ulong written = 0x50000, untouched = 0x70000;
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(__byte_ptr[written + 0x10], 1);
            a.hlt();
        }));
        var log = Assert.IsAssignableFrom<IDirtyPageLog>(vm.Partition);
        var bitmap = new ulong[(vm.Memory.Regions[0].Size / 4096 + 63) / 64];
        log.CollectDirtyPages(0, bitmap); // forget the host's set-up writes

        Assert.Equal(VcpuExitReason.Halt, TestVm.RunToExit(vm.Vcpu).Reason);
        log.CollectDirtyPages(0, bitmap);

        Assert.True(IsDirty(bitmap, written), "the written page is not in the log");
        Assert.False(IsDirty(bitmap, untouched), "an untouched page is in the log");
        log.CollectDirtyPages(0, bitmap);
        Assert.False(IsDirty(bitmap, written), "collecting did not clear the log");
    }

    private static bool IsDirty(ulong[] bitmap, ulong address) => (bitmap[address / 4096 / 64] & (1UL << (int)(address / 4096 % 64))) != 0;

    [Fact]
    public void Dirty_log_is_refused_when_tracking_is_off()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        var log = Assert.IsAssignableFrom<IDirtyPageLog>(vm.Partition);
        Assert.Throws<InvalidOperationException>(() => log.CollectDirtyPages(0, new ulong[64]));
    }

    [Fact]
    public void Interrupt_line_needs_the_in_kernel_interrupt_controller()
    {
        HostRequirements.RequireKvm();
        using (var plain = TestVm.Create())
        {
            Assert.False(plain.Partition.HasInterruptController);
            Assert.Throws<InvalidOperationException>(() => plain.Partition.SetInterruptLine(4, true));
        }

        using var vm = TestVm.Create(new PartitionOptions { InterruptController = true });
        Assert.True(vm.Partition.HasInterruptController);
        vm.Partition.SetInterruptLine(4, true);
        vm.Partition.SetInterruptLine(4, false);
        Assert.Throws<InvalidOperationException>(() => vm.Vcpu.TryInjectInterrupt(0x30));
    }

    [Fact]
    public void Injected_interrupt_reaches_the_guest_handler_once_it_enables_interrupts()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        const byte vector = 0x40;
        const ulong idt = 0x3000, handler = 0x4000;
        vm.Memory.Write(new GuestAddress(handler), GuestProgram.Assemble(64, handler, a =>
        {
            a.mov(dx, TestVm.Com1);
            a.mov(al, vector);
            a.@out(dx, al);
            a.hlt();
        }));
        ulong gate = (handler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((handler >> 16) & 0xFFFF) << 48);
        vm.Memory.Write(new GuestAddress(idt + (vector * 16)), gate);
        vm.Memory.Write(new GuestAddress(idt + (vector * 16) + 8), 0UL);
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(ecx, 1000);
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.dec(ecx);
            a.jnz(wait);
            a.sti();
            var self = a.CreateLabel();
            a.Label(ref self);
            a.jmp(self);
        }));
        var s = vm.Vcpu.GetSpecialRegisters();
        s.Idt = new DescriptorTable { Base = idt, Limit = (ushort)((16 * 256) - 1) };
        vm.Vcpu.SetSpecialRegisters(s);

        Assert.True(vm.Vcpu.TryInjectInterrupt(vector));
        Assert.False(vm.Vcpu.TryInjectInterrupt(vector + 1)); // one is already queued

        var exit = TestVm.RunToExit(vm.Vcpu);
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.Equal(vector, vm.Vcpu.ExitData[0]);
        Assert.Equal(0UL, vm.Vcpu.GetGeneralRegisters().Rcx);
    }

    [Fact]
    public void Memory_without_host_addresses_is_refused_with_a_clear_message()
    {
        HostRequirements.RequireKvm();
        var ex = Assert.Throws<ArgumentException>(() => new KvmHypervisor().CreatePartition(new HostlessMemory(), new PartitionOptions()));
        Assert.Contains("host address", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Read_only_region_is_mapped_so_the_guest_reads_it_and_its_writes_exit_as_mmio()
    {
        HostRequirements.RequireKvm();
        using var memory = GuestMemory.Create(
            GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 2 << 20),
            GuestMemoryRegionSpec.Rom(new GuestAddress(0x20_0000), 0x1000));
        memory.LoadRom(new GuestAddress(0x20_0000), [0xAB]);
        using var partition = new KvmHypervisor().CreatePartition(memory, new PartitionOptions());
        using var vcpu = partition.CreateVcpu(0);
        memory.Write(new GuestAddress(TestVm.CodeAddress), GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            a.mov(al, __byte_ptr[0x20_0000]);
            a.mov(__byte_ptr[0x20_0000], 0x11);
            a.hlt();
        }));
        vcpu.SetSpecialRegisters(ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), StartMode.Long64));
        vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = TestVm.CodeAddress, Rsp = TestVm.StackTop, Rflags = TestVm.FlagsReserved });

        var exit = TestVm.RunToExit(vcpu);

        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal(new GuestAddress(0x20_0000), exit.Address);
        Assert.Equal(0xABUL, vcpu.GetGeneralRegisters().Rax & 0xFF);
        Assert.Equal(0xAB, memory.Read<byte>(new GuestAddress(0x20_0000)));
    }

    [Fact]
    public void System_pages_are_placed_in_a_hole_below_4_GiB()
    {
        var below = new GuestMemoryRegionInfo(GuestAddress.Zero, 0xC000_0000, false, 0x1000);
        var covering = new GuestMemoryRegionInfo(new GuestAddress(0xFE00_0000), 0x200_0000, false, 0x1000);

        Assert.Equal(KvmPartition.PreferredSystemPagesAddress, KvmPartition.FindSystemPagesHole([below]));
        ulong? placed = KvmPartition.FindSystemPagesHole([below, covering]);
        Assert.NotNull(placed);
        Assert.True(placed.Value + KvmPartition.SystemPagesSize <= 0xFE00_0000 && placed.Value >= 0xC000_0000);
        Assert.Null(KvmPartition.FindSystemPagesHole([new GuestMemoryRegionInfo(GuestAddress.Zero, 1UL << 32, false, 0x1000)]));
    }

    private sealed class HostlessMemory : IGuestMemoryBacking
    {
        public IReadOnlyList<GuestMemoryRegionInfo> Regions { get; } = [new(GuestAddress.Zero, 0x10000, false, 0)];

        public ulong TotalSize => 0x10000;

        public bool Contains(GuestAddress address, ulong length) => false;

        public void Read(GuestAddress address, Span<byte> destination) => throw new NotSupportedException();

        public void Write(GuestAddress address, ReadOnlySpan<byte> source) => throw new NotSupportedException();

        public bool TryRead(GuestAddress address, Span<byte> destination) => false;

        public bool TryWrite(GuestAddress address, ReadOnlySpan<byte> source) => false;

        public T Read<T>(GuestAddress address) where T : unmanaged => throw new NotSupportedException();

        public void Write<T>(GuestAddress address, T value) where T : unmanaged => throw new NotSupportedException();

        public Span<byte> GetSpan(GuestAddress address, int length, bool forWrite) => throw new NotSupportedException();

        public bool TryGetSpan(GuestAddress address, int length, bool forWrite, out Span<byte> span)
        {
            span = default;
            return false;
        }

        public int DirtyBitmapLength(int regionIndex) => 1;

        public void CollectDirtyPages(int regionIndex, Span<ulong> bitmap) => bitmap.Clear();

        public void SetWriteWatcher(IGuestWriteWatcher? watcher)
        {
        }

        public bool WatchPage(GuestAddress address) => false;

        public bool IsPageWatched(GuestAddress address) => false;
    }
}
