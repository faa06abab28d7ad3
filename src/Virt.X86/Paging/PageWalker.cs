using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Virt.Memory;

namespace Virt.X86;

/// <summary>
/// Translates linear addresses to guest physical ones by walking the guest's page tables in guest memory, as
/// the processor would for one access: 32-bit paging (with PSE and PSE-36), PAE, 4-level and 5-level paging.
/// </summary>
/// <remarks>
/// <para>
/// The tables are guest data: every entry is read with a bounds-checked <see cref="IGuestMemory.TryRead"/>, a
/// table outside guest memory ends the walk with <see cref="PageWalkStatus.TableOutsideMemory"/>, and nothing a
/// guest writes in its tables makes a walk throw. A walk allocates nothing.
/// </para>
/// <para>Implemented, as in the Intel SDM vol. 3, 4.6 and 4.7:</para>
/// <list type="bullet">
/// <item>U/S and R/W combined over all levels; user-mode writes always need R/W, supervisor-mode writes only with CR0.WP.</item>
/// <item>XD under EFER.NXE (XD is a reserved bit without it), for user and supervisor fetches.</item>
/// <item>CR4.SMEP: supervisor fetches from user pages fault. CR4.SMAP: supervisor data accesses to user pages fault
/// unless the access carries <see cref="PageAccess.AlignmentCheck"/> (RFLAGS.AC).</item>
/// <item>Reserved bits: address bits at or above MAXPHYADDR, PS in a PML5E or PML4E, bits 13 up to the page size
/// in a large-page entry, XD without NXE, the reserved bits of a PAE PDPTE, and bits 21 down to MAXPHYADDR - 19 of a
/// 4 MiB PDE. A PAE PDPTE is read at walk time (a processor loads the four at CR3 writes and raises #GP there).</item>
/// <item>Canonical addresses in 4-level (48-bit) and 5-level (57-bit) paging; outside long mode linear addresses are
/// 32 bits wide and the upper half of <c>linearAddress</c> is ignored.</item>
/// </list>
/// <para>
/// Not implemented: protection keys (CR4.PKE/PKS), shadow-stack pages, implicit supervisor accesses (which SMAP
/// checks regardless of RFLAGS.AC: pass them without <see cref="PageAccess.AlignmentCheck"/>), PCID and global
/// pages (no TLB is kept), the PAT, and accessed/dirty updates: the walk never writes the tables.
/// </para>
/// </remarks>
public static class PageWalker
{
    private const ulong Present = (ulong)PageFlags.Present;
    private const ulong Writable = (ulong)PageFlags.Writable;
    private const ulong User = (ulong)PageFlags.User;
    private const ulong LargePage = (ulong)PageFlags.PageSize;
    private const ulong NoExecute = (ulong)PageFlags.NoExecute;

    /// <summary>Reserved bits of a PAE PDPTE below the address: 1-2 and 5-8 (bit 63 and the high address bits are added per walk).</summary>
    private const ulong PaePdpteReservedLow = 0x1E6;

    /// <summary>Walks the tables for an <paramref name="access"/> to <paramref name="linearAddress"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="memory"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="access"/> has both <see cref="PageAccess.Write"/> and <see cref="PageAccess.Execute"/>.</exception>
    public static PageWalkResult Walk(IGuestMemory memory, in PagingState paging, ulong linearAddress, PageAccess access)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if ((access & (PageAccess.Write | PageAccess.Execute)) == (PageAccess.Write | PageAccess.Execute))
        {
            throw new ArgumentException("An access is a write or an instruction fetch, not both.", nameof(access));
        }

        switch (paging.Mode)
        {
            case PagingMode.Disabled:
                return new PageWalkResult(PageWalkStatus.Translated, linearAddress & uint.MaxValue, PageTable.PageSize, PagePermissions.All, PageFaultErrorCode.None);
            case PagingMode.Legacy32:
                return Walk32(memory, paging, (uint)linearAddress, access);
            case PagingMode.Pae:
                return WalkPae(memory, paging, linearAddress & uint.MaxValue, access);
            default:
                int levels = paging.Mode == PagingMode.FiveLevel ? 5 : 4;
                if (!LinearAddress.IsCanonical(linearAddress, levels == 5 ? LinearAddress.Width5Level : LinearAddress.Width4Level))
                {
                    return new PageWalkResult(PageWalkStatus.NonCanonical, 0, 0, PagePermissions.None, PageFaultErrorCode.None);
                }

                return WalkTables(memory, paging, paging.Cr3 & PageTable.AddressMask, levels, linearAddress, access);
        }
    }

    /// <summary>The guest physical address of an <paramref name="access"/> to <paramref name="linearAddress"/>, when the access is allowed.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="memory"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="access"/> has both <see cref="PageAccess.Write"/> and <see cref="PageAccess.Execute"/>.</exception>
    public static bool TryTranslate(IGuestMemory memory, in PagingState paging, ulong linearAddress, PageAccess access, out ulong physicalAddress)
    {
        var result = Walk(memory, paging, linearAddress, access);
        physicalAddress = result.PhysicalAddress;
        return result.Succeeded;
    }

    private static PageWalkResult WalkPae(IGuestMemory memory, in PagingState paging, ulong linear, PageAccess access)
    {
        ulong pdpteAddress = (paging.Cr3 & 0xFFFF_FFE0) + (((linear >> 30) & 3) * 8);
        if (!TryRead64(memory, pdpteAddress, out ulong pdpte))
        {
            return Fault(PageWalkStatus.TableOutsideMemory, paging, access);
        }

        if ((pdpte & Present) == 0)
        {
            return Fault(PageWalkStatus.NotPresent, paging, access);
        }

        // A PDPTE has no R/W, U/S or XD bits: bits 63 down to MAXPHYADDR are all reserved.
        ulong reserved = PaePdpteReservedLow | ~((1UL << paging.PhysicalAddressBits) - 1);
        if ((pdpte & reserved) != 0)
        {
            return Fault(PageWalkStatus.ReservedBitSet, paging, access);
        }

        return WalkTables(memory, paging, pdpte & PageTable.AddressMask, 2, linear, access);
    }

    private static PageWalkResult WalkTables(IGuestMemory memory, in PagingState paging, ulong table, int levels, ulong linear, PageAccess access)
    {
        bool nxe = paging.NoExecuteEnabled;
        ulong reservedEverywhere = paging.ReservedAddressBits | (nxe ? 0 : NoExecute);
        ulong rights = Writable | User;
        bool noExecute = false;
        for (int level = levels; ; level--)
        {
            int shift = PageTable.Shift(level);
            if (!TryRead64(memory, table + (((linear >> shift) & 0x1FF) * 8), out ulong entry))
            {
                return Fault(PageWalkStatus.TableOutsideMemory, paging, access);
            }

            if ((entry & Present) == 0)
            {
                return Fault(PageWalkStatus.NotPresent, paging, access);
            }

            bool leaf = level == 1 || (level <= 3 && (entry & LargePage) != 0);
            ulong reserved = reservedEverywhere;
            if (level >= 4)
            {
                reserved |= LargePage;
            }
            else if (leaf && level > 1)
            {
                // Bits 13 up to the page size; bit 12 is the large page's PAT bit.
                reserved |= ((1UL << shift) - 1) & ~0x1FFFUL;
            }

            if ((entry & reserved) != 0)
            {
                return Fault(PageWalkStatus.ReservedBitSet, paging, access);
            }

            rights &= entry;
            noExecute |= nxe && (entry & NoExecute) != 0;
            if (leaf)
            {
                ulong pageSize = 1UL << shift;
                ulong physical = (entry & PageTable.AddressMask & ~(pageSize - 1)) | (linear & (pageSize - 1));
                return Authorize(paging, access, physical, pageSize, Permissions(rights, !noExecute));
            }

            table = entry & PageTable.AddressMask;
        }
    }

    private static PageWalkResult Walk32(IGuestMemory memory, in PagingState paging, uint linear, PageAccess access)
    {
        ulong pdeAddress = (paging.Cr3 & 0xFFFF_F000) + ((ulong)(linear >> 22) * 4);
        if (!TryRead32(memory, pdeAddress, out uint pde))
        {
            return Fault(PageWalkStatus.TableOutsideMemory, paging, access);
        }

        if ((pde & Present) == 0)
        {
            return Fault(PageWalkStatus.NotPresent, paging, access);
        }

        if ((pde & LargePage) != 0 && (paging.Cr4 & Cr4.Pse) != 0)
        {
            // PSE-36: PDE bits 13 and up hold physical-address bits 32 and up, as many as MAXPHYADDR (at most 40) allows;
            // the rest of bits 13-21 are reserved.
            int highBits = Math.Min(paging.PhysicalAddressBits, 40) - 32;
            ulong reserved = 0x3F_FFFFUL & ~((1UL << (13 + highBits)) - 1);
            if ((pde & reserved) != 0)
            {
                return Fault(PageWalkStatus.ReservedBitSet, paging, access);
            }

            ulong high = ((ulong)pde >> 13) & ((1UL << highBits) - 1);
            ulong physical = (pde & 0xFFC0_0000UL) | (high << 32) | (linear & 0x3F_FFFFUL);
            return Authorize(paging, access, physical, PageTable.LargePageSize32, Permissions(pde, executable: true));
        }

        ulong pteAddress = (pde & 0xFFFF_F000UL) + ((ulong)((linear >> 12) & 0x3FF) * 4);
        if (!TryRead32(memory, pteAddress, out uint pte))
        {
            return Fault(PageWalkStatus.TableOutsideMemory, paging, access);
        }

        if ((pte & Present) == 0)
        {
            return Fault(PageWalkStatus.NotPresent, paging, access);
        }

        ulong address = (pte & 0xFFFF_F000UL) | (linear & PageTable.PageOffsetMask);
        return Authorize(paging, access, address, PageTable.PageSize, Permissions(pde & pte, executable: true));
    }

    private static PagePermissions Permissions(ulong rights, bool executable) =>
        ((rights & Writable) != 0 ? PagePermissions.Writable : PagePermissions.None)
        | ((rights & User) != 0 ? PagePermissions.User : PagePermissions.None)
        | (executable ? PagePermissions.Executable : PagePermissions.None);

    /// <summary>The access-rights rules of SDM vol. 3, 4.6.1, for a translation that exists.</summary>
    private static PageWalkResult Authorize(in PagingState paging, PageAccess access, ulong physical, ulong pageSize, PagePermissions permissions)
    {
        bool write = (access & PageAccess.Write) != 0;
        bool fetch = (access & PageAccess.Execute) != 0;
        bool userPage = (permissions & PagePermissions.User) != 0;
        bool writable = (permissions & PagePermissions.Writable) != 0;
        bool executable = (permissions & PagePermissions.Executable) != 0;
        bool allowed;
        if ((access & PageAccess.User) != 0)
        {
            allowed = userPage && (!write || writable) && (!fetch || executable);
        }
        else if (fetch)
        {
            allowed = executable && !(userPage && paging.Smep);
        }
        else
        {
            allowed = !(userPage && paging.Smap && (access & PageAccess.AlignmentCheck) == 0)
                && (!write || writable || !paging.WriteProtect);
        }

        return allowed
            ? new PageWalkResult(PageWalkStatus.Translated, physical, pageSize, permissions, PageFaultErrorCode.None)
            : new PageWalkResult(PageWalkStatus.ProtectionViolation, physical, pageSize, permissions, PageFaultErrorCode.Present | AccessBits(paging, access));
    }

    private static PageWalkResult Fault(PageWalkStatus status, in PagingState paging, PageAccess access)
    {
        var code = AccessBits(paging, access);
        if (status == PageWalkStatus.ReservedBitSet)
        {
            code |= PageFaultErrorCode.Present | PageFaultErrorCode.ReservedBit;
        }

        return new PageWalkResult(status, 0, 0, PagePermissions.None, code);
    }

    /// <summary>The W/R, U/S and I/D bits of the error code, which describe the access whatever went wrong.</summary>
    private static PageFaultErrorCode AccessBits(in PagingState paging, PageAccess access)
    {
        var code = PageFaultErrorCode.None;
        if ((access & PageAccess.Write) != 0)
        {
            code |= PageFaultErrorCode.Write;
        }

        if ((access & PageAccess.User) != 0)
        {
            code |= PageFaultErrorCode.User;
        }

        // I/D is reported only where fetches can be told apart: with SMEP, or with NX in PAE and long-mode paging.
        if ((access & PageAccess.Execute) != 0 && (paging.Smep || paging.NoExecuteEnabled))
        {
            code |= PageFaultErrorCode.InstructionFetch;
        }

        return code;
    }

    private static bool TryRead64(IGuestMemory memory, ulong address, out ulong entry)
    {
        entry = 0;
        bool read = memory.TryRead(new GuestAddress(address), MemoryMarshal.AsBytes(new Span<ulong>(ref entry)));
        entry = BitConverter.IsLittleEndian ? entry : BinaryPrimitives.ReverseEndianness(entry);
        return read;
    }

    private static bool TryRead32(IGuestMemory memory, ulong address, out uint entry)
    {
        entry = 0;
        bool read = memory.TryRead(new GuestAddress(address), MemoryMarshal.AsBytes(new Span<uint>(ref entry)));
        entry = BitConverter.IsLittleEndian ? entry : BinaryPrimitives.ReverseEndianness(entry);
        return read;
    }
}
