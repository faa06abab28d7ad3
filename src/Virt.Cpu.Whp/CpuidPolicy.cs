using System.Runtime.Intrinsics.X86;

namespace Virt.Cpu.Whp;

/// <summary>Builds and queries the CPUID table a WHP partition gives its guests.</summary>
internal static class CpuidPolicy
{
    /// <summary>Leaf 1 ECX bit 31: a hypervisor is present.</summary>
    private const int HypervisorPresentBit = 31;

    /// <summary>Leaves whose sub-leaf (ECX) selects different data.</summary>
    private static readonly HashSet<uint> IndexedLeaves = [0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x1F, 0x20, 0x24, 0x8000_001D, 0x8000_0020];

    /// <summary>Most sub-leaves read from one indexed leaf.</summary>
    private const uint MaxSubleaves = 64;

    /// <summary>Highest basic leaf taken from the host; higher ones describe host-only features.</summary>
    private const uint MaxBasicLeaf = 0x24;

    /// <summary>Highest extended leaf taken from the host.</summary>
    private const uint MaxExtendedLeaf = 0x8000_0021;

    /// <summary>
    /// The host's CPUID leaves, as the basis of a partition's table (empty where the process cannot run
    /// CPUID, e.g. on ARM64). The hypervisor later fills per-processor fields itself.
    /// </summary>
    public static List<CpuidEntry> ReadHost()
    {
        var entries = new List<CpuidEntry>();
        if (!X86Base.IsSupported)
        {
            return entries;
        }

        uint maxBasic = Math.Min((uint)X86Base.CpuId(0, 0).Eax, MaxBasicLeaf);
        AddRange(entries, 0, maxBasic);
        uint maxExtended = Math.Min((uint)X86Base.CpuId(unchecked((int)0x8000_0000), 0).Eax, MaxExtendedLeaf);
        if (maxExtended >= 0x8000_0000)
        {
            AddRange(entries, 0x8000_0000, maxExtended);
        }

        return entries;
    }

    private static void AddRange(List<CpuidEntry> entries, uint first, uint last)
    {
        for (uint f = first; f <= last; f++)
        {
            if (!IndexedLeaves.Contains(f))
            {
                var (a, b, c, d) = X86Base.CpuId(unchecked((int)f), 0);
                entries.Add(new CpuidEntry(f, 0, 0, (uint)a, (uint)b, (uint)c, (uint)d));
                continue;
            }

            for (uint i = 0; i < MaxSubleaves; i++)
            {
                var (a, b, c, d) = X86Base.CpuId(unchecked((int)f), unchecked((int)i));
                bool empty = a == 0 && b == 0 && c == 0 && d == 0;
                if (empty && i > 0 && f != 0xD)
                {
                    break;
                }

                entries.Add(new CpuidEntry(f, i, CpuidEntry.SignificantIndex, (uint)a, (uint)b, (uint)c, (uint)d));
            }
        }
    }

    /// <summary>
    /// Applies the partition policy to <paramref name="leaves"/>: sets the hypervisor-present bit, removes VMX
    /// (no nested virtualization is configured) and every feature in <paramref name="masked"/>.
    /// </summary>
    public static List<CpuidEntry> Apply(IEnumerable<CpuidEntry> leaves, IReadOnlyList<CpuidFeature> masked)
    {
        var result = new List<CpuidEntry>();
        foreach (var leaf in leaves)
        {
            var e = leaf;
            if (e.Function == 1)
            {
                e = e with { Ecx = e.Ecx | (1u << HypervisorPresentBit) };
                e = e.Without(CpuidFeature.Vmx);
            }

            foreach (var f in masked)
            {
                e = e.Without(f);
            }

            result.Add(e);
        }

        return result;
    }

    /// <summary>Finds the entry for <paramref name="function"/>/<paramref name="index"/>; the index only matters for entries flagged <see cref="CpuidEntry.SignificantIndex"/>.</summary>
    public static bool TryFind(IReadOnlyList<CpuidEntry> table, uint function, uint index, out CpuidEntry entry)
    {
        foreach (var e in table)
        {
            if (e.Function == function && ((e.Flags & CpuidEntry.SignificantIndex) == 0 || e.Index == index))
            {
                entry = e;
                return true;
            }
        }

        entry = default;
        return false;
    }

    /// <summary>A CPUID output register that lists features, one bit each.</summary>
    internal readonly record struct FeatureWord(uint Function, uint Index, CpuidRegister Register);

    /// <summary>Bits of a CPUID output that describe the running processor rather than its features.</summary>
    internal readonly record struct DynamicField(uint Function, uint Index, bool AnyIndex, CpuidRegister Register, uint Mask);

    /// <summary>Feature words: a guest sees a bit only where the hypervisor's own answer has it too.</summary>
    internal static readonly FeatureWord[] FeatureWords =
    [
        new(0x1, 0, CpuidRegister.Ecx),
        new(0x1, 0, CpuidRegister.Edx),
        new(0x7, 0, CpuidRegister.Ebx),
        new(0x7, 0, CpuidRegister.Ecx),
        new(0x7, 0, CpuidRegister.Edx),
        new(0x7, 1, CpuidRegister.Eax),
        new(0xD, 1, CpuidRegister.Eax),
        new(0x8000_0001, 0, CpuidRegister.Ecx),
        new(0x8000_0001, 0, CpuidRegister.Edx),
    ];

    /// <summary>Fields always taken from the hypervisor's answer for the asking processor.</summary>
    internal static readonly DynamicField[] DynamicFields =
    [
        new(0x1, 0, false, CpuidRegister.Ebx, 0xFF00_0000), // initial APIC ID of this processor
        new(0x1, 0, false, CpuidRegister.Ecx, 1u << 27), // OSXSAVE mirrors the guest's CR4.OSXSAVE
        new(0x7, 0, false, CpuidRegister.Ecx, 1u << 4), // OSPKE mirrors the guest's CR4.PKE
        new(0xB, 0, true, CpuidRegister.Edx, 0xFFFF_FFFF), // x2APIC ID of this processor
        new(0x1F, 0, true, CpuidRegister.Edx, 0xFFFF_FFFF), // x2APIC ID of this processor
        new(0xD, 0, false, CpuidRegister.Ebx, 0xFFFF_FFFF), // XSAVE area size for the guest's current XCR0
        new(0xD, 1, false, CpuidRegister.Ebx, 0xFFFF_FFFF), // XSAVES area size for the guest's XCR0 | XSS
    ];

    /// <summary>The distinct leaves of <paramref name="table"/>, for the partition's CPUID exit list.</summary>
    public static uint[] ExitList(IReadOnlyList<CpuidEntry> table) => [.. table.Select(e => e.Function).Distinct().Order()];
}
