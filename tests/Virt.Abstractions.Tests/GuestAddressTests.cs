using Virt.Cpu;
using Xunit;

namespace Virt.Abstractions.Tests;

public sealed class GuestAddressTests
{
    [Fact]
    public void Addition_past_2_pow_64_throws_instead_of_wrapping()
    {
        var a = new GuestAddress(ulong.MaxValue - 1);
        Assert.Throws<OverflowException>(() => a + 2);
        Assert.False(a.TryAdd(2, out _));
        Assert.True(a.TryAdd(1, out var b));
        Assert.Equal(ulong.MaxValue, b.Value);
    }

    [Fact]
    public void Formats_as_hex_and_orders_by_value()
    {
        Assert.Equal("0x100000", new GuestAddress(0x100000).ToString());
        Assert.True(new GuestAddress(1) < new GuestAddress(2));
        Assert.Equal(0x10UL, new GuestAddress(0x20) - new GuestAddress(0x10));
        Assert.Equal(new GuestAddress(0x1000), new GuestAddress(0x1FFF).AlignDown(0x1000));
        Assert.True(new GuestAddress(0x2000).IsAligned(0x1000));
    }

    [Fact]
    public void Port_io_exit_reports_its_data_length()
    {
        var exit = VcpuExit.PortIo(0x3F8, 2, 5, isWrite: true);
        Assert.Equal(10, exit.DataLength);
        Assert.Contains("out port=0x3f8", exit.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Fault_description_includes_rip_and_bytes()
    {
        var fault = new VcpuFault("emulation failure", 1, 0x1234, new byte[] { 0x0F, 0x0B }, null);
        var text = VcpuExit.Failure(VcpuExitReason.InternalError, fault).ToString();
        Assert.Contains("rip=0x1234", text, StringComparison.Ordinal);
        Assert.Contains("0F0B", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Register_indexer_follows_encoding_order()
    {
        var r = new GeneralRegisters { Rax = 1, Rcx = 2, Rsp = 5, R15 = 16 };
        Assert.Equal(1UL, r[0]);
        Assert.Equal(2UL, r[1]);
        Assert.Equal(5UL, r[4]);
        Assert.Equal(16UL, r[15]);
        Assert.Throws<ArgumentOutOfRangeException>(() => r[16]);
    }

    [Fact]
    public void Initial_fpu_state_has_reset_control_words()
    {
        var f = FpuState.Initial;
        Assert.Equal(0x037F, f.ControlWord);
        Assert.Equal(0x1F80u, f.Mxcsr);
        f.GetXmm(15)[0] = 7;
        Assert.Equal(7, f.GetXmm(15)[0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => f.GetXmm(16).Length);
    }
}
