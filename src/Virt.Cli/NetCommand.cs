using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Virt.Network;

namespace Virt.Cli;

/// <summary>
/// <c>virt net</c>: the user-mode network (<see cref="UserModeNetwork"/>) as <c>virt run --net user</c> builds it.
/// <c>virt net show</c> prints its addresses, forwards and policy; <c>virt net check</c> resolves and connects to a
/// destination from a stand-in guest on a real network with the same options, so a policy can be tried without a VM.
/// </summary>
internal static class NetCommand
{
    public static Command Create()
    {
        var command = new Command("net", "The user-mode network (virt run --net user): show its layout, or check what a guest can reach under a policy.")
        {
            CreateShow(),
            CreateCheck(),
        };
        return command;
    }

    /// <summary>The <c>--policy</c> option, shared with <c>virt run</c>.</summary>
    internal static Option<string[]> PolicyOption() => new("--policy")
    {
        Description = "A rule of the user network's policy, in order, the first match deciding: allow:DEST or deny:DEST, where DEST is "
            + "ADDRESS[/BITS][:PORT[-PORT]] (IPv6 in brackets, e.g. deny:[fd00::]/8); default:allow|deny decides what no rule matches "
            + "(default: allow). The gateway address stands for the host's loopback (127.0.0.1).",
        Arity = ArgumentArity.ZeroOrMore,
    };

    private static Command CreateShow()
    {
        var forwards = new Option<string[]>("--forward") { Description = "HOSTPORT:GUESTPORT: a host TCP port forwarded to the guest (bound, listed, released).", Arity = ArgumentArity.ZeroOrMore };
        var policy = PolicyOption();
        var command = new Command("show", "Print the user network's addresses (subnet, gateway, DNS, the guest's DHCP address, IPv6 prefix), its forwards and its policy.")
        {
            forwards, policy,
        };
        command.SetAction(async (result, ct) =>
        {
            if (!TryBuildOptions(result.GetValue(policy) ?? [], result.GetValue(forwards) ?? [], "virt net show", out var options))
            {
                return 2;
            }

            try
            {
                await using var network = new UserModeNetwork(options);
                Show(network, Console.Out);
                return 0;
            }
            catch (SocketException e)
            {
                Console.Error.WriteLine($"virt net show: a forward cannot listen: {e.Message}");
                return 1;
            }
        });
        return command;
    }

    private static Command CreateCheck()
    {
        var destination = new Argument<string>("destination") { Description = "A host name or IPv4 address, as the guest would use it (10.0.2.2 is the host's loopback). HOST:PORT gives the port too." };
        var port = new Option<int?>("--port", "-p") { Description = "The TCP port to connect to (default 80, or the one in HOST:PORT)." };
        var policy = PolicyOption();
        var timeout = new Option<double>("--timeout") { Description = "Seconds to wait for the DNS answer and for the connection (default 10).", DefaultValueFactory = _ => 10 };
        var command = new Command("check", "Resolve DESTINATION through the user network's DNS forwarder and open a TCP connection to it from a stand-in guest, under the policy given; exit 0 when it connects.")
        {
            destination, port, policy, timeout,
        };
        command.SetAction((result, ct) => CheckAsync(result.GetValue(destination)!, result.GetValue(port), result.GetValue(policy) ?? [], result.GetValue(timeout), Console.Out, ct));
        return command;
    }

    /// <summary>Prints the layout of <paramref name="network"/>.</summary>
    internal static void Show(UserModeNetwork network, TextWriter output)
    {
        var o = network.Options;
        output.WriteLine($"subnet:       {o.Network}");
        output.WriteLine($"gateway:      {o.Gateway} (router and DHCP server{(o.GatewayReachesHostLoopback ? "; connections to it reach the host's 127.0.0.1" : "")})");
        output.WriteLine($"dns:          {o.Dns} ({(o.DnsUpstream is { } upstream ? "forwarded to " + upstream : "answered from the host's resolver")})");
        output.WriteLine($"guest:        {o.FirstGuestAddress} (the first DHCP lease), gateway MAC {o.GatewayMac}");
        output.WriteLine($"ipv6:         {(o.Ipv6Network is { } v6 ? v6 + " (SLAAC)" : "off")}");
        output.WriteLine($"limits:       {o.MaxTcpConnections} TCP connections, {o.MaxUdpFlows} UDP flows, TCP connect timeout {o.TcpConnectTimeout.TotalSeconds:0.#} s");
        if (network.Forwards.Count == 0)
        {
            output.WriteLine("forwards:     none");
        }

        foreach (var forward in network.Forwards)
        {
            output.WriteLine($"forward:      tcp {forward.HostEndPoint} -> guest {forward.GuestAddress}:{forward.GuestPort}");
        }

        var policy = o.Policy;
        for (int i = 0; i < policy.Rules.Count; i++)
        {
            output.WriteLine($"policy {i + 1,2}:    {Describe(policy.Rules[i])}");
        }

        output.WriteLine($"policy:       {(policy.DefaultAction == UserNetworkAction.Allow ? "allow" : "deny")} what no rule matches");
    }

    private static async Task<int> CheckAsync(string destination, int? portOption, string[] rules, double timeoutSeconds, TextWriter output, CancellationToken cancellationToken)
    {
        string host = destination;
        int port = portOption ?? 80;
        int colon = destination.LastIndexOf(':');
        if (colon > 0 && destination.IndexOf(':', StringComparison.Ordinal) == colon)
        {
            if (!int.TryParse(destination.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int p) || portOption is not null)
            {
                Console.Error.WriteLine($"virt net check: '{destination}' is not HOST:PORT (or the port is given twice).");
                return 2;
            }

            host = destination[..colon];
            port = p;
        }

        if (port is < 1 or > 65535 || timeoutSeconds is <= 0 or > 3600)
        {
            Console.Error.WriteLine("virt net check: the port must be 1 to 65535 and the timeout 0 to 3600 seconds.");
            return 2;
        }

        if (!TryBuildOptions(rules, [], "virt net check", out var options))
        {
            return 2;
        }

        var timeout = TimeSpan.FromSeconds(timeoutSeconds);
        options = options with { TcpConnectTimeout = timeout };
        await using var guest = new ProbeGuest(options);
        output.WriteLine($"guest:  {guest.Address} on {options.Network} (gateway {options.Gateway}, dns {options.Dns})");

        if (!IPAddress.TryParse(host, out var address))
        {
            var (addresses, detail) = await guest.ResolveAsync(host, timeout, cancellationToken).ConfigureAwait(false);
            if (addresses is not { Length: > 0 })
            {
                output.WriteLine($"dns:    {host}: {detail}");
                return 1;
            }

            address = addresses[0];
            output.WriteLine($"dns:    {host} -> {string.Join(", ", addresses.Select(a => a.ToString()))} (from {options.Dns})");
        }

        if (address.AddressFamily != AddressFamily.InterNetwork)
        {
            Console.Error.WriteLine($"virt net check: {address} is not an IPv4 address; the check speaks IPv4.");
            return 2;
        }

        // Where the network would connect on the host's side, and what the policy says about it.
        IPAddress? hostSide = HostSide(address, options, out string? noRoute);
        if (hostSide is null)
        {
            output.WriteLine($"route:  {address}: {noRoute}");
            return 1;
        }

        string via = hostSide.Equals(address) ? "" : $" (the host's {hostSide})";
        var (action, why) = Decide(options.Policy, hostSide, port);
        output.WriteLine($"policy: tcp {hostSide}:{port} {(action == UserNetworkAction.Allow ? "allowed" : "denied")} by {why}");

        long deniedBefore = guest.Network.Statistics.DeniedAttempts;
        long limitsBefore = guest.Network.Statistics.LimitRefusals;
        var probe = await guest.ConnectAsync(address, port, timeout + TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
        var statistics = guest.Network.Statistics;
        string outcome = probe switch
        {
            TcpProbe.Connected => "connected",
            TcpProbe.Reset when statistics.DeniedAttempts > deniedBefore => "reset: refused by the policy",
            TcpProbe.Reset when statistics.LimitRefusals > limitsBefore => "reset: a limit of the network was reached",
            TcpProbe.Reset => "reset: the destination refused the connection or could not be reached from the host",
            _ => $"no answer within {timeoutSeconds:0.#} s",
        };
        output.WriteLine($"tcp:    {address}:{port}{via}: {outcome}");
        return probe == TcpProbe.Connected ? 0 : 1;
    }

    /// <summary>The host-side address the network connects to for a guest destination, as UserModeNetwork maps it.</summary>
    private static IPAddress? HostSide(IPAddress destination, UserModeNetworkOptions options, out string? reason)
    {
        reason = null;
        if (destination.Equals(options.Gateway))
        {
            reason = "the gateway does not reach the host's loopback (GatewayReachesHostLoopback is off)";
            return options.GatewayReachesHostLoopback ? IPAddress.Loopback : null;
        }

        byte first = destination.GetAddressBytes()[0];
        if (IPAddress.IsLoopback(destination))
        {
            reason = $"the guest's own loopback; the host's loopback is the gateway, {options.Gateway}";
            return null;
        }

        if (options.Network.Contains(destination) || first == 0 || first >= 224)
        {
            reason = $"{(options.Network.Contains(destination) ? "inside the guest subnet " + options.Network : "not a unicast host address")}, which the network does not route to the host";
            return null;
        }

        return destination;
    }

    private static (UserNetworkAction Action, string Why) Decide(UserNetworkPolicy policy, IPAddress host, int port)
    {
        for (int i = 0; i < policy.Rules.Count; i++)
        {
            var rule = policy.Rules[i];
            if (rule.Destination.Contains(host) && port >= rule.FirstPort && port <= rule.LastPort && rule.Protocol is null or ProtocolType.Tcp)
            {
                return (rule.Action, $"rule {i + 1} ({Describe(rule)})");
            }
        }

        return (policy.DefaultAction, $"the default ({(policy.DefaultAction == UserNetworkAction.Allow ? "allow" : "deny")})");
    }

    private static string Describe(UserNetworkRule rule)
    {
        string ports = rule is { FirstPort: 0, LastPort: 65535 } ? "" : rule.FirstPort == rule.LastPort ? $" port {rule.FirstPort}" : $" ports {rule.FirstPort}-{rule.LastPort}";
        string protocol = rule.Protocol is { } p ? " " + p.ToString().ToUpperInvariant() : "";
        return $"{(rule.Action == UserNetworkAction.Allow ? "allow" : "deny")} {rule.Destination}{ports}{protocol}";
    }

    /// <summary>Options for a user network with <paramref name="rules"/> and <paramref name="forwards"/>; prints what is wrong and returns false.</summary>
    internal static bool TryBuildOptions(string[] rules, string[] forwards, string command, out UserModeNetworkOptions options)
    {
        options = new UserModeNetworkOptions();
        try
        {
            options = options with
            {
                Policy = ParsePolicy(rules),
                TcpForwards = [.. forwards.Select(UserNetworkTcpForward.Parse)],
            };
            return true;
        }
        catch (FormatException e)
        {
            Console.Error.WriteLine($"{command}: {e.Message}");
            return false;
        }
    }

    /// <summary>Parses <c>--policy</c> rules (see <see cref="PolicyOption"/>).</summary>
    /// <exception cref="FormatException">A rule is not in that form.</exception>
    internal static UserNetworkPolicy ParsePolicy(IEnumerable<string> rules)
    {
        var parsed = new List<UserNetworkRule>();
        var fallback = UserNetworkAction.Allow;
        foreach (string text in rules)
        {
            int colon = text.IndexOf(':', StringComparison.Ordinal);
            string action = colon > 0 ? text[..colon] : "";
            string rest = colon > 0 ? text[(colon + 1)..] : "";
            switch (action)
            {
                case "default" when rest is "allow" or "deny":
                    fallback = rest == "allow" ? UserNetworkAction.Allow : UserNetworkAction.Deny;
                    break;
                case "allow" or "deny":
                    parsed.Add(ParseRule(action == "allow" ? UserNetworkAction.Allow : UserNetworkAction.Deny, rest, text));
                    break;
                default:
                    throw new FormatException($"'{text}' is not a policy rule; write allow:DEST, deny:DEST (DEST is ADDRESS[/BITS][:PORT[-PORT]]) or default:allow|deny.");
            }
        }

        return new UserNetworkPolicy(parsed, fallback);
    }

    private static UserNetworkRule ParseRule(UserNetworkAction action, string destination, string text)
    {
        string network = destination;
        string? ports = null;
        if (destination.StartsWith('['))
        {
            // [IPv6][/BITS][:PORTS]
            int close = destination.IndexOf(']', StringComparison.Ordinal);
            int portColon = close > 0 ? destination.IndexOf(':', close) : -1;
            network = close > 0 ? destination[1..close] + (portColon > 0 ? destination[(close + 1)..portColon] : destination[(close + 1)..]) : destination;
            ports = portColon > 0 ? destination[(portColon + 1)..] : null;
        }
        else if (destination.Count(c => c == ':') == 1)
        {
            int portColon = destination.IndexOf(':', StringComparison.Ordinal);
            network = destination[..portColon];
            ports = destination[(portColon + 1)..];
        }

        if (!network.Contains('/', StringComparison.Ordinal) && IPAddress.TryParse(network, out var single))
        {
            network += single.AddressFamily == AddressFamily.InterNetwork ? "/32" : "/128";
        }

        int first = 0, last = 65535;
        bool portsOk = ports is null || TryParsePorts(ports, out first, out last);
        if (!IPNetwork.TryParse(network, out var subnet) || !portsOk)
        {
            throw new FormatException($"'{text}': '{destination}' is not ADDRESS[/BITS][:PORT[-PORT]] (e.g. 10.0.0.0/8, 93.184.216.34:443, 127.0.0.1:8000-8099, [fd00::]/8:53).");
        }

        return new UserNetworkRule(action, subnet, first, last);
    }

    private static bool TryParsePorts(string text, out int first, out int last)
    {
        int dash = text.IndexOf('-', StringComparison.Ordinal);
        last = 0;
        bool ok = int.TryParse(dash > 0 ? text[..dash] : text, NumberStyles.None, CultureInfo.InvariantCulture, out first)
            && (dash < 0 ? (last = first) >= 0 : int.TryParse(text.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out last));
        return ok && first <= last && last <= 65535;
    }
}
