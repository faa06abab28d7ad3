using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Virt.Network;

namespace Virt.Benchmarks.Network;

/// <summary>
/// The three transfers of <see cref="UserNetworkBenchmarks"/> repeated in one warm process, each round timed against
/// the host-to-host loopback transfer of the same round, without and with the guest's offloads. A quicker look than
/// BenchmarkDotNet: <c>dotnet tests/Virt.Benchmarks/bin/Release/net10.0/Virt.Benchmarks.dll net-rounds [MiB] [rounds]</c>.
/// </summary>
internal static class UserNetworkSteady
{
    public static async Task RunAsync(int mebibytes, int rounds)
    {
        int bytes = mebibytes * 1024 * 1024;
        var data = new byte[bytes];
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        foreach (bool offload in new[] { false, true })
        {
            var net = new UserModeNetwork();
            using var guest = new FrameTcpGuest(net, offload);
            var forward = net.ForwardTcp(new IPEndPoint(IPAddress.Loopback, 0), 80);
            var loopback = new List<double>();
            var up = new List<double>();
            var down = new List<double>();
            for (int round = 0; round < rounds; round++)
            {
                long start = Stopwatch.GetTimestamp();
                using (var client = new TcpClient())
                {
                    var accept = listener.AcceptTcpClientAsync();
                    await client.ConnectAsync((IPEndPoint)listener.LocalEndpoint);
                    using var server = await accept;
                    var send = Task.Run(async () =>
                    {
                        await client.GetStream().WriteAsync(data);
                        client.Client.Shutdown(SocketShutdown.Send);
                    });
                    await UserNetworkBenchmarks.DrainAsync(server);
                    await send;
                }

                loopback.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);

                start = Stopwatch.GetTimestamp();
                var acceptGuest = listener.AcceptTcpClientAsync();
                var drain = Task.Run(async () =>
                {
                    using var c = await acceptGuest;
                    await UserNetworkBenchmarks.DrainAsync(c);
                });
                guest.Upload(port, bytes);
                await drain;
                up.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);

                start = Stopwatch.GetTimestamp();
                var sender = Task.Run(async () =>
                {
                    using var c = new TcpClient();
                    await c.ConnectAsync(forward.HostEndPoint);
                    await c.GetStream().WriteAsync(data);
                });
                guest.Download(80, bytes);
                await sender;
                down.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }

            await forward.DisposeAsync();
            await net.DisposeAsync();
            Console.WriteLine($"rounds (ms): loopback {string.Join(" ", loopback.Select(x => x.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)))}; up {string.Join(" ", up.Select(x => x.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)))}; down {string.Join(" ", down.Select(x => x.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)))}");
            // The first round warms the code up; the median of the others is reported.
            double Median(List<double> values) => values.Skip(values.Count > 1 ? 1 : 0).Order().ElementAt((values.Count - (values.Count > 1 ? 1 : 0)) / 2);
            double l = Median(loopback), u = Median(up), d = Median(down);
            Console.WriteLine($"{(offload ? "with offloads   " : "without offloads")}: {mebibytes} MiB host->host loopback {l:F1} ms ({bytes / l / 1e3:F0} MB/s); "
                + $"guest->host {u:F1} ms (loopback/guest = {l / u:F2}); host->guest through a forward {d:F1} ms (loopback/guest = {l / d:F2})");
        }
    }
}
