namespace Virt.Testing;

/// <summary>Paths in the source tree that tests and benchmarks read (the guest kit lives in ignored folders).</summary>
public static class RepositoryPaths
{
    /// <summary>The repository root (the folder holding Virt.Sdk.sln, found by walking up from the test binary), or <see langword="null"/>.</summary>
    public static string? Root { get; } = FindRoot();

    /// <summary>The Linux guest kit folder that <c>scripts/get-linux-guest.sh</c> fills.</summary>
    public static string LinuxGuestKit => Path.Combine(Root ?? AppContext.BaseDirectory, "artifacts", "linux");

    private static string? FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Virt.Sdk.sln")))
            {
                return dir.FullName;
            }
        }

        return null;
    }
}
