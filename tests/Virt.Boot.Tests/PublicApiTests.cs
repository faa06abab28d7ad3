using System.Reflection;
using System.Text;
using Xunit;

namespace Virt.Boot.Tests;

/// <summary>The public surface of Virt.Boot is reviewed: any change shows up as a diff of PublicApi.txt.</summary>
public sealed class PublicApiTests
{
    [Fact]
    public void Public_api_matches_the_checked_in_listing()
    {
        string actual = PublicApi.Describe(typeof(LinuxLoader).Assembly, _ => true);
        PublicApi.AssertMatches(actual, "tests/Virt.Boot.Tests/PublicApi.txt");
    }
}

internal static class PublicApi
{
    private const BindingFlags Declared = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    public static string Describe(Assembly assembly, Func<Type, bool> include)
    {
        var sb = new StringBuilder();
        foreach (var type in assembly.GetExportedTypes().Where(include).OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            string kind = type.IsEnum ? "enum" : type.IsInterface ? "interface" : type.IsValueType ? "struct" : type.IsAbstract && type.IsSealed ? "static class" : type.IsSealed ? "sealed class" : "class";
            var bases = new List<string>();
            if (type.BaseType is { } b && b != typeof(object) && b != typeof(ValueType) && b != typeof(Enum))
            {
                bases.Add(b.Name);
            }

            bases.AddRange(type.GetInterfaces().Where(i => i.IsPublic).Select(i => i.Name).Order(StringComparer.Ordinal));
            sb.Append(kind).Append(' ').Append(type.FullName);
            if (bases.Count > 0)
            {
                sb.Append(" : ").Append(string.Join(", ", bases));
            }

            sb.AppendLine();
            var lines = new List<string>();
            foreach (var m in type.GetMembers(Declared))
            {
                if (m is MethodInfo { IsSpecialName: true } || m.Name == "<Clone>$" || m.Name == "value__" || m is Type)
                {
                    continue;
                }

                string prefix = m switch
                {
                    MethodInfo mi when mi.IsStatic => "static ",
                    FieldInfo fi when fi.IsLiteral => "const ",
                    FieldInfo fi when fi.IsStatic => "static ",
                    PropertyInfo pi when (pi.GetMethod ?? pi.SetMethod)!.IsStatic => "static ",
                    _ => "",
                };
                string text = m switch
                {
                    PropertyInfo pi => $"{pi.PropertyType.Name} {pi.Name} {{ {(pi.GetMethod?.IsPublic == true ? "get; " : "")}{(pi.SetMethod?.IsPublic == true ? (IsInit(pi.SetMethod) ? "init; " : "set; ") : "")}}}",
                    FieldInfo fi when type.IsEnum && fi.IsLiteral => $"{fi.Name} = {fi.GetRawConstantValue()}",
                    _ => m.ToString()!,
                };
                lines.Add("  " + prefix + text);
            }

            foreach (var line in lines.Order(StringComparer.Ordinal))
            {
                sb.AppendLine(line);
            }
        }

        return sb.ToString().ReplaceLineEndings("\n");
    }

    private static bool IsInit(MethodInfo setter) =>
        setter.ReturnParameter.GetRequiredCustomModifiers().Any(t => t.FullName == "System.Runtime.CompilerServices.IsExternalInit");

    public static void AssertMatches(string actual, string relativePath)
    {
        string root = SyntheticImages.RepositoryRoot() ?? throw new InvalidOperationException("Run the tests from inside the repository.");
        string path = Path.Combine(root, relativePath);
        if (Environment.GetEnvironmentVariable("VIRT_UPDATE_PUBLIC_API") == "1")
        {
            File.WriteAllText(path, actual);
        }

        string expected = File.Exists(path) ? File.ReadAllText(path).ReplaceLineEndings("\n") : "";
        Assert.True(expected == actual, $"The public API changed. Review it, then run the tests with VIRT_UPDATE_PUBLIC_API=1 to update {relativePath}.\n--- actual ---\n{actual}");
    }
}
