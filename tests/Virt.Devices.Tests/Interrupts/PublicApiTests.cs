using System.Reflection;
using System.Text;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

/// <summary>The public surface of Virt.Devices.Interrupts is reviewed: any change shows up as a diff of PublicApi.txt.</summary>
public sealed class InterruptsPublicApiTests
{
    [Fact]
    public void Public_api_matches_the_checked_in_listing()
    {
        string actual = InterruptsPublicApi.Describe(typeof(Virt.Devices.Interrupts.LocalApic).Assembly, t => t.Namespace == "Virt.Devices.Interrupts");
        InterruptsPublicApi.AssertMatches(actual, "tests/Virt.Devices.Tests/Interrupts/PublicApi.txt");
    }
}

internal static class InterruptsPublicApi
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

    private static string? RepositoryRoot()
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

    private static bool IsInit(MethodInfo setter) =>
        setter.ReturnParameter.GetRequiredCustomModifiers().Any(t => t.FullName == "System.Runtime.CompilerServices.IsExternalInit");

    public static void AssertMatches(string actual, string relativePath)
    {
        string root = RepositoryRoot() ?? throw new InvalidOperationException("Run the tests from inside the repository.");
        string path = Path.Combine(root, relativePath);
        if (Environment.GetEnvironmentVariable("VIRT_UPDATE_PUBLIC_API") == "1")
        {
            File.WriteAllText(path, actual);
        }

        string expected = File.Exists(path) ? File.ReadAllText(path).ReplaceLineEndings("\n") : "";
        Assert.True(expected == actual, $"The public API changed. Review it, then run the tests with VIRT_UPDATE_PUBLIC_API=1 to update {relativePath}.\n--- actual ---\n{actual}");
    }
}
