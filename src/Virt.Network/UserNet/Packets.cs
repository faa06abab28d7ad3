using System.Buffers.Binary;
using System.Net;

namespace Virt.Network.UserNet;

/// <summary>Protocol numbers and sizes of the headers the user-mode stack reads and writes.</summary>
internal static class Proto
{
    public const ushort EtherTypeIpv4 = 0x0800;
    public const ushort EtherTypeArp = 0x0806;
    public const ushort EtherTypeIpv6 = 0x86DD;
    public const byte Icmp = 1;
    public const byte Icmpv6 = 58;
    public const int Ipv6Header = 40;
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

    /// <summary>Largest TCP payload per segment to the guest over IPv6.</summary>
    public const int MaxSegment6 = Mtu - Ipv6Header - TcpHeader;

    /// <summary>Largest UDP payload the stack sends to the guest over IPv6.</summary>
    public const int MaxDatagram6 = Mtu - Ipv6Header - UdpHeader;
}

/// <summary>
/// Addresses as 128-bit integers, the form the stack keys its connection tables with. IPv4 addresses are held
/// as IPv4-mapped IPv6 addresses (<c>::ffff:a.b.c.d</c>), which no IPv6 guest frame may carry.
/// </summary>
internal static class Ip6
{
    /// <summary>ff02::1, all nodes on the link.</summary>
    public static readonly UInt128 AllNodes = new(0xFF02_0000_0000_0000, 1);

    /// <summary>ff02::2, all routers on the link.</summary>
    public static readonly UInt128 AllRouters = new(0xFF02_0000_0000_0000, 2);

    public static UInt128 Read(ReadOnlySpan<byte> bytes) => BinaryPrimitives.ReadUInt128BigEndian(bytes);

    public static void Write(Span<byte> bytes, UInt128 address) => BinaryPrimitives.WriteUInt128BigEndian(bytes, address);

    public static UInt128 Mapped(uint v4) => ((UInt128)0xFFFF << 32) | v4;

    public static bool IsMapped(UInt128 address) => (address >> 32) == 0xFFFF;

    public static uint V4(UInt128 mapped) => (uint)mapped;

    public static bool IsMulticast(UInt128 address) => (address >> 120) == 0xFF;

    public static bool IsLinkLocal(UInt128 address) => (address >> 118) == (0xFE80 >> 6);

    /// <summary>The solicited-node multicast address of <paramref name="address"/> (ff02::1:ffXX:XXXX, RFC 4291).</summary>
    public static UInt128 SolicitedNode(UInt128 address) => new UInt128(0xFF02_0000_0000_0000, 0x0000_0001_FF00_0000) | (address & 0xFF_FFFF);

    /// <summary>Whether <paramref name="address"/> is a solicited-node multicast address (ff02::1:ff00:0/104).</summary>
    public static bool IsSolicitedNode(UInt128 address) => (address >> 24) == (new UInt128(0xFF02_0000_0000_0000, 0x0000_0001_FF00_0000) >> 24);

    public static UInt128 From(IPAddress address)
    {
        if (address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork)
        {
            return Mapped(Ip4.From(address, nameof(address)));
        }

        Span<byte> b = stackalloc byte[16];
        address.TryWriteBytes(b, out _);
        return Read(b);
    }

    /// <summary>The host-side address: IPv4 for a mapped address, IPv6 otherwise.</summary>
    public static IPAddress ToAddress(UInt128 address)
    {
        if (IsMapped(address))
        {
            return Ip4.ToAddress(V4(address));
        }

        Span<byte> b = stackalloc byte[16];
        Write(b, address);
        return new IPAddress(b);
    }

    /// <summary>The Ethernet multicast address of an IPv6 multicast address (33:33 and its low 32 bits, RFC 2464).</summary>
    public static MacAddress MulticastMac(UInt128 address) =>
        MacAddress.FromBytes([0x33, 0x33, (byte)(address >> 24), (byte)(address >> 16), (byte)(address >> 8), (byte)address]);
}

/// <summary>
/// An IPv6 packet from the guest whose header passed every check: version 6, the payload length inside the frame,
/// hop-by-hop and destination options skipped with bounds checks. A fragment header ends the parse as a fragment
/// for the reassembler (or drops the packet where fragments are not taken); routing headers and unknown extension
/// headers drop the packet: the stack does not route by source.
/// </summary>
internal readonly ref struct Ipv6Packet
{
    private const int MaxExtensionHeaders = 8;
    private const byte FragmentHeader = 44;

    public UInt128 Source { get; init; }

    public UInt128 Destination { get; init; }

    /// <summary>The upper-layer protocol after any extension headers.</summary>
    public byte Protocol { get; init; }

    public byte HopLimit { get; init; }

    /// <summary>The upper-layer payload (of a fragment: the fragment's data after its fragment header).</summary>
    public ReadOnlySpan<byte> Payload { get; init; }

    /// <summary>Whether a fragment header was read (with <c>allowFragments</c>); <see cref="Protocol"/> is then its next header.</summary>
    public bool IsFragment { get; init; }

    /// <summary>Of a fragment: where its data lies in the fragmentable part, in bytes.</summary>
    public int FragmentOffset { get; init; }

    /// <summary>Of a fragment: the M flag.</summary>
    public bool MoreFragments { get; init; }

    /// <summary>Of a fragment: the identification.</summary>
    public uint Identification { get; init; }

    /// <summary>
    /// Parses the IPv6 header and the hop-by-hop and destination options headers before the upper layer. A fragment
    /// header ends the parse as a fragment when <paramref name="allowFragments"/> (the caller reassembles it; the next
    /// header may then be anything, checked again on the whole packet), else the packet is dropped.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> ip, out Ipv6Packet packet, bool allowFragments = false)
    {
        packet = default;
        if (ip.Length < Proto.Ipv6Header || (ip[0] >> 4) != 6)
        {
            return false;
        }

        int length = BinaryPrimitives.ReadUInt16BigEndian(ip[4..]);
        if (length > ip.Length - Proto.Ipv6Header)
        {
            return false; // a payload length past the frame (0, a jumbogram, is refused below as too short)
        }

        byte next = ip[6];
        var payload = ip.Slice(Proto.Ipv6Header, length);
        for (int i = 0; next is 0 or 60; i++)
        {
            // Hop-by-hop (only first, RFC 8200) or destination options: skipped, their options unread.
            if (i >= MaxExtensionHeaders || (next == 0 && i > 0) || payload.Length < 8)
            {
                return false;
            }

            int size = (payload[1] + 1) * 8;
            if (size > payload.Length)
            {
                return false;
            }

            next = payload[0];
            payload = payload[size..];
        }

        if (next == FragmentHeader && allowFragments)
        {
            if (payload.Length < 8)
            {
                return false;
            }

            ushort field = BinaryPrimitives.ReadUInt16BigEndian(payload[2..]);
            packet = new Ipv6Packet
            {
                Source = Ip6.Read(ip[8..]),
                Destination = Ip6.Read(ip[24..]),
                Protocol = payload[0],
                HopLimit = ip[7],
                Payload = payload[8..],
                IsFragment = true,
                FragmentOffset = field & 0xFFF8,
                MoreFragments = (field & 1) != 0,
                Identification = BinaryPrimitives.ReadUInt32BigEndian(payload[4..]),
            };
            return true;
        }

        if (next is not (Proto.Tcp or Proto.Udp or Proto.Icmpv6))
        {
            return false; // routing, fragment, no next header, or a protocol the stack does not carry
        }

        packet = new Ipv6Packet
        {
            Source = Ip6.Read(ip[8..]),
            Destination = Ip6.Read(ip[24..]),
            Protocol = next,
            HopLimit = ip[7],
            Payload = payload,
        };
        return true;
    }

    /// <summary>The ones'-complement sum of the IPv6 pseudo-header (RFC 8200 8.1) for a payload of this packet's protocol.</summary>
    public uint PseudoHeader(int length) => Checksum.PseudoHeader6(Source, Destination, Protocol, length);
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
            throw new ArgumentException($"{address} is not an IPv4 address; give an IPv4 address here.", paramName);
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

    /// <summary>The identification field (which datagram a fragment belongs to).</summary>
    public ushort Identification { get; init; }

    /// <summary>Where the payload lies in the original datagram, in bytes (the fragment offset times 8).</summary>
    public int FragmentOffset { get; init; }

    /// <summary>The more-fragments flag.</summary>
    public bool MoreFragments { get; init; }

    /// <summary>Whether the packet is a fragment (more fragments follow, or it does not start the datagram).</summary>
    public bool IsFragment => MoreFragments || FragmentOffset != 0;

    /// <summary>
    /// Parses the IPv4 header at the start of <paramref name="ip"/>: version 4, a header of 20 to 60 bytes inside
    /// the total length, the total length inside the frame, a valid header checksum, the reserved flag clear.
    /// Fragments are refused unless <paramref name="allowFragments"/> (the caller reassembles them).
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> ip, out Ipv4Packet packet, bool allowFragments = false)
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
        bool more = (fragment & 0x2000) != 0;
        int offset = (fragment & 0x1FFF) * 8;
        if ((fragment & 0x8000) != 0 || (!allowFragments && (more || offset != 0)))
        {
            return false; // the reserved bit, or a fragment the caller does not take
        }

        if (Checksum.Fold(Checksum.Add(ip[..headerLength])) != 0)
        {
            return false;
        }

        packet = new Ipv4Packet(Ip4.Read(ip[12..]), Ip4.Read(ip[16..]), ip[9], ip[headerLength..total])
        {
            Identification = BinaryPrimitives.ReadUInt16BigEndian(ip[4..]),
            FragmentOffset = offset,
            MoreFragments = more,
        };
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

    /// <summary>The window scale option (RFC 7323) clamped to 14, or -1 when absent.</summary>
    public int WindowScale { get; init; }

    /// <summary>Whether the SACK-permitted option (RFC 2018) was present; the stack never offers SACK, so this only informs.</summary>
    public bool SackPermitted { get; init; }

    public ReadOnlySpan<byte> Payload { get; init; }

    public bool Has(byte flag) => (Flags & flag) != 0;

    /// <summary>Sequence space the segment occupies: payload plus one each for SYN and FIN.</summary>
    public int Length => Payload.Length + (Has(Syn) ? 1 : 0) + (Has(Fin) ? 1 : 0);

    /// <summary>Parses a TCP segment: data offset inside the segment, a valid checksum, options walked with bounds checks.</summary>
    /// <remarks>
    /// <paramref name="checksumTrusted"/>: the frame came from the guest's memory with its checksum left partial or
    /// marked valid by the NIC's offload header, so there is nothing to check (the bytes never crossed a wire).
    /// </remarks>
    public static bool TryParse(in Ipv4Packet ip, out TcpSegment segment, bool checksumTrusted = false) =>
        TryParse(ip.Payload, checksumTrusted ? null : Checksum.PseudoHeader(ip.Source, ip.Destination, Proto.Tcp, ip.Payload.Length), out segment);

    /// <summary>Parses a TCP segment carried over IPv6.</summary>
    public static bool TryParse(in Ipv6Packet ip, out TcpSegment segment, bool checksumTrusted = false) =>
        TryParse(ip.Payload, checksumTrusted ? null : ip.PseudoHeader(ip.Payload.Length), out segment);

    private static bool TryParse(ReadOnlySpan<byte> s, uint? pseudoHeader, out TcpSegment segment)
    {
        segment = default;
        if (s.Length < Proto.TcpHeader)
        {
            return false;
        }

        int offset = (s[12] >> 4) * 4;
        if (offset < Proto.TcpHeader || offset > s.Length || (pseudoHeader is uint pseudo && Checksum.Fold(Checksum.Add(s, pseudo)) != 0))
        {
            return false;
        }

        ushort mss = 0;
        int windowScale = -1;
        bool sackPermitted = false;
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
            else if (kind == 3 && options[1] == 3)
            {
                windowScale = Math.Min((int)options[2], 14); // RFC 7323 2.3: a larger shift is taken as 14
            }
            else if (kind == 4 && options[1] == 2)
            {
                sackPermitted = true;
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
            WindowScale = windowScale,
            SackPermitted = sackPermitted,
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
    public static bool TryParse(in Ipv4Packet ip, out UdpDatagram datagram, bool checksumTrusted = false)
    {
        datagram = default;
        if (!TryLength(ip.Payload, out var s))
        {
            return false;
        }

        if (!checksumTrusted && BinaryPrimitives.ReadUInt16BigEndian(s[6..]) != 0 && !Checksum.TransportIsValid(ip.Source, ip.Destination, Proto.Udp, s))
        {
            return false;
        }

        datagram = From(s);
        return true;
    }

    /// <summary>Parses a UDP datagram over IPv6, where the checksum is mandatory (RFC 8200 8.1).</summary>
    public static bool TryParse(in Ipv6Packet ip, out UdpDatagram datagram, bool checksumTrusted = false)
    {
        datagram = default;
        if (!TryLength(ip.Payload, out var s) || (!checksumTrusted && BinaryPrimitives.ReadUInt16BigEndian(s[6..]) == 0)
            || (!checksumTrusted && Checksum.Fold(Checksum.Add(s, ip.PseudoHeader(s.Length))) != 0))
        {
            return false;
        }

        datagram = From(s);
        return true;
    }

    private static bool TryLength(ReadOnlySpan<byte> s, out ReadOnlySpan<byte> datagram)
    {
        datagram = default;
        if (s.Length < Proto.UdpHeader)
        {
            return false;
        }

        int length = BinaryPrimitives.ReadUInt16BigEndian(s[4..]);
        if (length < Proto.UdpHeader || length > s.Length)
        {
            return false;
        }

        datagram = s[..length];
        return true;
    }

    private static UdpDatagram From(ReadOnlySpan<byte> s) => new()
    {
        SourcePort = BinaryPrimitives.ReadUInt16BigEndian(s),
        DestinationPort = BinaryPrimitives.ReadUInt16BigEndian(s[2..]),
        Payload = s[Proto.UdpHeader..],
    };
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
        WriteIpv4(f, to, from, source, destination, protocol, transportLength);
        return f;
    }

    /// <summary>Writes the Ethernet and IPv4 headers at the start of <paramref name="f"/> (the transport part is left as it is).</summary>
    public static void WriteIpv4(Span<byte> f, MacAddress to, MacAddress from, uint source, uint destination, byte protocol, int transportLength)
    {
        to.CopyTo(f);
        from.CopyTo(f[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(f[12..], Proto.EtherTypeIpv4);
        var ip = f.Slice(IpOffset, Proto.Ipv4Header);
        ip.Clear();
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(Proto.Ipv4Header + transportLength));
        BinaryPrimitives.WriteUInt16BigEndian(ip[6..], 0x4000); // don't fragment
        ip[8] = 64;
        ip[9] = protocol;
        Ip4.Write(ip[12..], source);
        Ip4.Write(ip[16..], destination);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum.Fold(Checksum.Add(ip)));
    }

    /// <summary>Writes a TCP header without options (checksum and urgent pointer zero) at the start of <paramref name="tcp"/>.</summary>
    public static void WriteTcpHeader(Span<byte> tcp, ushort sourcePort, ushort destinationPort, uint sequence, uint acknowledgment, byte flags, ushort window)
    {
        BinaryPrimitives.WriteUInt16BigEndian(tcp, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[2..], destinationPort);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[4..], sequence);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[8..], acknowledgment);
        tcp[12] = (Proto.TcpHeader / 4) << 4;
        tcp[13] = flags;
        BinaryPrimitives.WriteUInt16BigEndian(tcp[14..], window);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[16..], 0);
    }

    public static byte[] Udp(MacAddress to, MacAddress from, uint source, ushort sourcePort, uint destination, ushort destinationPort, ReadOnlySpan<byte> payload)
    {
        int length = Proto.UdpHeader + payload.Length;
        var f = Ipv4(to, from, source, destination, Proto.Udp, length);
        FillUdp(f.AsSpan(TransportOffset), sourcePort, destinationPort, payload, Checksum.PseudoHeader(source, destination, Proto.Udp, length));
        return f;
    }

    /// <summary>Writes a UDP header and <paramref name="payload"/> into <paramref name="udp"/>, checksummed over <paramref name="pseudoHeader"/> (a zero sum is sent as 0xFFFF).</summary>
    private static void FillUdp(Span<byte> udp, ushort sourcePort, ushort destinationPort, ReadOnlySpan<byte> payload, uint pseudoHeader)
    {
        BinaryPrimitives.WriteUInt16BigEndian(udp, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[2..], destinationPort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[4..], (ushort)(Proto.UdpHeader + payload.Length));
        payload.CopyTo(udp[Proto.UdpHeader..]);
        ushort sum = Checksum.Fold(Checksum.Add(udp[..(Proto.UdpHeader + payload.Length)], pseudoHeader));
        BinaryPrimitives.WriteUInt16BigEndian(udp[6..], sum == 0 ? (ushort)0xFFFF : sum);
    }

    /// <summary>
    /// A TCP segment; an MSS option is added when <paramref name="mss"/> is not zero and a window scale option when
    /// <paramref name="windowScale"/> is not negative (both on SYNs only).
    /// </summary>
    public static byte[] Tcp(MacAddress to, MacAddress from, uint source, ushort sourcePort, uint destination, ushort destinationPort,
        uint sequence, uint acknowledgment, byte flags, ushort window, ReadOnlySpan<byte> payload, ushort mss = 0, int windowScale = -1)
    {
        int header = Proto.TcpHeader + (mss != 0 ? 4 : 0) + (windowScale >= 0 ? 4 : 0);
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
        int o = Proto.TcpHeader;
        if (mss != 0)
        {
            tcp[o] = 2;
            tcp[o + 1] = 4;
            BinaryPrimitives.WriteUInt16BigEndian(tcp[(o + 2)..], mss);
            o += 4;
        }

        if (windowScale >= 0)
        {
            tcp[o] = 1; // no-operation, so the next option ends on a 4-byte boundary
            tcp[o + 1] = 3;
            tcp[o + 2] = 3;
            tcp[o + 3] = (byte)windowScale;
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

    /// <summary>A frame with Ethernet and IPv6 headers filled in and <paramref name="payloadLength"/> zero bytes after them.</summary>
    public static byte[] Ipv6(MacAddress to, MacAddress from, UInt128 source, UInt128 destination, byte protocol, int payloadLength, byte hopLimit = 64)
    {
        var f = new byte[Proto.EthernetHeader + Proto.Ipv6Header + payloadLength];
        WriteIpv6(f, to, from, source, destination, protocol, payloadLength, hopLimit);
        return f;
    }

    /// <summary>Writes the Ethernet and IPv6 headers at the start of <paramref name="f"/>.</summary>
    public static void WriteIpv6(Span<byte> f, MacAddress to, MacAddress from, UInt128 source, UInt128 destination, byte protocol, int payloadLength, byte hopLimit)
    {
        to.CopyTo(f);
        from.CopyTo(f[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(f[12..], Proto.EtherTypeIpv6);
        var ip = f.Slice(IpOffset, Proto.Ipv6Header);
        ip[..4].Clear();
        ip[0] = 0x60;
        BinaryPrimitives.WriteUInt16BigEndian(ip[4..], (ushort)payloadLength);
        ip[6] = protocol;
        ip[7] = hopLimit;
        Ip6.Write(ip[8..], source);
        Ip6.Write(ip[24..], destination);
    }

    /// <summary>An ICMPv6 message (type, code, then <paramref name="body"/>) with its checksum.</summary>
    public static byte[] Icmpv6(MacAddress to, MacAddress from, UInt128 source, UInt128 destination, byte type, byte code, ReadOnlySpan<byte> body, byte hopLimit = 255)
    {
        var f = Ipv6(to, from, source, destination, Proto.Icmpv6, 4 + body.Length, hopLimit);
        var icmp = f.AsSpan(Proto.EthernetHeader + Proto.Ipv6Header);
        icmp[0] = type;
        icmp[1] = code;
        body.CopyTo(icmp[4..]);
        BinaryPrimitives.WriteUInt16BigEndian(icmp[2..], Checksum.Fold(Checksum.Add(icmp, Checksum.PseudoHeader6(source, destination, Proto.Icmpv6, icmp.Length))));
        return f;
    }

    public static byte[] Udp6(MacAddress to, MacAddress from, UInt128 source, ushort sourcePort, UInt128 destination, ushort destinationPort, ReadOnlySpan<byte> payload)
    {
        int length = Proto.UdpHeader + payload.Length;
        var f = Ipv6(to, from, source, destination, Proto.Udp, length);
        FillUdp(f.AsSpan(Proto.EthernetHeader + Proto.Ipv6Header), sourcePort, destinationPort, payload, Checksum.PseudoHeader6(source, destination, Proto.Udp, length));
        return f;
    }

    /// <summary>A TCP segment over IPv6, options as for <see cref="Tcp"/>.</summary>
    public static byte[] Tcp6(MacAddress to, MacAddress from, UInt128 source, ushort sourcePort, UInt128 destination, ushort destinationPort,
        uint sequence, uint acknowledgment, byte flags, ushort window, ReadOnlySpan<byte> payload, ushort mss = 0, int windowScale = -1)
    {
        // The IPv4 builder lays out the TCP header; its bytes move behind an IPv6 header and get the IPv6 checksum.
        var v4 = Tcp(to, from, 0, sourcePort, 0, destinationPort, sequence, acknowledgment, flags, window, payload, mss, windowScale);
        var segment = v4.AsSpan(TransportOffset);
        var f = Ipv6(to, from, source, destination, Proto.Tcp, segment.Length);
        var tcp = f.AsSpan(Proto.EthernetHeader + Proto.Ipv6Header);
        segment.CopyTo(tcp);
        tcp[16] = tcp[17] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], Checksum.Fold(Checksum.Add(tcp, Checksum.PseudoHeader6(source, destination, Proto.Tcp, tcp.Length))));
        return f;
    }
}
