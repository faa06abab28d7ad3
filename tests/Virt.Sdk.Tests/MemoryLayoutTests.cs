using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>RAM is laid out as on a PC: below the 32-bit device window, and the rest from 4 GiB up.</summary>
public sealed class MemoryLayoutTests
{
    private const ulong Load = 0x100000;
    private const ulong HighProbe = 0x1_4000_0000; // guest physical 5 GiB: RAM offset 4.25 GiB in a 6 GiB VM

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    [Fact]
    public void Ram_below_the_device_window_is_one_region_and_above_it_is_split_at_4_GiB()
    {
        Assert.Equal([GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 256UL << 20)], RamLayout.Regions(256UL << 20));
        var six = RamLayout.Regions(6UL << 30);
        Assert.Equal(2, six.Length);
        Assert.Equal(GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 0xD000_0000), six[0]);
        Assert.Equal(GuestMemoryRegionSpec.Ram(new GuestAddress(1UL << 32), (6UL << 30) - 0xD000_0000), six[1]);
        Assert.Equal(new GuestAddress(0xCFFF_F000), RamLayout.ToGuestAddress(0xCFFF_F000));
        Assert.Equal(new GuestAddress(1UL << 32), RamLayout.ToGuestAddress(0xD000_0000));
        Assert.True(RamLayout.Contains(6UL << 30, (1UL << 32) + 0x1000, 0x1000));
        Assert.False(RamLayout.Contains(6UL << 30, 0xD000_0000, 1));
        Assert.False(RamLayout.Contains(6UL << 30, 0xCFFF_F000, 0x2000));
        Assert.False(RamLayout.Contains(6UL << 30, (1UL << 32) + (6UL << 30) - 0xD000_0000, 1));
    }

    [Fact]
    public void The_e820_map_of_a_6_GiB_vm_has_ram_above_4_GiB()
    {
        using var memory = GuestMemory.Create(RamLayout.Regions(6UL << 30));
        var map = E820Map.FromMemory(memory);
        Assert.Contains(map, e => e.Type == E820Type.Ram && e.Address.Value == 1UL << 32 && e.Size == (6UL << 30) - 0xD000_0000);
        Assert.DoesNotContain(map, e => e.Type == E820Type.Ram && e.Address.Value < 1UL << 32 && e.End.Value > 0xD000_0000);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task A_6_GiB_vm_builds_and_its_guest_reads_and_writes_ram_above_4_GiB(string backend)
    {
        // The guest maps 5-6 GiB with one 2 MiB page (PDPT entry 5 of the boot identity map), reads the value the host
        // put at 5 GiB, and writes it plus one next to it.
        const ulong pdpt = 0xA000; // the builder's long-mode tables: PML4 at 0x9000, PDPT after it
        const ulong pd = 0x20000;
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            a.mov(rax, pd | 3);
            a.mov(__qword_ptr[(long)(pdpt + (5 * 8))], rax);
            a.mov(rax, HighProbe | 0x83);
            a.mov(__qword_ptr[(long)pd], rax);
            a.mov(rax, cr3);
            a.mov(cr3, rax);
            a.mov(rax, HighProbe);
            a.mov(rbx, __qword_ptr[rax]);
            a.add(rbx, 1);
            a.mov(__qword_ptr[rax + 8], rbx);
            a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
            a.mov(al, 7);
            a.@out(dx, al);
            a.hlt();
        });
        await using var vm = FlatGuestVm.Builder(backend)
            .WithMemory(6UL << 30)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build();
        Assert.Equal(6UL << 30, vm.Memory.TotalSize);
        vm.Memory.Write(new GuestAddress(HighProbe), 0x1234_5678_9ABC_DEF0UL);

        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);

        Assert.True(exit.Reason == StopReason.DebugExit && exit.ExitCode == 7, exit.Description);
        Assert.Equal(0x1234_5678_9ABC_DEF1UL, vm.Memory.Read<ulong>(new GuestAddress(HighProbe + 8)));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task A_64_GiB_vm_builds_without_touching_its_memory(string backend)
    {
        await using var vm = FlatGuestVm.Builder(backend).WithMemory(64UL << 30).Build();
        Assert.Equal(64UL << 30, vm.Memory.TotalSize);
        Assert.Equal(2, vm.Memory.Regions.Count);
        Assert.Equal(new GuestAddress(1UL << 32), vm.Memory.Regions[1].Start);
    }

    [Fact]
    public void A_device_placed_over_high_ram_is_refused_with_the_ram_ranges()
    {
        var e = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder().WithInterpreter().WithMemory(6UL << 30)
            .WithMmioDevice(new GuestAddress(0x1_0000_1000), 0x1000, new NullMmio(), "probe").Build());
        Assert.Contains("overlaps guest RAM (0x0-0xcfffffff and 0x100000000-0x1afffffff)", e.Message, StringComparison.Ordinal);
    }

    private sealed class NullMmio : Virt.Devices.IMmioDevice
    {
        public void Read(ulong offset, Span<byte> data) => data.Clear();

        public void Write(ulong offset, ReadOnlySpan<byte> data)
        {
        }
    }
}
