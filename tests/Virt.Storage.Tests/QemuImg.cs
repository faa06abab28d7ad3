using System.Diagnostics;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>Runs Debian's qemu-img (package qemu-utils, installed by .ci/run) as the reference implementation.</summary>
internal static class QemuImg
{
    public static bool Available => File.Exists("/usr/bin/qemu-img") || File.Exists("/usr/local/bin/qemu-img");

    /// <summary>Fails (not skips) when qemu-img is missing: CI installs it, and a test that silently passes proves nothing.</summary>
    public static void Require()
    {
        if (!Available)
        {
            Assert.Fail("qemu-img is not installed: apt-get install -y qemu-utils (.ci/run installs it).");
        }
    }

    public static (int ExitCode, string Output) Exec(string tool, string arguments)
    {
        var info = new ProcessStartInfo(tool, arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"{tool} did not start.");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{tool} {arguments} did not finish.");
        }

        return (process.ExitCode, stdout.GetAwaiter().GetResult() + stderr.GetAwaiter().GetResult());
    }

    public static string Run(string arguments)
    {
        var (code, output) = Exec("qemu-img", arguments);
        Assert.True(code == 0, $"qemu-img {arguments} exited with {code}: {output}");
        return output;
    }

    /// <summary>Runs qemu-img check; exit 0 is clean, 3 is leaked clusters only (no corruption).</summary>
    public static (int ExitCode, string Output) Check(string path) => Exec("qemu-img", $"check \"{path}\"");

    public static void AssertClean(string path)
    {
        var (code, output) = Check(path);
        Assert.True(code == 0, $"qemu-img check {path} exited with {code}: {output}");
    }

    /// <summary>The image's guest-visible bytes as qemu-img reads them.</summary>
    public static byte[] ReadAll(string image, string scratch)
    {
        string raw = scratch + ".raw";
        Run($"convert -O raw \"{image}\" \"{raw}\"");
        byte[] bytes = File.ReadAllBytes(raw);
        File.Delete(raw);
        return bytes;
    }
}
