using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Virt.Network;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// The user-mode networking part of <see cref="BootedDevicesGuest"/>: the guest takes its address by DHCP, resolves
/// a name through the DNS forwarder (a test resolver on loopback answers), fetches a file from an HTTP server on the
/// host's loopback, tries a destination the policy denies, and serves HTTP that a host client reaches through a port
/// forward.
/// </summary>
public sealed class BootedUserNetworkGuest : IAsyncDisposable
{
    public const string ServingMarker = "GUEST-SERVING";
    public const string GuestPage = "hello-from-the-guest-httpd";
    public const string ResolvedName = "files.virt.test";
    public static readonly MacAddress Mac = MacAddress.Parse("02:00:00:00:0d:15");

    private readonly CancellationTokenSource _stop = new();
    private TcpListener? _http;
    private Socket? _resolver;
    private Task? _httpTask;
    private Task? _resolverTask;

    public byte[] Payload { get; } = RandomPayload();

    public UserModeNetwork? Network { get; private set; }

    public TcpPortForward? Forward { get; private set; }

    public int ResolverQueries;

    /// <summary>What the guest runs (after <c>virt.net=dhcp</c> gave it an address); ends by printing <see cref="ServingMarker"/>.</summary>
    public string Command { get; private set; } = "";

    /// <summary>Starts the host's HTTP server and resolver and the user-mode network; sets <see cref="Command"/>.</summary>
    public void Start()
    {
        _http = new TcpListener(IPAddress.Loopback, 0);
        _http.Start();
        int httpPort = ((IPEndPoint)_http.LocalEndpoint).Port;
        _httpTask = ServeHttpAsync(_http, Payload, _stop.Token);
        _resolver = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        _resolver.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _resolverTask = ResolveAsync(_resolver, _stop.Token);

        Network = new UserModeNetwork(new UserModeNetworkOptions
        {
            DnsUpstream = (IPEndPoint)_resolver.LocalEndPoint!,
            // The guest may reach the test's HTTP server on the host's loopback and nothing else.
            Policy = UserNetworkPolicy.DenyAllExcept(UserNetworkRule.Allow("127.0.0.1/32", httpPort, ProtocolType.Tcp)),
        });
        Forward = Network.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80);

        Command =
            $"mkdir -p /www && echo {GuestPage} > /www/index.html && httpd -p 80 -h /www && "
            // DNS runs over UDP: like any resolver's caller, ask again when an answer was lost (the machine may be loaded).
            + $"for i in 1 2 3; do nslookup {ResolvedName} > /tmp/ns 2>&1; grep -q 10.0.2.2 /tmp/ns && break; done; cat /tmp/ns; echo NSLOOKUP-TRIES=$i; "
            + $"wget -qO /tmp/payload.bin http://10.0.2.2:{httpPort}/payload.bin && sha256sum /tmp/payload.bin; "
            + "wget -qO /tmp/denied http://203.0.113.7:80/denied; echo DENIED-STATUS=$?; " // no -T: that option crashes this static wget
            + $"echo {ServingMarker}";
    }

    /// <summary>Adds the NIC on the user-mode network to <paramref name="builder"/>.</summary>
    public VirtualMachineBuilder Configure(VirtualMachineBuilder builder) => builder.WithUserNetwork(Network!, Mac);

    public async ValueTask DisposeAsync()
    {
        if (Network is not null)
        {
            await Network.DisposeAsync();
        }

        await _stop.CancelAsync();
        _http?.Stop();
        _resolver?.Dispose();
        foreach (var task in new[] { _httpTask, _resolverTask })
        {
            if (task is not null)
            {
                await task.ContinueWith(_ => { }, TaskScheduler.Default);
            }
        }

        _stop.Dispose();
    }

    private static byte[] RandomPayload()
    {
        var b = new byte[200_000];
        new Random(4242).NextBytes(b);
        return b;
    }

    /// <summary>A minimal HTTP/1.0 server: every request gets the payload.</summary>
    private static async Task ServeHttpAsync(TcpListener listener, byte[] payload, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            using var client = await listener.AcceptTcpClientAsync(ct);
            var stream = client.GetStream();
            var request = new List<byte>();
            var buffer = new byte[1024];
            while (!Encoding.ASCII.GetString([.. request]).Contains("\r\n\r\n", StringComparison.Ordinal))
            {
                int n = await stream.ReadAsync(buffer, ct);
                if (n == 0)
                {
                    break;
                }

                request.AddRange(buffer.AsSpan(0, n));
            }

            await stream.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {payload.Length}\r\nConnection: close\r\n\r\n"), ct);
            await stream.WriteAsync(payload, ct);
            client.Client.Shutdown(SocketShutdown.Send);
        }
    }

    /// <summary>A test DNS server: A queries for <see cref="ResolvedName"/> get 10.0.2.2, everything else an empty answer.</summary>
    private async Task ResolveAsync(Socket socket, CancellationToken ct)
    {
        var buffer = new byte[512];
        while (!ct.IsCancellationRequested)
        {
            var result = await socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), ct);
            var query = buffer.AsSpan(0, result.ReceivedBytes);
            if (query.Length < 17)
            {
                continue;
            }

            Interlocked.Increment(ref ResolverQueries);
            int end = 12;
            var name = new StringBuilder();
            while (end < query.Length && query[end] != 0)
            {
                int length = query[end];
                if (end + 1 + length > query.Length)
                {
                    break;
                }

                name.Append(name.Length > 0 ? "." : "").Append(Encoding.ASCII.GetString(query.Slice(end + 1, length)));
                end += 1 + length;
            }

            end += 5; // the root label, QTYPE, QCLASS
            if (end > query.Length)
            {
                continue;
            }

            ushort type = BinaryPrimitives.ReadUInt16BigEndian(query[(end - 4)..]);
            bool answer = type == 1 && string.Equals(name.ToString(), ResolvedName, StringComparison.OrdinalIgnoreCase);
            var reply = new byte[end + (answer ? 16 : 0)];
            query[..end].CopyTo(reply);
            reply[2] = (byte)(0x84 | (query[2] & 0x01)); // response, authoritative, RD as asked
            reply[3] = 0x80;
            BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(6), (ushort)(answer ? 1 : 0));
            if (answer)
            {
                byte[] record = [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 2, 2];
                record.CopyTo(reply, end);
            }

            await socket.SendToAsync(reply, SocketFlags.None, result.RemoteEndPoint, ct);
        }
    }
}

/// <summary>A Linux guest on user-mode networking: DHCP, DNS through the forwarder, HTTP to the host's loopback, a port forward in, a denied destination.</summary>
[Collection(nameof(BootedDevicesGuest))]
public sealed class LinuxUserNetworkTests(BootedDevicesGuest devices)
{
    private BootedUserNetworkGuest Guest => devices.UserNetwork!;

    private string Text => devices.Console.Text.Replace("\r", "", StringComparison.Ordinal);

    private void RequireGuest()
    {
        devices.Require();
        Assert.True(Text.Contains(BootedUserNetworkGuest.ServingMarker, StringComparison.Ordinal), "the guest never reached " + BootedUserNetworkGuest.ServingMarker + ":\n" + Text + "\n" + Guest.Network!.Statistics);
    }

    [Fact]
    public void Guest_gets_its_address_by_dhcp()
    {
        RequireGuest();
        Assert.Contains("VIRT-NET-READY=10.0.2.15/24", Text, StringComparison.Ordinal);
        Assert.Equal(IPAddress.Parse("10.0.2.15"), Guest.Network!.Leases[BootedUserNetworkGuest.Mac]);
        Assert.True(Guest.Network.Statistics.DhcpAcks >= 1);
    }

    [Fact]
    public void Guest_resolves_a_name_through_the_dns_forwarder()
    {
        RequireGuest();
        Assert.Contains(BootedUserNetworkGuest.ResolvedName, Text, StringComparison.Ordinal);
        Assert.Matches(@"Address:\s*10\.0\.2\.2\b", Text[Text.IndexOf(BootedUserNetworkGuest.ResolvedName, StringComparison.Ordinal)..]);
        Assert.True(Guest.ResolverQueries >= 1);
        Assert.True(Guest.Network!.Statistics.DnsQueries >= 1);
    }

    [Fact]
    public void Guest_fetches_a_file_from_an_http_server_on_the_host_loopback()
    {
        RequireGuest();
        string expected = Convert.ToHexStringLower(SHA256.HashData(Guest.Payload));
        Assert.Contains($"{expected}  /tmp/payload.bin", Text, StringComparison.Ordinal);
        Assert.True(Guest.Network!.Statistics.BytesToGuest >= Guest.Payload.Length);
    }

    [Fact]
    public void Denied_destination_is_refused_and_counted()
    {
        RequireGuest();
        Assert.Matches(@"DENIED-STATUS=[1-9]", Text);
        Assert.True(Guest.Network!.Statistics.DeniedAttempts >= 1, Guest.Network.Statistics.ToString() + Text);
    }

    [Fact]
    public async Task Host_client_reaches_the_guest_httpd_through_a_port_forward()
    {
        RequireGuest();
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(2) };
        string page = await http.GetStringAsync(new Uri($"http://127.0.0.1:{Guest.Forward!.HostEndPoint.Port}/index.html"), TestContext.Current.CancellationToken);
        Assert.Equal(BootedUserNetworkGuest.GuestPage + "\n", page);
        Assert.True(Guest.Forward.ConnectionsAccepted >= 1);
    }
}
