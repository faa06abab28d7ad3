using Xunit;

namespace Virt.Sdk.Tests;

public sealed class DefaultNameTests
{
    private static VirtualMachine Build(VirtualMachineBuilder builder) => builder
        .WithInterpreter()
        .WithMemoryMiB(2)
        .WithFlatBinary(new byte[] { 0xF4 }, new GuestAddress(0x100000))
        .WithEntryPoint(new GuestAddress(0x100000))
        .Build();

    [Fact]
    public async Task Vms_built_without_a_name_get_unique_names_and_a_given_name_is_kept()
    {
        await using var a = Build(VirtualMachine.CreateBuilder());
        await using var b = Build(VirtualMachine.CreateBuilder());
        await using var named = Build(VirtualMachine.CreateBuilder().WithName("web"));

        Assert.StartsWith("vm-", a.Name, StringComparison.Ordinal);
        Assert.StartsWith("vm-", b.Name, StringComparison.Ordinal);
        Assert.NotEqual(a.Name, b.Name);
        Assert.Equal("web", named.Name);
    }
}
