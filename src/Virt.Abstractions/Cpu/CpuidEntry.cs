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

    /// <summary><paramref name="entries"/> with every feature in <paramref name="features"/> cleared where it lives.</summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public static CpuidEntry[] WithoutAll(IEnumerable<CpuidEntry> entries, IReadOnlyList<CpuidFeature> features)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentNullException.ThrowIfNull(features);
        var result = entries.ToArray();
        for (int i = 0; i < result.Length; i++)
        {
            foreach (var f in features)
            {
                result[i] = result[i].Without(f);
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
}
