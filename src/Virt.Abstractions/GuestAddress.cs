using System.Globalization;

namespace Virt;

/// <summary>A guest physical address. Used instead of a bare <see cref="ulong"/> in every public API.</summary>
/// <param name="Value">The address as a number.</param>
public readonly record struct GuestAddress(ulong Value) : IComparable<GuestAddress>
{
    /// <summary>Guest physical address zero.</summary>
    public static GuestAddress Zero => default;

    /// <summary>Returns this address plus <paramref name="offset"/>, or throws when the sum wraps past 2^64.</summary>
    /// <exception cref="OverflowException">The sum does not fit in 64 bits.</exception>
    public GuestAddress Add(ulong offset) => new(checked(Value + offset));

    /// <summary>Returns this address plus <paramref name="offset"/>, or <see langword="false"/> when the sum wraps.</summary>
    public bool TryAdd(ulong offset, out GuestAddress result)
    {
        ulong sum = Value + offset;
        result = new GuestAddress(sum);
        return sum >= Value;
    }

    /// <summary>The address rounded down to a multiple of <paramref name="alignment"/> (a power of two).</summary>
    public GuestAddress AlignDown(ulong alignment) => new(Value & ~(alignment - 1));

    /// <summary>Whether the address is a multiple of <paramref name="alignment"/> (a power of two).</summary>
    public bool IsAligned(ulong alignment) => (Value & (alignment - 1)) == 0;

    /// <inheritdoc />
    public int CompareTo(GuestAddress other) => Value.CompareTo(other.Value);

    /// <summary>Adds an offset (checked).</summary>
    public static GuestAddress operator +(GuestAddress address, ulong offset) => address.Add(offset);

    /// <summary>The distance between two addresses (checked).</summary>
    public static ulong operator -(GuestAddress a, GuestAddress b) => checked(a.Value - b.Value);

    /// <summary>Orders addresses.</summary>
    public static bool operator <(GuestAddress a, GuestAddress b) => a.Value < b.Value;

    /// <summary>Orders addresses.</summary>
    public static bool operator >(GuestAddress a, GuestAddress b) => a.Value > b.Value;

    /// <summary>Orders addresses.</summary>
    public static bool operator <=(GuestAddress a, GuestAddress b) => a.Value <= b.Value;

    /// <summary>Orders addresses.</summary>
    public static bool operator >=(GuestAddress a, GuestAddress b) => a.Value >= b.Value;

    /// <summary>The address in hexadecimal, e.g. <c>0x100000</c>.</summary>
    public override string ToString() => "0x" + Value.ToString("x", CultureInfo.InvariantCulture);
}
