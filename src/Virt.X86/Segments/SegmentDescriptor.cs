using Virt.Cpu;

namespace Virt.X86;

/// <summary>
/// Encodes and decodes segment descriptors as they sit in a GDT or LDT (Intel SDM vol. 3, 3.4.5 and 7.2.3):
/// 8-byte code and data descriptors, and the 16-byte system descriptors (TSS, LDT) of long mode, to and from
/// the <see cref="SegmentRegister"/> a vCPU's descriptor cache holds.
/// </summary>
/// <remarks>
/// <see cref="SegmentRegister.Limit"/> is in bytes; with <see cref="SegmentRegister.Granularity"/> the descriptor
/// holds it in 4 KiB units, so the low 12 bits must be all ones. <see cref="SegmentRegister.Unusable"/> has no
/// descriptor bit and is neither encoded nor produced.
/// </remarks>
public static class SegmentDescriptor
{
    /// <summary>Bytes in a code or data descriptor (one GDT slot).</summary>
    public const int Size = 8;

    /// <summary>Bytes in a long-mode system descriptor (two GDT slots).</summary>
    public const int SystemSize = 16;

    private const uint MaxRawLimit = 0xF_FFFF;

    /// <summary>The 8-byte descriptor for <paramref name="segment"/>.</summary>
    /// <exception cref="ArgumentException">The base is above 4 GiB, the limit does not fit 20 bits in its granularity, or a field is out of range.</exception>
    public static ulong Encode(in SegmentRegister segment)
    {
        if (segment.Base > uint.MaxValue)
        {
            throw new ArgumentException($"The base 0x{segment.Base:x} does not fit an 8-byte descriptor; use a 16-byte system descriptor, or the FS/GS base MSRs.", nameof(segment));
        }

        return EncodeLow(segment);
    }

    /// <summary>The segment register that loading the 8-byte <paramref name="descriptor"/> with <paramref name="selector"/> would produce.</summary>
    public static SegmentRegister Decode(ulong descriptor, ushort selector = 0)
    {
        uint raw = (uint)(descriptor & 0xFFFF) | (uint)((descriptor >> 32) & 0xF_0000);
        bool granularity = (descriptor & (1UL << 55)) != 0;
        return new SegmentRegister
        {
            Base = ((descriptor >> 16) & 0xFF_FFFF) | (((descriptor >> 56) & 0xFF) << 24),
            Limit = granularity ? (raw << 12) | 0xFFF : raw,
            Selector = selector,
            Type = (byte)((descriptor >> 40) & 0xF),
            IsCodeOrData = (descriptor & (1UL << 44)) != 0,
            Dpl = (byte)((descriptor >> 45) & 3),
            Present = (descriptor & (1UL << 47)) != 0,
            Available = (descriptor & (1UL << 52)) != 0,
            Long = (descriptor & (1UL << 53)) != 0,
            DefaultBig = (descriptor & (1UL << 54)) != 0,
            Granularity = granularity,
        };
    }

    /// <summary>The 16-byte long-mode system descriptor (TSS or LDT) for <paramref name="segment"/>; the low quadword comes first in memory.</summary>
    /// <exception cref="ArgumentException">The segment is a code or data segment, or a field is out of range.</exception>
    public static UInt128 EncodeSystem(in SegmentRegister segment)
    {
        if (segment.IsCodeOrData)
        {
            throw new ArgumentException("A 16-byte system descriptor describes a TSS or LDT; clear IsCodeOrData.", nameof(segment));
        }

        return new UInt128(segment.Base >> 32, EncodeLow(segment));
    }

    /// <summary>The segment register (a TR or LDTR) that loading the 16-byte <paramref name="descriptor"/> with <paramref name="selector"/> would produce.</summary>
    public static SegmentRegister DecodeSystem(UInt128 descriptor, ushort selector = 0)
    {
        var s = Decode((ulong)descriptor, selector);
        s.Base |= (ulong)(descriptor >> 64) << 32;
        return s;
    }

    private static ulong EncodeLow(in SegmentRegister s)
    {
        if (s.Type > 0xF || s.Dpl > 3)
        {
            throw new ArgumentException($"The type 0x{s.Type:x} (0-0xF) or DPL {s.Dpl} (0-3) is out of range.", nameof(s));
        }

        uint raw = s.Limit;
        if (s.Granularity)
        {
            if ((s.Limit & 0xFFF) != 0xFFF)
            {
                throw new ArgumentException($"The limit 0x{s.Limit:x} is not a whole number of 4 KiB pages minus one; with Granularity set its low 12 bits must be 0xFFF.", nameof(s));
            }

            raw >>= 12;
        }
        else if (raw > MaxRawLimit)
        {
            throw new ArgumentException($"The limit 0x{s.Limit:x} needs more than 20 bits; set Granularity and give it in whole 4 KiB pages.", nameof(s));
        }

        return (raw & 0xFFFF)
            | ((s.Base & 0xFF_FFFF) << 16)
            | ((ulong)s.Type << 40)
            | (s.IsCodeOrData ? 1UL << 44 : 0)
            | ((ulong)s.Dpl << 45)
            | (s.Present ? 1UL << 47 : 0)
            | ((ulong)(raw >> 16) << 48)
            | (s.Available ? 1UL << 52 : 0)
            | (s.Long ? 1UL << 53 : 0)
            | (s.DefaultBig ? 1UL << 54 : 0)
            | (s.Granularity ? 1UL << 55 : 0)
            | (((s.Base >> 24) & 0xFF) << 56);
    }
}
