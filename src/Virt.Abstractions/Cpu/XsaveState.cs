using System.Buffers.Binary;

namespace Virt.Cpu;

/// <summary>XSAVE state components (bits of XCR0 and of an image's XSTATE_BV; SDM Vol. 1, 13.1).</summary>
[Flags]
#pragma warning disable CA1711 // The architectural name.
public enum XsaveComponents : ulong
#pragma warning restore CA1711
{
    /// <summary>No component.</summary>
    None = 0,
    /// <summary>Bit 0: x87 registers, control and status.</summary>
    X87 = 1UL << 0,
    /// <summary>Bit 1: XMM registers and MXCSR.</summary>
    Sse = 1UL << 1,
    /// <summary>Bit 2: upper halves of YMM0-YMM15.</summary>
    Avx = 1UL << 2,
    /// <summary>Bit 3: MPX bound registers.</summary>
    MpxBoundRegisters = 1UL << 3,
    /// <summary>Bit 4: MPX configuration and status.</summary>
    MpxConfiguration = 1UL << 4,
    /// <summary>Bit 5: AVX-512 opmask registers k0-k7.</summary>
    Avx512OpMask = 1UL << 5,
    /// <summary>Bit 6: upper 256 bits of ZMM0-ZMM15.</summary>
    Avx512ZmmHigh256 = 1UL << 6,
    /// <summary>Bit 7: ZMM16-ZMM31.</summary>
    Avx512HighZmm = 1UL << 7,
    /// <summary>Bit 9: the protection-key rights register PKRU.</summary>
    Pkru = 1UL << 9,
    /// <summary>Bit 17: AMX tile configuration.</summary>
    AmxTileConfiguration = 1UL << 17,
    /// <summary>Bit 18: AMX tile data.</summary>
    AmxTileData = 1UL << 18,
}

/// <summary>
/// The whole register state that XSAVE covers (x87, SSE, AVX, AVX-512, PKRU and whatever else the vCPU's
/// XCR0 enables) as one image in the standard, non-compacted XSAVE format (SDM Vol. 1, 13.4): the 512-byte
/// legacy region in FXSAVE layout, the 64-byte XSAVE header, then each enabled component at the offset
/// CPUID leaf 0xD gives for it. The format is architectural, so an image moves between backends; a backend
/// refuses components it does not have with a message that names them.
/// </summary>
public sealed class XsaveState
{
    /// <summary>Bytes of the legacy (FXSAVE-layout) region.</summary>
    public const int LegacyRegionSize = 512;

    /// <summary>Bytes of the XSAVE header that follows the legacy region.</summary>
    public const int HeaderSize = 64;

    /// <summary>Smallest valid image: the legacy region and the header.</summary>
    public const int MinimumSize = LegacyRegionSize + HeaderSize;

    /// <summary>Largest image accepted (AMX tile data included, with room to spare).</summary>
    public const int MaximumSize = 64 * 1024;

    private readonly byte[] _area;

    /// <summary>Creates an image from <paramref name="area"/> (copied) with <paramref name="xcr0"/>.</summary>
    /// <exception cref="ArgumentException">The area is shorter than <see cref="MinimumSize"/> or longer than <see cref="MaximumSize"/>, or XCR0 lacks the x87 bit (which is always set).</exception>
    public XsaveState(ulong xcr0, ReadOnlySpan<byte> area)
    {
        if (area.Length < MinimumSize || area.Length > MaximumSize)
        {
            throw new ArgumentException($"An XSAVE image holds {MinimumSize} to {MaximumSize} bytes; this one has {area.Length}.", nameof(area));
        }

        if ((xcr0 & (ulong)XsaveComponents.X87) == 0)
        {
            throw new ArgumentException($"XCR0 0x{xcr0:x} lacks bit 0 (x87), which is always set.", nameof(xcr0));
        }

        Xcr0 = xcr0;
        _area = area.ToArray();
    }

    /// <summary>The extended control register XCR0: which components the vCPU has enabled.</summary>
    public ulong Xcr0 { get; }

    /// <summary>The image, in standard format.</summary>
    public ReadOnlySpan<byte> Area => _area;

    /// <summary>Bytes in the image.</summary>
    public int Size => _area.Length;

    /// <summary>XSTATE_BV: the components whose state the image holds (a clear bit means that component is in its initial state).</summary>
    public XsaveComponents StateComponents => (XsaveComponents)BinaryPrimitives.ReadUInt64LittleEndian(_area.AsSpan(LegacyRegionSize));

    /// <summary>
    /// The x87 and SSE state. Where XSTATE_BV says a component is in its initial state, the initial values
    /// are returned for it (MXCSR always comes from the legacy region, as XRSTOR takes it).
    /// </summary>
    public FpuState Fpu
    {
        get
        {
            var fpu = ReadLegacyRegion(_area);
            var bv = StateComponents;
            if ((bv & XsaveComponents.X87) == 0)
            {
                var init = FpuState.Initial;
                init.Xmm = fpu.Xmm;
                init.Mxcsr = fpu.Mxcsr;
                fpu = init;
            }

            if ((bv & XsaveComponents.Sse) == 0)
            {
                fpu.Xmm = default;
            }

            return fpu;
        }
    }

    /// <summary>An image that holds only <paramref name="fpu"/> (x87 and SSE), for a vCPU whose XCR0 is <paramref name="xcr0"/>.</summary>
    public static XsaveState FromFpu(in FpuState fpu, ulong xcr0 = (ulong)(XsaveComponents.X87 | XsaveComponents.Sse))
    {
        var area = new byte[MinimumSize];
        WriteLegacyRegion(fpu, area);
        BinaryPrimitives.WriteUInt64LittleEndian(area.AsSpan(LegacyRegionSize), (ulong)(XsaveComponents.X87 | XsaveComponents.Sse));
        return new XsaveState(xcr0, area);
    }

    /// <summary>This image with its x87 and SSE state replaced by <paramref name="fpu"/> (both marked present in XSTATE_BV).</summary>
    public XsaveState WithFpu(in FpuState fpu)
    {
        var area = (byte[])_area.Clone();
        WriteLegacyRegion(fpu, area);
        ulong bv = BinaryPrimitives.ReadUInt64LittleEndian(area.AsSpan(LegacyRegionSize));
        BinaryPrimitives.WriteUInt64LittleEndian(area.AsSpan(LegacyRegionSize), bv | (ulong)(XsaveComponents.X87 | XsaveComponents.Sse));
        return new XsaveState(Xcr0, area);
    }

    /// <summary>Copies the image into <paramref name="destination"/>, which must be at least <see cref="Size"/> bytes; bytes past it are cleared.</summary>
    public void CopyTo(Span<byte> destination)
    {
        if (destination.Length < _area.Length)
        {
            throw new ArgumentException($"The destination has {destination.Length} bytes; the image needs {_area.Length}.", nameof(destination));
        }

        _area.CopyTo(destination);
        destination[_area.Length..].Clear();
    }

    /// <summary>Whether component bit <paramref name="component"/> holds anything but its initial state (all zero bytes) in this image.</summary>
    /// <param name="component">The component bit (2 and up; 0 and 1 live in the legacy region).</param>
    /// <param name="offset">The component's offset in the standard format (CPUID.(0xD, component).EBX).</param>
    /// <param name="size">The component's size (CPUID.(0xD, component).EAX).</param>
    public bool HoldsNonInitialState(int component, int offset, int size)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(component, 2);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(component, 62);
        if (((ulong)StateComponents & (1UL << component)) == 0)
        {
            return false;
        }

        if (offset < MinimumSize || size <= 0 || offset > _area.Length - size)
        {
            return true;
        }

        return _area.AsSpan(offset, size).IndexOfAnyExcept((byte)0) >= 0;
    }

    /// <summary>Reads the x87 and SSE state from a legacy region in FXSAVE layout (64-bit form).</summary>
    public static FpuState ReadLegacyRegion(ReadOnlySpan<byte> region)
    {
        if (region.Length < LegacyRegionSize)
        {
            throw new ArgumentException($"A legacy region holds {LegacyRegionSize} bytes; this one has {region.Length}.", nameof(region));
        }

        var s = new FpuState
        {
            ControlWord = BinaryPrimitives.ReadUInt16LittleEndian(region),
            StatusWord = BinaryPrimitives.ReadUInt16LittleEndian(region[2..]),
            AbridgedTagWord = region[4],
            LastOpcode = BinaryPrimitives.ReadUInt16LittleEndian(region[6..]),
            LastInstructionPointer = BinaryPrimitives.ReadUInt64LittleEndian(region[8..]),
            LastDataPointer = BinaryPrimitives.ReadUInt64LittleEndian(region[16..]),
            Mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(region[24..]),
        };
        region.Slice(32, 128).CopyTo(s.Registers);
        region.Slice(160, 256).CopyTo(s.Xmm);
        return s;
    }

    /// <summary>Writes <paramref name="fpu"/> into a legacy region in FXSAVE layout (64-bit form); MXCSR_MASK is 0xFFFF.</summary>
    public static void WriteLegacyRegion(in FpuState fpu, Span<byte> region)
    {
        if (region.Length < LegacyRegionSize)
        {
            throw new ArgumentException($"A legacy region holds {LegacyRegionSize} bytes; this one has {region.Length}.", nameof(region));
        }

        region[..LegacyRegionSize].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(region, fpu.ControlWord);
        BinaryPrimitives.WriteUInt16LittleEndian(region[2..], fpu.StatusWord);
        region[4] = fpu.AbridgedTagWord;
        BinaryPrimitives.WriteUInt16LittleEndian(region[6..], fpu.LastOpcode);
        BinaryPrimitives.WriteUInt64LittleEndian(region[8..], fpu.LastInstructionPointer);
        BinaryPrimitives.WriteUInt64LittleEndian(region[16..], fpu.LastDataPointer);
        BinaryPrimitives.WriteUInt32LittleEndian(region[24..], fpu.Mxcsr);
        BinaryPrimitives.WriteUInt32LittleEndian(region[28..], 0xFFFF);
        ((ReadOnlySpan<byte>)fpu.Registers).CopyTo(region.Slice(32, 128));
        ((ReadOnlySpan<byte>)fpu.Xmm).CopyTo(region.Slice(160, 256));
    }
}
