using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// The package graph follows the layering docs/architecture.md draws: every shipped package (a project under src/)
/// references only the packages below it, and none opens its internals to another shipped package.
/// </summary>
public sealed partial class ArchitectureTests
{
    /// <summary>What each shipped package may reference. A new package gets a row here and a place in the drawing.</summary>
    private static readonly Dictionary<string, string[]> Allowed = new()
    {
        ["Virt.Abstractions"] = [],
        ["Virt.X86"] = ["Virt.Abstractions"],
        ["Virt.Memory"] = ["Virt.Abstractions"],
        ["Virt.Devices"] = ["Virt.Abstractions"],
        ["Virt.Snapshots"] = ["Virt.Abstractions"],
        ["Virt.Boot"] = ["Virt.Abstractions", "Virt.Memory", "Virt.X86"],
        ["Virt.Cpu.Kvm"] = ["Virt.Abstractions", "Virt.X86"],
        ["Virt.Cpu.Whp"] = ["Virt.Abstractions", "Virt.X86"],
        ["Virt.Cpu.Interpreter"] = ["Virt.Abstractions", "Virt.X86"],
        ["Virt.Storage"] = ["Virt.Abstractions", "Virt.Devices"],
        ["Virt.Network"] = ["Virt.Abstractions", "Virt.Devices"],
        ["Virt.Sdk"] =
        [
            "Virt.Abstractions", "Virt.X86", "Virt.Memory", "Virt.Devices", "Virt.Boot", "Virt.Cpu.Kvm", "Virt.Cpu.Whp",
            "Virt.Cpu.Interpreter", "Virt.Storage", "Virt.Network", "Virt.Snapshots",
        ],
        ["Virt.Sandbox"] = ["Virt.Abstractions", "Virt.X86", "Virt.Memory", "Virt.Boot", "Virt.Snapshots", "Virt.Sdk"],
        ["Virt.Orleans"] = ["Virt.Sdk", "Virt.Sandbox"],
        ["Virt.Cli"] = ["Virt.Abstractions", "Virt.Sdk", "Virt.Storage", "Virt.Network", "Virt.Sandbox"],
    };

    // Found from the test binary, not from [CallerFilePath]: continuous-integration builds map source paths to /_/.
    private static string Root() =>
        RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root (Virt.Sdk.sln) was not found above the test binary.");

    private static IEnumerable<string> ShippedProjects() =>
        Directory.GetDirectories(Path.Combine(Root(), "src")).Select(d => Path.Combine(d, Path.GetFileName(d) + ".csproj")).Where(File.Exists);

    public static TheoryData<string> Packages() => [.. ShippedProjects().Select(p => Path.GetFileNameWithoutExtension(p))];

    [Theory]
    [MemberData(nameof(Packages))]
    public void Package_references_only_the_layers_below_it(string package)
    {
        Assert.True(Allowed.TryGetValue(package, out var allowed), $"src/{package} has no place in the layering: add it to ArchitectureTests.Allowed and to the drawing in docs/architecture.md.");
        var csproj = XDocument.Load(Path.Combine(Root(), "src", package, package + ".csproj"));
        var references = csproj.Descendants("ProjectReference")
            .Select(e => Path.GetFileNameWithoutExtension(e.Attribute("Include")!.Value.Replace('\\', '/')))
            .ToList();
        var against = references.Where(r => !allowed.Contains(r)).ToList();
        Assert.True(against.Count == 0, $"{package} references {string.Join(", ", against)}, which the layering does not allow (allowed: {string.Join(", ", allowed)}).");
    }

    [Fact]
    public void No_shipped_package_opens_its_internals_to_another()
    {
        var shipped = ShippedProjects().Select(p => Path.GetFileNameWithoutExtension(p)).ToHashSet(StringComparer.Ordinal);
        var offences = new List<string>();
        var files = ShippedProjects().Append(Path.Combine(Root(), "Directory.Build.props"));
        foreach (var file in files)
        {
            foreach (var e in XDocument.Load(file).Descendants("InternalsVisibleTo"))
            {
                string target = e.Attribute("Include")?.Value ?? "";
                if (shipped.Contains(target))
                {
                    offences.Add($"{Path.GetFileName(file)} grants InternalsVisibleTo {target}");
                }
            }
        }

        foreach (var source in Directory.EnumerateFiles(Path.Combine(Root(), "src"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)))
        {
            foreach (Match m in InternalsVisibleToAttribute().Matches(File.ReadAllText(source)))
            {
                if (shipped.Contains(m.Groups[1].Value))
                {
                    offences.Add($"{Path.GetRelativePath(Root(), source)} grants InternalsVisibleTo {m.Groups[1].Value}");
                }
            }
        }

        Assert.True(offences.Count == 0, string.Join("\n", offences));
    }

    [Fact]
    public void Every_package_in_the_layering_exists()
    {
        var present = ShippedProjects().Select(p => Path.GetFileNameWithoutExtension(p)).ToHashSet(StringComparer.Ordinal);
        var missing = Allowed.Keys.Where(k => !present.Contains(k)).ToList();
        Assert.True(missing.Count == 0, $"The layering lists packages that do not exist: {string.Join(", ", missing)}");
    }

    [GeneratedRegex("""InternalsVisibleTo\(\s*"([^",]+)""")]
    private static partial Regex InternalsVisibleToAttribute();
}
