using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Virt.Network;
using Virt.Testing;

namespace Virt.Benchmarks.Network;

/// <summary>
/// A Linux guest on the interpreter fetches a file over user-mode networking from an HTTP server on the host's
/// loopback: host → guest throughput with a real guest kernel (the guest kit's busybox <c>wget</c>). Timed on the
/// host from the request's arrival to the guest's marker after <c>wget</c> ended; a small fetch first warms the
/// guest's path. Before the fetch the guest posts as many bytes (<c>wget --post-file</c>): guest → host, timed on the
/// host from the request's arrival to its last byte (the file holds letters: busybox <c>wget</c> posts a file as text,
/// up to its first NUL byte). Both against the same bytes host to host over loopback in the same
/// process. Run with <c>dotnet tests/Virt.Benchmarks/bin/Release/net10.0/Virt.Benchmarks.dll net-fresh linux [MiB] [nooffload]</c>
/// (<c>nooffload</c>: the virtio-net device offers no checksum or segmentation offloads).
/// </summary>
internal static class UserNetworkLinux
{
    private const string Done = "NET-FETCH-DONE";

    public static async Task RunAsync(int mebibytes, bool offloads = true)
    {
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio");
        if (!File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException("The guest kit is missing; run scripts/get-linux-guest.sh.");
        }

        var payload = new byte[mebibytes * 1024 * 1024];
        new Random(7).NextBytes(payload);
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        long bigRequestAt = 0;
        double bigRequestCpu = 0;
        UserModeNetwork? stack = null;
        UserModeNetworkStatistics? atFetch = null;
        double uploadSeconds = 0;
        using var stop = new CancellationTokenSource();
        var server = ServeAsync(listener, payload, () =>
        {
            bigRequestCpu = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
            atFetch = stack?.Statistics;
            Interlocked.Exchange(ref bigRequestAt, Stopwatch.GetTimestamp());
        }, t => uploadSeconds = t, stop.Token);

        await using var network = new UserModeNetwork();
        stack = network;
        string command = $"dd if=/dev/zero bs=65536 count={mebibytes * 16} 2>/dev/null | tr \"\\\\000\" a > /tmp/up; wget -qO /dev/null http://10.0.2.2:{port}/warm; "
            + $"wget -qO /dev/null --post-file=/tmp/up http://10.0.2.2:{port}/up; wget -qO /dev/null http://10.0.2.2:{port}/big; echo {Done}; sleep 600";
        var console = new MarkerStream(Done);
        var clock = Stopwatch.StartNew();
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(kernel)
            .WithInitrd(initrd)
            .WithKernelCommandLine($"quiet virt.net=dhcp virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(command))}")
            .WithSerialConsole(console)
            .WithUserNetwork(network, MacAddress.Parse("02:00:00:00:0e:15"), new VirtioNetOptions { SegmentationOffload = offloads })
            .Build();
        await vm.StartAsync();
        await console.Seen.Task.WaitAsync(TimeSpan.FromMinutes(15));
        long end = Stopwatch.GetTimestamp();
        double fetchCpu = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds - bigRequestCpu;
        double seconds = Stopwatch.GetElapsedTime(Interlocked.Read(ref bigRequestAt), end).TotalSeconds;
        double loopback = LoopbackSeconds(payload);
        Console.WriteLine($"linux guest (interpreter, offloads {(offloads ? "offered" : "not offered")}): boot and warm fetch {clock.Elapsed.TotalSeconds - seconds - uploadSeconds:F1} s; "
            + $"{mebibytes} MiB host -> guest by wget in {seconds:F2} s = {payload.Length / seconds / 1e6:F2} MB/s; guest -> host by wget --post-file in {uploadSeconds:F2} s = {payload.Length / uploadSeconds / 1e6:F2} MB/s");
        Console.WriteLine($"host -> host loopback, same process: {loopback * 1e3:F1} ms = {payload.Length / loopback / 1e6:F0} MB/s; ratio loopback/guest time: "
            + $"host -> guest {loopback / seconds:F4}, guest -> host {loopback / uploadSeconds:F4}");
        var afterFetch = network.Statistics;
        Console.WriteLine($"host -> guest fetch: process CPU {fetchCpu:F2} s (the machine's load makes wall time noisy; CPU time is steadier); "
            + $"frames to the guest {afterFetch.FramesToGuest - (atFetch?.FramesToGuest ?? 0)}, from the guest {afterFetch.FramesFromGuest - (atFetch?.FramesFromGuest ?? 0)}");
        Console.WriteLine($"stack: {network.Statistics}; {network.TcpDiagnostics}");
        await vm.StopAsync();
        await stop.CancelAsync();
        listener.Stop();
        await server.ContinueWith(_ => { }, TaskScheduler.Default);
    }

    /// <summary>The same bytes host to host over a loopback connection (after one warm-up transfer).</summary>
    private static double LoopbackSeconds(byte[] payload)
    {
        double seconds = 0;
        for (int i = 0; i < 2; i++)
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            using var client = new TcpClient();
            client.Connect((IPEndPoint)listener.LocalEndpoint);
            using var server = listener.AcceptTcpClient();
            long start = Stopwatch.GetTimestamp();
            var send = Task.Run(() =>
            {
                client.GetStream().Write(payload);
                client.Client.Shutdown(SocketShutdown.Send);
            });
            var buffer = new byte[64 * 1024];
            while (server.GetStream().Read(buffer) > 0)
            {
            }

            send.GetAwaiter().GetResult();
            seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        }

        return seconds;
    }

    /// <summary>
    /// A minimal HTTP/1.0 server: <c>/big</c> gets the payload (its arrival noted), a POST's body is read to its
    /// Content-Length and timed from the request's arrival, anything else gets a few bytes.
    /// </summary>
    private static async Task ServeAsync(TcpListener listener, byte[] payload, Action bigRequest, Action<double> uploaded, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            using var client = await listener.AcceptTcpClientAsync(ct);
            var stream = client.GetStream();
            var received = new List<byte>();
            var buffer = new byte[64 * 1024];
            int headerEnd = -1;
            long arrived = 0;
            while (headerEnd < 0)
            {
                int n = await stream.ReadAsync(buffer, ct);
                if (n == 0)
                {
                    break;
                }

                if (arrived == 0)
                {
                    arrived = Stopwatch.GetTimestamp();
                }

                received.AddRange(buffer.AsSpan(0, n).ToArray());
                headerEnd = Encoding.ASCII.GetString([.. received]).IndexOf("\r\n\r\n", StringComparison.Ordinal);
            }

            string request = Encoding.ASCII.GetString([.. received]);
            if (request.StartsWith("POST ", StringComparison.Ordinal))
            {
                var length = System.Text.RegularExpressions.Regex.Match(request, "Content-Length: *([0-9]+)", System.Text.RegularExpressions.RegexOptions.IgnoreCase);
                long remaining = long.Parse(length.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) - (received.Count - headerEnd - 4);
                while (remaining > 0)
                {
                    int n = await stream.ReadAsync(buffer, ct);
                    if (n == 0)
                    {
                        break;
                    }

                    remaining -= n;
                }

                uploaded(Stopwatch.GetElapsedTime(arrived).TotalSeconds);
            }

            bool big = request.StartsWith("GET /big", StringComparison.Ordinal);
            if (big)
            {
                bigRequest();
            }

            var body = big ? payload : Encoding.ASCII.GetBytes("warm\n");
            await stream.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.0 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"), ct);
            await stream.WriteAsync(body, ct);
            client.Client.Shutdown(SocketShutdown.Send);
        }
    }
}
