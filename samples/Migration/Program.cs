// Migration: boots the guest kit to a shell, starts a busy loop in the guest, and moves the running VM to a second
// process through a local socket (live migration: memory copied while the guest runs, then a short pause). The second
// process resumes it, types a command into its shell and prints the answer.
//
//   bash scripts/get-linux-guest.sh
//   dotnet run -c Release --project samples/Migration
//   dotnet run -c Release --project samples/Migration -- --backend interpreter
//
// With --snapshot FILE it starts from a snapshot of a booted shell instead of booting, for example the one the Snapshots
// sample leaves with --keep (the VM is restored with dirty-page tracking, then moved the same way):
//
//   dotnet run -c Release --project samples/Snapshots -- --keep appliance.snap
//   dotnet run -c Release --project samples/Migration -- --snapshot appliance.snap
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Virt;

var backend = BackendKind.Interpreter;
int? receivePort = null;
string? snapshot = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--backend" when i + 1 < args.Length:
            backend = Enum.Parse<BackendKind>(args[++i], ignoreCase: true);
            break;
        case "--snapshot" when i + 1 < args.Length:
            snapshot = args[++i]; // start from this snapshot of a booted shell instead of booting
            break;
        case "--receive" when i + 1 < args.Length:
            receivePort = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); // the second process
            break;
        default:
            Console.Error.WriteLine($"unknown argument: {args[i]} (--backend interpreter|kvm|auto, --snapshot <file>)");
            return 2;
    }
}

using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(10));
try
{
    return receivePort is int port ? await ReceiveAsync(port, backend, timeout.Token) : await SendAsync(backend, snapshot, timeout.Token);
}
catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or SocketException or Virt.Snapshots.SnapshotFormatException or OperationCanceledException)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

static async Task<int> SendAsync(BackendKind backend, string? snapshot, CancellationToken ct)
{
    var console = new GuestConsole();
    var clock = Stopwatch.StartNew();
    VirtualMachine vm;
    if (snapshot is not null)
    {
        // A booted shell saved earlier: restored (memory mapped from the file) with dirty-page tracking, and resumed.
        vm = await VirtualMachine.RestoreAsync(snapshot, b => b.WithBackend(backend).WithSerialConsole(console).WithDirtyPageTracking(), ct);
        await vm.ResumeAsync(ct);
    }
    else
    {
        string kit = Path.Combine(FindRoot(), "artifacts", "linux");
        string kernel = Path.Combine(kit, "vmlinuz");
        string initrd = Path.Combine(kit, "initramfs.cpio");
        if (!File.Exists(kernel) || !File.Exists(initrd))
        {
            Console.Error.WriteLine($"No guest kit in {kit}. Run: bash scripts/get-linux-guest.sh");
            return 2;
        }

        vm = VirtualMachine.CreateBuilder()
            .WithName("appliance")
            .WithBackend(backend)
            .WithMemoryMiB(256)
            .WithLinuxKernel(kernel)
            .WithInitrd(initrd)
            .WithKernelCommandLine("quiet")
            .WithSerialConsole(console)
            .WithDirtyPageTracking()
            .Build();
        try
        {
            await vm.StartAsync(ct);
            await console.WaitForAsync("VIRT-INIT-READY", ct);
        }
        catch
        {
            await vm.DisposeAsync();
            throw;
        }
    }

    await using var _ = vm;
    // A loop that keeps the guest busy (and writing its stack) while it moves; its pid shows it survived the move.
    await vm.WriteToSerialConsoleAsync("(i=0; while :; do i=$((i+1)); done) & echo LOOP-$((6*7))\n"u8.ToArray(), ct);
    await console.WaitForAsync("LOOP-42", ct);
    Console.WriteLine($"[source] {(snapshot is null ? "booted" : "restored " + snapshot)} on {vm.BackendSelection.Name} to a busy shell in {clock.Elapsed.TotalSeconds:F1} s");

    using var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    var receiver = StartReceiver(((IPEndPoint)listener.LocalEndpoint).Port, backend);
    var destinationClock = new DestinationClock();
    var relay = RelayAsync(receiver, destinationClock);
    long pausedAt, lastByteAt;
    using (var client = await listener.AcceptTcpClientAsync(ct))
    await using (var stream = client.GetStream())
    {
        long start = Stopwatch.GetTimestamp();
        var report = await vm.MigrateAsync(stream, cancellationToken: ct);
        pausedAt = start + Ticks(report.Duration - report.Downtime);
        lastByteAt = start + Ticks(report.Duration);
        var steps = report.DowntimeSteps;
        Console.WriteLine($"[source] sent {report.PagesSent} pages ({report.ZeroPagesSent} zero, {report.BytesSent / 1024} KiB) in {report.Rounds} rounds, "
            + $"{report.Duration.TotalMilliseconds:F0} ms in all; the guest was paused for {report.Downtime.TotalMilliseconds:F1} ms ({report.PagesSentPaused} pages)");
        Console.WriteLine($"[source] pause: {Ms(steps.Pause)} vCPU stop, {Ms(steps.Quiesce)} device quiesce, {Ms(steps.LastPages)} last pages, "
            + $"{Ms(steps.SaveState)} state save, {Ms(steps.SendState)} state send and flush");
    }

    await receiver.WaitForExitAsync(ct);
    await relay;
    if (destinationClock.RestoredAt is long restored && destinationClock.RunningAt is long running)
    {
        // Stopwatch timestamps are the system's monotonic clock, the same in both processes.
        Console.WriteLine($"[source] downtime end to end (paused here to running there): {Ms(Stopwatch.GetElapsedTime(pausedAt, running))}; "
            + $"of it, the destination's restore after the last byte: {Ms(Stopwatch.GetElapsedTime(lastByteAt, restored))}, its resume: {Ms(Stopwatch.GetElapsedTime(restored, running))}");
    }

    Console.WriteLine($"[source] the receiving process exited with {receiver.ExitCode}");
    return receiver.ExitCode;
}

static long Ticks(TimeSpan span) => (long)(span.TotalSeconds * Stopwatch.Frequency);

static string Ms(TimeSpan span) => $"{span.TotalMilliseconds:F1} ms";

static async Task<int> ReceiveAsync(int port, BackendKind backend, CancellationToken ct)
{
    using var client = new TcpClient();
    await client.ConnectAsync(IPAddress.Loopback, port, ct);
    await using var stream = client.GetStream();
    var console = new GuestConsole();
    var clock = Stopwatch.StartNew();
    await using var vm = await VirtualMachine.ReceiveMigrationAsync(stream, b => b.WithBackend(backend).WithSerialConsole(console), ct);
    long restoredAt = Stopwatch.GetTimestamp();
    Console.WriteLine($"[destination {Environment.ProcessId}] received and restored the VM in {clock.Elapsed.TotalMilliseconds:F0} ms (from the first byte)");
    clock.Restart();
    await vm.ResumeAsync(ct);
    long runningAt = Stopwatch.GetTimestamp();
    Console.WriteLine($"[destination {Environment.ProcessId}] clock {restoredAt} {runningAt}");
    await vm.WriteToSerialConsoleAsync("echo MOVED-$((6*7)) $(uname -r)\n"u8.ToArray(), ct);
    await console.WaitForLineAsync("MOVED-42", ct);
    string line = console.Text.Split('\n').Select(l => l.TrimEnd('\r')).Last(l => l.StartsWith("MOVED-42", StringComparison.Ordinal));
    Console.WriteLine($"[destination {Environment.ProcessId}] the guest answered after {clock.Elapsed.TotalMilliseconds:F0} ms: {line}");
    await vm.StopAsync(ct);
    return 0;
}

static Process StartReceiver(int port, BackendKind backend)
{
    string self = typeof(GuestConsole).Assembly.Location;
    var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
    {
        RedirectStandardOutput = true,
        RedirectStandardError = true,
        UseShellExecute = false,
    };
    psi.ArgumentList.Add(self);
    psi.ArgumentList.Add("--receive");
    psi.ArgumentList.Add(port.ToString(System.Globalization.CultureInfo.InvariantCulture));
    psi.ArgumentList.Add("--backend");
    psi.ArgumentList.Add(backend.ToString());
    return Process.Start(psi) ?? throw new InvalidOperationException("Could not start the receiving process.");
}

static async Task RelayAsync(Process p, DestinationClock clock)
{
    var output = Task.Run(async () =>
    {
        while (await p.StandardOutput.ReadLineAsync() is { } line)
        {
            if (!clock.TryRead(line))
            {
                Console.WriteLine(line);
            }
        }
    });
    var errors = Task.Run(async () =>
    {
        while (await p.StandardError.ReadLineAsync() is { } line)
        {
            Console.Error.WriteLine(line);
        }
    });
    await Task.WhenAll(output, errors);
}

static string FindRoot()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Virt.Sdk.sln")))
    {
        dir = dir.Parent;
    }

    return dir?.FullName ?? Directory.GetCurrentDirectory();
}

/// <summary>When the destination had restored the VM and had it running, as it reports them (monotonic Stopwatch timestamps).</summary>
internal sealed class DestinationClock
{
    public long? RestoredAt { get; private set; }

    public long? RunningAt { get; private set; }

    public bool TryRead(string line)
    {
        var parts = line.Split(' ');
        if (parts.Length != 5 || parts[2] != "clock" || !long.TryParse(parts[3], System.Globalization.CultureInfo.InvariantCulture, out long restored)
            || !long.TryParse(parts[4], System.Globalization.CultureInfo.InvariantCulture, out long running))
        {
            return false;
        }

        (RestoredAt, RunningAt) = (restored, running);
        return true;
    }
}

/// <summary>A guest console kept as text, with waits for text to appear.</summary>
internal sealed class GuestConsole : Stream
{
    private readonly StringBuilder _text = new();
    private readonly List<(string Text, bool WholeLine, TaskCompletionSource Done)> _waiters = [];

    public string Text
    {
        get
        {
            lock (_text)
            {
                return _text.ToString();
            }
        }
    }

    public Task WaitForAsync(string text, CancellationToken cancellationToken) => Wait(text, false, cancellationToken);

    /// <summary>Waits until a line that starts with <paramref name="start"/> has ended.</summary>
    public Task WaitForLineAsync(string start, CancellationToken cancellationToken) => Wait(start, true, cancellationToken);

    private Task Wait(string text, bool wholeLine, CancellationToken cancellationToken)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_text)
        {
            _waiters.Add((text, wholeLine, done));
            Check();
        }

        return done.Task.WaitAsync(cancellationToken);
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        lock (_text)
        {
            _text.Append(Encoding.UTF8.GetString(buffer));
            Check();
        }
    }

    private void Check()
    {
        string all = _text.ToString();
        _waiters.RemoveAll(w => Seen(all, w.Text, w.WholeLine) && w.Done.TrySetResult());
    }

    private static bool Seen(string all, string text, bool wholeLine)
    {
        if (!wholeLine)
        {
            return all.Contains(text, StringComparison.Ordinal);
        }

        int at = all.IndexOf("\n" + text, StringComparison.Ordinal);
        return at >= 0 && all.IndexOf('\n', at + 1) >= 0;
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
