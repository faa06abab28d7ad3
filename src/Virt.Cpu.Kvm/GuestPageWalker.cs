using Virt.Memory;

namespace Virt.Cpu.Kvm;

/// <summary>
/// Translates guest linear addresses to guest physical ones by walking the guest's own page tables in
/// guest memory (32-bit, PAE, 4-level and 5-level paging). Used to read the instruction bytes at RIP
/// when a vCPU fails; the tables are guest data, so every entry is read with a bounds-checked
/// <see cref="IGuestMemory.TryRead"/> and any fault just ends the walk.
/// </summary>
internal static class GuestPageWalker
{
    /// <summary>The longest x86 instruction.</summary>
    internal const int MaxInstructionLength = 15;

    private const ulong Cr0Paging = 1UL << 31;
    private const ulong Cr4Pse = 1UL << 4;
    private const ulong Cr4Pae = 1UL << 5;
    private const ulong Cr4La57 = 1UL << 12;
    private const ulong EferLongModeActive = 1UL << 10;
    private const ulong EntryPresent = 1;
    private const ulong EntryPageSize = 1UL << 7;
    /// <summary>Physical-address bits 12-51 of a 64-bit paging entry.</summary>
    private const ulong AddressMask = 0x000F_FFFF_FFFF_F000;
    private const ulong PageOffsetMask = 0xFFF;

    /// <summary>Translates <paramref name="linear"/> with the paging mode the control registers select.</summary>
    internal static bool TryTranslate(IGuestMemory memory, in SpecialRegisters sregs, ulong linear, out ulong physical)
    {
        physical = 0;
        if ((sregs.Cr0 & Cr0Paging) == 0)
        {
            physical = linear;
            return true;
        }

        if ((sregs.Cr4 & Cr4Pae) == 0)
        {
            return TryWalk32(memory, sregs, (uint)linear, out physical);
        }

        if ((sregs.Efer & EferLongModeActive) != 0)
        {
            int levels = (sregs.Cr4 & Cr4La57) != 0 ? 5 : 4;
            return TryWalk64(memory, sregs.Cr3 & AddressMask, levels, linear, out physical);
        }

        // PAE: a four-entry page-directory-pointer table, then two 9-bit levels.
        ulong pdptBase = sregs.Cr3 & 0xFFFF_FFE0;
        if (!TryReadEntry(memory, pdptBase + (((linear >> 30) & 3) * 8), out ulong pdpte) || (pdpte & EntryPresent) == 0)
        {
            return false;
        }

        return TryWalk64(memory, pdpte & AddressMask, 2, linear & 0xFFFF_FFFF, out physical);
    }

    /// <summary>
    /// Reads up to <see cref="MaxInstructionLength"/> bytes at <paramref name="rip"/> in the code segment,
    /// stopping at the first byte that does not translate to guest RAM.
    /// </summary>
    internal static byte[] ReadInstructionBytes(IGuestMemory memory, in SpecialRegisters sregs, ulong rip)
    {
        bool longMode = (sregs.Efer & EferLongModeActive) != 0 && sregs.Cs.Long;
        ulong linear = longMode ? rip : (sregs.Cs.Base + rip) & 0xFFFF_FFFF;
        Span<byte> bytes = stackalloc byte[MaxInstructionLength];
        int read = 0;
        while (read < MaxInstructionLength)
        {
            ulong at = linear + (ulong)read;
            if (!TryTranslate(memory, sregs, at, out ulong physical))
            {
                break;
            }

            int chunk = (int)Math.Min((ulong)(MaxInstructionLength - read), 0x1000 - (at & PageOffsetMask));
            if (!memory.TryRead(new GuestAddress(physical), bytes.Slice(read, chunk)))
            {
                // Near the end of RAM: fall back to single bytes so that what exists is still reported.
                int ok = 0;
                while (ok < chunk && memory.TryRead(new GuestAddress(physical + (ulong)ok), bytes.Slice(read + ok, 1)))
                {
                    ok++;
                }

                read += ok;
                break;
            }

            read += chunk;
        }

        return bytes[..read].ToArray();
    }

    private static bool TryWalk32(IGuestMemory memory, in SpecialRegisters sregs, uint linear, out ulong physical)
    {
        physical = 0;
        if (!TryReadEntry32(memory, (sregs.Cr3 & 0xFFFF_F000) + (((ulong)linear >> 22) * 4), out uint pde) || (pde & EntryPresent) == 0)
        {
            return false;
        }

        if ((pde & EntryPageSize) != 0 && (sregs.Cr4 & Cr4Pse) != 0)
        {
            // 4 MiB page; PSE-36 puts physical-address bits 32-39 in PDE bits 13-20.
            physical = (pde & 0xFFC0_0000UL) | (((ulong)(pde >> 13) & 0xFF) << 32) | (linear & 0x3F_FFFFUL);
            return true;
        }

        if (!TryReadEntry32(memory, (pde & 0xFFFF_F000UL) + (((ulong)linear >> 12 & 0x3FF) * 4), out uint pte) || (pte & EntryPresent) == 0)
        {
            return false;
        }

        physical = (pte & 0xFFFF_F000UL) | (linear & PageOffsetMask);
        return true;
    }

    private static bool TryWalk64(IGuestMemory memory, ulong table, int levels, ulong linear, out ulong physical)
    {
        physical = 0;
        for (int level = levels; level >= 1; level--)
        {
            int shift = 12 + (9 * (level - 1));
            if (!TryReadEntry(memory, table + (((linear >> shift) & 0x1FF) * 8), out ulong entry) || (entry & EntryPresent) == 0)
            {
                return false;
            }

            if (level is 2 or 3 && (entry & EntryPageSize) != 0)
            {
                ulong offsetMask = (1UL << shift) - 1;
                physical = (entry & AddressMask & ~offsetMask) | (linear & offsetMask);
                return true;
            }

            table = entry & AddressMask;
        }

        physical = table | (linear & PageOffsetMask);
        return true;
    }

    private static bool TryReadEntry(IGuestMemory memory, ulong address, out ulong entry)
    {
        Span<byte> b = stackalloc byte[8];
        entry = 0;
        if (!memory.TryRead(new GuestAddress(address), b))
        {
            return false;
        }

        entry = BitConverter.ToUInt64(b);
        return true;
    }

    private static bool TryReadEntry32(IGuestMemory memory, ulong address, out uint entry)
    {
        Span<byte> b = stackalloc byte[4];
        entry = 0;
        if (!memory.TryRead(new GuestAddress(address), b))
        {
            return false;
        }

        entry = BitConverter.ToUInt32(b);
        return true;
    }
}
