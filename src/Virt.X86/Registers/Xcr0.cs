namespace Virt.X86;

/// <summary>XCR0 (extended control register 0, written with XSETBV) state-component bits (Intel SDM vol. 1, 13.3).</summary>
public static class Xcr0
{
    /// <summary>Bit 0: x87 state; always set.</summary>
    public const ulong X87 = 1UL << 0;

    /// <summary>Bit 1: SSE state (XMM registers and MXCSR).</summary>
    public const ulong Sse = 1UL << 1;

    /// <summary>Bit 2: AVX state (upper halves of YMM registers); needs <see cref="Sse"/>.</summary>
    public const ulong Avx = 1UL << 2;

    /// <summary>Bit 3: MPX bound registers BND0-BND3.</summary>
    public const ulong BndRegs = 1UL << 3;

    /// <summary>Bit 4: MPX BNDCFGU and BNDSTATUS.</summary>
    public const ulong BndCsr = 1UL << 4;

    /// <summary>Bit 5: AVX-512 opmask registers k0-k7.</summary>
    public const ulong Opmask = 1UL << 5;

    /// <summary>Bit 6: AVX-512 upper halves of ZMM0-ZMM15.</summary>
    public const ulong ZmmHigh256 = 1UL << 6;

    /// <summary>Bit 7: AVX-512 registers ZMM16-ZMM31.</summary>
    public const ulong High16Zmm = 1UL << 7;

    /// <summary>Bit 9: the PKRU register (protection keys).</summary>
    public const ulong Pkru = 1UL << 9;

    /// <summary>Bit 17: AMX TILECFG.</summary>
    public const ulong TileConfig = 1UL << 17;

    /// <summary>Bit 18: AMX TILEDATA.</summary>
    public const ulong TileData = 1UL << 18;

    /// <summary>The AVX-512 components, enabled together: <see cref="Opmask"/>, <see cref="ZmmHigh256"/> and <see cref="High16Zmm"/>.</summary>
    public const ulong Avx512 = Opmask | ZmmHigh256 | High16Zmm;
}
