using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// The public surface of every package is listed in PublicApi/&lt;Assembly&gt;.txt and reviewed like code.
/// A change to it fails here until the listing is updated: run the tests with
/// <c>VIRT_ACCEPT_PUBLIC_API=1</c> and review the diff of the .txt files.
/// </summary>
public sealed class PublicApiTests
{
#if VIRT_ORLEANS_PUBLIC_API
    // Compiled into Virt.Orleans.Tests, whose Orleans packages this project does not reference; same listing directory.
    public static TheoryData<string> Assemblies => new() { "Virt.Orleans" };
#else
    public static TheoryData<string> Assemblies => new()
    {
        "Virt.Abstractions", "Virt.Memory", "Virt.Boot", "Virt.Devices", "Virt.Cpu.Kvm",
        "Virt.Cpu.Interpreter", "Virt.Cpu.Whp", "Virt.Storage", "Virt.Network", "Virt.Sdk", "Virt.Sandbox", "Virt.Snapshots", "Virt.X86",
    };
#endif

    [Theory]
    [MemberData(nameof(Assemblies))]
    public void Public_api_matches_the_reviewed_listing(string assemblyName)
    {
        var assembly = Assembly.Load(assemblyName);
        string actual = Describe(assembly);
        string path = Path.Combine(SourceDirectory(), "PublicApi", assemblyName + ".txt");
        if (Environment.GetEnvironmentVariable("VIRT_ACCEPT_PUBLIC_API") == "1")
        {
            File.WriteAllText(path, actual);
            return;
        }

        Assert.True(File.Exists(path), $"No reviewed listing at {path}. Run the tests with VIRT_ACCEPT_PUBLIC_API=1 and review it.");
        string expected = File.ReadAllText(path).ReplaceLineEndings("\n");
        if (expected != actual)
        {
            var exp = expected.Split('\n').ToHashSet();
            var act = actual.Split('\n').ToHashSet();
            var added = act.Except(exp).Take(20).Select(l => "+ " + l);
            var removed = exp.Except(act).Take(20).Select(l => "- " + l);
            Assert.Fail($"The public API of {assemblyName} changed. Review and accept with VIRT_ACCEPT_PUBLIC_API=1:\n{string.Join('\n', added.Concat(removed))}");
        }
    }

    // Found from the test binary, not from [CallerFilePath]: continuous-integration builds map source paths to /_/.
    private static string SourceDirectory() =>
        Path.Combine(RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root (Virt.Sdk.sln) was not found above the test binary."), "tests", "Virt.Sdk.Tests");

    private static string Describe(Assembly assembly)
    {
        var lines = new List<string>();
        foreach (var type in assembly.GetExportedTypes())
        {
            if (type.Namespace?.StartsWith("OrleansCodeGen", StringComparison.Ordinal) == true)
            {
                continue; // Orleans' generated serializers and proxies: public for the runtime, not API
            }

            lines.Add(TypeLine(type));
            const BindingFlags flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
            foreach (var member in type.GetMembers(flags))
            {
                if (member is MethodInfo { IsSpecialName: true } m && !m.Name.StartsWith("op_", StringComparison.Ordinal))
                {
                    continue;
                }

                if (member is Type || (type.IsEnum && member is FieldInfo { IsSpecialName: true }))
                {
                    continue;
                }

                if (member.IsDefined(typeof(CompilerGeneratedAttribute)))
                {
                    continue;
                }

                lines.Add($"{Name(type)}.{MemberLine(member)}");
            }
        }

        lines.Sort(StringComparer.Ordinal);
        return string.Join('\n', lines) + "\n";
    }

    private static string TypeLine(Type t)
    {
        string kind = t.IsEnum ? "enum" : t.IsInterface ? "interface" : t.IsValueType ? "struct" : t.IsAbstract && t.IsSealed ? "static class" : (t.IsSealed ? "sealed class" : t.IsAbstract ? "abstract class" : "class");
        var bases = new List<string>();
        if (t.BaseType is { } b && b != typeof(object) && b != typeof(ValueType) && b != typeof(Enum))
        {
            bases.Add(Name(b));
        }

        bases.AddRange(t.GetInterfaces().Select(Name).Order(StringComparer.Ordinal));
        return $"{kind} {Name(t)}{(bases.Count > 0 ? " : " + string.Join(", ", bases) : "")}";
    }

    private static string MemberLine(MemberInfo m) => m switch
    {
        ConstructorInfo c => $".ctor({Params(c.GetParameters())})",
        MethodInfo mi => $"{(mi.IsStatic ? "static " : "")}{Name(mi.ReturnType)} {mi.Name}{Generic(mi)}({Params(mi.GetParameters())})",
        PropertyInfo p => $"{Name(p.PropertyType)} {p.Name} {{ {(p.GetMethod?.IsPublic == true ? "get; " : "")}{(p.SetMethod?.IsPublic == true ? (p.SetMethod.ReturnParameter.GetRequiredCustomModifiers().Any(x => x.Name == "IsExternalInit") ? "init; " : "set; ") : "")}}}",
        FieldInfo f => $"{(f.IsLiteral ? "const " : f.IsStatic ? "static " : "")}{Name(f.FieldType)} {f.Name}{(f.IsLiteral ? " = " + f.GetRawConstantValue() : "")}",
        EventInfo e => $"event {Name(e.EventHandlerType!)} {e.Name}",
        _ => m.Name,
    };

    private static string Generic(MethodInfo m) => m.IsGenericMethodDefinition ? "<" + string.Join(", ", m.GetGenericArguments().Select(a => a.Name)) + ">" : "";

    private static string Params(ParameterInfo[] ps) => string.Join(", ", ps.Select(p =>
        $"{(p.IsOut ? "out " : p.ParameterType.IsByRef ? (p.IsIn ? "in " : "ref ") : "")}{Name(p.ParameterType)} {p.Name}{(p.HasDefaultValue ? " = " + (p.DefaultValue ?? "null") : "")}"));

    private static string Name(Type t)
    {
        if (t.IsByRef)
        {
            return Name(t.GetElementType()!);
        }

        if (t.IsArray)
        {
            return Name(t.GetElementType()!) + "[]";
        }

        if (t.IsGenericParameter)
        {
            return t.Name;
        }

        string name = t.IsNested ? Name(t.DeclaringType!) + "." + t.Name : (t.Namespace is { } ns ? ns + "." : "") + t.Name;
        if (t.IsGenericType)
        {
            int tick = name.IndexOf('`', StringComparison.Ordinal);
            if (tick >= 0)
            {
                name = name[..tick];
            }

            name += "<" + string.Join(", ", t.GetGenericArguments().Select(Name)) + ">";
        }

        return name;
    }
}
