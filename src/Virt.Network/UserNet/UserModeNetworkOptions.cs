using System.Net;
using System.Net.Sockets;
using Virt.Network.UserNet;

namespace Virt.Network;

/// <summary>Settings of a <see cref="UserModeNetwork"/>. The defaults match QEMU's user networking (10.0.2.0/24).</summary>
public sealed record UserModeNetworkOptions
{
    /// <summary>The guest-side subnet (default 10.0.2.0/24). The gateway, DNS and guest addresses must lie in it.</summary>
    public IPNetwork Network { get; init; } = new(IPAddress.Parse("10.0.2.0"), 24);

    /// <summary>The gateway (default 10.0.2.2): the guest's router and DHCP server; connections to it reach the host's loopback.</summary>
    public IPAddress Gateway { get; init; } = IPAddress.Parse("10.0.2.2");

    /// <summary>The DNS forwarder's address (default 10.0.2.3), handed out by DHCP.</summary>
    public IPAddress Dns { get; init; } = IPAddress.Parse("10.0.2.3");

    /// <summary>The first address DHCP hands out (default 10.0.2.15); further guests get the following ones.</summary>
    public IPAddress FirstGuestAddress { get; init; } = IPAddress.Parse("10.0.2.15");

    /// <summary>The MAC address the gateway and DNS answer ARP with (default 52:55:0a:00:02:02).</summary>
    public MacAddress GatewayMac { get; init; } = MacAddress.Parse("52:55:0a:00:02:02");

    /// <summary>
    /// The guest's IPv6 prefix (default <c>fd00::/64</c>, a private unique-local prefix), or null for no IPv6. It must be
    /// a /64: guests configure themselves from router advertisements (SLAAC). The gateway is <c>prefix::2</c> (and
    /// <c>fe80::2</c>), the DNS forwarder <c>prefix::3</c>; connections to the gateway reach the host's <c>::1</c>.
    /// </summary>
    public IPNetwork? Ipv6Network { get; init; } = new(IPAddress.Parse("fd00::"), 64);

    /// <summary>Whether connections and datagrams to the gateway address go to the host's loopback (127.0.0.1). On by default.</summary>
    public bool GatewayReachesHostLoopback { get; init; } = true;

    /// <summary>
    /// A DNS server to forward the guest's queries to as they are (e.g. a resolver on loopback). When null (the
    /// default), queries for A records are answered from the host's resolver (<see cref="System.Net.Dns"/>: hosts
    /// file, system DNS).
    /// </summary>
    public IPEndPoint? DnsUpstream { get; init; }

    /// <summary>Which destinations the guest may reach (default: all).</summary>
    public UserNetworkPolicy Policy { get; init; } = UserNetworkPolicy.AllowAll;

    /// <summary>Most TCP connections (outbound and forwarded) open at once (default 256); more are refused and counted.</summary>
    public int MaxTcpConnections { get; init; } = 256;

    /// <summary>Most UDP flows (guest source ports with a host socket) open at once (default 64); more are refused and counted.</summary>
    public int MaxUdpFlows { get; init; } = 64;

    /// <summary>Bytes each TCP connection buffers per direction (default 256 KiB); the guest sees it as its receive window limit.</summary>
    public int TcpBufferSize { get; init; } = 256 * 1024;

    /// <summary>Bytes one TCP connection may carry in both directions together before it is reset (null: no limit).</summary>
    public long? MaxBytesPerConnection { get; init; }

    /// <summary>Bytes the network may carry to and from the host in total (TCP and UDP payload) before new traffic is refused (null: no limit).</summary>
    public long? MaxTotalBytes { get; init; }

    /// <summary>How long an idle UDP flow keeps its host socket (default 60 s).</summary>
    public TimeSpan UdpIdleTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How long a TCP connection may wait for the host to connect, or the guest to answer, before it is reset (default 30 s).</summary>
    public TimeSpan TcpConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Host ports forwarded to the guest when the network is created (more can be added with <see cref="UserModeNetwork.ForwardTcp"/>).</summary>
    public IReadOnlyList<UserNetworkTcpForward> TcpForwards { get; init; } = [];

    /// <summary>Host UDP ports forwarded to the guest when the network is created (more can be added with <see cref="UserModeNetwork.ForwardUdp"/>).</summary>
    public IReadOnlyList<UserNetworkUdpForward> UdpForwards { get; init; } = [];

    /// <summary>How long DHCP leases last (default 1 day).</summary>
    public TimeSpan LeaseTime { get; init; } = TimeSpan.FromDays(1);

    /// <summary>Checks every setting; the message of the exception names the one to change.</summary>
    /// <exception cref="ArgumentException">A setting is out of range.</exception>
    public void Validate()
    {
        if (Network.BaseAddress.AddressFamily != AddressFamily.InterNetwork || Network.PrefixLength is < 8 or > 30)
        {
            throw new ArgumentException($"Network {Network} must be an IPv4 subnet with a prefix of 8 to 30 bits.", "options");
        }

        foreach (var (name, address) in new[] { ("Gateway", Gateway), ("Dns", Dns), ("FirstGuestAddress", FirstGuestAddress) })
        {
            if (!Network.Contains(address))
            {
                throw new ArgumentException($"{name} {address} is outside Network {Network}; choose an address inside it.", "options");
            }
        }

        if (Gateway.Equals(Dns) || Gateway.Equals(FirstGuestAddress) || Dns.Equals(FirstGuestAddress))
        {
            throw new ArgumentException($"Gateway ({Gateway}), Dns ({Dns}) and FirstGuestAddress ({FirstGuestAddress}) must differ.", "options");
        }

        if (Ipv6Network is IPNetwork v6 && (v6.BaseAddress.AddressFamily != AddressFamily.InterNetworkV6 || v6.PrefixLength != 64
            || v6.BaseAddress.IsIPv6Multicast || v6.BaseAddress.IsIPv6LinkLocal || v6.BaseAddress.IsIPv4MappedToIPv6))
        {
            throw new ArgumentException($"Ipv6Network {v6} must be a unicast IPv6 /64 prefix (e.g. fd00::/64), or null for no IPv6.", "options");
        }

        if (GatewayMac.IsMulticast)
        {
            throw new ArgumentException($"GatewayMac {GatewayMac} is a multicast address; use a unicast one.", "options");
        }

        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxTcpConnections, "options.MaxTcpConnections");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxUdpFlows, "options.MaxUdpFlows");
        ArgumentOutOfRangeException.ThrowIfLessThan(TcpBufferSize, 4096, "options.TcpBufferSize");
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(UdpIdleTimeout, TimeSpan.Zero, "options.UdpIdleTimeout");
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(TcpConnectTimeout, TimeSpan.Zero, "options.TcpConnectTimeout");
        ArgumentOutOfRangeException.ThrowIfLessThan(LeaseTime, TimeSpan.FromMinutes(1), "options.LeaseTime");
        ArgumentNullException.ThrowIfNull(Policy, "options.Policy");
        ArgumentNullException.ThrowIfNull(TcpForwards, "options.TcpForwards");
        ArgumentNullException.ThrowIfNull(UdpForwards, "options.UdpForwards");
    }
}

/// <summary>A host end point forwarded to a guest port, e.g. <c>127.0.0.1:8080</c> to 80.</summary>
/// <param name="HostEndPoint">Where the host listens.</param>
/// <param name="GuestPort">The guest's port.</param>
public sealed record UserNetworkTcpForward(IPEndPoint HostEndPoint, int GuestPort)
{
    /// <summary>The guest's address, as <see cref="UserModeNetwork.ForwardTcp"/> takes it (null: the guest's address, IPv4 or IPv6).</summary>
    public IPAddress? GuestAddress { get; init; }

    /// <summary>
    /// Parses <c>HOSTPORT:GUESTPORT</c> (host side on 127.0.0.1) or <c>ADDRESS:HOSTPORT:GUESTPORT</c>, as
    /// <c>--forward 8080:80</c> takes it; ADDRESS may be IPv6, in brackets or not (<c>[::1]:8080:80</c>). The guest's
    /// address is left to <see cref="GuestAddress"/> (set it with <c>with</c>).
    /// </summary>
    /// <exception cref="FormatException">The text is not in one of those forms.</exception>
    public static UserNetworkTcpForward Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        int last = text.LastIndexOf(':');
        int hostPortStart = last > 0 ? text.LastIndexOf(':', last - 1) + 1 : 0;
        string address = hostPortStart > 0 ? text[..(hostPortStart - 1)] : "127.0.0.1";
        if (last <= 0
            || !int.TryParse(text.AsSpan(hostPortStart, last - hostPortStart), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int hostPort)
            || !int.TryParse(text.AsSpan(last + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int guestPort)
            || !IPAddress.TryParse(address, out var ip) || hostPort > 65535 || guestPort is < 1 or > 65535)
        {
            throw new FormatException($"'{text}' is not a forward; write HOSTPORT:GUESTPORT (e.g. 8080:80) or ADDRESS:HOSTPORT:GUESTPORT.");
        }

        return new UserNetworkTcpForward(new IPEndPoint(ip, hostPort), guestPort);
    }
}

/// <summary>A host UDP end point forwarded to a guest port, e.g. <c>127.0.0.1:5353</c> to 53.</summary>
/// <param name="HostEndPoint">Where the host receives.</param>
/// <param name="GuestPort">The guest's port.</param>
public sealed record UserNetworkUdpForward(IPEndPoint HostEndPoint, int GuestPort)
{
    /// <summary>The guest's address, as <see cref="UserModeNetwork.ForwardUdp"/> takes it (null: the guest's address, IPv4 or IPv6).</summary>
    public IPAddress? GuestAddress { get; init; }

    /// <summary>Parses <c>HOSTPORT:GUESTPORT</c> (host side on 127.0.0.1) or <c>ADDRESS:HOSTPORT:GUESTPORT</c>, as for TCP forwards.</summary>
    /// <exception cref="FormatException">The text is not in one of those forms.</exception>
    public static UserNetworkUdpForward Parse(string text)
    {
        var tcp = UserNetworkTcpForward.Parse(text);
        return new UserNetworkUdpForward(tcp.HostEndPoint, tcp.GuestPort);
    }
}

/// <summary>What a <see cref="UserNetworkRule"/> does with a destination it matches.</summary>
public enum UserNetworkAction
{
    /// <summary>The guest may reach the destination.</summary>
    Allow,

    /// <summary>The attempt is refused (TCP: reset; UDP: dropped) and counted in <see cref="UserModeNetworkStatistics.DeniedAttempts"/>.</summary>
    Deny,
}

/// <summary>One rule of a <see cref="UserNetworkPolicy"/>: a destination subnet, a port range and optionally a protocol.</summary>
/// <param name="Action">Allow or deny.</param>
/// <param name="Destination">The host-side destination subnet (the gateway address stands for 127.0.0.1).</param>
/// <param name="FirstPort">Lowest destination port matched (default 0).</param>
/// <param name="LastPort">Highest destination port matched (default 65535).</param>
/// <param name="Protocol">TCP or UDP only, or null for both.</param>
public sealed record UserNetworkRule(UserNetworkAction Action, IPNetwork Destination, int FirstPort = 0, int LastPort = 65535, ProtocolType? Protocol = null)
{
    /// <summary>A rule allowing <paramref name="cidr"/> (e.g. <c>10.0.0.0/8</c>), optionally one port.</summary>
    public static UserNetworkRule Allow(string cidr, int? port = null, ProtocolType? protocol = null) =>
        new(UserNetworkAction.Allow, IPNetwork.Parse(cidr), port ?? 0, port ?? 65535, protocol);

    /// <summary>A rule denying <paramref name="cidr"/>, optionally one port.</summary>
    public static UserNetworkRule Deny(string cidr, int? port = null, ProtocolType? protocol = null) =>
        new(UserNetworkAction.Deny, IPNetwork.Parse(cidr), port ?? 0, port ?? 65535, protocol);

    internal bool Matches(IPAddress destination, int port, ProtocolType protocol) =>
        Destination.Contains(destination) && port >= FirstPort && port <= LastPort && (Protocol is null || Protocol == protocol);
}

/// <summary>
/// Which host-side destinations the guest may reach: the first rule that matches decides; without a match,
/// <see cref="DefaultAction"/> does. DHCP, DNS to the forwarder and ICMP echo to the gateway are always answered.
/// </summary>
/// <param name="Rules">Rules in order.</param>
/// <param name="DefaultAction">What happens when no rule matches.</param>
public sealed record UserNetworkPolicy(IReadOnlyList<UserNetworkRule> Rules, UserNetworkAction DefaultAction = UserNetworkAction.Allow)
{
    /// <summary>Every destination is allowed.</summary>
    public static UserNetworkPolicy AllowAll { get; } = new([], UserNetworkAction.Allow);

    /// <summary>Only the destinations in <paramref name="rules"/> that allow are reachable; everything else is denied.</summary>
    public static UserNetworkPolicy DenyAllExcept(params UserNetworkRule[] rules) => new(rules, UserNetworkAction.Deny);

    /// <summary>Decides for one destination.</summary>
    public UserNetworkAction Decide(IPAddress destination, int port, ProtocolType protocol)
    {
        ArgumentNullException.ThrowIfNull(destination);
        foreach (var rule in Rules)
        {
            if (rule.Matches(destination, port, protocol))
            {
                return rule.Action;
            }
        }

        return DefaultAction;
    }
}

/// <summary>Counters of a <see cref="UserModeNetwork"/> at one moment.</summary>
public sealed record UserModeNetworkStatistics
{
    /// <summary>Frames the guest sent.</summary>
    public long FramesFromGuest { get; init; }

    /// <summary>Frames handed to the guest's NIC.</summary>
    public long FramesToGuest { get; init; }

    /// <summary>Guest frames dropped: malformed (lengths, checksums), fragments, unsupported protocols, no route.</summary>
    public long FramesDropped { get; init; }

    /// <summary>Connections and datagrams refused by the policy.</summary>
    public long DeniedAttempts { get; init; }

    /// <summary>Connections, flows and bytes refused because a limit was reached.</summary>
    public long LimitRefusals { get; init; }

    /// <summary>TCP connections open now (outbound and forwarded).</summary>
    public int OpenTcpConnections { get; init; }

    /// <summary>UDP flows with a host socket now.</summary>
    public int OpenUdpFlows { get; init; }

    /// <summary>Host sockets (TCP, UDP, DNS) open now, listeners of port forwards not included.</summary>
    public int OpenHostSockets { get; init; }

    /// <summary>TCP connections opened since creation.</summary>
    public long TcpConnectionsOpened { get; init; }

    /// <summary>Payload bytes from the guest to the host (TCP and UDP).</summary>
    public long BytesToHost { get; init; }

    /// <summary>Payload bytes from the host to the guest (TCP and UDP).</summary>
    public long BytesToGuest { get; init; }

    /// <summary>DHCP leases handed out (ACKs).</summary>
    public long DhcpAcks { get; init; }

    /// <summary>DNS queries answered (forwarded or resolved).</summary>
    public long DnsQueries { get; init; }

    /// <summary>Errors inside the stack that dropped a frame; always 0 unless there is a bug (tests check it).</summary>
    public long InternalErrors { get; init; }

    /// <summary>Fragmented IPv4 datagrams from the guest put back together.</summary>
    public long DatagramsReassembled { get; init; }

    /// <summary>Fragmented datagrams thrown away: overlapping or inconsistent fragments, limits, timeouts.</summary>
    public long FragmentedDatagramsDiscarded { get; init; }

    /// <summary>Host senders of UDP forwards with a gateway port mapped to them now.</summary>
    public int UdpForwardPeers { get; init; }
}
