using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

public sealed class FxsaveTests
{
    private const int Done = -2;

    public static TheoryData<string> Backends() => SseHarness.Backends();

    [Theory]
    [MemberData(nameof(Backends))]
    public void Fxsave64_stores_control_words_mxcsr_and_xmm_registers(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a => a.fxsave64(__[rbx + 0x200]), init: f =>
        {
            f.Mxcsr = 0x3F80;
            f.SetQ(3, 0x0123456789ABCDEF, 0xFEDCBA9876543210);
            f.SetQ(15, 0x1111, 0x2222);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x037F, BitConverter.ToUInt16(r.Scratch, 0x200));
        Assert.Equal(0x3F80u, BitConverter.ToUInt32(r.Scratch, 0x200 + 24));
        Assert.Equal(0xFFFFu, BitConverter.ToUInt32(r.Scratch, 0x200 + 28) & 0xFFFF);
        Assert.Equal(0x0123456789ABCDEFUL, BitConverter.ToUInt64(r.Scratch, 0x200 + 160 + (3 * 16)));
        Assert.Equal(0xFEDCBA9876543210UL, BitConverter.ToUInt64(r.Scratch, 0x200 + 160 + (3 * 16) + 8));
        Assert.Equal(0x2222UL, BitConverter.ToUInt64(r.Scratch, 0x200 + 160 + (15 * 16) + 8));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Fxrstor64_loads_what_fxsave64_stored_after_changes(string backend)
    {
        var (r, s) = SseHarness.Run(backend, a =>
        {
            a.fxsave64(__[rbx + 0x200]);
            a.mov(rax, 0x5555);
            a.mov(__qword_ptr[rbx + 0x200 + 160 + 16], rax); // XMM1 low qword in the saved image
            a.mov(__dword_ptr[rbx + 0x200 + 24], 0x5F80);     // MXCSR: round down
            a.pxor(xmm2, xmm2);
            a.fxrstor64(__[rbx + 0x200]);
            a.movq(rcx, xmm1);
        }, init: f =>
        {
            f.SetQ(1, 0x7777, 0x8888);
            f.SetQ(2, 0x9999, 0xAAAA);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x5555UL, r.Gprs[1]);
        Assert.Equal(0x8888UL, SseHarness.Double(s, 1, 1));
        Assert.Equal(0x9999UL, SseHarness.Double(s, 2, 0));
        Assert.Equal(0x5F80u, s.Mxcsr);
    }

    [Fact]
    public void Fxsave_to_a_misaligned_area_raises_general_protection()
    {
        var (r, _) = SseHarness.Run("interpreter", a => a.fxsave64(__[rbx + 0x208]));
        Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));
    }

    [Fact]
    public void Fxrstor_with_reserved_mxcsr_bits_raises_general_protection()
    {
        var (r, _) = SseHarness.Run("interpreter", a =>
        {
            a.fxsave64(__[rbx + 0x200]);
            a.mov(__dword_ptr[rbx + 0x200 + 24], 0x10000);
            a.fxrstor64(__[rbx + 0x200]);
        });
        Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Fldcw_fnstcw_and_fnstsw_round_trip_the_control_and_status_words(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.mov(__word_ptr[rbx + 0x100], 0x027F);
            a.fldcw(__word_ptr[rbx + 0x100]);
            a.fnstcw(__word_ptr[rbx + 0x108]);
            a.mov(eax, -1);
            a.fnstsw(ax);
            a.fninit();
            a.fnstcw(__word_ptr[rbx + 0x110]);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x027F, BitConverter.ToUInt16(r.Scratch, 0x108));
        Assert.Equal(0x037F, BitConverter.ToUInt16(r.Scratch, 0x110));
        Assert.Equal(0xFFFF0000UL, r.Gprs[0]);
    }
}
