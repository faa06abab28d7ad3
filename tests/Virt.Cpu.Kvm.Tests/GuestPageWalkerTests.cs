using Virt.Boot;
using Virt.Memory;
using Xunit;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>The page walk that finds instruction bytes for failure reports; pure guest-memory logic, no KVM.</summary>
public sealed class GuestPageWalkerTests
{
    private const ulong Present = 1, Writable = 2, Large = 0x80;

    [Fact]
    public void Identity_mapped_long_mode_address_translates_to_itself()
    {
        using var memory = GuestMemory.CreateRam(4 << 20);
        var s = ProcessorSetup.Prepare(memory, default, StartMode.Long64);

        Assert.True(GuestPageWalker.TryTranslate(memory, s, 0x12345, out ulong physical));
        Assert.Equal(0x12345UL, physical);
    }

    [Fact]
    public void Four_level_walk_with_4_KiB_pages_follows_the_guest_tables()
    {
        using var memory = GuestMemory.CreateRam(1 << 20);
        // Map linear 0x7F_FFFF_F000 (PML4 0, PDPT 511, PD 511, PT 511) to physical 0x42000.
        const ulong pml4 = 0x1000, pdpt = 0x2000, pd = 0x3000, pt = 0x4000;
        memory.Write(new GuestAddress(pml4), pdpt | Present | Writable);
        memory.Write(new GuestAddress(pdpt + (511 * 8)), pd | Present);
        memory.Write(new GuestAddress(pd + (511 * 8)), pt | Present);
        memory.Write(new GuestAddress(pt + (511 * 8)), 0x42000UL | Present);
        memory.Write(new GuestAddress(0x42FF0), new byte[] { 0x0F, 0x0B, 0x90 });
        var s = LongMode(pml4);

        Assert.True(GuestPageWalker.TryTranslate(memory, s, 0x7F_FFFF_FFF0, out ulong physical));
        Assert.Equal(0x42FF0UL, physical);
        var bytes = GuestPageWalker.ReadInstructionBytes(memory, s, 0x7F_FFFF_FFF0);
        Assert.Equal(15, bytes.Length);
        Assert.Equal(new byte[] { 0x0F, 0x0B, 0x90 }, bytes[..3]);
    }

    [Fact]
    public void Instruction_bytes_stop_at_an_unmapped_page()
    {
        using var memory = GuestMemory.CreateRam(1 << 20);
        const ulong pml4 = 0x1000, pdpt = 0x2000, pd = 0x3000;
        memory.Write(new GuestAddress(pml4), pdpt | Present);
        memory.Write(new GuestAddress(pdpt), pd | Present);
        memory.Write(new GuestAddress(pd), 0UL | Present | Large); // first 2 MiB only
        var s = LongMode(pml4);

        var bytes = GuestPageWalker.ReadInstructionBytes(memory, s, 0x1F_FFFA);
        // 6 bytes left before 2 MiB, and those lie beyond the 1 MiB of RAM: nothing readable.
        Assert.Empty(bytes);
        Assert.Equal(4, GuestPageWalker.ReadInstructionBytes(memory, s, 0xF_FFFC).Length);
    }

    [Fact]
    public void Hostile_tables_pointing_outside_ram_fail_without_throwing()
    {
        using var memory = GuestMemory.CreateRam(1 << 20);
        const ulong pml4 = 0x1000;
        memory.Write(new GuestAddress(pml4), 0x000F_FFFF_FFFF_F000UL | Present);
        var s = LongMode(pml4);

        Assert.False(GuestPageWalker.TryTranslate(memory, s, 0x1000, out _));
        Assert.Empty(GuestPageWalker.ReadInstructionBytes(memory, s, 0x1000));
    }

    [Fact]
    public void Thirty_two_bit_paging_with_a_4_MiB_page_translates()
    {
        using var memory = GuestMemory.CreateRam(1 << 20);
        const ulong pd = 0x1000;
        memory.Write(new GuestAddress(pd + ((0xC000_0000 >> 22) * 4)), (uint)(0x0000_0000 | Present | Large));
        var s = new SpecialRegisters { Cr0 = 1UL << 31 | 1, Cr3 = pd, Cr4 = 1UL << 4 };

        Assert.True(GuestPageWalker.TryTranslate(memory, s, 0xC001_2345, out ulong physical));
        Assert.Equal(0x1_2345UL, physical);
    }

    private static SpecialRegisters LongMode(ulong cr3) => new()
    {
        Cr0 = ProcessorSetup.Cr0Paging | ProcessorSetup.Cr0ProtectionEnable,
        Cr3 = cr3,
        Cr4 = ProcessorSetup.Cr4Pae,
        Efer = ProcessorSetup.EferLongModeActive | ProcessorSetup.EferLongModeEnable,
        Cs = SegmentRegister.Flat(ProcessorSetup.KernelCode64, code: true, longMode: true),
    };
}
