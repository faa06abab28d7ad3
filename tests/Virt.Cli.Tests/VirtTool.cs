using System.Diagnostics;
using System.Reflection;
using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

/// <summary>Runs the built tool (src/Virt.Cli's virt.dll) as a user would: <c>dotnet virt.dll ARGS</c>.</summary>
internal static class VirtTool
{
    private static readonly string Configuration =
        typeof(VirtTool).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";

    public static string Dll
    {
        get
        {
            string root = RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root (Virt.Sdk.sln) was not found.");
            string dll = Path.Combine(root, "src", "Virt.Cli", "bin", Configuration, "net10.0", "virt.dll");
            Assert.True(File.Exists(dll), $"{dll} is missing; build tests/Virt.Cli.Tests first.");
            return dll;
        }
    }

    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public string All => Stdout + Stderr;
    }

    /// <summary>Runs the tool in <paramref name="workingDirectory"/> with the environment changes given, and waits for it.</summary>
    public static Result Run(string[] args, string? workingDirectory = null, IDictionary<string, string?>? environment = null, string? stdin = null, TimeSpan? timeout = null)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Path.GetTempPath(),
        };
        psi.ArgumentList.Add(Dll);
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
        {
            psi.Environment[name] = value;
        }

        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        if (stdin is not null)
        {
            p.StandardInput.Write(stdin);
        }

        p.StandardInput.Close();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"virt {string.Join(' ', args)} did not finish; output so far: {stdout.Result}{stderr.Result}");
        }

        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
