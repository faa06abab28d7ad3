using System.Diagnostics;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>Compiles the C programs in Programs/ with <c>gcc -static</c> once per test run (skips when gcc or a static libc is missing).</summary>
internal static class CPrograms
{
    private static readonly string OutputDirectory = Path.Combine(Path.GetTempPath(), "virt-sandbox-tests-" + Environment.ProcessId);
    private static readonly Lock Gate = new();
    private static readonly Dictionary<string, byte[]> Cache = [];
    private static string? s_unavailable;

    public static string SourceDirectory => Path.Combine(AppContext.BaseDirectory, "Programs");

    public static string IncludeDirectory
    {
        get
        {
            // The header ships with the package and is copied next to the test binaries.
            string copied = Path.Combine(AppContext.BaseDirectory, "include");
            return File.Exists(Path.Combine(copied, "virt_sandbox.h")) ? copied : AppContext.BaseDirectory;
        }
    }

    /// <summary>The static executable built from Programs/<paramref name="name"/>.c, or a skip when there is no toolchain.</summary>
    public static byte[] Get(string name)
    {
        lock (Gate)
        {
            if (Cache.TryGetValue(name, out var cached))
            {
                return cached;
            }

            if (s_unavailable is not null)
            {
                Assert.Skip(s_unavailable);
            }

            Directory.CreateDirectory(OutputDirectory);
            string output = Path.Combine(OutputDirectory, name);
            var (code, log) = Run("gcc", $"-static -O2 -I \"{IncludeDirectory}\" -o \"{output}\" \"{Path.Combine(SourceDirectory, name + ".c")}\"");
            if (code != 0)
            {
                s_unavailable = $"Skipped: 'gcc -static' failed (install the Debian packages gcc and libc6-dev): {log}";
                Assert.Skip(s_unavailable);
            }

            var bytes = File.ReadAllBytes(output);
            Cache[name] = bytes;
            return bytes;
        }
    }

    public static (int ExitCode, string Output) Run(string file, string arguments, byte[]? stdin = null) =>
        Run(new ProcessStartInfo(file, arguments), stdin);

    public static (int ExitCode, string Output) Run(string file, IEnumerable<string> arguments, byte[]? stdin = null) =>
        Run(new ProcessStartInfo(file, arguments), stdin);

    /// <summary>Runs <paramref name="file"/> in <paramref name="workingDirectory"/>; stdout and stderr apart.</summary>
    public static (int ExitCode, string Stdout, string Stderr) RunIn(string workingDirectory, string file, IEnumerable<string> arguments, byte[]? stdin = null)
    {
        var psi = new ProcessStartInfo(file, arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        try
        {
            if (stdin is not null)
            {
                p.StandardInput.BaseStream.Write(stdin);
            }

            p.StandardInput.Close();
        }
        catch (IOException)
        {
            // The program exited without reading all of its input.
        }

        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>The path of the static executable built from Programs/<paramref name="name"/>.c (built by <see cref="Get"/>).</summary>
    public static string PathOf(string name)
    {
        Get(name);
        return Path.Combine(OutputDirectory, name);
    }

    private static (int ExitCode, string Output) Run(ProcessStartInfo start, byte[]? stdin)
    {
        try
        {
            var psi = start;
            {
                psi.RedirectStandardOutput = true;
                psi.RedirectStandardError = true;
                psi.RedirectStandardInput = true;
                psi.UseShellExecute = false;
            }

            using var p = Process.Start(psi)!;
            if (stdin is not null)
            {
                p.StandardInput.BaseStream.Write(stdin);
            }

            p.StandardInput.Close();
            var stdout = p.StandardOutput.ReadToEndAsync();
            string stderr = p.StandardError.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, stdout.Result + stderr);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, e.Message);
        }
    }
}
