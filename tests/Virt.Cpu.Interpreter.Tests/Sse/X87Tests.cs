using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

public sealed class X87Tests
{
    private const int Done = -2;

    public static TheoryData<string> Backends() => SseHarness.Backends();

    private static double D(byte[] scratch, int offset) => BitConverter.ToDouble(scratch, offset);

    [Theory]
    [MemberData(nameof(Backends))]
    public void Loads_arithmetic_and_stores_produce_exact_results(string backend)
    {
        var scratch = SseHarness.Scratch(BitConverter.DoubleToUInt64Bits(1.5), BitConverter.DoubleToUInt64Bits(-4.0), 7, BitConverter.SingleToUInt32Bits(2.25f));
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fld(__qword_ptr[rbx]);        // 1.5
            a.fld(__qword_ptr[rbx + 8]);    // -4, 1.5
            a.faddp(st1, st0);              // -2.5
            a.fild(__dword_ptr[rbx + 16]);  // 7, -2.5
            a.fmulp(st1, st0);              // -17.5
            a.fst(__qword_ptr[rbx + 0x100]);
            a.fabs();                       // 17.5
            a.fld(__dword_ptr[rbx + 24]);   // 2.25, 17.5
            a.fdivr(st0, st1);              // 17.5 / 2.25, 17.5
            a.fstp(__qword_ptr[rbx + 0x108]);
            a.fchs();                       // -17.5
            a.fld1();
            a.fsubp(st1, st0);              // -18.5
            a.fistp(__word_ptr[rbx + 0x110]); // rounds to even: -18
            a.fldz();
            a.fld(__qword_ptr[rbx]);
            a.fxch(st0, st1);               // 0, 1.5
            a.fcomi(st0, st1);
            a.fnstsw(ax);
            a.fstp(st0);
            a.fsqrt();                      // sqrt(1.5)
            a.fstp(__qword_ptr[rbx + 0x118]);
        }, scratch);
        Assert.Equal(Done, r.Vector);
        Assert.Equal(-17.5, D(r.Scratch, 0x100));
        Assert.Equal(17.5 / 2.25, D(r.Scratch, 0x108), 1e-15);
        Assert.Equal(-18, BitConverter.ToInt16(r.Scratch, 0x110));
        Assert.Equal(Math.Sqrt(1.5), D(r.Scratch, 0x118), 1e-15);
        Assert.Equal(1UL, r.Rflags & 0x45); // 0 < 1.5: CF only
        Assert.Equal(6UL, (r.Gprs[0] >> 11) & 7); // two values on the stack: TOP = 6
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Extended_load_and_store_round_trip_and_fisttp_truncates(string backend)
    {
        // 80-bit -3.0: sign | exponent 0x4000, significand 0xC000000000000000.
        var scratch = SseHarness.Scratch(0xC000000000000000, 0xC000, BitConverter.DoubleToUInt64Bits(-2.75), BitConverter.DoubleToUInt64Bits(1e30));
        var (r, s) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fld(__tword_ptr[rbx]);
            a.fstp(__tword_ptr[rbx + 0x100]);
            a.fld(__qword_ptr[rbx + 16]);
            a.fisttp(__dword_ptr[rbx + 0x110]);
            a.fld(__qword_ptr[rbx + 24]);
            a.fistp(__dword_ptr[rbx + 0x118]); // out of range: integer indefinite (IE masked)
            a.fnstsw(__word_ptr[rbx + 0x120]);
        }, scratch);
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0xC000000000000000UL, BitConverter.ToUInt64(r.Scratch, 0x100));
        Assert.Equal(0xC000, BitConverter.ToUInt16(r.Scratch, 0x108));
        Assert.Equal(-2, BitConverter.ToInt32(r.Scratch, 0x110));
        Assert.Equal(int.MinValue, BitConverter.ToInt32(r.Scratch, 0x118));
        Assert.Equal(1, BitConverter.ToUInt16(r.Scratch, 0x120) & 1);
        _ = s;
    }

    public static TheoryData<string, int, int, ulong> OneThirdCases()
    {
        // 1/3 = 1.0101...b x 2^-2: the 64-bit significand 0xAAAA...AAAA, then 1010..., so nearest rounds up at 64 and
        // 24 bits and down at 53; down and toward zero truncate, up adds one unit in the last place.
        var d = new TheoryData<string, int, int, ulong>();
        foreach (string backend in TestBackends.Both())
        {
            d.Add(backend, 3, 0, 0xAAAAAAAAAAAAAAAB);
            d.Add(backend, 3, 1, 0xAAAAAAAAAAAAAAAA);
            d.Add(backend, 3, 2, 0xAAAAAAAAAAAAAAAB);
            d.Add(backend, 2, 0, 0xAAAAAAAAAAAAA800);
            d.Add(backend, 2, 2, 0xAAAAAAAAAAAAB000);
            d.Add(backend, 0, 0, 0xAAAAAB0000000000);
            d.Add(backend, 0, 3, 0xAAAAAA0000000000);
        }

        return d;
    }

    [Theory]
    [MemberData(nameof(OneThirdCases))]
    public void Division_rounds_to_the_precision_and_rounding_controls(string backend, int precision, int rounding, ulong significand)
    {
        ushort cw = (ushort)(0x7F | (precision << 8) | (rounding << 10));
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fldcw(__word_ptr[rbx]);
            a.fld1();
            a.fild(__dword_ptr[rbx + 8]);
            a.fdivp(st1, st0);
            a.fnstsw(__word_ptr[rbx + 0x110]);
            a.fstp(__tword_ptr[rbx + 0x100]);
        }, SseHarness.Scratch(cw, 3));
        Assert.Equal(Done, r.Vector);
        Assert.Equal(significand, BitConverter.ToUInt64(r.Scratch, 0x100));
        Assert.Equal(0x3FFD, BitConverter.ToUInt16(r.Scratch, 0x108));
        ushort sw = BitConverter.ToUInt16(r.Scratch, 0x110);
        Assert.Equal(0x20, sw & 0x3F); // PE alone
        Assert.Equal(significand is 0xAAAAAAAAAAAAAAAB or 0xAAAAAAAAAAAAB000 or 0xAAAAAB0000000000, (sw & 0x200) != 0); // C1: rounded up
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Extended_range_underflow_gives_denormals_and_reports_only_inexact_ones(string backend)
    {
        // The smallest normal (exponent 1) halved is an exact denormal: no UE. The denormal 3 units halved is 1.5
        // units, rounded to even (2): DE for the operand, UE and PE for the result.
        var scratch = SseHarness.Scratch(0x8000000000000000, 0x0001, 3, 0, BitConverter.DoubleToUInt64Bits(0.5));
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fld(__tword_ptr[rbx]);
            a.fmul(__qword_ptr[rbx + 32]);
            a.fnstsw(__word_ptr[rbx + 0x110]);
            a.fstp(__tword_ptr[rbx + 0x100]);
            a.fld(__tword_ptr[rbx + 16]);
            a.fmul(__qword_ptr[rbx + 32]);
            a.fnstsw(__word_ptr[rbx + 0x130]);
            a.fstp(__tword_ptr[rbx + 0x120]);
        }, scratch);
        Assert.Equal(Done, r.Vector);
        Assert.Equal(0x4000000000000000UL, BitConverter.ToUInt64(r.Scratch, 0x100));
        Assert.Equal(0, BitConverter.ToUInt16(r.Scratch, 0x108));
        Assert.Equal(0, BitConverter.ToUInt16(r.Scratch, 0x110) & 0x3F);
        Assert.Equal(2UL, BitConverter.ToUInt64(r.Scratch, 0x120));
        Assert.Equal(0x32, BitConverter.ToUInt16(r.Scratch, 0x130) & 0x3F); // DE, UE and PE
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void An_unmasked_exception_is_raised_by_the_next_waiting_instruction(string backend)
    {
        // ZE unmasked: FDIV by zero sets ZE, ES and B and leaves ST0 alone; FNSTSW does not wait, FLD1 raises #MF.
        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            a.fldcw(__word_ptr[rbx]);
            a.fld1();
            a.fldz();
            a.fdivp(st1, st0);
            a.fnstsw(__word_ptr[rbx + 0x100]);
            a.fld1();
        }, SseHarness.Scratch(0x37B));
        Assert.Equal(16, r.Vector);
        ushort sw = BitConverter.ToUInt16(r.Scratch, 0x100);
        Assert.Equal(0x8084, sw & 0x80FF); // B, ES, ZE
        Assert.Equal(6, (sw >> 11) & 7); // nothing popped
    }

    public static TheoryData<string, int> LoadForms()
    {
        var d = new TheoryData<string, int>();
        foreach (string backend in TestBackends.Both())
        {
            for (int form = 0; form < 3; form++)
            {
                d.Add(backend, form);
            }
        }

        return d;
    }

    /// <summary>
    /// FLDENV, FRSTOR and FXRSTOR of an image whose status word has IE set but ES and B clear, with IE unmasked: ES and B
    /// follow the flags and masks (FNSTSW reads 0x8081), and the next waiting instruction raises #MF.
    /// </summary>
    [Theory]
    [MemberData(nameof(LoadForms))]
    public void Loading_an_unmasked_set_flag_makes_it_pending(string backend, int form)
    {
        var image = new byte[0x300];
        if (form < 2)
        {
            BitConverter.TryWriteBytes(image.AsSpan(0x100), (uint)0x037E);
            BitConverter.TryWriteBytes(image.AsSpan(0x104), (uint)0x0001);
            BitConverter.TryWriteBytes(image.AsSpan(0x108), (uint)0xFFFF);
        }
        else
        {
            BitConverter.TryWriteBytes(image.AsSpan(0x100), (ushort)0x037E);
            BitConverter.TryWriteBytes(image.AsSpan(0x102), (ushort)0x0001);
            BitConverter.TryWriteBytes(image.AsSpan(0x100 + 24), 0x1F80u);
        }

        var (r, _) = SseHarness.Run(backend, a =>
        {
            a.fninit();
            switch (form)
            {
                case 0: a.fldenv(__[rbx + 0x100]); break;
                case 1: a.frstor(__[rbx + 0x100]); break;
                default: a.fxrstor(__[rbx + 0x100]); break;
            }

            a.fnstsw(__word_ptr[rbx + 0x2F0]);
            a.fld1();
        }, image);
        Assert.Equal(16, r.Vector);
        Assert.Equal(0x8081, BitConverter.ToUInt16(r.Scratch, 0x2F0) & 0xC7FF);
    }

    [Fact]
    public void X87_with_cr0_ts_raises_device_not_available()
    {
        using var m = Machine.Long64(a =>
        {
            a.fld1();
            a.hlt();
        });
        m.InstallHaltingIdt();
        var s = m.Vcpu.GetSpecialRegisters();
        s.Cr0 |= 1UL << 3;
        m.Vcpu.SetSpecialRegisters(s);
        Assert.Equal(VcpuExitReason.Halt, m.Run().Reason);
        Assert.Equal(7, m.HaltedVector); // #NM
    }
}
