using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Virt.Benchmarks.Virtio;
using Virt.Network;
using Virt.Network.UserNet;

namespace Virt.Benchmarks.Network;

/// <summary>
/// TCP throughput through <see cref="UserModeNetwork"/>: 4 MiB from a host client through a port forward to the
/// guest's end, against the same 4 MiB host to host over loopback (the baseline). The guest end is played in
/// process at the frame level (it acknowledges every segment with a 64 KiB window), so the figure is the stack's
/// own cost, not a guest kernel's; a Linux guest on the interpreter is far slower than either.
/// </summary>
[Config(typeof(InProcessShortJob))]
public class UserNetworkBenchmarks
{
    private const int Bytes = 4 * 1024 * 1024;
    private static readonly MacAddress GuestMac = MacAddress.Parse("02:00:00:00:00:15");
    private static readonly uint GuestIp = 0x0A00020F;

    private readonly byte[] _data = new byte[Bytes];
    private UserModeNetwork _net = null!;
    private TcpPortForward _forward = null!;
    private TcpListener _listener = null!;
    private uint _rcvNxt;
    private long _received;
    private TaskCompletionSource _done = new();

    [GlobalSetup]
    public void Setup()
    {
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _net = new UserModeNetwork();
        _net.Attach(OnFrame);
        _forward = _net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80);
        // The guest announces itself so the stack knows its MAC.
        _net.SendAsync(FrameBuilder.Arp(MacAddress.Broadcast, GuestMac, 1, GuestMac, GuestIp, default, 0x0A000202)).AsTask().GetAwaiter().GetResult();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _forward.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _net.DisposeAsync().AsTask().GetAwaiter().GetResult();
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
        var buffer = new byte[64 * 1024];
        var stream = server.GetStream();
        while (await stream.ReadAsync(buffer) > 0)
        {
        }

        await send;
    }

    /// <summary>4 MiB from a host client through the port forward to the guest's end.</summary>
    [Benchmark]
    public async Task HostToGuestThroughForward()
    {
        _received = 0;
        _done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var client = new TcpClient();
        await client.ConnectAsync(_forward.HostEndPoint);
        await client.GetStream().WriteAsync(_data);
        await _done.Task.WaitAsync(TimeSpan.FromMinutes(1));
    }

    /// <summary>The guest's end: answers the forward's SYN, acknowledges every in-order segment.</summary>
    private bool OnFrame(ReadOnlyMemory<byte> frame)
    {
        var f = frame.Span;
        if (f.Length < 54 || f[23] != Proto.Tcp || !Ipv4Packet.TryParse(f[14..], out var ip) || !TcpSegment.TryParse(ip, out var s))
        {
            return true;
        }

        if (s.Has(TcpSegment.Syn))
        {
            _rcvNxt = s.Sequence + 1;
            Reply(ip.Source, s, TcpSegment.Syn | TcpSegment.Ack, 1000);
        }
        else if (s.Sequence == _rcvNxt && s.Payload.Length > 0)
        {
            _rcvNxt += (uint)s.Payload.Length;
            Reply(ip.Source, s, TcpSegment.Ack, 1001);
            if ((_received += s.Payload.Length) >= Bytes)
            {
                _done.TrySetResult();
            }
        }

        return true;
    }

    private void Reply(uint remote, in TcpSegment s, byte flags, uint seq) =>
        _net.SendAsync(FrameBuilder.Tcp(_net.Options.GatewayMac, GuestMac, GuestIp, s.DestinationPort, remote, s.SourcePort, seq, _rcvNxt, flags, 65535, [], flags == TcpSegment.Ack ? (ushort)0 : (ushort)1460))
            .AsTask().GetAwaiter().GetResult();
}
