using System.Reflection;
using System.Text;
using PublicApiGenerator;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// The public surface of every package, as PublicApiGenerator writes it (C# declarations without bodies), is approved
/// in PublicApi/&lt;Assembly&gt;.txt and reviewed like code. A change to it fails here with the lines that differ
/// until the listing is accepted: run the tests with <c>VIRT_ACCEPT_PUBLIC_API=1</c> and review the diff of the .txt files.
/// </summary>
public sealed class PublicApiTests
{
#if VIRT_ORLEANS_PUBLIC_API
    // Compiled into Virt.Orleans.Tests, whose Orleans packages this project does not reference; same listing directory.
    public static TheoryData<string> Assemblies => new() { "Virt.Orleans" };

    private const string TestProject = "tests/Virt.Orleans.Tests";
#else
    private const string TestProject = "tests/Virt.Sdk.Tests";

    public static TheoryData<string> Assemblies => new()
    {
        "Virt.Abstractions", "Virt.Memory", "Virt.Boot", "Virt.Devices", "Virt.Cpu.Kvm",
        "Virt.Cpu.Interpreter", "Virt.Cpu.Whp", "Virt.Storage", "Virt.Network", "Virt.Sdk", "Virt.Sandbox", "Virt.Snapshots", "Virt.X86",
    };
#endif

    /// <summary>Lines of difference shown in a failure; the accepted file shows the rest.</summary>
    private const int MaxDiffLines = 80;

    private static readonly ApiGeneratorOptions Options = new()
    {
        // Assembly attributes carry the commit and build paths (they change with every commit) and InternalsVisibleTo
        // (not API); Orleans' generated serializers and proxies are public for its runtime, not for users.
        IncludeAssemblyAttributes = false,
        AllowNamespacePrefixes = [],
        DenyNamespacePrefixes = ["OrleansCodeGen"],
    };

    [Theory]
    [MemberData(nameof(Assemblies))]
    public void Public_api_matches_the_approved_listing(string assemblyName)
    {
        string actual = Generate(Assembly.Load(assemblyName));
        string path = Path.Combine(SourceDirectory(), "PublicApi", assemblyName + ".txt");
        if (Environment.GetEnvironmentVariable("VIRT_ACCEPT_PUBLIC_API") == "1")
        {
            File.WriteAllText(path, actual);
            return;
        }

        Assert.True(File.Exists(path), $"No approved listing at {path}. Run the tests with VIRT_ACCEPT_PUBLIC_API=1 and review it.");
        string expected = File.ReadAllText(path).ReplaceLineEndings("\n");
        if (expected != actual)
        {
            Assert.Fail(
                $"The public API of {assemblyName} differs from {path} (- approved, + built). If the change is intended, accept it with\n" +
                $"  VIRT_ACCEPT_PUBLIC_API=1 dotnet test {TestProject} -c Release --filter FullyQualifiedName~PublicApi\n" +
                "and review the diff of the listing.\n" + Diff(expected, actual));
        }
    }

    [Fact]
    public void The_listing_is_generated_from_declarations()
    {
        // The generator sees what a consumer compiles against: a member added to a public type shows up, internals do not.
        string listing = Generate(typeof(PublicApiTests).Assembly);
        Assert.Contains("public sealed class PublicApiTests", listing, StringComparison.Ordinal);
        Assert.Contains("public void Public_api_matches_the_approved_listing(string assemblyName) { }", listing, StringComparison.Ordinal);
        Assert.DoesNotContain("MaxDiffLines", listing, StringComparison.Ordinal);
    }

    [Fact]
    public void A_difference_is_shown_line_by_line_in_order()
    {
        string diff = Diff("a\nb\nc\nd\n", "a\nB\nc\nd\ne\n");
        Assert.Equal("@@ line 2\n- b\n+ B\n@@ line 5\n+ e\n", diff);
    }

    internal static string Generate(Assembly assembly) => assembly.GeneratePublicApi(Options).ReplaceLineEndings("\n");

    // Found from the test binary, not from [CallerFilePath]: continuous-integration builds map source paths to /_/.
    private static string SourceDirectory() =>
        Path.Combine(RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root (Virt.Sdk.sln) was not found above the test binary."), "tests", "Virt.Sdk.Tests");

    /// <summary>
    /// The lines removed from <paramref name="expected"/> and added in <paramref name="actual"/>, in file order, each run
    /// headed by its line number in the approved file: a longest-common-subsequence diff of the part between the common
    /// first and last lines.
    /// </summary>
    internal static string Diff(string expected, string actual)
    {
        string[] a = expected.Split('\n');
        string[] b = actual.Split('\n');
        int prefix = 0;
        while (prefix < a.Length && prefix < b.Length && a[prefix] == b[prefix])
        {
            prefix++;
        }

        int suffix = 0;
        while (suffix < a.Length - prefix && suffix < b.Length - prefix && a[^(suffix + 1)] == b[^(suffix + 1)])
        {
            suffix++;
        }

        int n = a.Length - prefix - suffix;
        int m = b.Length - prefix - suffix;
        if ((long)n * m > 4_000_000)
        {
            return $"@@ line {prefix + 1}: {n} approved lines replaced by {m} built lines (too many to compare here).\n";
        }

        // lcs[i, j]: the longest common subsequence of a[prefix + i ..] and b[prefix + j ..] (of the middle parts).
        var lcs = new int[n + 1, m + 1];
        for (int i = n - 1; i >= 0; i--)
        {
            for (int j = m - 1; j >= 0; j--)
            {
                lcs[i, j] = a[prefix + i] == b[prefix + j] ? lcs[i + 1, j + 1] + 1 : Math.Max(lcs[i + 1, j], lcs[i, j + 1]);
            }
        }

        var text = new StringBuilder();
        int shown = 0;
        bool inRun = false;
        int x = 0, y = 0;
        while ((x < n || y < m) && shown < MaxDiffLines)
        {
            if (x < n && y < m && a[prefix + x] == b[prefix + y])
            {
                inRun = false;
                x++;
                y++;
                continue;
            }

            if (!inRun)
            {
                text.Append("@@ line ").Append(prefix + x + 1).Append('\n');
                inRun = true;
            }

            if (x < n && (y == m || lcs[x + 1, y] >= lcs[x, y + 1]))
            {
                text.Append("- ").Append(a[prefix + x++]).Append('\n');
            }
            else
            {
                text.Append("+ ").Append(b[prefix + y++]).Append('\n');
            }

            shown++;
        }

        if (x < n || y < m)
        {
            text.Append("... (more differences; accept and review the full diff of the listing)\n");
        }

        return text.ToString();
    }
}
