// Runs `busybox md5sum` on a string inside a micro-VM sandbox and prints the digest and what the run used.
// Usage: dotnet run -c Release --project samples/Sandbox -- "text to hash" [path-to-static-busybox]
using System.Text;
using Virt.Sandbox;

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
