using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Virt.Network.UserNet;

namespace Virt.Network;

/// <summary>IPv6 for the guest: neighbour discovery, router advertisements for SLAAC, echo, and TCP and UDP to host sockets.</summary>
public sealed partial class UserModeNetwork
{
    private const int MaxNeighbours = 1024;
    private const byte EchoRequest = 128;
    private const byte EchoReply = 129;
    private const byte RouterSolicitation = 133;
    private const byte RouterAdvertisement = 134;

    /// <summary>ff02::1:2, All_DHCP_Relay_Agents_and_Servers (RFC 8415 7.1).</summary>
    private static readonly UInt128 AllDhcpServers = new(0xFF02_0000_0000_0000, 0x1_0002);
    private const byte NeighbourSolicitation = 135;
    private const byte NeighbourAdvertisement = 136;
    private const ushort RouterLifetimeSeconds = 1800;
    private const uint PrefixValidSeconds = 86400;
    private const uint PrefixPreferredSeconds = 14400;

    private readonly Ipv6Addresses? _v6;
    private readonly Dictionary<UInt128, MacAddress> _neighbours = [];
    private readonly Dictionary<MacAddress, UInt128> _guestAddress6ByMac = [];
    private UInt128 _lastGuestAddress6; // the address in the prefix a guest last sent from or claimed; 0 for none

    private MacAddress? GuestMac6(UInt128 ip) => _neighbours.TryGetValue(ip, out var mac) ? mac : null;

    private void LearnNeighbour(UInt128 ip, MacAddress mac)
    {
        if (mac.IsMulticast)
        {
            return;
        }

        bool known = _neighbours.TryGetValue(ip, out var old);
        if (!known && _neighbours.Count >= MaxNeighbours)
        {
            return;
        }

        if (known && old == mac && (ip == _lastGuestAddress6 || !_v6!.IsGuestAddress(ip)))
        {
            return; // the common case: a packet from an address already learned
        }

        _neighbours[ip] = mac;
        if (_v6!.IsGuestAddress(ip))
        {
            _lastGuestAddress6 = ip;
            if (_guestAddress6ByMac.Count < MaxNeighbours || _guestAddress6ByMac.ContainsKey(mac))
            {
                _guestAddress6ByMac[mac] = ip;
            }
        }

        if (!known)
        {
            // Forwarded connections waiting for this address send their SYN now instead of at the next retransmission.
            foreach (var c in _tcp.Values.Where(c => c.Key.GuestIp == ip && c.Phase == TcpPhase.SynSent).ToList())
            {
                c.OnTick(long.MaxValue);
            }
        }
    }

    /// <summary>
    /// The guest's IPv6 address in the prefix, as learned from its packets and its duplicate address detection: the
    /// one of the MAC address that holds <paramref name="ipv4"/> (by ARP or lease) when it has one, else the address
    /// a guest sent from or claimed last; null when there is none (or IPv6 is off).
    /// </summary>
    private UInt128? GuestAddress6(uint ipv4)
    {
        if (_v6 is null)
        {
            return null;
        }

        MacAddress? mac = GuestMac(ipv4);
        if (mac is null)
        {
            foreach (var (leaseMac, leased) in _dhcp.Leases)
            {
                if (leased == ipv4)
                {
                    mac = leaseMac;
                    break;
                }
            }
        }

        if (mac is MacAddress m && _guestAddress6ByMac.TryGetValue(m, out var address))
        {
            return address;
        }

        return _lastGuestAddress6 == 0 ? null : _lastGuestAddress6;
    }

    /// <summary>A neighbour solicitation for a guest address (to its solicited-node group, from fe80::2): the guest's advertisement tells its MAC.</summary>
    private void RequestGuestMac6(UInt128 ip)
    {
        var group = Ip6.SolicitedNode(ip);
        Span<byte> body = stackalloc byte[28];
        Ip6.Write(body[4..], ip);
        body[20] = 1; // source link-layer address
        body[21] = 1;
        _gatewayMac.CopyTo(body[22..]);
        Queue(FrameBuilder.Icmpv6(Ip6.MulticastMac(group), _gatewayMac, Ipv6Addresses.LinkLocal, group, NeighbourSolicitation, 0, body));
    }

    /// <summary>One IPv6 packet from the guest; false when it is dropped.</summary>
    private bool HandleIpv6(ReadOnlySpan<byte> ip, MacAddress source, bool multicastFrame)
    {
        if (!Ipv6Packet.TryParse(ip, out var packet, allowFragments: true) || Ip6.IsMulticast(packet.Source) || Ip6.IsMapped(packet.Source))
        {
            return false;
        }

        if (!packet.IsFragment)
        {
            return HandleIpv6Packet(packet, source, multicastFrame);
        }

        if (multicastFrame || Ip6.IsMulticast(packet.Destination) || !_v6!.IsGuestAddress(packet.Source))
        {
            return false; // neighbour discovery is never fragmented (RFC 6980); only a guest with an address fragments
        }

        var result = _reassembler.Add(packet, Environment.TickCount64, out var whole);
        return result switch
        {
            FragmentResult.Held => true,
            FragmentResult.Complete => Ipv6Packet.TryParse(whole, out var complete) && HandleIpv6Packet(complete, source, multicastFrame: false),
            _ => false,
        };
    }

    /// <summary>One whole IPv6 packet from the guest (as it came, or reassembled); false when it is dropped.</summary>
    private bool HandleIpv6Packet(in Ipv6Packet packet, MacAddress source, bool multicastFrame)
    {
        var v6 = _v6!;
        if (multicastFrame || Ip6.IsMulticast(packet.Destination))
        {
            // Multicast reaches the stack only as neighbour discovery: to all routers, all nodes, or the
            // solicited-node group of one of its addresses. Everything else (MLD, the guest's own DAD) is not ours.
            if (packet.Destination == AllDhcpServers && packet.Protocol == Proto.Udp)
            {
                return UdpDatagram.TryParse(packet, out var dhcp, _checksumTrusted) && HandleDhcp6(packet, dhcp, source);
            }

            // A guest's duplicate address detection (from ::, to the solicited-node group of the address it tries)
            // is read too: it tells the address the guest gives itself, for forwards to its IPv6 address.
            bool forUs = packet.Destination == Ip6.AllRouters || packet.Destination == Ip6.AllNodes || v6.IsOwnSolicitedNode(packet.Destination)
                || (packet.Source == UInt128.Zero && Ip6.IsSolicitedNode(packet.Destination));
            return forUs && packet.Protocol == Proto.Icmpv6 && HandleIcmpv6(packet, source);
        }

        if (packet.Protocol == Proto.Icmpv6)
        {
            return HandleIcmpv6(packet, source);
        }

        if (!v6.IsGuestAddress(packet.Source))
        {
            return false; // TCP and UDP only from an address in the prefix
        }

        LearnNeighbour(packet.Source, source);
        if (packet.Protocol == Proto.Udp)
        {
            return UdpDatagram.TryParse(packet, out var udp, _checksumTrusted) && HandleUdp6(packet, udp);
        }

        if (!TcpSegment.TryParse(packet, out var tcp, _checksumTrusted))
        {
            return false;
        }

        var key = new TcpKey(packet.Source, tcp.SourcePort, packet.Destination, tcp.DestinationPort);
        return HandleTcp(key, tcp, packet.Destination == v6.Dns, HostDestination6(packet.Destination));
    }

    /// <summary>The host-side address for a guest IPv6 destination: the gateway is the host's <c>::1</c>; the prefix, link-local, multicast and special addresses go nowhere.</summary>
    private IPAddress? HostDestination6(UInt128 destination)
    {
        var v6 = _v6!;
        if (destination == v6.Gateway)
        {
            return Options.GatewayReachesHostLoopback ? IPAddress.IPv6Loopback : null;
        }

        if (v6.InPrefix(destination) || Ip6.IsMulticast(destination) || Ip6.IsLinkLocal(destination) || (destination >> 32) == 0 || Ip6.IsMapped(destination))
        {
            return null; // the guest's own subnet, link scope, multicast, ::, ::1, and IPv4-compatible or -mapped forms
        }

        return Ip6.ToAddress(destination);
    }

    private bool HandleUdp6(in Ipv6Packet packet, in UdpDatagram udp)
    {
        if (packet.Destination == _v6!.Gateway && ReplyToForwardPeer(packet.Source, udp))
        {
            return true; // a reply to a host sender of a UDP forward
        }

        if (packet.Destination == _v6.Dns)
        {
            if (udp.DestinationPort != DnsForwarder.Port)
            {
                return false;
            }

            if (!_dns.Handle(udp.Payload, packet.Source, udp.SourcePort, packet.Destination))
            {
                _limitRefusals++;
            }

            return true;
        }

        if (HostDestination6(packet.Destination) is not IPAddress host || udp.DestinationPort == 0)
        {
            return false;
        }

        if (Allowed(host, udp.DestinationPort, ProtocolType.Udp))
        {
            SendUdpToHost(packet.Source, udp.SourcePort, new IPEndPoint(host, udp.DestinationPort), udp.Payload);
        }

        return true;
    }

    private bool HandleIcmpv6(in Ipv6Packet packet, MacAddress sourceMac)
    {
        var v6 = _v6!;
        var m = packet.Payload;
        if (m.Length < 4 || Checksum.Fold(Checksum.Add(m, packet.PseudoHeader(m.Length))) != 0 || m[1] != 0)
        {
            return false;
        }

        if (m[0] == EchoRequest)
        {
            if (!v6.IsOwn(packet.Destination) || !v6.IsGuestOrLinkLocal(packet.Source) || m.Length < 8 || m.Length > Proto.Mtu - Proto.Ipv6Header)
            {
                return false;
            }

            LearnNeighbour(packet.Source, sourceMac);
            Queue(FrameBuilder.Icmpv6(sourceMac, _gatewayMac, packet.Destination, packet.Source, EchoReply, 0, m[4..], hopLimit: 64));
            return true;
        }

        return HandleNeighbourDiscovery(packet, sourceMac);
    }

    /// <summary>Router and neighbour solicitations and neighbour advertisements from the guest (checksum already checked).</summary>
    private bool HandleNeighbourDiscovery(in Ipv6Packet packet, MacAddress sourceMac)
    {
        var v6 = _v6!;
        var m = packet.Payload;
        byte type = m[0];

        // Neighbour discovery (RFC 4861 6.1.1, 7.1.1): hop limit 255 proves the sender is on the link.
        if (packet.HopLimit != 255 || type is not (RouterSolicitation or NeighbourSolicitation or NeighbourAdvertisement))
        {
            return false;
        }

        int fixedPart = type == RouterSolicitation ? 8 : 24;
        if (m.Length < fixedPart || !TryReadLinkLayerOption(m[fixedPart..], type == NeighbourAdvertisement ? (byte)2 : (byte)1, out var linkLayer))
        {
            return false;
        }

        bool unspecified = packet.Source == UInt128.Zero;
        if (unspecified && linkLayer is not null)
        {
            return false; // a source link-layer option from :: is forbidden
        }

        if (!unspecified && !v6.IsGuestOrLinkLocal(packet.Source))
        {
            return false;
        }

        var mac = linkLayer ?? sourceMac;
        if (!unspecified)
        {
            LearnNeighbour(packet.Source, mac);
        }

        switch (type)
        {
            case RouterSolicitation:
                SendRouterAdvertisement(sourceMac, unspecified ? Ip6.AllNodes : packet.Source);
                return true;

            case NeighbourSolicitation:
            {
                var target = Ip6.Read(m[8..]);
                if (unspecified && v6.IsGuestAddress(target) && packet.Destination == Ip6.SolicitedNode(target))
                {
                    LearnNeighbour(target, sourceMac); // duplicate address detection: the address the guest is taking
                }

                if (unspecified || !v6.IsOwn(target))
                {
                    return !Ip6.IsMulticast(target); // duplicate address detection, or someone else's address: no answer
                }

                Span<byte> body = stackalloc byte[28];
                body[0] = 0xE0; // router, solicited, override
                Ip6.Write(body[4..], target);
                body[20] = 2;   // target link-layer address
                body[21] = 1;
                _gatewayMac.CopyTo(body[22..]);
                Queue(FrameBuilder.Icmpv6(sourceMac, _gatewayMac, target, packet.Source, NeighbourAdvertisement, 0, body));
                return true;
            }

            default:
            {
                // A neighbour advertisement: its sender is learned above, and the address it advertises (the answer to
                // the stack's solicitation for a forward's guest address).
                var target = Ip6.Read(m[8..]);
                if (linkLayer is MacAddress advertised && v6.IsGuestOrLinkLocal(target))
                {
                    LearnNeighbour(target, advertised);
                }

                return true;
            }
        }
    }

    /// <summary>
    /// Walks neighbour-discovery options (each a multiple of 8 bytes, none empty) and finds the link-layer address
    /// option of <paramref name="kind"/> (1 source, 2 target); false when an option is malformed.
    /// </summary>
    private static bool TryReadLinkLayerOption(ReadOnlySpan<byte> options, byte kind, out MacAddress? mac)
    {
        mac = null;
        while (!options.IsEmpty)
        {
            if (options.Length < 2 || options[1] == 0 || options[1] * 8 > options.Length)
            {
                return false;
            }

            int size = options[1] * 8;
            if (options[0] == kind && size == 8)
            {
                mac = MacAddress.FromBytes(options.Slice(2, 6));
            }

            options = options[size..];
        }

        return true;
    }

    /// <summary>A router advertisement: the gateway as default router, the prefix for SLAAC, the MTU and the DNS address (RFC 8106).</summary>
    /// <summary>
    /// Stateless DHCPv6 (RFC 8415 6.1, 18.2.6): an Information-request from the guest's link-local address (port 546)
    /// gets a Reply with the stack's server identifier (a DUID-LL of the gateway MAC), the guest's client identifier
    /// echoed, and the DNS address (RFC 3646). Addresses come from SLAAC, so every other message is ignored (no
    /// Advertise: the router advertisement says "other configuration" only). Options are walked with bounds checks;
    /// a request carrying an address option (IA_NA, IA_TA, IA_PD) is dropped, as the RFC asks.
    /// </summary>
    private bool HandleDhcp6(in Ipv6Packet packet, in UdpDatagram udp, MacAddress source)
    {
        const byte InformationRequest = 11;
        const byte Reply = 7;
        const ushort ClientId = 1;
        const ushort ServerId = 2;
        const ushort DnsServers = 23;
        var m = udp.Payload;
        if (udp.DestinationPort != 547 || udp.SourcePort != 546 || m.Length < 4 || m[0] != InformationRequest || source.IsMulticast)
        {
            return false;
        }

        ReadOnlySpan<byte> clientId = default;
        var options = m[4..];
        while (!options.IsEmpty)
        {
            if (options.Length < 4)
            {
                return false;
            }

            ushort code = BinaryPrimitives.ReadUInt16BigEndian(options);
            int length = BinaryPrimitives.ReadUInt16BigEndian(options[2..]);
            if (length > options.Length - 4)
            {
                return false; // an option running past the message
            }

            if (code is 3 or 4 or 25)
            {
                return false; // IA_NA, IA_TA, IA_PD: not in an Information-request
            }

            if (code == ClientId && length is >= 2 and <= 130)
            {
                clientId = options.Slice(4, length);
            }

            options = options[(4 + length)..];
        }

        var reply = new byte[4 + (clientId.IsEmpty ? 0 : 4 + clientId.Length) + 4 + 10 + 4 + 16];
        reply[0] = Reply;
        m.Slice(1, 3).CopyTo(reply.AsSpan(1)); // transaction id
        var o = reply.AsSpan(4);
        if (!clientId.IsEmpty)
        {
            BinaryPrimitives.WriteUInt16BigEndian(o, ClientId);
            BinaryPrimitives.WriteUInt16BigEndian(o[2..], (ushort)clientId.Length);
            clientId.CopyTo(o[4..]);
            o = o[(4 + clientId.Length)..];
        }

        BinaryPrimitives.WriteUInt16BigEndian(o, ServerId);
        BinaryPrimitives.WriteUInt16BigEndian(o[2..], 10);
        BinaryPrimitives.WriteUInt16BigEndian(o[4..], 3); // DUID-LL
        BinaryPrimitives.WriteUInt16BigEndian(o[6..], 1); // Ethernet
        _gatewayMac.CopyTo(o[8..]);
        o = o[14..];
        BinaryPrimitives.WriteUInt16BigEndian(o, DnsServers);
        BinaryPrimitives.WriteUInt16BigEndian(o[2..], 16);
        Ip6.Write(o[4..], _v6!.Dns);
        LearnNeighbour(packet.Source, source);
        Queue(FrameBuilder.Udp6(source, _gatewayMac, Ipv6Addresses.LinkLocal, 547, packet.Source, 546, reply));
        return true;
    }

    private void SendRouterAdvertisement(MacAddress to, UInt128 destination)
    {
        var v6 = _v6!;
        Span<byte> body = stackalloc byte[12 + 8 + 8 + 32 + 24];
        body[0] = 64;                                                   // current hop limit
        body[1] = 0x40;                                                 // O: other configuration (DNS) by stateless DHCPv6
        BinaryPrimitives.WriteUInt16BigEndian(body[2..], RouterLifetimeSeconds);
        var o = body[12..];
        o[0] = 1;                                                       // source link-layer address
        o[1] = 1;
        _gatewayMac.CopyTo(o[2..]);
        o = o[8..];
        o[0] = 5;                                                       // MTU
        o[1] = 1;
        BinaryPrimitives.WriteUInt32BigEndian(o[4..], Proto.Mtu);
        o = o[8..];
        o[0] = 3;                                                       // prefix information
        o[1] = 4;
        o[2] = 64;
        o[3] = 0xC0;                                                    // on-link, autonomous (SLAAC)
        BinaryPrimitives.WriteUInt32BigEndian(o[4..], PrefixValidSeconds);
        BinaryPrimitives.WriteUInt32BigEndian(o[8..], PrefixPreferredSeconds);
        Ip6.Write(o[16..], v6.Prefix);
        o = o[32..];
        o[0] = 25;                                                      // recursive DNS server
        o[1] = 3;
        BinaryPrimitives.WriteUInt32BigEndian(o[4..], RouterLifetimeSeconds);
        Ip6.Write(o[8..], v6.Dns);
        Queue(FrameBuilder.Icmpv6(to, _gatewayMac, Ipv6Addresses.LinkLocal, destination, RouterAdvertisement, 0, body));
    }
}

/// <summary>The stack's IPv6 addresses in a /64 prefix: the gateway is <c>prefix::2</c>, DNS <c>prefix::3</c>, and the router's link-local address <c>fe80::2</c>.</summary>
internal sealed class Ipv6Addresses
{
    /// <summary>fe80::2, the gateway's link-local address (router advertisements come from it).</summary>
    public static readonly UInt128 LinkLocal = new(0xFE80_0000_0000_0000, 2);

    public Ipv6Addresses(IPNetwork network)
    {
        Prefix = Ip6.From(network.BaseAddress) & ~(UInt128)ulong.MaxValue;
        Gateway = Prefix | 2;
        Dns = Prefix | 3;
    }

    public UInt128 Prefix { get; }

    public UInt128 Gateway { get; }

    public UInt128 Dns { get; }

    public bool InPrefix(UInt128 address) => (address >> 64) == (Prefix >> 64);

    public bool IsOwn(UInt128 address) => address == Gateway || address == Dns || address == LinkLocal;

    public bool IsOwnSolicitedNode(UInt128 address) =>
        address == Ip6.SolicitedNode(Gateway) || address == Ip6.SolicitedNode(Dns) || address == Ip6.SolicitedNode(LinkLocal);

    /// <summary>An address SLAAC can give a guest: in the prefix, not the stack's, not the subnet-router anycast address.</summary>
    public bool IsGuestAddress(UInt128 address) => InPrefix(address) && !IsOwn(address) && (ulong)address != 0;

    public bool IsGuestOrLinkLocal(UInt128 address) => IsGuestAddress(address) || (Ip6.IsLinkLocal(address) && address != LinkLocal);
}
