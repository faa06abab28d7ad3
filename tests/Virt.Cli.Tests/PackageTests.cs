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

    /// <summary>Packs Virt.Sdk, Virt.Sandbox, the tool and the interpreter once for the class.</summary>
    public sealed class Packed : IDisposable
    {
        public Packed()
        {
            string root = RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root was not found.");
            string configuration = typeof(PackageTests).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";
            // One dotnet pack for the three (a solution filter naming them) instead of one each: every dotnet process
            // starts MSBuild and evaluates the projects again, a few seconds of CPU apiece.
            System.IO.Directory.CreateDirectory(Directory);
            string filter = Path.Combine(Directory, "packed.slnf");
            File.WriteAllText(filter, System.Text.Json.JsonSerializer.Serialize(new
            {
                solution = new
                {
                    path = Path.Combine(root, "Virt.Sdk.sln"),
                    projects = new[] { "Virt.Sdk", "Virt.Sandbox", "Virt.Cli", "Virt.Cpu.Interpreter" }.Select(p => Path.Combine("src", p, p + ".csproj")).ToArray(),
                },
            }));
            Dotnet(root, "pack", filter, "-c", configuration, "--no-build", "-o", Directory);

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
        (int exitCode, string output) = TryDotnet(workingDirectory, args);
        Assert.True(exitCode == 0, $"dotnet {string.Join(' ', args)} failed:\n{output}");
        return output;
    }

    internal static (int ExitCode, string Output) TryDotnet(string workingDirectory, params string[] args)
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

        return (p.ExitCode, stdout.Result + stderr.Result);
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

    [Theory]
    [InlineData("Virt.Cpu.Interpreter", "linux-x64", 0x8664 ^ 0x7B79)]
    [InlineData("Virt.Cpu.Interpreter", "win-x64", 0x8664)]
    [InlineData("Virt.Sdk", "linux-x64", 0x8664 ^ 0x7B79)]
    [InlineData("Virt.Sdk", "win-x64", 0x8664)]
    public void Packages_carry_ReadyToRun_code_for_each_rid_next_to_their_il(string id, string rid, int machine)
    {
        using var zip = ZipFile.OpenRead(_packed.Package(id));

        // lib/: IL only, what every other platform runs.
        using (var il = OpenPe(zip, $"lib/net10.0/{id}.dll"))
        {
            Assert.Equal(0, il.PEHeaders.CorHeader!.ManagedNativeHeaderDirectory.Size);
            Assert.True(il.PEHeaders.CorHeader.Flags.HasFlag(System.Reflection.PortableExecutable.CorFlags.ILOnly));
        }

        // runtimes/<rid>/lib/: the same assembly with crossgen2's native code for that OS and architecture. The
        // ManagedNativeHeader of a ReadyToRun image is its READYTORUN_HEADER, which starts with the signature "RTR".
        using var image = OpenPe(zip, $"runtimes/{rid}/lib/net10.0/{id}.dll");
        var cor = image.PEHeaders.CorHeader!;
        Assert.True(cor.ManagedNativeHeaderDirectory.Size > 0, $"{id} {rid}: no ManagedNativeHeader, so no ReadyToRun code");
        Assert.False(cor.Flags.HasFlag(System.Reflection.PortableExecutable.CorFlags.ILOnly));
        var header = image.GetSectionData(cor.ManagedNativeHeaderDirectory.RelativeVirtualAddress).GetReader();
        Assert.Equal(0x00525452u, header.ReadUInt32());
        // The machine field names the target OS too (crossgen2 XORs AMD64 with a per-OS value; Windows has none).
        Assert.Equal(machine, (int)image.PEHeaders.CoffHeader.Machine);
        var metadata = System.Reflection.Metadata.PEReaderExtensions.GetMetadataReader(image);
        Assert.Equal(id, metadata.GetString(metadata.GetAssemblyDefinition().Name));
    }

    private static System.Reflection.PortableExecutable.PEReader OpenPe(ZipArchive zip, string entry)
    {
        var bytes = new MemoryStream();
        using (var s = (zip.GetEntry(entry) ?? throw new InvalidOperationException($"{entry} is not in the package")).Open())
        {
            s.CopyTo(bytes);
        }

        bytes.Position = 0;
        return new System.Reflection.PortableExecutable.PEReader(bytes);
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

    [Fact]
    public void Package_validation_fails_the_pack_when_the_baseline_had_public_api_this_version_lacks()
    {
        using var baselines = new TempDirectory();
        using var output = new TempDirectory();
        const string BaselineVersion = "0.0.1-baseline";
        // The baseline: this version's Virt.Sdk package with an assembly whose public API has one more type.
        string baseline = Path.Combine(baselines.Path, $"Virt.Sdk.{BaselineVersion}.nupkg");
        File.Copy(_packed.Package("Virt.Sdk"), baseline);
        using (var zip = ZipFile.Open(baseline, ZipArchiveMode.Update))
        {
            // IL only, as the pack below (its ReadyToRun images are another test's subject).
            foreach (var image in zip.Entries.Where(e => e.FullName.StartsWith("runtimes/", StringComparison.Ordinal)).ToList())
            {
                image.Delete();
            }

            zip.GetEntry("lib/net10.0/Virt.Sdk.dll")!.Delete();
            using var dll = zip.CreateEntry("lib/net10.0/Virt.Sdk.dll").Open();
            dll.Write(CompileAssembly("Virt.Sdk", "namespace Virt { public sealed class TypeRemovedSinceTheBaseline { } }"));
        }

        (int exitCode, string text) = PackWithBaseline("Virt.Sdk", BaselineVersion, baselines.Path, output.Path);
        Assert.True(exitCode != 0, "The pack passed although the baseline has a public type this version lacks:\n" + text);
        Assert.Contains("CP0001", text, StringComparison.Ordinal);
        Assert.Contains("TypeRemovedSinceTheBaseline", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Package_validation_passes_against_a_baseline_with_the_same_public_api()
    {
        using var output = new TempDirectory();
        (int exitCode, string text) = PackWithBaseline("Virt.Sandbox", _packed.Version, _packed.Directory, output.Path);
        Assert.True(exitCode == 0, text);
        Assert.True(File.Exists(Path.Combine(output.Path, $"Virt.Sandbox.{_packed.Version}.nupkg")), text);
    }

    private static (int ExitCode, string Output) PackWithBaseline(string project, string baselineVersion, string baselineDirectory, string output)
    {
        string root = RepositoryPaths.Root!;
        string configuration = typeof(PackageTests).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";
        // Validation is incremental (it skips when the package's inputs are older than its last run): make it run.
        foreach (string stamp in System.IO.Directory.GetFiles(Path.Combine(root, "src", project, "obj"), "Microsoft.NET.ApiCompat.ValidatePackage.semaphore", SearchOption.AllDirectories))
        {
            File.Delete(stamp);
        }

        // Without ReadyToRun images: the class's pack checks those once; crossgen2 would cost this pack ~10 s of CPU.
        return TryDotnet(
            root, "pack", Path.Combine(root, "src", project), "-c", configuration, "--no-build", "-o", output, "-p:VirtPackReadyToRun=false",
            $"-p:VirtPackageBaselineVersion={baselineVersion}", $"-p:VirtPackageBaselineDirectory={baselineDirectory}");
    }

    private static byte[] CompileAssembly(string name, string source)
    {
        var references = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Where(p => Path.GetFileName(p) is "System.Runtime.dll" or "System.Private.CoreLib.dll")
            .Select(p => Microsoft.CodeAnalysis.MetadataReference.CreateFromFile(p));
        var compilation = Microsoft.CodeAnalysis.CSharp.CSharpCompilation.Create(
            name,
            [Microsoft.CodeAnalysis.CSharp.CSharpSyntaxTree.ParseText(source, cancellationToken: TestContext.Current.CancellationToken)],
            references,
            new Microsoft.CodeAnalysis.CSharp.CSharpCompilationOptions(Microsoft.CodeAnalysis.OutputKind.DynamicallyLinkedLibrary));
        using var stream = new MemoryStream();
        var result = compilation.Emit(stream, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(result.Success, string.Join('\n', result.Diagnostics));
        return stream.ToArray();
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
