using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

/// <summary>Every C# example in a package's README compiles against the packages as they are now.</summary>
public sealed partial class ReadmeExampleTests
{
    private const string ImplicitUsings = """
        global using System;
        global using System.Collections.Generic;
        global using System.IO;
        global using System.Linq;
        global using System.Threading;
        global using System.Threading.Tasks;
        """;

    public static TheoryData<string> Packages => ["Virt.Sdk", "Virt.Storage", "Virt.Network", "Virt.Sandbox"];

    [Theory]
    [MemberData(nameof(Packages))]
    public void Readme_examples_compile(string package)
    {
        string root = RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root was not found.");
        string readme = File.ReadAllText(Path.Combine(root, "src", package, "README.md"));
        var blocks = CSharpBlock().Matches(readme).Select(m => m.Groups[1].Value).ToList();
        Assert.True(blocks.Count > 0, $"src/{package}/README.md has no ```csharp example.");

        var references = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Concat(Directory.GetFiles(AppContext.BaseDirectory, "Virt.*.dll"))
            .Where(p => !Path.GetFileName(p).StartsWith("Virt.Cli", StringComparison.Ordinal))
            .Distinct(StringComparer.Ordinal)
            .Select(p => MetadataReference.CreateFromFile(p))
            .ToList();
        for (int i = 0; i < blocks.Count; i++)
        {
            var compilation = CSharpCompilation.Create(
                $"{package}.Readme{i}",
                [CSharpSyntaxTree.ParseText(blocks[i], cancellationToken: TestContext.Current.CancellationToken), CSharpSyntaxTree.ParseText(ImplicitUsings, cancellationToken: TestContext.Current.CancellationToken)],
                references,
                new CSharpCompilationOptions(OutputKind.ConsoleApplication, nullableContextOptions: NullableContextOptions.Enable));
            var errors = compilation.GetDiagnostics(TestContext.Current.CancellationToken).Where(d => d.Severity == DiagnosticSeverity.Error).ToList();
            Assert.True(errors.Count == 0, $"src/{package}/README.md example {i + 1} does not compile:\n{string.Join('\n', errors)}\n---\n{blocks[i]}");
        }
    }

    [GeneratedRegex("```csharp\\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();
}
