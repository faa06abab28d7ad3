using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Virt.Network;

/// <summary>The Internet checksum (RFC 1071): transmit checksum completion for virtio-net and the user-mode stack's checks.</summary>
internal static class Checksum
{
    /// <summary>
    /// Adds the big-endian 16-bit words of <paramref name="data"/> (a last odd byte as the high half of a word) to
    /// <paramref name="sum"/>. The bulk is summed eight bytes at a time in the machine's byte order and swapped once at
    /// the end: the ones'-complement sum does not depend on byte order except for that swap (RFC 1071, 2.B).
    /// </summary>
    public static uint Add(ReadOnlySpan<byte> data, uint sum = 0)
    {
        ulong wide = 0;
        int i = 0;
        ref byte start = ref MemoryMarshal.GetReference(data);
        for (; i + 32 <= data.Length; i += 32)
        {
            ulong a = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref start, i));
            ulong b = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref start, i + 8));
            ulong c = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref start, i + 16));
            ulong d = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref start, i + 24));
            wide += (a & 0xFFFF_FFFF) + (a >> 32) + (b & 0xFFFF_FFFF) + (b >> 32) + (c & 0xFFFF_FFFF) + (c >> 32) + (d & 0xFFFF_FFFF) + (d >> 32);
        }

        for (; i + 8 <= data.Length; i += 8)
        {
            ulong a = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref start, i));
            wide += (a & 0xFFFF_FFFF) + (a >> 32);
        }

        for (; i + 2 <= data.Length; i += 2)
        {
            wide += Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref start, i));
        }

        while (wide > 0xFFFF)
        {
            wide = (wide & 0xFFFF) + (wide >> 16);
        }

        ushort words = (ushort)wide;
        if (BitConverter.IsLittleEndian)
        {
            words = BinaryPrimitives.ReverseEndianness(words);
        }

        ulong total = (ulong)sum + words;
        if (i < data.Length)
        {
            total += (uint)data[i] << 8;
        }

        while (total > 0x7FFF_FFFF)
        {
            total = (total & 0xFFFF) + (total >> 16);
        }

        return (uint)total;
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
