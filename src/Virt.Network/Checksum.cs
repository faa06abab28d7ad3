using System.Buffers.Binary;

namespace Virt.Network;

/// <summary>The Internet checksum (RFC 1071): transmit checksum completion for virtio-net and the user-mode stack's checks.</summary>
internal static class Checksum
{
    public static uint Add(ReadOnlySpan<byte> data, uint sum = 0)
    {
        int i = 0;
        for (; i + 1 < data.Length; i += 2)
        {
            sum += BinaryPrimitives.ReadUInt16BigEndian(data[i..]);
            if (sum > 0x7FFF_FFFF)
            {
                sum = (sum & 0xFFFF) + (sum >> 16);
            }
        }

        if (i < data.Length)
        {
            sum += (uint)data[i] << 8;
        }

        return sum;
    }

    public static ushort Fold(uint sum)
    {
        while (sum > 0xFFFF)
        {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }

        return (ushort)~sum;
    }

    public static uint PseudoHeader(uint source, uint destination, byte protocol, int length) =>
        (source >> 16) + (source & 0xFFFF) + (destination >> 16) + (destination & 0xFFFF) + protocol + (uint)length;

    /// <summary>The IPv6 pseudo-header (RFC 8200 8.1): both addresses, the upper-layer length and the next header.</summary>
    public static uint PseudoHeader6(UInt128 source, UInt128 destination, byte protocol, int length)
    {
        Span<byte> addresses = stackalloc byte[32];
        BinaryPrimitives.WriteUInt128BigEndian(addresses, source);
        BinaryPrimitives.WriteUInt128BigEndian(addresses[16..], destination);
        return Add(addresses) + (uint)(length >> 16) + (uint)(length & 0xFFFF) + protocol;
    }

    /// <summary>Whether a TCP or UDP segment's checksum (stored inside it) is right.</summary>
    public static bool TransportIsValid(uint source, uint destination, byte protocol, ReadOnlySpan<byte> segment) =>
        Fold(Add(segment, PseudoHeader(source, destination, protocol, segment.Length))) == 0;

    /// <summary>
    /// Folds the ones'-complement sum of <c>frame[start..]</c> (which includes the pseudo-header sum the guest
    /// left in the checksum field) and stores it at <c>start + offset</c>.
    /// </summary>
    public static bool TryComplete(Span<byte> frame, int start, int offset)
    {
        if (start >= frame.Length || offset > frame.Length - start - 2)
        {
            return false;
        }

        // A computed zero goes out as 0xffff, which means the same in ones' complement and is valid for UDP.
        ushort result = Fold(Add(frame[start..]));
        BinaryPrimitives.WriteUInt16BigEndian(frame[(start + offset)..], result == 0 ? (ushort)0xffff : result);
        return true;
    }
}
