using System.Reflection;
using Virt.Sandbox.Linux;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>The system-call table: what it lists, and that a number it does not list finds nothing.</summary>
public sealed class SyscallTableTests
{
    public static TheoryData<long> UnlistedNumbers() => new()
    {
        153, // vhangup
        -1,
        512, // x32's first number
        long.MinValue,
        long.MaxValue,
        LinuxAbi.HostCallNumber - 1,
        LinuxAbi.ReadyNumber + 1,
    };

    [Fact]
    public void Every_number_Sys_names_has_a_row()
    {
        var withoutRow = typeof(Sys).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => LinuxAbi.SyscallTable.Find((long)f.GetRawConstantValue()!) is null)
            .Select(f => f.Name);
        Assert.Empty(withoutRow);
    }

    [Fact]
    public void Every_row_is_found_by_its_number_and_has_a_name()
    {
        Assert.All(LinuxAbi.SyscallTable.Numbers, n =>
        {
            Assert.NotNull(LinuxAbi.SyscallTable.Find(n));
            Assert.DoesNotMatch("^syscall_", SyscallNames.Name(n));
        });
    }

    [Fact]
    public void No_number_has_two_rows()
    {
        var numbers = LinuxAbi.SyscallTable.Numbers.ToList();
        Assert.Equal(numbers.Count, numbers.Distinct().Count());
    }

    [Theory]
    [MemberData(nameof(UnlistedNumbers))]
    public void A_number_without_a_row_has_no_handler(long number) => Assert.Null(LinuxAbi.SyscallTable.Find(number));
}
