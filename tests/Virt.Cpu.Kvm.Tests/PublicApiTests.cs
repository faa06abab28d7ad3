using System.Reflection;
using Xunit;

namespace Virt.Cpu.Kvm.Tests;

public sealed class PublicApiTests
{
    /// <summary>The reviewed public surface of Virt.Cpu.Kvm. Everything else is internal.</summary>
    private static readonly string[] s_expected =
    [
        "Virt.Cpu.Kvm.KvmHypervisor: sealed class : Virt.Cpu.IHypervisor",
        "  ctor()",
        "  System.String Name { get; }",
        "  Virt.Cpu.HypervisorAvailability GetAvailability()",
        "  Virt.Cpu.IPartition CreatePartition(Virt.Memory.IGuestMemory, Virt.Cpu.PartitionOptions)",
    ];

    [Fact]
    public void Public_api_is_exactly_the_reviewed_listing()
    {
        var assembly = typeof(KvmHypervisor).Assembly;
        var lines = new List<string>();
        foreach (var type in assembly.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            string kind = type.IsSealed ? "sealed class" : type.IsInterface ? "interface" : "class";
            lines.Add($"{type.FullName}: {kind} : {string.Join(", ", type.GetInterfaces().Select(i => i.FullName))}");
            const BindingFlags flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
            lines.AddRange(type.GetConstructors(flags).Select(c => $"  ctor({Parameters(c)})"));
            lines.AddRange(type.GetProperties(flags).Select(p => $"  {p.PropertyType.FullName} {p.Name} {{ {(p.CanRead ? "get; " : "")}{(p.CanWrite ? "set; " : "")}}}"));
            lines.AddRange(type.GetMethods(flags).Where(m => !m.IsSpecialName).Select(m => $"  {m.ReturnType.FullName} {m.Name}({Parameters(m)})"));
        }

        Assert.Equal(s_expected, lines);
    }

    private static string Parameters(MethodBase m) => string.Join(", ", m.GetParameters().Select(p => p.ParameterType.FullName));
}
