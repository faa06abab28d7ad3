using System.Diagnostics;
using System.IO.Compression;
using System.Reflection;
using System.Xml.Linq;
using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

/// <summary>
/// The packages as a consumer receives them: packed from the built projects (dotnet pack --no-build) into a temporary
/// folder, then read back; and the tool installed from that folder and run.
/// </summary>
public sealed class PackageTests : IClassFixture<PackageTests.Packed>
{
    private readonly Packed _packed;

    public PackageTests(Packed packed) => _packed = packed;

    /// <summary>Packs Virt.Sdk, Virt.Sandbox and the tool once for the class.</summary>
    public sealed class Packed : IDisposable
    {
        public Packed()
        {
            string root = RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root was not found.");
            string configuration = typeof(PackageTests).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";
            foreach (string project in new[] { "Virt.Sdk", "Virt.Sandbox", "Virt.Cli" })
            {
                Dotnet(root, "pack", Path.Combine(root, "src", project), "-c", configuration, "--no-build", "-o", Directory);
            }

            Version = typeof(PackageTests).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()!.InformationalVersion.Split('+')[0];
        }

        public string Directory { get; } = Path.Combine(Path.GetTempPath(), "virt-packages-" + Guid.NewGuid().ToString("N"));

        /// <summary>The version every project is built with (Directory.Build.props), as this test assembly carries it.</summary>
        public string Version { get; }

        public string Package(string id) => Path.Combine(Directory, $"{id}.{Version}.nupkg");

        public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);
    }

    internal static string Dotnet(string workingDirectory, params string[] args)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"dotnet {string.Join(' ', args)} did not finish.");
        }

        string output = stdout.Result + stderr.Result;
        Assert.True(p.ExitCode == 0, $"dotnet {string.Join(' ', args)} failed:\n{output}");
        return output;
    }

    [Fact]
    public void Version_is_one_prerelease_version_from_Directory_Build_props()
    {
        var props = XDocument.Load(Path.Combine(RepositoryPaths.Root!, "Directory.Build.props"));
        string prefix = props.Descendants("VersionPrefix").Single().Value;
        string suffix = props.Descendants("VersionSuffix").Single().Value;
        Assert.NotEmpty(suffix);
        Assert.Equal($"{prefix}-{suffix}", _packed.Version);
        foreach (string id in new[] { "Virt.Sdk", "Virt.Sandbox", "virt" })
        {
            var nuspec = Nuspec(_packed.Package(id));
            Assert.Equal(_packed.Version, Element(nuspec, "version").Value);
        }

        // Dependencies between the packages carry the same version.
        var sandboxNuspec = Nuspec(_packed.Package("Virt.Sandbox"));
        var sdkDependency = sandboxNuspec.Descendants().Single(e => e.Name.LocalName == "dependency" && (string?)e.Attribute("id") == "Virt.Sdk");
        Assert.Equal(_packed.Version, (string?)sdkDependency.Attribute("version"));
    }

    [Fact]
    public void Library_packages_carry_readme_docs_embedded_symbols_and_the_commit()
    {
        foreach (string id in new[] { "Virt.Sdk", "Virt.Sandbox" })
        {
            using var zip = ZipFile.OpenRead(_packed.Package(id));
            var names = zip.Entries.Select(e => e.FullName).ToList();
            Assert.Contains("README.md", names);
            Assert.Contains($"lib/net10.0/{id}.xml", names);
            var nuspec = Nuspec(_packed.Package(id));
            Assert.Equal("README.md", Element(nuspec, "readme").Value);

            // The PDB is inside the assembly (DebugType embedded), so stack traces have file and line.
            using var dll = new MemoryStream();
            using (var s = zip.GetEntry($"lib/net10.0/{id}.dll")!.Open())
            {
                s.CopyTo(dll);
            }

            dll.Position = 0;
            using var pe = new System.Reflection.PortableExecutable.PEReader(dll);
            Assert.Contains(pe.ReadDebugDirectory(), d => d.Type == System.Reflection.PortableExecutable.DebugDirectoryEntryType.EmbeddedPortablePdb);

            var repository = Element(nuspec, "repository");
            Assert.Equal("git", (string?)repository.Attribute("type"));
            Assert.Matches("^[0-9a-f]{40}$", (string?)repository.Attribute("commit") ?? "");
        }
    }

    [Fact]
    public void The_sandbox_header_reaches_consumers_through_buildTransitive()
    {
        using var zip = ZipFile.OpenRead(_packed.Package("Virt.Sandbox"));
        var names = zip.Entries.Select(e => e.FullName).ToList();
        Assert.Contains("include/virt_sandbox.h", names);
        Assert.Contains("buildTransitive/Virt.Sandbox.props", names);
        using var reader = new StreamReader(zip.GetEntry("buildTransitive/Virt.Sandbox.props")!.Open());
        var props = XDocument.Parse(reader.ReadToEnd());
        var header = props.Descendants("None").Single();
        Assert.Equal("$(VirtSandboxIncludeDirectory)virt_sandbox.h", (string?)header.Attribute("Include"));
        Assert.Equal("include/virt_sandbox.h", (string?)header.Attribute("Link"));
        Assert.Contains("../include/", props.Descendants("VirtSandboxIncludeDirectory").Single().Value, StringComparison.Ordinal);
    }

    [Fact]
    public void The_tool_installs_from_the_package_folder_and_runs_doctor()
    {
        using var work = new TempDirectory();
        string tools = Path.Combine(work.Path, "tools");
        // From a folder outside the repository, as a user would: the repository's nuget.config maps every package to
        // nuget.org, which would keep the local folder out.
        Dotnet(work.Path, "tool", "install", "--tool-path", tools, "--add-source", _packed.Directory, "virt", "--version", _packed.Version);

        var psi = new ProcessStartInfo(Path.Combine(tools, "virt"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = work.Path,
        };
        psi.ArgumentList.Add("doctor");
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(1)), "virt doctor did not finish");
        Assert.True(p.ExitCode == 0, output);
        Assert.Contains("interpreter:", output, StringComparison.Ordinal);
        Assert.Contains("linux guests run on:", output, StringComparison.Ordinal);
    }

    private static XDocument Nuspec(string package)
    {
        Assert.True(File.Exists(package), $"{package} was not packed.");
        using var zip = ZipFile.OpenRead(package);
        var entry = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal));
        using var reader = new StreamReader(entry.Open());
        return XDocument.Parse(reader.ReadToEnd());
    }

    private static XElement Element(XDocument nuspec, string name) => nuspec.Descendants().First(e => e.Name.LocalName == name);
}
