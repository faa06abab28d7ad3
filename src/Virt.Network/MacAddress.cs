using System.Globalization;
using System.Security.Cryptography;

namespace Virt.Network;

/// <summary>A 48-bit Ethernet MAC address.</summary>
public readonly record struct MacAddress
{
    private readonly ulong _value;

    private MacAddress(ulong value) => _value = value & 0xffff_ffff_ffffUL;

    /// <summary>The broadcast address ff:ff:ff:ff:ff:ff.</summary>
    public static MacAddress Broadcast { get; } = new(0xffff_ffff_ffffUL);

    /// <summary>Whether the group bit (bit 0 of the first byte) is set: broadcast or multicast.</summary>
    public bool IsMulticast => ((_value >> 40) & 1) != 0;

    /// <summary>Whether this is ff:ff:ff:ff:ff:ff.</summary>
    public bool IsBroadcast => _value == 0xffff_ffff_ffffUL;

    /// <summary>Creates an address from its six bytes, first byte first.</summary>
    /// <exception cref="ArgumentException"><paramref name="bytes"/> is not six bytes long.</exception>
    public static MacAddress FromBytes(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != 6)
        {
            throw new ArgumentException($"A MAC address is 6 bytes, not {bytes.Length}.", nameof(bytes));
        }

        return Read(bytes);
    }

    /// <summary>Parses <c>02:00:00:12:34:56</c> (colons or dashes).</summary>
    /// <exception cref="FormatException">The text is not six hexadecimal bytes.</exception>
    public static MacAddress Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string[] parts = text.Split(':', '-');
        if (parts.Length != 6)
        {
            throw new FormatException($"'{text}' is not a MAC address; write six hexadecimal bytes like 02:00:00:12:34:56.");
        }

        ulong v = 0;
        foreach (string p in parts)
        {
            if (p.Length is < 1 or > 2 || !byte.TryParse(p, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b))
            {
                throw new FormatException($"'{text}' is not a MAC address; '{p}' is not a hexadecimal byte.");
            }

            v = (v << 8) | b;
        }

        return new MacAddress(v);
    }

    /// <summary>A random locally administered unicast address (first byte x2, x6, xA or xE).</summary>
    public static MacAddress CreateRandom()
    {
        Span<byte> b = stackalloc byte[6];
        RandomNumberGenerator.Fill(b);
        b[0] = (byte)((b[0] & 0xfc) | 0x02);
        return Read(b);
    }

    /// <summary>Copies the six bytes into <paramref name="destination"/>.</summary>
    public void CopyTo(Span<byte> destination)
    {
        for (int i = 0; i < 6; i++)
        {
            destination[i] = (byte)(_value >> (40 - (8 * i)));
        }
    }

    /// <summary>The six bytes.</summary>
    public byte[] ToArray()
    {
        var b = new byte[6];
        CopyTo(b);
        return b;
    }

    /// <inheritdoc />
    public override string ToString()
    {
        Span<byte> b = stackalloc byte[6];
        CopyTo(b);
        return string.Create(CultureInfo.InvariantCulture, $"{b[0]:x2}:{b[1]:x2}:{b[2]:x2}:{b[3]:x2}:{b[4]:x2}:{b[5]:x2}");
    }

    internal static MacAddress Read(ReadOnlySpan<byte> b) =>
        new(((ulong)b[0] << 40) | ((ulong)b[1] << 32) | ((ulong)b[2] << 24) | ((ulong)b[3] << 16) | ((ulong)b[4] << 8) | b[5]);
}
