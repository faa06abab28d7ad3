using System.Collections.Immutable;
using Virt.Cpu;

namespace Virt;

/// <summary>
/// A processor model for the guest: CPUID features it must have (a backend that cannot give one refuses the VM with a
/// message) and features hidden from it. The presets follow the x86-64 psABI micro-architecture levels, so a guest built
/// for a level runs on any host that reaches it and a snapshot moves between such hosts.
/// </summary>
/// <param name="Name">A name for messages and logs, e.g. <c>x86-64-v2</c>.</param>
public sealed record CpuModel(string Name)
{
    private static readonly ImmutableArray<CpuidFeature> s_v2 =
        [CpuidFeature.Cx16, CpuidFeature.LahfLm, CpuidFeature.Popcnt, CpuidFeature.Sse3, CpuidFeature.Sse41, CpuidFeature.Sse42, CpuidFeature.Ssse3];

    private static readonly ImmutableArray<CpuidFeature> s_v3 =
        [CpuidFeature.Avx, CpuidFeature.Avx2, CpuidFeature.Bmi1, CpuidFeature.Bmi2, CpuidFeature.F16c, CpuidFeature.Fma, CpuidFeature.Lzcnt, CpuidFeature.Movbe, CpuidFeature.Xsave];

    private static readonly ImmutableArray<CpuidFeature> s_v4 =
        [CpuidFeature.Avx512F, CpuidFeature.Avx512Bw, CpuidFeature.Avx512Cd, CpuidFeature.Avx512Dq, CpuidFeature.Avx512Vl];

    /// <summary>Features the guest must see; building the VM fails when the backend cannot offer one.</summary>
    public ImmutableArray<CpuidFeature> Required { get; init; } = [];

    /// <summary>Features hidden from the guest.</summary>
    public ImmutableArray<CpuidFeature> Hidden { get; init; } = [];

    /// <summary>Whatever the backend offers (the default): nothing required, nothing hidden.</summary>
    public static CpuModel Host { get; } = new("host");

    /// <summary>x86-64 baseline (v1): SSE2 and below; the v2, v3 and v4 features are hidden.</summary>
    public static CpuModel X64V1 { get; } = new("x86-64-v1") { Hidden = [.. s_v2, .. s_v3, .. s_v4] };

    /// <summary>x86-64-v2: adds CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1 and SSE4.2; v3 and v4 features hidden.</summary>
    public static CpuModel X64V2 { get; } = new("x86-64-v2") { Required = s_v2, Hidden = [.. s_v3, .. s_v4] };

    /// <summary>x86-64-v3: adds AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE and XSAVE; v4 features hidden.</summary>
    public static CpuModel X64V3 { get; } = new("x86-64-v3") { Required = [.. s_v2, .. s_v3], Hidden = s_v4 };

    /// <summary>x86-64-v4: adds AVX-512 F, BW, CD, DQ and VL.</summary>
    public static CpuModel X64V4 { get; } = new("x86-64-v4") { Required = [.. s_v2, .. s_v3, .. s_v4] };

    /// <summary>This model with <paramref name="feature"/> required as well.</summary>
    public CpuModel With(CpuidFeature feature) => this with { Required = Required.Add(feature), Hidden = Hidden.Remove(feature) };

    /// <summary>This model with <paramref name="feature"/> hidden as well.</summary>
    public CpuModel Without(CpuidFeature feature) => this with { Hidden = Hidden.Add(feature), Required = Required.Remove(feature) };

    /// <inheritdoc />
    public override string ToString() => Name;
}
