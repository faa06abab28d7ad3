namespace Virt.Cpu.Interpreter;

/// <summary>The CPUID bits and leaves a partition with emulated interrupt controllers adds.</summary>
internal static class PlatformCpuid
{
    /// <summary>Leaf 1 EDX: on-chip APIC.</summary>
    private const uint Apic = 1u << 9;

    /// <summary>Leaf 1 EDX: memory type range registers.</summary>
    private const uint Mtrr = 1u << 12;

    /// <summary>Leaf 1 ECX: the local APIC timer supports TSC-deadline mode.</summary>
    private const uint TscDeadline = 1u << 24;

    /// <summary>Leaf 6 EAX: the APIC timer keeps running in deep C-states.</summary>
    private const uint Arat = 1u << 2;

    /// <summary>Leaf 0x80000007 EDX: the TSC runs at a constant rate.</summary>
    private const uint InvariantTsc = 1u << 8;

    /// <summary>The largest standard leaf once 0x15 (TSC/crystal ratio) and 0x16 (frequencies) exist.</summary>
    private const uint MaxStandardLeaf = 0x16;

    /// <summary>The nominal core crystal, which is also the local APIC timer's clock (as Linux assumes from leaf 0x15).</summary>
    private const long PreferredCrystal = 1_000_000_000;

    /// <summary>The crystal (and APIC timer) frequency for a TSC of <paramref name="tscFrequency"/> Hz.</summary>
    public static long CrystalFrequencyFor(long tscFrequency) => Math.Min(PreferredCrystal, tscFrequency);

    public static IReadOnlyList<CpuidEntry> Extend(IReadOnlyList<CpuidEntry> baseLeaves, long tscFrequency, long crystal, IReadOnlyList<CpuidFeature> masked)
    {
        var list = new List<CpuidEntry>(baseLeaves);
        long g = (long)System.Numerics.BigInteger.GreatestCommonDivisor(tscFrequency, crystal);
        long denominator = crystal / g, numerator = tscFrequency / g;
        if (denominator > uint.MaxValue || numerator > uint.MaxValue || crystal > uint.MaxValue)
        {
            denominator = numerator = 1;
            crystal = Math.Min(tscFrequency, uint.MaxValue);
        }

        uint mhz = (uint)(tscFrequency / 1_000_000);
        bool sawExtended7 = false;
        for (int i = 0; i < list.Count; i++)
        {
            var e = list[i];
            list[i] = e.Function switch
            {
                0 => e with { Eax = Math.Max(e.Eax, MaxStandardLeaf) },
                1 => e with { Edx = e.Edx | Apic | Mtrr, Ecx = e.Ecx | TscDeadline },
                0x80000007 => e with { Edx = e.Edx | InvariantTsc },
                _ => e,
            };
            sawExtended7 |= e.Function == 0x80000007;
        }

        list.RemoveAll(e => e.Function is 6 or 0x15 or 0x16);
        list.Add(new CpuidEntry(6, 0, 0, Arat, 0, 0, 0));
        list.Add(new CpuidEntry(0x15, 0, 0, (uint)denominator, (uint)numerator, (uint)crystal, 0));
        list.Add(new CpuidEntry(0x16, 0, 0, mhz, mhz, (uint)Math.Min(crystal / 1_000_000, 0xFFFF), 0));
        if (!sawExtended7)
        {
            list.Add(new CpuidEntry(0x80000007, 0, 0, 0, 0, 0, InvariantTsc));
        }

        var result = CpuidEntry.WithoutAll(list, masked);
        Array.Sort(result, (a, b) => a.Function != b.Function ? a.Function.CompareTo(b.Function) : a.Index.CompareTo(b.Index));
        return result.AsReadOnly();
    }
}
