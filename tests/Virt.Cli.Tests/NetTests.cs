using System.Net;
using System.Net.Sockets;
using Xunit;

namespace Virt.Cli.Tests;

/// <summary>
/// <c>virt net</c> driven as a process: <c>check</c> goes through a real user-mode network (its DNS forwarder, its
/// policy, its host-side connection) from a stand-in guest; the host side here is a listener on this machine's loopback.
/// </summary>
public sealed class NetTests
{
    [Fact]
    public async Task Check_connects_through_the_gateway_to_a_listener_on_the_host_loopback()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var accepted = listener.AcceptTcpClientAsync(TestContext.Current.CancellationToken).AsTask();

        var result = VirtTool.Run(["net", "check", "10.0.2.2", "--port", port.ToString()]);

        Assert.True(result.ExitCode == 0, result.All);
        Assert.Contains($"policy: tcp 127.0.0.1:{port} allowed by the default (allow)", result.Stdout, StringComparison.Ordinal);
        Assert.Contains($"tcp:    10.0.2.2:{port} (the host's 127.0.0.1): connected", result.Stdout, StringComparison.Ordinal);
        using var client = await accepted.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken); // the host saw the connection
    }

    [Fact]
    public void Check_resolves_a_name_through_the_network_dns_forwarder()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;

        // The forwarder answers from the host's resolver and turns the host's loopback into the gateway.
        var result = VirtTool.Run(["net", "check", $"localhost:{port}"]);

        Assert.True(result.ExitCode == 0, result.All);
        Assert.Contains("dns:    localhost -> 10.0.2.2 (from 10.0.2.3)", result.Stdout, StringComparison.Ordinal);
        Assert.Contains("connected", result.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void A_deny_rule_resets_the_connection_and_the_host_never_sees_it()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;

        var result = VirtTool.Run(["net", "check", "10.0.2.2", "-p", port.ToString(), "--policy", "deny:127.0.0.0/8"]);

        Assert.Equal(1, result.ExitCode);
        Assert.Contains($"policy: tcp 127.0.0.1:{port} denied by rule 1 (deny 127.0.0.0/8)", result.Stdout, StringComparison.Ordinal);
        Assert.Contains("reset: refused by the policy", result.Stdout, StringComparison.Ordinal);
        Assert.False(listener.Pending(), "The host side was connected although the policy denies it.");
    }

    [Fact]
    public void An_allow_rule_before_default_deny_lets_one_port_through()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        string[] policy = ["--policy", $"allow:127.0.0.1:{port}", "--policy", "default:deny"];

        var allowed = VirtTool.Run(["net", "check", "10.0.2.2", "-p", port.ToString(), .. policy]);
        var denied = VirtTool.Run(["net", "check", "10.0.2.2", "-p", (port == 65535 ? port - 1 : port + 1).ToString(), .. policy]);

        Assert.True(allowed.ExitCode == 0, allowed.All);
        Assert.Contains($"allowed by rule 1 (allow 127.0.0.1/32 port {port})", allowed.Stdout, StringComparison.Ordinal);
        Assert.Equal(1, denied.ExitCode);
        Assert.Contains("denied by the default (deny)", denied.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void A_closed_port_is_reported_as_refused_by_the_destination()
    {
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        var result = VirtTool.Run(["net", "check", "10.0.2.2", "-p", port.ToString()]);

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("reset: the destination refused the connection", result.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Addresses_the_network_does_not_route_are_explained()
    {
        var loopback = VirtTool.Run(["net", "check", "127.0.0.1:80"]);
        Assert.Equal(1, loopback.ExitCode);
        Assert.Contains("the guest's own loopback; the host's loopback is the gateway, 10.0.2.2", loopback.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Show_lists_the_addresses_a_bound_forward_and_the_policy_in_order()
    {
        var result = VirtTool.Run(["net", "show", "--forward", "127.0.0.1:0:80", "--policy", "deny:10.0.0.0/8", "--policy", "allow:[fd00::]/8:53", "--policy", "default:deny"]);

        Assert.True(result.ExitCode == 0, result.All);
        Assert.Contains("subnet:       10.0.2.0/24", result.Stdout, StringComparison.Ordinal);
        Assert.Contains("gateway:      10.0.2.2 (router and DHCP server; connections to it reach the host's 127.0.0.1)", result.Stdout, StringComparison.Ordinal);
        Assert.Contains("guest:        10.0.2.15", result.Stdout, StringComparison.Ordinal);
        Assert.Matches(@"forward:      tcp 127\.0\.0\.1:[1-9][0-9]* -> guest 10\.0\.2\.15:80", result.Stdout);
        int deny = result.Stdout.IndexOf("policy  1:    deny 10.0.0.0/8", StringComparison.Ordinal);
        int allow = result.Stdout.IndexOf("policy  2:    allow fd00::/8 port 53", StringComparison.Ordinal);
        Assert.True(deny >= 0 && allow > deny, result.Stdout);
        Assert.Contains("policy:       deny what no rule matches", result.Stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("net", "check", "10.0.2.2", "--policy", "block:10.0.0.0/8")]
    [InlineData("net", "show", "--policy", "allow:10.0.0.0/33")]
    [InlineData("net", "show", "--policy", "deny:10.0.0.1:70000")]
    public void A_malformed_rule_is_a_usage_error_naming_the_form(params string[] args)
    {
        var result = VirtTool.Run(args);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(" is not ", result.Stderr, StringComparison.Ordinal);
        Assert.Contains("ADDRESS[/BITS][:PORT[-PORT]]", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_takes_the_policy_only_with_the_user_network()
    {
        var result = VirtTool.Run(["run", "--kernel", "/nonexistent/vmlinuz", "--policy", "default:deny", "--", "true"]);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("--forward and --policy need --net user", result.Stderr, StringComparison.Ordinal);
    }
}
