// Snapshots: boots the guest kit once to a shell prompt, saves the whole VM to a file, then restores two clones from
// that file, each of which runs its own command at once, and prints what each printed and how long each restore took.
//
//   bash scripts/get-linux-guest.sh
//   dotnet run -c Release --project samples/Snapshots
//   dotnet run -c Release --project samples/Snapshots -- --backend interpreter --keep appliance.snap
//   dotnet run -c Release --project samples/Snapshots -- --append cryptomgr.notests    (extra kernel parameters: here,
//       skip the kernel's crypto self-tests, a good part of a boot on the interpreter)
using System.Diagnostics;
using System.Text;
using Virt;

var backend = BackendKind.Interpreter;
string? keep = null;
string append = "";
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--backend" when i + 1 < args.Length:
            backend = Enum.Parse<BackendKind>(args[++i], ignoreCase: true);
            break;
        case "--keep" when i + 1 < args.Length:
            keep = args[++i]; // where to leave the snapshot file
            break;
        case "--append" when i + 1 < args.Length:
            append = " " + args[++i]; // extra kernel parameters
            break;
        default:
            Console.Error.WriteLine($"unknown argument: {args[i]} (--backend interpreter|kvm|auto, --keep <file>, --append <kernel parameters>)");
            return 2;
    }
}

string kit = Path.Combine(FindRoot(), "artifacts", "linux");
string kernel = Path.Combine(kit, "vmlinuz");
string initrd = Path.Combine(kit, "initramfs.cpio");
if (!File.Exists(kernel) || !File.Exists(initrd))
{
    Console.Error.WriteLine($"No guest kit in {kit}. Run: bash scripts/get-linux-guest.sh");
    return 2;
}

string snapshot = keep ?? Path.Combine(Path.GetTempPath(), $"appliance-{Environment.ProcessId}.snap");
using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(10));
try
{
    // 1. Boot once, to a shell that has answered a command: from here on the guest only waits for input.
    var bootConsole = new GuestConsole(echo: false);
    var clock = Stopwatch.StartNew();
    await using (var vm = VirtualMachine.CreateBuilder()
        .WithName("appliance")
        .WithBackend(backend)
        .WithMemoryMiB(256)
        .WithLinuxKernel(kernel)
        .WithInitrd(initrd)
        .WithKernelCommandLine("quiet" + append)
        .WithSerialConsole(bootConsole)
        .Build())
    {
        await vm.StartAsync(timeout.Token);
        await bootConsole.WaitForAsync("VIRT-INIT-READY", timeout.Token);
        await vm.WriteToSerialConsoleAsync("echo READY-$((6*7))\n"u8.ToArray(), timeout.Token);
        await bootConsole.WaitForAsync("READY-42", timeout.Token);
        Console.WriteLine($"booted to a shell on {vm.BackendSelection.Name} in {clock.Elapsed.TotalSeconds:F1} s");

        // 2. Save it: a paused VM, to one file (memory, vCPUs, devices, machine description).
        clock.Restart();
        await vm.PauseAsync(timeout.Token);
        await vm.SaveSnapshotAsync(snapshot, timeout.Token);
        Console.WriteLine($"saved {snapshot} ({new FileInfo(snapshot).Length / 1024} KiB long; zero pages are holes, so it takes less on disk) in {clock.Elapsed.TotalMilliseconds:F0} ms");
    }

    // 3. Two clones from the one file; memory is mapped copy-on-write, so they share every page neither writes.
    string[] commands = ["uname -r", "echo $((6*7)) clones; cat /proc/uptime"];
    for (int i = 0; i < commands.Length; i++)
    {
        var console = new GuestConsole(echo: false);
        clock.Restart();
        await using var clone = await VirtualMachine.RestoreAsync(snapshot, b => b.WithBackend(backend).WithSerialConsole(console), timeout.Token);
        var restored = clock.Elapsed;
        await clone.ResumeAsync(timeout.Token);
        string done = $"CLONE-{i}-DONE";
        await clone.WriteToSerialConsoleAsync(Encoding.ASCII.GetBytes($"{commands[i]}; echo {done.Replace("-DONE", "-DO''NE", StringComparison.Ordinal)}\n"), timeout.Token);
        await console.WaitForAsync(done, timeout.Token);
        var answered = clock.Elapsed;
        Console.WriteLine($"clone {i + 1}: restored in {restored.TotalMilliseconds:F1} ms, answered '{commands[i]}' after {answered.TotalMilliseconds:F0} ms:");
        foreach (string line in console.Text.Split('\n').Select(l => l.TrimEnd('\r')).SkipWhile(l => !l.Contains(commands[i], StringComparison.Ordinal)).Skip(1).TakeWhile(l => !l.Contains(done, StringComparison.Ordinal)))
        {
            Console.WriteLine("    " + line);
        }

        await clone.StopAsync(timeout.Token);
    }

    return 0;
}
catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or Virt.Snapshots.SnapshotFormatException or OperationCanceledException)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}
finally
{
    if (keep is null)
    {
        File.Delete(snapshot);
    }
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

/// <summary>A guest console kept as text, with a wait for a line to appear.</summary>
internal sealed class GuestConsole(bool echo) : Stream
{
    private readonly StringBuilder _text = new();
    private readonly List<(string Text, TaskCompletionSource Done)> _waiters = [];

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

    public Task WaitForAsync(string text, CancellationToken cancellationToken)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_text)
        {
            _waiters.Add((text, done));
            Check();
        }

        return done.Task.WaitAsync(cancellationToken);
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (echo)
        {
            Console.Out.Write(Encoding.UTF8.GetString(buffer));
        }

        lock (_text)
        {
            _text.Append(Encoding.UTF8.GetString(buffer));
            Check();
        }
    }

    private void Check()
    {
        string all = _text.ToString();
        _waiters.RemoveAll(w => all.Contains(w.Text, StringComparison.Ordinal) && w.Done.TrySetResult());
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
