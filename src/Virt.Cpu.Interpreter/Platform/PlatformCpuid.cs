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

    /// <summary>Leaf 1 ECX: the local APIC has the x2APIC mode (IA32_APIC_BASE bit 10, MSRs 0x800-0x8FF).</summary>
    public const uint X2Apic = 1u << 21;

    /// <summary>Leaf 0xB ECX bits 15:8: the level type of an SMT (thread) level and of a core level.</summary>
    private const uint SmtLevel = 1u << 8, CoreLevel = 2u << 8;

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

    /// <summary>
    /// The leaves of a partition with interrupt controllers and <paramref name="vcpuCount"/> vCPUs: the local APIC, x2APIC,
    /// TSC-deadline, the MTRRs, the invariant TSC, the TSC and crystal frequencies (0x15, 0x16), and the extended
    /// topology (0xB: one thread per core, every vCPU a core of one package). Leaf 0xB's EDX (the x2APIC ID) and ECX
    /// bits 7:0 (the sub-leaf) are filled in per vCPU and sub-leaf when the guest executes CPUID.
    /// </summary>
    public static IReadOnlyList<CpuidEntry> Extend(IReadOnlyList<CpuidEntry> baseLeaves, long tscFrequency, long crystal, IReadOnlyList<CpuidFeature> masked, int vcpuCount = 1)
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
                1 => e with { Edx = e.Edx | Apic | Mtrr, Ecx = e.Ecx | TscDeadline | X2Apic },
                0x80000007 => e with { Edx = e.Edx | InvariantTsc },
                _ => e,
            };
            sawExtended7 |= e.Function == 0x80000007;
        }

        list.RemoveAll(e => e.Function is 6 or 0xB or 0x15 or 0x16);
        list.Add(new CpuidEntry(6, 0, 0, Arat, 0, 0, 0));

        // x2APIC IDs are the vCPU indices: the core level's shift is the bits that hold the largest.
        uint count = (uint)Math.Max(1, vcpuCount);
        uint coreShift = count <= 1 ? 0 : (uint)(32 - System.Numerics.BitOperations.LeadingZeroCount(count - 1));
        list.Add(new CpuidEntry(0xB, 0, CpuidEntry.SignificantIndex, 0, 1, SmtLevel, 0));
        list.Add(new CpuidEntry(0xB, 1, CpuidEntry.SignificantIndex, coreShift, count, CoreLevel | 1, 0));
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
