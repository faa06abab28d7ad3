using Virt.Cpu.Interpreter.Tests.Differential;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

public sealed class SseSemanticsTests
{
    private const int Done = -2;
    private const uint Ie = 1, Ze = 4, Pe = 32;
    private const uint QNaN = 0x7FC01234, SNaN = 0x7F801234;

    public static TheoryData<string> Backends() => SseHarness.Backends();

    [Theory]
    [MemberData(nameof(Backends))]
    public void Packed_single_add_and_integer_ops_compute_expected_lanes(string backend)
    {
        var (r, s) = SseHarness.Run(backend, a =>
        {
            a.movaps(xmm0, __xmmword_ptr[rbx]);
            a.addps(xmm0, __xmmword_ptr[rbx + 16]);
            a.movdqu(xmm1, __xmmword_ptr[rbx]);
            a.paddd(xmm1, xmm1);
            a.pshufd(xmm2, xmm1, 0x1B);
            a.movmskps(eax, xmm0);
        }, Scratch(1f, -2f, 3f, 4f, 10f, 20f, -30f, 40f));
        Assert.Equal(Done, r.Vector);
        Assert.Equal(BitConverter.SingleToUInt32Bits(11f), SseHarness.Single(s, 0, 0));
        Assert.Equal(BitConverter.SingleToUInt32Bits(-27f), SseHarness.Single(s, 0, 2));
        Assert.Equal(BitConverter.SingleToUInt32Bits(1f) * 2, SseHarness.Single(s, 1, 0));
        Assert.Equal(SseHarness.Single(s, 1, 3), SseHarness.Single(s, 2, 0));
        Assert.Equal(0b0100UL, r.Gprs[0]);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Nan_operands_propagate_the_first_source_quietened_and_signal_invalid_only_for_snan(string backend)
    {
        var (r, s) = SseHarness.Run(backend, a =>
        {
            a.addss(xmm0, xmm1); // QNaN + SNaN: the first source, no change to it
            a.addss(xmm2, xmm3); // 1 + SNaN: the SNaN quietened
            a.minss(xmm4, xmm5); // MIN with a NaN returns the second operand unchanged
            a.subss(xmm6, xmm7); // inf - inf: the default NaN
        }, init: f =>
        {
            f.SetQ(0, QNaN, 0);
            f.SetQ(1, SNaN, 0);
            f.SetS(2, 1f);
            f.SetQ(3, SNaN, 0);
            f.SetQ(4, QNaN, 0);
            f.SetS(5, 2f);
            f.SetS(6, float.PositiveInfinity);
            f.SetS(7, float.PositiveInfinity);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(QNaN, SseHarness.Single(s, 0, 0));
        Assert.Equal(SNaN | 0x00400000u, SseHarness.Single(s, 2, 0));
        Assert.Equal(BitConverter.SingleToUInt32Bits(2f), SseHarness.Single(s, 4, 0));
        Assert.Equal(0xFFC00000u, SseHarness.Single(s, 6, 0));
        Assert.Equal(Ie, s.Mxcsr & 0x3F);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Out_of_range_and_nan_conversions_give_the_integer_indefinite_value(string backend)
    {
        var (r, s) = SseHarness.Run(backend, a =>
        {
            a.cvttss2si(eax, xmm0);
            a.cvtsd2si(rcx, xmm1);
            a.cvttsd2si(edx, xmm2);
            a.cvtps2dq(xmm3, xmm3);
        }, init: f =>
        {
            f.SetQ(0, QNaN, 0);
            f.SetQ(1, BitConverter.DoubleToUInt64Bits(1e300), 0);
            f.SetQ(2, BitConverter.DoubleToUInt64Bits(-2.75), 0);
            f.SetS(3, 2.5f, 3.5f, 3e9f, -0.5f);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x80000000UL, r.Gprs[0]);
        Assert.Equal(0x8000000000000000UL, r.Gprs[1]);
        Assert.Equal(0xFFFFFFFEUL, r.Gprs[2]);
        Assert.Equal(2u, SseHarness.Single(s, 3, 0));
        Assert.Equal(4u, SseHarness.Single(s, 3, 1));
        Assert.Equal(0x80000000u, SseHarness.Single(s, 3, 2));
        Assert.Equal(0u, SseHarness.Single(s, 3, 3));
        Assert.Equal(Ie | Pe, s.Mxcsr & 0x3F);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Rounding_control_directs_division_results(string backend)
    {
        foreach (var (rc, expected) in new[] { (0u, 0x3EAAAAABu), (1u, 0x3EAAAAAAu), (2u, 0x3EAAAAABu), (3u, 0x3EAAAAAAu) })
        {
            var (r, s) = SseHarness.Run(backend, a => a.divss(xmm0, xmm1), init: f =>
            {
                f.Mxcsr = 0x1F80 | (rc << 13);
                f.SetS(0, 1f);
                f.SetS(1, 3f);
            });
            Assert.Equal(Done, r.Vector);
            Assert.Equal(expected, SseHarness.Single(s, 0, 0));
            Assert.Equal(Pe, s.Mxcsr & 0x3F);
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Misaligned_aligned_move_raises_general_protection_and_unaligned_form_does_not(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a => a.movaps(xmm0, __xmmword_ptr[rbx + 8]));
        Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));

        if (backend == "interpreter")
        {
            // The CI host's KVM reports #UD instead of #GP for a misaligned arithmetic operand at CPL 3.
            (r, _) = SseHarness.Run(backend, a => a.addpd(xmm0, __xmmword_ptr[rbx + 4]));
            Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));
        }

        var (r2, s) = SseHarness.Run(backend, a => a.movups(xmm0, __xmmword_ptr[rbx + 8]), SseHarness.Scratch(0, 0x1111, 0x2222));
        Assert.Equal(Done, r2.Vector);
        Assert.Equal(0x1111UL, SseHarness.Double(s, 0, 0));
        Assert.Equal(0x2222UL, SseHarness.Double(s, 0, 1));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Unmasked_divide_by_zero_raises_simd_exception_without_writing_the_destination(string backend)
    {
        var (r, s) = SseHarness.Run(backend, a => a.divss(xmm0, xmm1), init: f =>
        {
            f.Mxcsr = 0x1F80 & ~(Ze << 7);
            f.SetS(0, 1f);
            f.SetS(1, 0f);
        });
        Assert.Equal(19, r.Vector);
        Assert.Equal(BitConverter.SingleToUInt32Bits(1f), SseHarness.Single(s, 0, 0));
        if (backend == "interpreter")
        {
            Assert.Equal(Ze, s.Mxcsr & 0x3F); // KVM_GET_FPU does not report MXCSR on every host
        }
    }

    // Interpreter only: the CI host's KVM reports #UD instead of #GP for this fault taken at CPL 3.
    [Fact]
    public void Ldmxcsr_with_reserved_bits_raises_general_protection()
    {
        var (r, s) = SseHarness.Run("interpreter", a => a.ldmxcsr(__dword_ptr[rbx]), SseHarness.Scratch(0x11F80));
        Assert.Equal((13, 0UL), (r.Vector, r.ErrorCode));
        Assert.Equal(0x1F80u, s.Mxcsr);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Ldmxcsr_and_stmxcsr_round_trip(string backend)
    {
        var (r, s) = SseHarness.Run(backend, a =>
        {
            a.ldmxcsr(__dword_ptr[rbx]);
            a.stmxcsr(__dword_ptr[rbx + 8]);
        }, SseHarness.Scratch(0x7F80));
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x7F80u, s.Mxcsr);
        Assert.Equal(0x7F80u, BitConverter.ToUInt32(r.Scratch, 8));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Comiss_sets_zf_pf_cf_for_unordered_less_and_equal(string backend)
    {
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.ucomiss(xmm0, xmm1);
            a.pushfq();
            a.pop(rax);
            a.comiss(xmm1, xmm2);
            a.pushfq();
            a.pop(rcx);
            a.ucomiss(xmm2, xmm2);
            a.pushfq();
            a.pop(rdx);
        }, init: f =>
        {
            f.SetQ(0, QNaN, 0);
            f.SetS(1, 1f);
            f.SetS(2, 2f);
        });
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x45UL, r.Gprs[0] & 0x8D5);
        Assert.Equal(0x01UL, r.Gprs[1] & 0x8D5);
        Assert.Equal(0x40UL, r.Gprs[2] & 0x8D5);
    }

    [Fact]
    public void Sse_with_cr0_ts_raises_device_not_available_and_clts_lets_it_run()
    {
        using var m = Machine.Long64(a =>
        {
            a.xorps(xmm0, xmm0);
            a.hlt();
        });
        m.InstallHaltingIdt();
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cr0 |= 1UL << 3;
        m.Vcpu.SetSpecialRegisters(s);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(7, m.HaltedVector); // #NM
    }

    [Fact]
    public void Sse_without_cr4_osfxsr_is_undefined()
    {
        using var m = Machine.Long64(a =>
        {
            a.addps(xmm0, xmm1);
            a.hlt();
        });
        m.InstallHaltingIdt();
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cr4 &= ~(1UL << 9);
        m.Vcpu.SetSpecialRegisters(s);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(6, m.HaltedVector); // #UD
    }

    private static byte[] Scratch(params float[] values)
    {
        var b = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            BitConverter.TryWriteBytes(b.AsSpan(i * 4), values[i]);
        }

        return b;
    }
}
