using Virt.Memory;
using Xunit;

namespace Virt.X86.Tests.Paging;

/// <summary>The walker against hand-built tables in guest memory, for every paging mode.</summary>
public sealed class PageWalkerTests : IDisposable
{
    private const ulong Pg = Cr0.Paging | Cr0.ProtectionEnable;
    private const ulong LongEfer = Efer.LongModeEnable | Efer.LongModeActive;
    private const PageFlags P = PageFlags.Present, W = PageFlags.Writable, U = PageFlags.User, Nx = PageFlags.NoExecute;

    private readonly GuestMemory _memory = GuestMemory.CreateRam(8 << 20);
    private readonly TableBuilder _tables;

    public PageWalkerTests() => _tables = new TableBuilder(_memory);

    public void Dispose() => _memory.Dispose();

    private static PagingState FourLevel(ulong cr3, ulong cr0 = Pg | Cr0.WriteProtect, ulong cr4 = 0, ulong efer = LongEfer | Efer.NoExecuteEnable, int bits = 52) =>
        new(cr0, cr3, Cr4.Pae | cr4, efer, bits);

    private PageWalkResult Walk(in PagingState paging, ulong linear, PageAccess access = PageAccess.Read) =>
        PageWalker.Walk(_memory, paging, linear, access);

    // ---- paging disabled ------------------------------------------------------------------------

    [Fact]
    public void Without_paging_linear_is_physical_and_32_bits_wide()
    {
        var r = Walk(new PagingState(Cr0.ProtectionEnable, 0, 0, 0), 0x1_0012_3456, PageAccess.Write | PageAccess.User);
        Assert.True(r.Succeeded);
        Assert.Equal(0x12_3456UL, r.PhysicalAddress);
        Assert.Equal(PagePermissions.All, r.Permissions);
        Assert.Equal(PagingMode.Disabled, new PagingState(0, 0, 0, 0).Mode);
    }

    // ---- 32-bit paging -------------------------------------------------------------------------

    [Fact]
    public void Thirty_two_bit_paging_walks_directory_and_table()
    {
        ulong pd = _tables.NewTable(), pt = _tables.NewTable();
        const uint linear = 0xC012_3456;
        _tables.Write32(pd, linear >> 22, (uint)pt | (uint)(P | W | U));
        _tables.Write32(pt, (linear >> 12) & 0x3FF, 0x0007_7000 | (uint)(P | U));
        var paging = new PagingState(Pg | Cr0.WriteProtect, pd, 0, 0);

        var r = Walk(paging, linear, PageAccess.User);
        Assert.Equal(PagingMode.Legacy32, paging.Mode);
        Assert.True(r.Succeeded);
        Assert.Equal(0x0007_7456UL, r.PhysicalAddress);
        Assert.Equal(PageTable.PageSize, r.PageSize);
        Assert.Equal(PagePermissions.User | PagePermissions.Executable, r.Permissions);

        var write = Walk(paging, linear, PageAccess.User | PageAccess.Write);
        Assert.Equal(PageWalkStatus.ProtectionViolation, write.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.Write | PageFaultErrorCode.User, write.ErrorCode);
    }

    [Fact]
    public void Thirty_two_bit_4_MiB_pages_need_pse_and_carry_pse36_high_bits()
    {
        ulong pd = _tables.NewTable();
        // PDE for 0xC000_0000: physical 0x3_0040_0000 (bits 32-33 in PDE bits 13-14), PS.
        _tables.Write32(pd, 0xC000_0000 >> 22, 0x0040_0000 | (3u << 13) | (uint)(P | W | PageFlags.PageSize));
        var pse = new PagingState(Pg, pd, Cr4.Pse, 0);

        var r = Walk(pse, 0xC001_2345);
        Assert.True(r.Succeeded);
        Assert.Equal(0x3_0041_2345UL, r.PhysicalAddress);
        Assert.Equal(PageTable.LargePageSize32, r.PageSize);

        // Without CR4.PSE the PS bit is ignored: the entry points to a page table (at 0x40_6000) whose entry is not present.
        var noPse = Walk(new PagingState(Pg, pd, 0, 0), 0xC001_2345);
        Assert.False(noPse.Succeeded);
    }

    [Fact]
    public void Thirty_two_bit_4_MiB_page_with_reserved_bit_21_faults_with_rsvd()
    {
        ulong pd = _tables.NewTable();
        _tables.Write32(pd, 1, 0x0040_0000 | (1u << 21) | (uint)(P | PageFlags.PageSize));
        var r = Walk(new PagingState(Pg, pd, Cr4.Pse, 0), 0x0040_0000, PageAccess.User);
        Assert.Equal(PageWalkStatus.ReservedBitSet, r.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.ReservedBit | PageFaultErrorCode.User, r.ErrorCode);

        // With MAXPHYADDR 36 only four high bits exist: bit 17 is reserved too.
        _tables.Write32(pd, 2, 0x0080_0000 | (1u << 17) | (uint)(P | PageFlags.PageSize));
        Assert.True(Walk(new PagingState(Pg, pd, Cr4.Pse, 0), 0x0080_0000).Succeeded);
        Assert.Equal(PageWalkStatus.ReservedBitSet, Walk(new PagingState(Pg, pd, Cr4.Pse, 0, physicalAddressBits: 36), 0x0080_0000).Status);
    }

    [Fact]
    public void Thirty_two_bit_fetch_faults_report_the_fetch_bit_only_with_smep()
    {
        ulong pd = _tables.NewTable();
        var pdPaging = new PagingState(Pg, pd, 0, 0);
        var notPresent = Walk(pdPaging, 0x1000, PageAccess.Execute | PageAccess.User);
        Assert.Equal(PageWalkStatus.NotPresent, notPresent.Status);
        Assert.Equal(PageFaultErrorCode.User, notPresent.ErrorCode);

        var smep = Walk(new PagingState(Pg, pd, Cr4.Smep, 0), 0x1000, PageAccess.Execute);
        Assert.Equal(PageFaultErrorCode.InstructionFetch, smep.ErrorCode);
    }

    // ---- PAE paging ----------------------------------------------------------------------------

    [Fact]
    public void Pae_walks_pdpte_directory_and_table()
    {
        const ulong linear = 0x8040_1234;
        var (pdpt, directory) = _tables.PaeRoot(linear);
        _tables.Map(directory, 2, linear, 0x55_0000, P | W);
        var paging = new PagingState(Pg, pdpt, Cr4.Pae, Efer.NoExecuteEnable);

        var r = Walk(paging, linear, PageAccess.Write);
        Assert.Equal(PagingMode.Pae, paging.Mode);
        Assert.True(r.Succeeded);
        Assert.Equal(0x55_0234UL, r.PhysicalAddress);
        Assert.Equal(PagePermissions.Writable | PagePermissions.Executable, r.Permissions);
    }

    [Fact]
    public void Pae_2_MiB_page_and_nx()
    {
        const ulong linear = 0x4020_0000;
        var (pdpt, directory) = _tables.PaeRoot(linear);
        _tables.Map(directory, 2, linear, 0x60_0000, P | W | U | Nx, leafLevel: 2);
        var paging = new PagingState(Pg, pdpt, Cr4.Pae, Efer.NoExecuteEnable);

        var read = Walk(paging, linear + 0x1_2345, PageAccess.User);
        Assert.True(read.Succeeded);
        Assert.Equal(0x61_2345UL, read.PhysicalAddress);
        Assert.Equal(PageTable.LargePageSize, read.PageSize);

        var fetch = Walk(paging, linear, PageAccess.Execute | PageAccess.User);
        Assert.Equal(PageWalkStatus.ProtectionViolation, fetch.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.User | PageFaultErrorCode.InstructionFetch, fetch.ErrorCode);

        // Without EFER.NXE, XD is a reserved bit.
        var reserved = Walk(new PagingState(Pg, pdpt, Cr4.Pae, 0), linear, PageAccess.User);
        Assert.Equal(PageWalkStatus.ReservedBitSet, reserved.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.ReservedBit | PageFaultErrorCode.User, reserved.ErrorCode);
    }

    [Fact]
    public void Pae_pdpte_not_present_or_with_reserved_bits_faults()
    {
        const ulong linear = 0xC000_0000;
        var (pdpt, _) = _tables.PaeRoot(0); // only the first quarter has a directory
        Assert.Equal(PageWalkStatus.NotPresent, Walk(new PagingState(Pg, pdpt, Cr4.Pae, 0), linear).Status);

        var (bad, _) = _tables.PaeRoot(linear, pdpteFlags: 1 | 2); // R/W is reserved in a PDPTE
        Assert.Equal(PageWalkStatus.ReservedBitSet, Walk(new PagingState(Pg, bad, Cr4.Pae, 0), linear).Status);
    }

    [Fact]
    public void Pae_ignores_the_upper_half_of_the_linear_address()
    {
        const ulong linear = 0x0040_1000;
        var (pdpt, directory) = _tables.PaeRoot(linear);
        _tables.Map(directory, 2, linear, 0x70_0000, P);
        var r = Walk(new PagingState(Pg, pdpt, Cr4.Pae, 0), 0xFFFF_FFFF_0000_0000 | linear);
        Assert.Equal(0x70_0000UL, r.PhysicalAddress);
    }

    // ---- 4-level paging ------------------------------------------------------------------------

    [Theory]
    [InlineData(1, 0x7F_1234_5678UL, 0x12_3000UL, 0x12_3678UL, 4096UL)]
    [InlineData(2, 0x7F_1234_5678UL, 0x20_0000UL, 0x34_5678UL, 2UL << 20)]
    [InlineData(3, 0x7F_1234_5678UL, 0x4000_0000UL, 0x5234_5678UL, 1UL << 30)]
    public void Four_level_paging_maps_4_KiB_2_MiB_and_1_GiB_pages(int leafLevel, ulong linear, ulong page, ulong expected, ulong size)
    {
        ulong pml4 = _tables.NewTable();
        _tables.Map(pml4, 4, linear, page, P | W | U, leafLevel);
        var r = Walk(FourLevel(pml4), linear, PageAccess.User | PageAccess.Write);

        Assert.True(r.Succeeded, r.ToString());
        Assert.Equal(expected, r.PhysicalAddress);
        Assert.Equal(size, r.PageSize);
        Assert.Equal(size - (expected & (size - 1)), r.BytesToPageEnd);
        Assert.Equal(PagePermissions.All, r.Permissions);
    }

    [Fact]
    public void Upper_half_addresses_walk_through_the_top_pml4_entries()
    {
        ulong pml4 = _tables.NewTable();
        const ulong linear = 0xFFFF_FFFF_8000_1000;
        _tables.Map(pml4, 4, linear, 0x1000, P | W);
        Assert.Equal(0x1000UL, Walk(FourLevel(pml4), linear).PhysicalAddress);
    }

    [Fact]
    public void Non_canonical_addresses_are_not_walked_and_are_not_page_faults()
    {
        ulong pml4 = _tables.NewTable();
        _tables.Map(pml4, 4, 0, 0x1000, P | W | U);
        var r = Walk(FourLevel(pml4), 0x0000_8000_0000_0000, PageAccess.User);

        Assert.Equal(PageWalkStatus.NonCanonical, r.Status);
        Assert.Equal(PageFaultErrorCode.None, r.ErrorCode);
        Assert.False(r.IsMapped);
        Assert.Equal(PageWalkStatus.NonCanonical, Walk(FourLevel(pml4), 0xFFFF_7FFF_FFFF_F000).Status);
    }

    [Fact]
    public void User_access_to_a_supervisor_page_faults_even_when_only_one_level_denies_it()
    {
        ulong pml4 = _tables.NewTable();
        const ulong linear = 0x40_0000;
        _tables.Map(pml4, 4, linear, 0x30_0000, P | W | U, upper: P | W); // the upper levels lack U/S

        var user = Walk(FourLevel(pml4), linear, PageAccess.User);
        Assert.Equal(PageWalkStatus.ProtectionViolation, user.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.User, user.ErrorCode);
        Assert.True(user.IsMapped);
        Assert.Equal(0x30_0000UL, user.PhysicalAddress);
        Assert.Equal(PagePermissions.Writable | PagePermissions.Executable, user.Permissions);

        Assert.True(Walk(FourLevel(pml4), linear).Succeeded);
    }

    [Fact]
    public void Supervisor_writes_to_read_only_pages_fault_only_with_cr0_wp()
    {
        ulong pml4 = _tables.NewTable();
        const ulong linear = 0x40_0000;
        _tables.Map(pml4, 4, linear, 0x30_0000, P);

        var wp = Walk(FourLevel(pml4), linear, PageAccess.Write);
        Assert.Equal(PageWalkStatus.ProtectionViolation, wp.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.Write, wp.ErrorCode);
        Assert.True(Walk(FourLevel(pml4, cr0: Pg), linear, PageAccess.Write).Succeeded);

        // User writes to read-only pages fault whatever CR0.WP says.
        _tables.Map(pml4, 4, 0x50_0000, 0x31_0000, P | U);
        Assert.False(Walk(FourLevel(pml4, cr0: Pg), 0x50_0000, PageAccess.Write | PageAccess.User).Succeeded);
    }

    [Fact]
    public void Nx_at_any_level_stops_fetches_but_not_reads()
    {
        ulong pml4 = _tables.NewTable();
        const ulong linear = 0x40_0000;
        _tables.Map(pml4, 4, linear, 0x30_0000, P | W | U, upper: P | W | U | Nx);

        var fetch = Walk(FourLevel(pml4), linear, PageAccess.Execute | PageAccess.User);
        Assert.Equal(PageWalkStatus.ProtectionViolation, fetch.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.User | PageFaultErrorCode.InstructionFetch, fetch.ErrorCode);
        Assert.Equal(PagePermissions.Writable | PagePermissions.User, fetch.Permissions);
        Assert.False(Walk(FourLevel(pml4), linear, PageAccess.Execute).Succeeded);
        Assert.True(Walk(FourLevel(pml4), linear, PageAccess.User).Succeeded);
    }

    [Fact]
    public void Smep_stops_supervisor_fetches_from_user_pages()
    {
        ulong pml4 = _tables.NewTable();
        _tables.Map(pml4, 4, 0x40_0000, 0x30_0000, P | U);

        Assert.True(Walk(FourLevel(pml4), 0x40_0000, PageAccess.Execute).Succeeded);
        var smep = Walk(FourLevel(pml4, cr4: Cr4.Smep), 0x40_0000, PageAccess.Execute);
        Assert.Equal(PageWalkStatus.ProtectionViolation, smep.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.InstructionFetch, smep.ErrorCode);
    }

    [Fact]
    public void Smap_stops_supervisor_data_accesses_to_user_pages_unless_ac_is_set()
    {
        ulong pml4 = _tables.NewTable();
        _tables.Map(pml4, 4, 0x40_0000, 0x30_0000, P | W | U);
        var smap = FourLevel(pml4, cr4: Cr4.Smap);

        Assert.Equal(PageWalkStatus.ProtectionViolation, Walk(smap, 0x40_0000).Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.Write, Walk(smap, 0x40_0000, PageAccess.Write).ErrorCode);
        Assert.True(Walk(smap, 0x40_0000, PageAccess.AlignmentCheck).Succeeded);
        Assert.True(Walk(smap, 0x40_0000, PageAccess.User).Succeeded);
        Assert.True(Walk(smap, 0x40_0000, PageAccess.Execute).Succeeded);
    }

    [Fact]
    public void Not_present_faults_describe_the_access()
    {
        ulong pml4 = _tables.NewTable();
        var r = Walk(FourLevel(pml4), 0x1234_5000, PageAccess.Write | PageAccess.User);
        Assert.Equal(PageWalkStatus.NotPresent, r.Status);
        Assert.Equal(PageFaultErrorCode.Write | PageFaultErrorCode.User, r.ErrorCode);
        Assert.Equal(0UL, r.PhysicalAddress);
        Assert.Equal(0UL, r.BytesToPageEnd);
    }

    [Fact]
    public void Address_bits_above_maxphyaddr_are_reserved()
    {
        ulong pml4 = _tables.NewTable();
        _tables.Map(pml4, 4, 0x40_0000, 1UL << 40, P);
        Assert.True(Walk(FourLevel(pml4), 0x40_0000).Succeeded);
        var r = Walk(FourLevel(pml4, bits: 39), 0x40_0000);
        Assert.Equal(PageWalkStatus.ReservedBitSet, r.Status);
        Assert.Equal(PageFaultErrorCode.Present | PageFaultErrorCode.ReservedBit, r.ErrorCode);
    }

    [Fact]
    public void Ps_in_a_pml4_entry_and_misaligned_large_pages_are_reserved()
    {
        ulong pml4 = _tables.NewTable();
        _memory.Write(new GuestAddress(pml4), 0x4000_0000UL | (ulong)(P | PageFlags.PageSize));
        Assert.Equal(PageWalkStatus.ReservedBitSet, Walk(FourLevel(pml4), 0x1000).Status);

        ulong other = _tables.NewTable();
        _tables.Map(other, 4, 0x20_0000, 0x20_0000 | 0x2000, P, leafLevel: 2); // bit 13 of a 2 MiB page's address
        Assert.Equal(PageWalkStatus.ReservedBitSet, Walk(FourLevel(other), 0x20_0000).Status);

        // Bit 12 of a large-page entry is the PAT bit, not part of the address.
        _tables.Map(other, 4, 0x40_0000, 0x40_0000 | 0x1000, P, leafLevel: 2);
        Assert.Equal(0x40_0000UL, Walk(FourLevel(other), 0x40_0000).PhysicalAddress);
    }

    [Fact]
    public void Tables_outside_guest_memory_end_the_walk_as_a_not_present_fault()
    {
        ulong pml4 = _tables.NewTable();
        _memory.Write(new GuestAddress(pml4), 0x000F_FFFF_FFFF_F000UL | (ulong)P);
        var r = Walk(FourLevel(pml4), 0x1000, PageAccess.User);
        Assert.Equal(PageWalkStatus.TableOutsideMemory, r.Status);
        Assert.Equal(PageFaultErrorCode.User, r.ErrorCode);
        Assert.Equal(PageWalkStatus.TableOutsideMemory, Walk(FourLevel(1UL << 40), 0x1000).Status);
    }

    [Fact]
    public void Fetch_bit_needs_nxe_or_smep_in_long_mode()
    {
        ulong pml4 = _tables.NewTable();
        var noNx = Walk(FourLevel(pml4, efer: LongEfer), 0x1000, PageAccess.Execute);
        Assert.Equal(PageFaultErrorCode.None, noNx.ErrorCode);
        Assert.Equal(PageFaultErrorCode.InstructionFetch, Walk(FourLevel(pml4), 0x1000, PageAccess.Execute).ErrorCode);
    }

    // ---- 5-level paging ------------------------------------------------------------------------

    [Fact]
    public void Five_level_paging_walks_the_pml5_and_accepts_57_bit_addresses()
    {
        ulong pml5 = _tables.NewTable();
        const ulong linear = 0x00AB_CDEF_1234_5000; // not canonical for 48 bits
        _tables.Map(pml5, 5, linear, 0x66_0000, P | U);
        var paging = FourLevel(pml5, cr4: Cr4.La57);

        var r = Walk(paging, linear + 0x10, PageAccess.User);
        Assert.Equal(PagingMode.FiveLevel, paging.Mode);
        Assert.True(r.Succeeded, r.ToString());
        Assert.Equal(0x66_0010UL, r.PhysicalAddress);
        Assert.Equal(PageWalkStatus.NonCanonical, Walk(paging, 0x0100_0000_0000_0000).Status);
        Assert.Equal(PageWalkStatus.NonCanonical, Walk(FourLevel(pml5), linear).Status);
    }

    [Fact]
    public void Ps_in_a_pml5_entry_is_reserved()
    {
        ulong pml5 = _tables.NewTable();
        _memory.Write(new GuestAddress(pml5), 0x1_0000UL | (ulong)(P | PageFlags.PageSize));
        Assert.Equal(PageWalkStatus.ReservedBitSet, Walk(FourLevel(pml5, cr4: Cr4.La57), 0x1000).Status);
    }

    // ---- the API --------------------------------------------------------------------------------

    [Fact]
    public void Try_translate_answers_whether_the_access_is_allowed()
    {
        ulong pml4 = _tables.NewTable();
        _tables.Map(pml4, 4, 0x40_0000, 0x30_0000, P | U);
        Assert.True(PageWalker.TryTranslate(_memory, FourLevel(pml4), 0x40_0123, PageAccess.User, out ulong physical));
        Assert.Equal(0x30_0123UL, physical);
        Assert.False(PageWalker.TryTranslate(_memory, FourLevel(pml4), 0x40_0123, PageAccess.User | PageAccess.Write, out _));
    }

    [Fact]
    public void Write_and_execute_together_is_a_host_mistake()
    {
        Assert.Throws<ArgumentException>(() => Walk(FourLevel(0x1000), 0, PageAccess.Write | PageAccess.Execute));
        Assert.Throws<ArgumentNullException>(() => PageWalker.Walk(null!, FourLevel(0x1000), 0, PageAccess.Read));
        Assert.Throws<ArgumentOutOfRangeException>(() => new PagingState(0, 0, 0, 0, physicalAddressBits: 53));
    }

    [Fact]
    public void Paging_state_comes_from_special_registers()
    {
        var s = new Virt.Cpu.SpecialRegisters { Cr0 = Pg, Cr3 = 0x9000, Cr4 = Cr4.Pae, Efer = LongEfer };
        var paging = PagingState.FromRegisters(s);
        Assert.Equal(PagingMode.FourLevel, paging.Mode);
        Assert.Equal(0x9000UL, paging.Cr3);
    }

    [Fact]
    public void A_walk_allocates_nothing()
    {
        ulong pml4 = _tables.NewTable();
        _tables.Map(pml4, 4, 0x40_0000, 0x30_0000, P | W | U);
        var paging = FourLevel(pml4);
        Walk(paging, 0x40_0000, PageAccess.User);

        // The runtime itself may allocate on this thread once while the loop is being re-compiled (tiering, on-stack
        // replacement), so the walks are measured in rounds: a walker that allocates does so in every round.
        var allocated = new List<long>();
        ulong sum = 0;
        for (int round = 0; round < 5 && (allocated.Count == 0 || allocated[^1] != 0); round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 10_000; i++)
            {
                sum += Walk(paging, 0x40_0000 + (ulong)i, PageAccess.User).PhysicalAddress;
                sum += Walk(paging, 0x80_0000, PageAccess.User).PhysicalAddress;
            }

            allocated.Add(GC.GetAllocatedBytesForCurrentThread() - before);
        }

        Assert.True(allocated[^1] == 0, $"bytes allocated per round of 20,000 walks: {string.Join(", ", allocated)}");
        Assert.NotEqual(0UL, sum);
    }
}
