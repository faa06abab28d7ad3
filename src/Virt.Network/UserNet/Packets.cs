using System.Buffers.Binary;
using System.Net;

namespace Virt.Network.UserNet;

/// <summary>Protocol numbers and sizes of the headers the user-mode stack reads and writes.</summary>
internal static class Proto
{
    public const ushort EtherTypeIpv4 = 0x0800;
    public const ushort EtherTypeArp = 0x0806;
    public const byte Icmp = 1;
    public const byte Tcp = 6;
    public const byte Udp = 17;
    public const int EthernetHeader = 14;
    public const int Ipv4Header = 20;
    public const int UdpHeader = 8;
    public const int TcpHeader = 20;
    public const int ArpPacket = 28;

    /// <summary>Largest IPv4 packet the stack sends to the guest (the guest's Ethernet MTU).</summary>
    public const int Mtu = 1500;

    /// <summary>Largest TCP payload per segment to the guest: MTU minus IPv4 and TCP headers.</summary>
    public const int MaxSegment = Mtu - Ipv4Header - TcpHeader;

    /// <summary>Largest UDP payload the stack sends unfragmented.</summary>
    public const int MaxDatagram = Mtu - Ipv4Header - UdpHeader;
}

/// <summary>IPv4 addresses as host-order integers, the form the stack keys its tables with.</summary>
internal static class Ip4
{
    public const uint Broadcast = 0xFFFF_FFFF;

    public static uint Read(ReadOnlySpan<byte> bytes) => BinaryPrimitives.ReadUInt32BigEndian(bytes);

    public static void Write(Span<byte> bytes, uint address) => BinaryPrimitives.WriteUInt32BigEndian(bytes, address);

    /// <exception cref="ArgumentException">The address is not IPv4.</exception>
    public static uint From(IPAddress address, string paramName)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
        {
            throw new ArgumentException($"{address} is not an IPv4 address; the user-mode network is IPv4 only.", paramName);
        }

        Span<byte> b = stackalloc byte[4];
        address.TryWriteBytes(b, out _);
        return Read(b);
    }

    public static IPAddress ToAddress(uint address)
    {
        Span<byte> b = stackalloc byte[4];
        Write(b, address);
        return new IPAddress(b);
    }

    public static string Format(uint address) => $"{address >> 24}.{(address >> 16) & 0xFF}.{(address >> 8) & 0xFF}.{address & 0xFF}";
}

/// <summary>An IPv4 packet from the guest whose header passed every check; the payload is bounded by the total length.</summary>
internal readonly ref struct Ipv4Packet
{
    public Ipv4Packet(uint source, uint destination, byte protocol, ReadOnlySpan<byte> payload)
    {
        Source = source;
        Destination = destination;
        Protocol = protocol;
        Payload = payload;
    }

    public uint Source { get; }

    public uint Destination { get; }

    public byte Protocol { get; }

    public ReadOnlySpan<byte> Payload { get; }

    /// <summary>
    /// Parses the IPv4 header at the start of <paramref name="ip"/>: version 4, a header of 20 to 60 bytes inside
    /// the total length, the total length inside the frame, a valid header checksum, and no fragment (the stack
    /// does not reassemble: fragments are dropped).
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> ip, out Ipv4Packet packet)
    {
        packet = default;
        if (ip.Length < Proto.Ipv4Header || (ip[0] >> 4) != 4)
        {
            return false;
        }

        int headerLength = (ip[0] & 0xF) * 4;
        int total = BinaryPrimitives.ReadUInt16BigEndian(ip[2..]);
        if (headerLength < Proto.Ipv4Header || total < headerLength || total > ip.Length)
        {
            return false;
        }

        ushort fragment = BinaryPrimitives.ReadUInt16BigEndian(ip[6..]);
        if ((fragment & 0x3FFF) != 0 || (fragment & 0x8000) != 0)
        {
            return false; // more-fragments, an offset, or the reserved bit
        }

        if (Checksum.Fold(Checksum.Add(ip[..headerLength])) != 0)
        {
            return false;
        }

        packet = new Ipv4Packet(Ip4.Read(ip[12..]), Ip4.Read(ip[16..]), ip[9], ip[headerLength..total]);
        return true;
    }
}

/// <summary>A TCP segment whose header passed every check.</summary>
internal readonly ref struct TcpSegment
{
    public const byte Fin = 0x01;
    public const byte Syn = 0x02;
    public const byte Rst = 0x04;
    public const byte Psh = 0x08;
    public const byte Ack = 0x10;

    public ushort SourcePort { get; init; }

    public ushort DestinationPort { get; init; }

    public uint Sequence { get; init; }

    public uint Acknowledgment { get; init; }

    public byte Flags { get; init; }

    public ushort Window { get; init; }

    /// <summary>The MSS option, or 0 when absent.</summary>
    public ushort Mss { get; init; }

    public ReadOnlySpan<byte> Payload { get; init; }

    public bool Has(byte flag) => (Flags & flag) != 0;

    /// <summary>Sequence space the segment occupies: payload plus one each for SYN and FIN.</summary>
    public int Length => Payload.Length + (Has(Syn) ? 1 : 0) + (Has(Fin) ? 1 : 0);

    /// <summary>Parses a TCP segment: data offset inside the segment, a valid checksum, options walked with bounds checks.</summary>
    public static bool TryParse(in Ipv4Packet ip, out TcpSegment segment)
    {
        segment = default;
        var s = ip.Payload;
        if (s.Length < Proto.TcpHeader)
        {
            return false;
        }

        int offset = (s[12] >> 4) * 4;
        if (offset < Proto.TcpHeader || offset > s.Length || !Checksum.TransportIsValid(ip.Source, ip.Destination, Proto.Tcp, s))
        {
            return false;
        }

        ushort mss = 0;
        var options = s[Proto.TcpHeader..offset];
        while (!options.IsEmpty)
        {
            byte kind = options[0];
            if (kind == 0)
            {
                break; // end of option list
            }

            if (kind == 1)
            {
                options = options[1..]; // no-operation
                continue;
            }

            if (options.Length < 2 || options[1] < 2 || options[1] > options.Length)
            {
                return false; // an option running past the header
            }

            if (kind == 2 && options[1] == 4)
            {
                mss = BinaryPrimitives.ReadUInt16BigEndian(options[2..]);
            }

            options = options[options[1]..];
        }

        segment = new TcpSegment
        {
            SourcePort = BinaryPrimitives.ReadUInt16BigEndian(s),
            DestinationPort = BinaryPrimitives.ReadUInt16BigEndian(s[2..]),
            Sequence = BinaryPrimitives.ReadUInt32BigEndian(s[4..]),
            Acknowledgment = BinaryPrimitives.ReadUInt32BigEndian(s[8..]),
            Flags = (byte)(s[13] & 0x3F),
            Window = BinaryPrimitives.ReadUInt16BigEndian(s[14..]),
            Mss = mss,
            Payload = s[offset..],
        };
        return true;
    }
}

/// <summary>A UDP datagram whose header passed every check.</summary>
internal readonly ref struct UdpDatagram
{
    public ushort SourcePort { get; init; }

    public ushort DestinationPort { get; init; }

    public ReadOnlySpan<byte> Payload { get; init; }

    /// <summary>Parses a UDP datagram: length field inside the packet, checksum valid unless zero (RFC 768: not computed).</summary>
    public static bool TryParse(in Ipv4Packet ip, out UdpDatagram datagram)
    {
        datagram = default;
        var s = ip.Payload;
        if (s.Length < Proto.UdpHeader)
        {
            return false;
        }

        int length = BinaryPrimitives.ReadUInt16BigEndian(s[4..]);
        if (length < Proto.UdpHeader || length > s.Length)
        {
            return false;
        }

        s = s[..length];
        if (BinaryPrimitives.ReadUInt16BigEndian(s[6..]) != 0 && !Checksum.TransportIsValid(ip.Source, ip.Destination, Proto.Udp, s))
        {
            return false;
        }

        datagram = new UdpDatagram
        {
            SourcePort = BinaryPrimitives.ReadUInt16BigEndian(s),
            DestinationPort = BinaryPrimitives.ReadUInt16BigEndian(s[2..]),
            Payload = s[Proto.UdpHeader..],
        };
        return true;
    }
}

/// <summary>Builds the frames the stack sends to the guest: Ethernet, an IPv4 header without options, and a transport header with its checksum.</summary>
internal static class FrameBuilder
{
    private const int IpOffset = Proto.EthernetHeader;
    private const int TransportOffset = Proto.EthernetHeader + Proto.Ipv4Header;

    /// <summary>A frame with Ethernet and IPv4 headers filled in and <paramref name="transportLength"/> zero bytes after them.</summary>
    public static byte[] Ipv4(MacAddress to, MacAddress from, uint source, uint destination, byte protocol, int transportLength)
    {
        var f = new byte[TransportOffset + transportLength];
        to.CopyTo(f);
        from.CopyTo(f.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), Proto.EtherTypeIpv4);
        var ip = f.AsSpan(IpOffset, Proto.Ipv4Header);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(Proto.Ipv4Header + transportLength));
        BinaryPrimitives.WriteUInt16BigEndian(ip[6..], 0x4000); // don't fragment
        ip[8] = 64;
        ip[9] = protocol;
        Ip4.Write(ip[12..], source);
        Ip4.Write(ip[16..], destination);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum.Fold(Checksum.Add(ip)));
        return f;
    }

    public static byte[] Udp(MacAddress to, MacAddress from, uint source, ushort sourcePort, uint destination, ushort destinationPort, ReadOnlySpan<byte> payload)
    {
        int length = Proto.UdpHeader + payload.Length;
        var f = Ipv4(to, from, source, destination, Proto.Udp, length);
        var udp = f.AsSpan(TransportOffset);
        BinaryPrimitives.WriteUInt16BigEndian(udp, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[2..], destinationPort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[4..], (ushort)length);
        payload.CopyTo(udp[Proto.UdpHeader..]);
        ushort sum = Checksum.Fold(Checksum.Add(udp, Checksum.PseudoHeader(source, destination, Proto.Udp, length)));
        BinaryPrimitives.WriteUInt16BigEndian(udp[6..], sum == 0 ? (ushort)0xFFFF : sum);
        return f;
    }

    /// <summary>A TCP segment; an MSS option is added when <paramref name="mss"/> is not zero (on SYNs).</summary>
    public static byte[] Tcp(MacAddress to, MacAddress from, uint source, ushort sourcePort, uint destination, ushort destinationPort,
        uint sequence, uint acknowledgment, byte flags, ushort window, ReadOnlySpan<byte> payload, ushort mss = 0)
    {
        int header = mss != 0 ? Proto.TcpHeader + 4 : Proto.TcpHeader;
        int length = header + payload.Length;
        var f = Ipv4(to, from, source, destination, Proto.Tcp, length);
        var tcp = f.AsSpan(TransportOffset);
        BinaryPrimitives.WriteUInt16BigEndian(tcp, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[2..], destinationPort);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[4..], sequence);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[8..], acknowledgment);
        tcp[12] = (byte)((header / 4) << 4);
        tcp[13] = flags;
        BinaryPrimitives.WriteUInt16BigEndian(tcp[14..], window);
        if (mss != 0)
        {
            tcp[20] = 2;
            tcp[21] = 4;
            BinaryPrimitives.WriteUInt16BigEndian(tcp[22..], mss);
        }

        payload.CopyTo(tcp[header..]);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], Checksum.Fold(Checksum.Add(tcp, Checksum.PseudoHeader(source, destination, Proto.Tcp, length))));
        return f;
    }

    public static byte[] Arp(MacAddress to, MacAddress from, ushort operation, MacAddress senderMac, uint senderIp, MacAddress targetMac, uint targetIp)
    {
        var f = new byte[Proto.EthernetHeader + Proto.ArpPacket];
        to.CopyTo(f);
        from.CopyTo(f.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), Proto.EtherTypeArp);
        var a = f.AsSpan(Proto.EthernetHeader);
        BinaryPrimitives.WriteUInt16BigEndian(a, 1);                     // hardware type: Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(a[2..], Proto.EtherTypeIpv4);
        a[4] = 6;
        a[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(a[6..], operation);
        senderMac.CopyTo(a[8..]);
        Ip4.Write(a[14..], senderIp);
        targetMac.CopyTo(a[18..]);
        Ip4.Write(a[24..], targetIp);
        return f;
    }
}
