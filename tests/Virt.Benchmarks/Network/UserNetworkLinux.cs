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
/// guest's path. Run with <c>dotnet tests/Virt.Benchmarks/bin/Release/net10.0/Virt.Benchmarks.dll net-fresh linux [MiB]</c>.
/// </summary>
internal static class UserNetworkLinux
{
    private const string Done = "NET-FETCH-DONE";

    public static async Task RunAsync(int mebibytes)
    {
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        string initrd = Path.Combine(RepositoryPaths.LinuxGuestKit, "initramfs.cpio.gz");
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
        using var stop = new CancellationTokenSource();
        var server = ServeAsync(listener, payload, () => Interlocked.Exchange(ref bigRequestAt, Stopwatch.GetTimestamp()), stop.Token);

        await using var network = new UserModeNetwork();
        string command = $"wget -qO /dev/null http://10.0.2.2:{port}/warm; wget -qO /dev/null http://10.0.2.2:{port}/big; echo {Done}; sleep 600";
        var console = new MarkerStream(Done);
        var clock = Stopwatch.StartNew();
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(kernel)
            .WithInitrd(initrd)
            .WithKernelCommandLine($"quiet virt.net=dhcp virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(command))}")
            .WithSerialConsole(console)
            .WithUserNetwork(network, MacAddress.Parse("02:00:00:00:0e:15"))
            .Build();
        await vm.StartAsync();
        await console.Seen.Task.WaitAsync(TimeSpan.FromMinutes(15));
        long end = Stopwatch.GetTimestamp();
        double seconds = Stopwatch.GetElapsedTime(Interlocked.Read(ref bigRequestAt), end).TotalSeconds;
        Console.WriteLine($"linux guest (interpreter): boot and warm fetch {clock.Elapsed.TotalSeconds - seconds:F1} s; {mebibytes} MiB host -> guest by wget in {seconds:F2} s = {payload.Length / seconds / 1e6:F2} MB/s");
        Console.WriteLine($"stack: {network.Statistics}");
        await vm.StopAsync();
        await stop.CancelAsync();
        listener.Stop();
        await server.ContinueWith(_ => { }, TaskScheduler.Default);
    }

    /// <summary>A minimal HTTP/1.0 server: <c>/big</c> gets the payload (its arrival noted), anything else a few bytes.</summary>
    private static async Task ServeAsync(TcpListener listener, byte[] payload, Action bigRequest, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            using var client = await listener.AcceptTcpClientAsync(ct);
            var stream = client.GetStream();
            var request = new StringBuilder();
            var buffer = new byte[1024];
            while (!request.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
            {
                int n = await stream.ReadAsync(buffer, ct);
                if (n == 0)
                {
                    break;
                }

                request.Append(Encoding.ASCII.GetString(buffer, 0, n));
            }

            bool big = request.ToString().StartsWith("GET /big", StringComparison.Ordinal);
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
