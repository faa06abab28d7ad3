namespace Virt.X86;

/// <summary>Rules for linear (virtual) addresses in long mode.</summary>
public static class LinearAddress
{
    /// <summary>Implemented linear-address bits with 4-level paging.</summary>
    public const int Width4Level = 48;

    /// <summary>Implemented linear-address bits with 5-level paging (CR4.LA57).</summary>
    public const int Width5Level = 57;

    /// <summary>
    /// Whether <paramref name="address"/> is canonical for <paramref name="width"/> implemented bits: bits 63
    /// down to <paramref name="width"/> - 1 are all equal. A non-canonical access raises #GP (or #SS for a stack
    /// access), never #PF.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="width"/> is not 32-64.</exception>
    public static bool IsCanonical(ulong address, int width = Width4Level)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 32);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(width, 64);
        int unused = 64 - width;
        return (ulong)((long)(address << unused) >> unused) == address;
    }

    /// <summary>Whether <paramref name="address"/> lies in the lower (user) half of the canonical space for <paramref name="width"/> bits.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="width"/> is not 32-64.</exception>
    public static bool IsLowerHalf(ulong address, int width = Width4Level)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 32);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(width, 64);
        return width == 64 ? (long)address >= 0 : address < (1UL << (width - 1));
    }
}
