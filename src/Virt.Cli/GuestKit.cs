namespace Virt.Cli;

/// <summary>
/// Where the Linux guest kit (a kernel and the busybox initramfs that scripts/get-linux-guest.sh builds) lives:
/// the folder given on the command line, else <c>VIRT_LINUX_ARTIFACTS</c>, else <c>artifacts/linux</c> in the current
/// directory or one above it (a clone of the repository), else the user's data folder (<c>~/.local/share/virt/linux</c>).
/// </summary>
internal static class GuestKit
{
    /// <summary>The kernel's file name in a kit folder.</summary>
    public const string KernelFile = "vmlinuz";

    /// <summary>The initramfs's file name in a kit folder.</summary>
    public const string InitrdFile = "initramfs.cpio";

    /// <summary>The environment variable the script and the tool read for the kit folder.</summary>
    public const string EnvironmentVariable = "VIRT_LINUX_ARTIFACTS";

    /// <summary>The kit folder to use, with where the choice came from.</summary>
    public static (string Directory, string Source) Locate(string? explicitDirectory)
    {
        if (!string.IsNullOrEmpty(explicitDirectory))
        {
            return (Path.GetFullPath(explicitDirectory), "--kit");
        }

        string? fromEnvironment = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrEmpty(fromEnvironment))
        {
            return (Path.GetFullPath(fromEnvironment), EnvironmentVariable);
        }

        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "artifacts", "linux");
            if (File.Exists(Path.Combine(candidate, KernelFile)) || File.Exists(Path.Combine(dir.FullName, "scripts", "get-linux-guest.sh")))
            {
                return (candidate, "the repository's artifacts/linux");
            }
        }

        return (UserDirectory, "the user's data folder");
    }

    /// <summary>The kit folder in the user's data folder.</summary>
    public static string UserDirectory =>
        Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.DoNotVerify), "virt", "linux");

    /// <summary>Whether <paramref name="directory"/> holds a kernel and an initramfs.</summary>
    public static bool IsComplete(string directory) =>
        File.Exists(Path.Combine(directory, KernelFile)) && File.Exists(Path.Combine(directory, InitrdFile));

    /// <summary>The kernel release the script recorded (<c>uname -r</c> in the guest), or <see langword="null"/>.</summary>
    public static string? KernelRelease(string directory)
    {
        string path = Path.Combine(directory, "kernel.release");
        return File.Exists(path) ? File.ReadAllText(path).Trim() : null;
    }
}
