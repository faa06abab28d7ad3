using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>Finds Debian's busybox-static: installed (/bin/busybox), or fetched with apt-get download into a temp directory.</summary>
internal static class Busybox
{
    private static readonly Lazy<(string? Path, string Reason)> Location = new(Find);

    /// <summary>The path of a static busybox, or a skip that says how to get one.</summary>
    public static string PathOrSkip()
    {
        var (path, reason) = Location.Value;
        if (path is null)
        {
            Assert.Skip($"Skipped: no static busybox ({reason}). Install the Debian package busybox-static.");
        }

        return path;
    }

    private static (string?, string) Find()
    {
        foreach (var candidate in new[] { Environment.GetEnvironmentVariable("VIRT_SANDBOX_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox" })
        {
            if (candidate is not null && File.Exists(candidate) && IsStatic(candidate))
            {
                return (candidate, "");
            }
        }

        string dir = Path.Combine(Path.GetTempPath(), "virt-sandbox-busybox");
        string extracted = Path.Combine(dir, "root", "bin", "busybox");
        if (File.Exists(extracted) && IsStatic(extracted))
        {
            return (extracted, "");
        }

        Directory.CreateDirectory(dir);
        var (code, log) = CPrograms.Run("sh", $"-c \"cd '{dir}' && apt-get download busybox-static && dpkg-deb -x busybox-static_*.deb root\"");
        return code == 0 && File.Exists(extracted) && IsStatic(extracted) ? (extracted, "") : (null, "apt-get download busybox-static failed: " + log.Trim());
    }

    private static bool IsStatic(string path)
    {
        try
        {
            return Loader.ElfImage.Parse(File.ReadAllBytes(path)).InterpreterPath is null;
        }
        catch (ElfImageException)
        {
            return false;
        }
    }
}
