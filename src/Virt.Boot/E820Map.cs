using Virt.Memory;

namespace Virt.Boot;

/// <summary>An address-range type in the BIOS e820 memory map (ACPI "address range types").</summary>
public enum E820Type : uint
{
    /// <summary>Usable RAM.</summary>
    Ram = 1,
    /// <summary>Reserved: the OS must not use it.</summary>
    Reserved = 2,
    /// <summary>ACPI tables, reclaimable after they are read.</summary>
    AcpiReclaimable = 3,
    /// <summary>ACPI non-volatile storage.</summary>
    AcpiNvs = 4,
    /// <summary>Memory with errors.</summary>
    Unusable = 5,
}

/// <summary>One range of the e820 memory map.</summary>
/// <param name="Address">First byte of the range.</param>
/// <param name="Size">Length in bytes.</param>
/// <param name="Type">What the range is.</param>
public readonly record struct E820Entry(GuestAddress Address, ulong Size, E820Type Type)
{
    /// <summary>The first address after the range.</summary>
    public GuestAddress End => new(Address.Value + Size);
}

/// <summary>Builds the memory map a kernel is told about from the guest's memory regions.</summary>
public static class E820Map
{
    /// <summary>
    /// End of conventional base memory. The last KiB below 640 KiB is the extended BIOS data area on
    /// a PC; it is reported reserved so the MP floating pointer can live there.
    /// </summary>
    public const ulong BaseMemoryEnd = 0x9FC00;

    /// <summary>Start of extended memory; 640 KiB to 1 MiB is the ISA hole (VGA, option ROMs, BIOS).</summary>
    public const ulong ExtendedMemoryStart = 0x100000;

    /// <summary>The most entries the Linux zero page holds.</summary>
    public const int MaxZeroPageEntries = 128;

    /// <summary>
    /// The map for <paramref name="memory"/>: RAM regions as usable RAM except 0x9FC00-0x100000 (reserved,
    /// the PC convention Linux expects), ROM regions as reserved, adjacent ranges of one type merged.
    /// </summary>
    public static IReadOnlyList<E820Entry> FromMemory(IGuestMemory memory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        var ranges = new List<E820Entry>();
        bool lowHoleReserved = false;
        foreach (var region in memory.Regions)
        {
            ulong start = region.Start.Value;
            ulong end = start + region.Size;
            if (region.IsReadOnly)
            {
                ranges.Add(new E820Entry(region.Start, region.Size, E820Type.Reserved));
                continue;
            }

            if (start < BaseMemoryEnd)
            {
                ranges.Add(new E820Entry(new GuestAddress(start), Math.Min(end, BaseMemoryEnd) - start, E820Type.Ram));
            }

            if (start < ExtendedMemoryStart && end > BaseMemoryEnd)
            {
                lowHoleReserved = true;
            }

            if (end > ExtendedMemoryStart)
            {
                ulong s = Math.Max(start, ExtendedMemoryStart);
                ranges.Add(new E820Entry(new GuestAddress(s), end - s, E820Type.Ram));
            }
        }

        if (lowHoleReserved || ranges.Count > 0)
        {
            // The hole is reserved whether or not RAM backs it: legacy firmware areas live there.
            ranges.Add(new E820Entry(new GuestAddress(BaseMemoryEnd), ExtendedMemoryStart - BaseMemoryEnd, E820Type.Reserved));
        }

        ranges.Sort((a, b) => a.Address.Value != b.Address.Value ? a.Address.Value.CompareTo(b.Address.Value) : a.Type.CompareTo(b.Type));
        var merged = new List<E820Entry>(ranges.Count);
        foreach (var range in ranges)
        {
            var r = range;
            if (merged.Count > 0)
            {
                var last = merged[^1];
                if (r.Address.Value < last.End.Value)
                {
                    // Overlap: a reserved ROM inside the hole. Keep what does not overlap.
                    if (r.End.Value <= last.End.Value)
                    {
                        continue;
                    }

                    r = new E820Entry(last.End, r.End.Value - last.End.Value, r.Type);
                }

                if (last.Type == r.Type && last.End == r.Address)
                {
                    merged[^1] = last with { Size = last.Size + r.Size };
                    continue;
                }
            }

            merged.Add(r);
        }

        return merged;
    }

    /// <summary>Finds the highest page-aligned address for <paramref name="size"/> bytes of RAM in <c>[floor, limit)</c>, or <see langword="null"/>.</summary>
    internal static ulong? FindHighest(IReadOnlyList<E820Entry> map, ulong size, ulong floor, ulong limit, ulong alignment = 4096)
    {
        for (int i = map.Count - 1; i >= 0; i--)
        {
            var e = map[i];
            if (e.Type != E820Type.Ram)
            {
                continue;
            }

            ulong top = Math.Min(e.End.Value, limit);
            ulong bottom = Math.Max(e.Address.Value, floor);
            if (top <= bottom || top - bottom < size)
            {
                continue;
            }

            ulong start = (top - size) & ~(alignment - 1);
            if (start >= bottom)
            {
                return start;
            }
        }

        return null;
    }

    /// <summary>Whether <c>[address, address + size)</c> lies inside one RAM range of <paramref name="map"/>.</summary>
    internal static bool IsRam(IReadOnlyList<E820Entry> map, ulong address, ulong size)
    {
        foreach (var e in map)
        {
            if (e.Type == E820Type.Ram && address >= e.Address.Value && address - e.Address.Value <= e.Size && size <= e.End.Value - address)
            {
                return true;
            }
        }

        return false;
    }
}
