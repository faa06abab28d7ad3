using Virt.Cpu;
using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests;

public sealed class PublicApiTests
{
    [Fact]
    public void Only_the_hypervisor_entry_point_is_public()
    {
        var exported = typeof(WhpHypervisor).Assembly.GetExportedTypes().Select(t => t.FullName!).Order().ToArray();
        Assert.Equal(["Virt.Cpu.Whp.WhpHypervisor"], exported);
    }

    [Fact]
    public void Entry_point_is_a_sealed_hypervisor_with_a_parameterless_constructor()
    {
        Assert.True(typeof(WhpHypervisor).IsSealed);
        Assert.True(typeof(IHypervisor).IsAssignableFrom(typeof(WhpHypervisor)));
        Assert.NotNull(typeof(WhpHypervisor).GetConstructor(Type.EmptyTypes));
    }
}
