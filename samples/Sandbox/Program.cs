// Runs `busybox md5sum` on a string inside a micro-VM sandbox and prints the digest and what the run used.
// Usage: dotnet run -c Release --project samples/Sandbox -- "text to hash" [path-to-static-busybox]
//    or: dotnet run -c Release --project samples/Sandbox -- --python "print(sum(range(10)))"
//        (Debian's dynamically linked python3, with this host's / as the sandbox's read-only root file system)
using System.Text;
using Virt.Sandbox;

if (args.Length == 2 && args[0] == "--python")
{
    return await RunPython(args[1]);
}

string text = args.Length > 0 ? args[0] : "hello, sandbox";
string busybox = args.Length > 1 ? args[1] : FindBusybox();

await using var sandbox = Sandbox.CreateBuilder()
    .WithExecutable(busybox)
    .WithExecutablePath("/bin/busybox")
    .WithArguments("md5sum")
    .WithMemoryLimit(32 << 20)
    .WithTimeLimit(TimeSpan.FromSeconds(5))
    .Build();

var result = await sandbox.RunAsync(Encoding.UTF8.GetBytes(text));
if (result.Status != SandboxStatus.Exited || result.ExitCode != 0)
{
    Console.Error.WriteLine($"The sandboxed md5sum did not succeed: {result} {result.StderrText}");
    return 1;
}

Console.Write(result.StdoutText);
var u = result.Usage;
Console.WriteLine($"backend={sandbox.BackendName} wall={u.WallTime.TotalMilliseconds:F2} ms syscalls={u.SystemCalls} " +
    $"peak-memory={u.PeakMemoryBytes / 1024} KiB" + (u.Instructions is long n ? $" instructions={n}" : ""));
return 0;

static async Task<int> RunPython(string code)
{
    await using var python = Sandbox.CreateBuilder()
        .WithRootFileSystem("/")                       // read-only; the program's writes stay in the sandbox
        .WithExecutable("/usr/bin/python3")
        .WithExecutablePath("/usr/bin/python3")
        .WithArguments("-c", code)
        .WithMemoryLimit(256 << 20)
        .WithTimeLimit(TimeSpan.FromSeconds(30))
        .Build();
    var result = await python.RunAsync(default);
    Console.Write(result.StdoutText);
    Console.Error.Write(result.StderrText);
    Console.WriteLine($"status={result.Status} exit={result.ExitCode} backend={python.BackendName} wall={result.Usage.WallTime.TotalMilliseconds:F1} ms " +
        $"syscalls={result.Usage.SystemCalls} refused=[{string.Join(", ", result.UnsupportedSystemCalls.Select(p => $"{p.Key}:{p.Value}"))}]");
    return result.Status == SandboxStatus.Exited ? result.ExitCode : 1;
}

static string FindBusybox()
{
    foreach (var candidate in new[] { Environment.GetEnvironmentVariable("VIRT_SANDBOX_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox",
        Path.Combine(Path.GetTempPath(), "virt-sandbox-busybox", "root", "bin", "busybox") })
    {
        if (candidate is not null && File.Exists(candidate))
        {
            return candidate;
        }
    }

    throw new FileNotFoundException("No static busybox found: install the Debian package busybox-static or pass its path as the second argument.");
}
