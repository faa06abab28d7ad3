using Virt.Cpu;
using Virt.Cpu.Whp;
using Xunit;

namespace Virt.Cpu.Whp.Tests;

public sealed class HResultTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(1)] // S_FALSE is a success code
    public void Success_codes_do_not_throw(int hresult) => HResult.Check(hresult, "WHvSetupPartition");

    [Fact]
    public void Failure_throws_a_hypervisor_exception_naming_the_function_and_hresult()
    {
        var e = Assert.Throws<HypervisorException>(() => HResult.Check(HResult.WHV_E_INVALID_PARTITION_CONFIG, "WHvSetupPartition"));
        Assert.Equal("WHvSetupPartition", e.Operation);
        Assert.Equal(unchecked((int)0x80370304), e.ErrorCode);
        Assert.Contains("WHvSetupPartition", e.Message, StringComparison.Ordinal);
        Assert.Contains("0x80370304", e.Message, StringComparison.Ordinal);
        Assert.Contains("WHV_E_INVALID_PARTITION_CONFIG", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Unknown_failure_still_shows_the_hex_hresult()
    {
        var e = HResult.ToException("WHvRunVirtualProcessor", unchecked((int)0xC0350005));
        Assert.Contains("HRESULT 0xC0350005", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(unchecked((int)0x80370300), "WHV_E_UNKNOWN_CAPABILITY")]
    [InlineData(unchecked((int)0x80370301), "WHV_E_INSUFFICIENT_BUFFER")]
    [InlineData(unchecked((int)0x80370302), "WHV_E_UNKNOWN_PROPERTY")]
    [InlineData(unchecked((int)0x80370303), "WHV_E_UNSUPPORTED_HYPERVISOR_CONFIG")]
    [InlineData(unchecked((int)0x80370305), "WHV_E_GPA_RANGE_NOT_FOUND")]
    [InlineData(unchecked((int)0x80370306), "WHV_E_VP_ALREADY_EXISTS")]
    [InlineData(unchecked((int)0x80370307), "WHV_E_VP_DOES_NOT_EXIST")]
    [InlineData(unchecked((int)0x80370308), "WHV_E_INVALID_VP_STATE")]
    [InlineData(unchecked((int)0x80370309), "WHV_E_INVALID_VP_REGISTER_NAME")]
    [InlineData(unchecked((int)0x80070005), "E_ACCESSDENIED")]
    [InlineData(unchecked((int)0x80070057), "E_INVALIDARG")]
    [InlineData(unchecked((int)0x8007000E), "E_OUTOFMEMORY")]
    public void Known_hresults_are_named(int hresult, string name) =>
        Assert.Contains(name, HResult.Describe(hresult), StringComparison.Ordinal);
}
