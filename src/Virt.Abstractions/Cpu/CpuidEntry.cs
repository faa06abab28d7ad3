namespace Virt.Cpu;

/// <summary>One CPUID leaf (and sub-leaf) as the guest sees it.</summary>
/// <param name="Function">The leaf (EAX input).</param>
/// <param name="Index">The sub-leaf (ECX input) where <paramref name="Flags"/> says it is significant.</param>
/// <param name="Flags">KVM-style flags: bit 0 = the sub-leaf index is significant.</param>
/// <param name="Eax">EAX output.</param>
/// <param name="Ebx">EBX output.</param>
/// <param name="Ecx">ECX output.</param>
/// <param name="Edx">EDX output.</param>
public readonly record struct CpuidEntry(uint Function, uint Index, uint Flags, uint Eax, uint Ebx, uint Ecx, uint Edx)
{
    /// <summary>Flag: the sub-leaf index (ECX) selects among entries of the same function.</summary>
    public const uint SignificantIndex = 1;

    /// <summary>Whether <paramref name="feature"/> lives in this entry: the same leaf, and the same sub-leaf where the index is significant.</summary>
    public bool Holds(CpuidFeature feature) =>
        Function == feature.Function && ((Flags & SignificantIndex) == 0 || Index == feature.Index);

    /// <summary>This entry with <paramref name="feature"/>'s bit cleared; unchanged when the feature lives in another entry.</summary>
    public CpuidEntry Without(CpuidFeature feature)
    {
        if (!Holds(feature))
        {
            return this;
        }

        uint clear = ~(1u << feature.Bit);
        return feature.Register switch
        {
            CpuidRegister.Eax => this with { Eax = Eax & clear },
            CpuidRegister.Ebx => this with { Ebx = Ebx & clear },
            CpuidRegister.Ecx => this with { Ecx = Ecx & clear },
            _ => this with { Edx = Edx & clear },
        };
    }

    /// <summary>Whether <paramref name="feature"/>'s bit is set in this entry (false when it lives in another entry).</summary>
    public bool Offers(CpuidFeature feature)
    {
        if (!Holds(feature) || feature.Bit is < 0 or > 31)
        {
            return false;
        }

        uint word = feature.Register switch
        {
            CpuidRegister.Eax => Eax,
            CpuidRegister.Ebx => Ebx,
            CpuidRegister.Ecx => Ecx,
            _ => Edx,
        };
        return (word & (1u << feature.Bit)) != 0;
    }

    /// <summary>Whether any entry of <paramref name="entries"/> offers <paramref name="feature"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="entries"/> is null.</exception>
    public static bool AnyOffers(IEnumerable<CpuidEntry> entries, CpuidFeature feature)
    {
        ArgumentNullException.ThrowIfNull(entries);
        return entries.Any(e => e.Offers(feature));
    }

    /// <summary>
    /// <paramref name="entries"/> with leaf 0x80000008 reporting <paramref name="bits"/> physical address bits (EAX bits 0-7)
    /// instead of what it reported; unchanged when <paramref name="bits"/> is null or the leaf is absent.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="entries"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="bits"/> is outside 32-52.</exception>
    public static CpuidEntry[] WithPhysicalAddressBits(IEnumerable<CpuidEntry> entries, int? bits)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var result = entries.ToArray();
        if (bits is not { } b)
        {
            return result;
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(b, 32, nameof(bits));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(b, 52, nameof(bits));
        for (int i = 0; i < result.Length; i++)
        {
            if (result[i].Function == 0x80000008)
            {
                result[i] = result[i] with { Eax = (result[i].Eax & ~0xFFu) | (uint)b };
            }
        }

        return result;
    }

    /// <summary>The physical address bits leaf 0x80000008 reports in <paramref name="entries"/>, or 36 (the architectural default) without that leaf.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="entries"/> is null.</exception>
    public static int PhysicalAddressBits(IEnumerable<CpuidEntry> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        foreach (var e in entries)
        {
            if (e.Function == 0x80000008 && (e.Eax & 0xFF) != 0)
            {
                return (int)(e.Eax & 0xFF);
            }
        }

        return 36;
    }

    /// <summary><paramref name="entries"/> with every feature in <paramref name="features"/> cleared where it lives.</summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public static CpuidEntry[] WithoutAll(IEnumerable<CpuidEntry> entries, IReadOnlyList<CpuidFeature> features)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentNullException.ThrowIfNull(features);
        // Index loops and an array copy rather than LINQ and enumerators over these structs, which would be framework
        // generic code compiled in every process that builds a machine.
        var result = entries is CpuidEntry[] array ? (CpuidEntry[])array.Clone() : [.. entries];
        int count = features.Count;
        for (int i = 0; i < result.Length; i++)
        {
            for (int k = 0; k < count; k++)
            {
                result[i] = result[i].Without(features[k]);
            }
        }

        return result;
    }
}

/// <summary>Which CPUID output register a feature bit lives in.</summary>
public enum CpuidRegister
{
    /// <summary>EAX.</summary>
    Eax,
    /// <summary>EBX.</summary>
    Ebx,
    /// <summary>ECX.</summary>
    Ecx,
    /// <summary>EDX.</summary>
    Edx,
}

/// <summary>A CPUID feature bit, e.g. leaf 1 ECX bit 26 (XSAVE).</summary>
/// <param name="Function">Leaf.</param>
/// <param name="Index">Sub-leaf (0 where the leaf has none).</param>
/// <param name="Register">Output register.</param>
/// <param name="Bit">Bit number 0-31.</param>
public readonly record struct CpuidFeature(uint Function, uint Index, CpuidRegister Register, int Bit)
{
    /// <summary>Leaf 1 ECX bit 30: RDRAND.</summary>
    public static CpuidFeature Rdrand => new(1, 0, CpuidRegister.Ecx, 30);

    /// <summary>Leaf 7 EBX bit 18: RDSEED.</summary>
    public static CpuidFeature Rdseed => new(7, 0, CpuidRegister.Ebx, 18);

    /// <summary>Leaf 1 ECX bit 26: XSAVE.</summary>
    public static CpuidFeature Xsave => new(1, 0, CpuidRegister.Ecx, 26);
    /// <summary>Leaf 1 ECX bit 28: AVX.</summary>
    public static CpuidFeature Avx => new(1, 0, CpuidRegister.Ecx, 28);
    /// <summary>Leaf 1 ECX bit 5: VMX.</summary>
    public static CpuidFeature Vmx => new(1, 0, CpuidRegister.Ecx, 5);
    /// <summary>Leaf 1 ECX bit 31: running under a hypervisor.</summary>
    public static CpuidFeature Hypervisor => new(1, 0, CpuidRegister.Ecx, 31);
    /// <summary>Leaf 1 ECX bit 21: x2APIC.</summary>
    public static CpuidFeature X2Apic => new(1, 0, CpuidRegister.Ecx, 21);
    /// <summary>Leaf 7 EBX bit 5: AVX2.</summary>
    public static CpuidFeature Avx2 => new(7, 0, CpuidRegister.Ebx, 5);
    /// <summary>Leaf 7 EBX bit 16: AVX-512F.</summary>
    public static CpuidFeature Avx512F => new(7, 0, CpuidRegister.Ebx, 16);
    /// <summary>Leaf 0x80000001 EDX bit 27: RDTSCP.</summary>
    public static CpuidFeature Rdtscp => new(0x80000001, 0, CpuidRegister.Edx, 27);
    /// <summary>Leaf 1 ECX bit 0: SSE3.</summary>
    public static CpuidFeature Sse3 => new(1, 0, CpuidRegister.Ecx, 0);
    /// <summary>Leaf 1 ECX bit 9: SSSE3.</summary>
    public static CpuidFeature Ssse3 => new(1, 0, CpuidRegister.Ecx, 9);
    /// <summary>Leaf 1 ECX bit 12: FMA.</summary>
    public static CpuidFeature Fma => new(1, 0, CpuidRegister.Ecx, 12);
    /// <summary>Leaf 1 ECX bit 13: CMPXCHG16B.</summary>
    public static CpuidFeature Cx16 => new(1, 0, CpuidRegister.Ecx, 13);
    /// <summary>Leaf 1 ECX bit 19: SSE4.1.</summary>
    public static CpuidFeature Sse41 => new(1, 0, CpuidRegister.Ecx, 19);
    /// <summary>Leaf 1 ECX bit 20: SSE4.2.</summary>
    public static CpuidFeature Sse42 => new(1, 0, CpuidRegister.Ecx, 20);
    /// <summary>Leaf 1 ECX bit 22: MOVBE.</summary>
    public static CpuidFeature Movbe => new(1, 0, CpuidRegister.Ecx, 22);
    /// <summary>Leaf 1 ECX bit 23: POPCNT.</summary>
    public static CpuidFeature Popcnt => new(1, 0, CpuidRegister.Ecx, 23);
    /// <summary>Leaf 1 ECX bit 29: F16C.</summary>
    public static CpuidFeature F16c => new(1, 0, CpuidRegister.Ecx, 29);
    /// <summary>Leaf 7 EBX bit 3: BMI1.</summary>
    public static CpuidFeature Bmi1 => new(7, 0, CpuidRegister.Ebx, 3);
    /// <summary>Leaf 7 EBX bit 8: BMI2.</summary>
    public static CpuidFeature Bmi2 => new(7, 0, CpuidRegister.Ebx, 8);
    /// <summary>Leaf 7 EBX bit 17: AVX-512DQ.</summary>
    public static CpuidFeature Avx512Dq => new(7, 0, CpuidRegister.Ebx, 17);
    /// <summary>Leaf 7 EBX bit 28: AVX-512CD.</summary>
    public static CpuidFeature Avx512Cd => new(7, 0, CpuidRegister.Ebx, 28);
    /// <summary>Leaf 7 EBX bit 30: AVX-512BW.</summary>
    public static CpuidFeature Avx512Bw => new(7, 0, CpuidRegister.Ebx, 30);
    /// <summary>Leaf 7 EBX bit 31: AVX-512VL.</summary>
    public static CpuidFeature Avx512Vl => new(7, 0, CpuidRegister.Ebx, 31);
    /// <summary>Leaf 0x80000001 ECX bit 0: LAHF/SAHF in 64-bit mode.</summary>
    public static CpuidFeature LahfLm => new(0x80000001, 0, CpuidRegister.Ecx, 0);
    /// <summary>Leaf 0x80000001 ECX bit 5: LZCNT (ABM).</summary>
    public static CpuidFeature Lzcnt => new(0x80000001, 0, CpuidRegister.Ecx, 5);
}
