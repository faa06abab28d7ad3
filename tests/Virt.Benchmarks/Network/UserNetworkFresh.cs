using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Virt.Network;

namespace Virt.Benchmarks.Network;

/// <summary>
/// One transfer through the user-mode network in a process that has done nothing before: what a short-lived
/// sandbox sees (cold JIT, first sockets). Creates the network, moves <c>MiB</c> MiB from the frame-level guest to a
/// listener on the host's loopback, then moves the same bytes host to host over loopback (the baseline, now warm
/// for sockets but cold for its own code). Run with
/// <c>dotnet tests/Virt.Benchmarks/bin/Release/net10.0/Virt.Benchmarks.dll net-fresh [MiB]</c>.
/// </summary>
internal static class UserNetworkFresh
{
    public static async Task RunAsync(int mebibytes, bool offload = false)
    {
        long bytes = mebibytes * 1024L * 1024;
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;

        long start = Stopwatch.GetTimestamp();
        var net = new UserModeNetwork();
        using var guest = new FrameTcpGuest(net, offload);
        double created = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        var accept = listener.AcceptTcpClientAsync();
        var server = Task.Run(async () =>
        {
            using var c = await accept;
            await UserNetworkBenchmarks.DrainAsync(c);
        });
        guest.Upload(port, bytes);
        await server;
        double stack = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        await net.DisposeAsync();

        start = Stopwatch.GetTimestamp();
        var data = new byte[bytes];
        using (var client = new TcpClient())
        {
            var acceptHost = listener.AcceptTcpClientAsync();
            await client.ConnectAsync((IPEndPoint)listener.LocalEndpoint);
            using var peer = await acceptHost;
            var send = Task.Run(async () =>
            {
                await client.GetStream().WriteAsync(data);
                client.Client.Shutdown(SocketShutdown.Send);
            });
            await UserNetworkBenchmarks.DrainAsync(peer);
            await send;
        }

        double loopback = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        Console.WriteLine($"user network ({(offload ? "guest with offloads" : "guest without offloads")}), fresh process: network created in {created:F1} ms; {mebibytes} MiB guest -> host in {stack:F1} ms (including creation) = {bytes / stack / 1e3:F0} MB/s");
        Console.WriteLine($"host -> host loopback, same process after it: {loopback:F1} ms = {bytes / loopback / 1e3:F0} MB/s; ratio stack/loopback time {stack / loopback:F1}");
    }
}
