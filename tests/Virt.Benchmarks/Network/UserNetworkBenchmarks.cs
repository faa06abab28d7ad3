using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Virt.Benchmarks.Virtio;
using Virt.Network;

namespace Virt.Benchmarks.Network;

/// <summary>
/// TCP bulk throughput through <see cref="UserModeNetwork"/>, both directions, against the same transfer host to host
/// over loopback (the baseline, same run): 4 MiB from the guest to a host listener on loopback (through the gateway),
/// and 4 MiB from a host client through a port forward to the guest. The guest's end is played at the frame level
/// on the benchmark thread (<see cref="FrameTcpGuest"/>), so the figure is the stack's own cost; a Linux guest on the
/// interpreter is far slower than either. <see cref="Offload"/> plays a guest that negotiated virtio-net's checksum and
/// segmentation offloads (64 KiB segments both ways) against one without (1460-byte segments).
/// </summary>
[Config(typeof(InProcessShortJob))]
public class UserNetworkBenchmarks
{
    /// <summary>Whether the guest uses checksum and segmentation offloads.</summary>
    [Params(false, true)]
    public bool Offload { get; set; }

    private const int Bytes = 4 * 1024 * 1024;

    private readonly byte[] _data = new byte[Bytes];
    private UserModeNetwork _net = null!;
    private FrameTcpGuest _guest = null!;
    private TcpPortForward _forward = null!;
    private TcpListener _listener = null!;

    [GlobalSetup]
    public void Setup()
    {
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        // Each transfer leaves its connection in time-wait for 2 s; fast iterations would otherwise reach the default limit.
        _net = new UserModeNetwork(new UserModeNetworkOptions { MaxTcpConnections = 4096 });
        _guest = new FrameTcpGuest(_net, Offload);
        _forward = _net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _forward.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _net.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _guest.Dispose();
        _listener.Stop();
    }

    /// <summary>Baseline: 4 MiB host to host over a loopback TCP connection.</summary>
    [Benchmark(Baseline = true)]
    public async Task HostToHostLoopback()
    {
        using var client = new TcpClient();
        var accept = _listener.AcceptTcpClientAsync();
        await client.ConnectAsync((IPEndPoint)_listener.LocalEndpoint);
        using var server = await accept;
        var send = Task.Run(async () =>
        {
            await client.GetStream().WriteAsync(_data);
            client.Client.Shutdown(SocketShutdown.Send);
        });
        await DrainAsync(server);
        await send;
    }

    /// <summary>4 MiB from the guest through the gateway to a listener on the host's loopback.</summary>
    [Benchmark]
    public async Task GuestToHost()
    {
        var accept = _listener.AcceptTcpClientAsync();
        var server = Task.Run(async () =>
        {
            using var c = await accept;
            await DrainAsync(c);
        });
        _guest.Upload((ushort)((IPEndPoint)_listener.LocalEndpoint).Port, Bytes);
        await server;
    }

    /// <summary>4 MiB from a host client through the port forward to the guest.</summary>
    [Benchmark]
    public async Task HostToGuestThroughForward()
    {
        var client = Task.Run(async () =>
        {
            using var c = new TcpClient();
            await c.ConnectAsync(_forward.HostEndPoint);
            await c.GetStream().WriteAsync(_data);
        });
        _guest.Download(80, Bytes);
        await client;
    }

    internal static async Task DrainAsync(TcpClient client)
    {
        var buffer = new byte[64 * 1024];
        var stream = client.GetStream();
        while (await stream.ReadAsync(buffer) > 0)
        {
        }
    }
}

/// <summary>
/// TCP connection set-up rate: 50 connections from the guest through the gateway to a listener on the host's
/// loopback (SYN, the stack's host connect, SYN-ACK, ACK, then a reset), against 50 host-to-host loopback connects.
/// </summary>
[Config(typeof(InProcessShortJob))]
public class UserNetworkConnectBenchmarks
{
    private const int Connections = 50;

    private UserModeNetwork _net = null!;
    private FrameTcpGuest _guest = null!;
    private TcpListener _listener = null!;
    private CancellationTokenSource _stop = null!;
    private Task _accepting = null!;

    [GlobalSetup]
    public void Setup()
    {
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start(256);
        _stop = new CancellationTokenSource();
        _accepting = AcceptLoopAsync(_stop.Token);
        _net = new UserModeNetwork(new UserModeNetworkOptions { MaxTcpConnections = 1024 });
        _guest = new FrameTcpGuest(_net);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _stop.Cancel();
        _listener.Stop();
        _accepting.ContinueWith(_ => { }, TaskScheduler.Default).GetAwaiter().GetResult();
        _net.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _guest.Dispose();
        _stop.Dispose();
    }

    /// <summary>Baseline: 50 host-to-host loopback connects.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Connections)]
    public async Task HostToHostConnects()
    {
        for (int i = 0; i < Connections; i++)
        {
            using var client = new TcpClient();
            await client.ConnectAsync((IPEndPoint)_listener.LocalEndpoint);
            client.Client.LingerState = new LingerOption(true, 0);
        }
    }

    /// <summary>50 connections from the guest through the stack.</summary>
    [Benchmark(OperationsPerInvoke = Connections)]
    public void GuestToHostConnects()
    {
        ushort port = (ushort)((IPEndPoint)_listener.LocalEndpoint).Port;
        for (int i = 0; i < Connections; i++)
        {
            _guest.ConnectAndReset(port);
        }
    }

    private async Task AcceptLoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            var c = await _listener.AcceptSocketAsync(ct);
            c.Dispose();
        }
    }
}
