using Virt.Cpu;
using Xunit;

namespace Virt.Abstractions.Tests;

public sealed class XsaveStateTests
{
    [Fact]
    public void Legacy_region_round_trips_every_fpu_field()
    {
        var fpu = new FpuState { ControlWord = 0x0C7F, StatusWord = 0x3800, AbridgedTagWord = 0x81, LastOpcode = 0x7FF, LastInstructionPointer = 0x1234_5678_9ABC, LastDataPointer = 0xFEDC_BA98, Mxcsr = 0x7FBF };
        ((Span<byte>)fpu.Registers)[5] = 0x42;
        fpu.GetXmm(15).Fill(0xEE);
        var image = XsaveState.FromFpu(fpu);
        var back = image.Fpu;
        Assert.Equal(fpu.ControlWord, back.ControlWord);
        Assert.Equal(fpu.StatusWord, back.StatusWord);
        Assert.Equal(fpu.AbridgedTagWord, back.AbridgedTagWord);
        Assert.Equal(fpu.LastOpcode, back.LastOpcode);
        Assert.Equal(fpu.LastInstructionPointer, back.LastInstructionPointer);
        Assert.Equal(fpu.LastDataPointer, back.LastDataPointer);
        Assert.Equal(fpu.Mxcsr, back.Mxcsr);
        Assert.Equal(0x42, ((ReadOnlySpan<byte>)back.Registers)[5]);
        Assert.Equal(0xEE, back.GetXmm(15)[0]);
        Assert.Equal(XsaveComponents.X87 | XsaveComponents.Sse, image.StateComponents);
    }

    [Fact]
    public void Components_in_their_initial_state_read_as_initial_values()
    {
        var area = new byte[XsaveState.MinimumSize];
        XsaveState.WriteLegacyRegion(new FpuState { ControlWord = 0x0C7F, Mxcsr = 0x1F80 }, area);
        var image = new XsaveState(3, area);      // XSTATE_BV = 0: x87 and SSE are in their initial state
        Assert.Equal((ushort)0x037F, image.Fpu.ControlWord);
        Assert.Equal(0x1F80u, image.Fpu.Mxcsr);    // MXCSR comes from the legacy region whatever XSTATE_BV says
    }

    [Theory]
    [InlineData(100, 3UL)]
    [InlineData(576, 2UL)]                         // XCR0 without x87
    [InlineData(70_000, 3UL)]
    public void Malformed_images_are_refused_with_a_reason(int size, ulong xcr0)
    {
        var ex = Assert.Throws<ArgumentException>(() => new XsaveState(xcr0, new byte[size]));
        Assert.False(string.IsNullOrEmpty(ex.Message));
    }

    [Fact]
    public void Non_initial_state_beyond_sse_is_found()
    {
        var area = new byte[1024];
        area[512] = 7;             // x87, SSE and AVX present
        var image = new XsaveState(7, area);
        Assert.False(image.HoldsNonInitialState(2, 576, 256));
        area[600] = 1;
        Assert.True(new XsaveState(7, area).HoldsNonInitialState(2, 576, 256));
    }
}
