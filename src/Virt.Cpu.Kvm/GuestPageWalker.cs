using Virt.Memory;
using Virt.X86;

namespace Virt.Cpu.Kvm;

/// <summary>
/// Reads the instruction bytes at RIP when a vCPU fails, translating through the guest's own page tables with
/// <see cref="PageWalker"/>. The tables are guest data: a walk never throws, and any fault just ends the bytes.
/// </summary>
internal static class GuestPageWalker
{
    /// <summary>The longest x86 instruction.</summary>
    internal const int MaxInstructionLength = 15;

    /// <summary>
    /// Translates <paramref name="linear"/> with the paging mode the control registers select. Access rights are
    /// not checked: a failure report shows the bytes whatever the page allows.
    /// </summary>
    internal static bool TryTranslate(IGuestMemory memory, in SpecialRegisters sregs, ulong linear, out ulong physical)
    {
        var walk = PageWalker.Walk(memory, PagingState.FromRegisters(sregs), linear, PageAccess.Read);
        physical = walk.PhysicalAddress;
        return walk.IsMapped;
    }

    /// <summary>
    /// Reads up to <see cref="MaxInstructionLength"/> bytes at <paramref name="rip"/> in the code segment,
    /// stopping at the first byte that does not translate to guest RAM.
    /// </summary>
    internal static byte[] ReadInstructionBytes(IGuestMemory memory, in SpecialRegisters sregs, ulong rip)
    {
        bool longMode = (sregs.Efer & Efer.LongModeActive) != 0 && sregs.Cs.Long;
        ulong linear = longMode ? rip : (sregs.Cs.Base + rip) & uint.MaxValue;
        Span<byte> bytes = stackalloc byte[MaxInstructionLength];
        int read = 0;
        while (read < MaxInstructionLength)
        {
            ulong at = linear + (ulong)read;
            if (!TryTranslate(memory, sregs, at, out ulong physical))
            {
                break;
            }

            int chunk = (int)Math.Min((ulong)(MaxInstructionLength - read), PageTable.PageSize - (at & PageTable.PageOffsetMask));
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
}
