// ApplianceExec: boots the guest kit's Debian kernel and initramfs once, with a vsock device and the guest agent,
// then runs several commands in the live guest through ExecAsync and copies a file in and out. Each command's exit
// code, output and time are printed; the VM is shut down at the end.
//
//   bash scripts/get-linux-guest.sh
//   dotnet run --project samples/ApplianceExec                         (interpreter: boots in ~20 s)
//   dotnet run --project samples/ApplianceExec -- --backend kvm        (on hosts with hardware virtualization)
//   dotnet run --project samples/ApplianceExec -- 'uname -a' 'ls /bin | wc -l'   (your own commands, run by sh -c)
using System.Diagnostics;
using System.Text;
using Virt;

var backend = BackendKind.Interpreter;
var commands = new List<string>();
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--backend" && i + 1 < args.Length)
    {
        backend = Enum.Parse<BackendKind>(args[++i], ignoreCase: true);
    }
    else
    {
        commands.Add(args[i]);
    }
}

if (commands.Count == 0)
{
    commands.AddRange(["uname -r", "cat /proc/cpuinfo | grep -c processor", "echo this goes to stderr >&2; exit 7"]);
}

string kit = Path.Combine(FindRoot(), "artifacts", "linux");
if (!File.Exists(Path.Combine(kit, "vmlinuz")))
{
    Console.Error.WriteLine($"No guest kit in {kit}; run scripts/get-linux-guest.sh first.");
    return 2;
}

await using var vm = VirtualMachine.CreateBuilder()
    .WithBackend(backend)
    .WithMemoryMiB(256)
    .WithLinuxKernel(Path.Combine(kit, "vmlinuz"))
    .WithInitrd(Path.Combine(kit, "initramfs.cpio"))
    .WithKernelCommandLine("quiet")
    .WithSerialConsole(Stream.Null)
    .WithGuestAgent()
    .Build();

var clock = Stopwatch.StartNew();
using var bootTimeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
await vm.StartAsync(bootTimeout.Token);
await vm.WaitForAgentAsync(bootTimeout.Token);
Console.WriteLine($"agent ready after {clock.Elapsed.TotalSeconds:F1} s ({vm.BackendSelection.Name})");

int failures = 0;
foreach (string command in commands)
{
    clock.Restart();
    var result = await vm.ExecAsync("sh", ["-c", command]);
    Console.WriteLine($"$ {command}    (exit {result.ExitCode}, {clock.Elapsed.TotalMilliseconds:F0} ms)");
    Console.Write(result.StandardOutput);
    if (result.StandardError.Length > 0)
    {
        Console.Write("stderr: " + result.StandardError);
    }

    failures += result.Succeeded ? 0 : 1;
}

// A file into the guest and back.
byte[] note = Encoding.UTF8.GetBytes("written by the host\n");
await vm.CopyToGuestAsync(new MemoryStream(note), "/tmp/note.txt");
var upper = await vm.ExecAsync("sh", ["-c", "tr a-z A-Z < /tmp/note.txt > /tmp/NOTE.txt"]);
using var back = new MemoryStream();
await vm.CopyFromGuestAsync("/tmp/NOTE.txt", back);
Console.Write($"copied in, changed in the guest (exit {upper.ExitCode}), copied out: {Encoding.UTF8.GetString(back.ToArray())}");

// How fast: a trivial command, and 4 MiB each way over vsock.
const int Rounds = 10;
clock.Restart();
for (int i = 0; i < Rounds; i++)
{
    await vm.ExecAsync("true");
}

Console.WriteLine($"ExecAsync(\"true\"): {clock.Elapsed.TotalMilliseconds / Rounds:F0} ms per command (mean of {Rounds})");
byte[] bulk = new byte[4 << 20];
Random.Shared.NextBytes(bulk);
clock.Restart();
await vm.CopyToGuestAsync(new MemoryStream(bulk), "/tmp/bulk");
double inSeconds = clock.Elapsed.TotalSeconds;
using var bulkBack = new MemoryStream();
clock.Restart();
await vm.CopyFromGuestAsync("/tmp/bulk", bulkBack);
double outSeconds = clock.Elapsed.TotalSeconds;
Console.WriteLine($"copy 4 MiB: to the guest {4 / inSeconds:F2} MiB/s, from the guest {4 / outSeconds:F2} MiB/s, intact: {bulkBack.ToArray().AsSpan().SequenceEqual(bulk)}");

await vm.StopAsync();
Console.WriteLine($"{commands.Count} command(s), {failures} with a non-zero exit code");
return 0;

static string FindRoot()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Virt.Sdk.sln")))
    {
        dir = dir.Parent;
    }

    return dir?.FullName ?? Directory.GetCurrentDirectory();
}
