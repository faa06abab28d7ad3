using System.Text;
using Iced.Intel;
using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Cpu.Kvm;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>
/// Random x87 sequences run on KVM, the interpreter and the JIT tier, compared bit for bit: loads of every format
/// (zeros, denormals, pseudo-denormals, unnormals, infinities, quiet and signaling NaNs, values at the edges of the
/// exponent range), arithmetic, square roots, rounding to integers, scaling, remainders, comparisons and stores,
/// under random rounding and precision controls, with stack overflows and underflows, and now and then an unmasked
/// exception whose #MF the next waiting instruction raises. Compared: every store, the status word after each
/// comparison and at the end, RFLAGS after FCOMI, round trips through FNSTENV/FLDENV and FNSAVE/FRSTOR, and the whole FNSAVE image (control, status and full tag words and
/// the eight registers) or, when a sequence ends in an exception, the state the backend reports. The last x87
/// instruction and data pointers are left out (the interpreter does not track them), and so are the transcendental
/// instructions, which it computes in binary64.
/// </summary>
public sealed class X87DifferentialTests
{
    private const int DefaultSeed = 0x87_0000;
    private static readonly int PerBatch = Environment.GetEnvironmentVariable("VIRT_X87_COUNT") is { } n ? int.Parse(n, System.Globalization.CultureInfo.InvariantCulture) : 4000;
    private const int InputM80 = 0x000, InputM64 = 0x100, InputM32 = 0x200, InputInt = 0x300, Outputs = 0x400, ControlWords = 0x900, SaveArea = 0xA00, EnvArea = 0xC00;

    public static TheoryData<int> Batches() => [0, 1, 2];

    [Theory]
    [MemberData(nameof(Batches))]
    public void Random_x87_sequences_match_kvm(int batch)
    {
        HostRequirements.RequireKvm();
        int seedBase = DifferentialTests.SeedBase("VIRT_X87_SEED", DefaultSeed);
        using var kvm = new DiffVm(new KvmHypervisor());
        using var interp = new DiffVm(TestBackends.Interpreter());
        using var jit = new DiffVm(TestBackends.Jit());
        var failures = new StringBuilder();
        int failed = 0;
        for (int k = 0; k < PerBatch; k++)
        {
            int seed = seedBase + (batch * PerBatch) + k;
            var (code, endRip, regs, scratch, listing) = Build(seed);
            var a = kvm.Run(code, endRip, regs, scratch);
            var fa = kvm.Vcpu.GetFpuState();
            var b = interp.Run(code, endRip, regs, scratch);
            string? diff = Compare(a, fa, b, interp.Vcpu.GetFpuState());
            if (diff == null && k % 8 == 0)
            {
                var c = jit.Run(code, endRip, regs, scratch);
                diff = Compare(a, fa, c, jit.Vcpu.GetFpuState()) is { } d ? "JIT tier: " + d : null;
            }

            if (diff != null)
            {
                failed++;
                if (failed <= 5)
                {
                    failures.AppendLine($"seed {seed}: {diff}\n{FirstDifference(seed, kvm, diff.StartsWith("JIT", StringComparison.Ordinal) ? jit : interp)}\n{listing}");
                }
            }
        }

        Assert.True(failed == 0, $"{failed} of {PerBatch} x87 sequences differ (rerun one with VIRT_X87_SEED):\n{failures}");
    }

    /// <summary>
    /// FSIN, FCOS, FSINCOS, FPTAN, F2XM1, FYL2X, FYL2XP1 and FPATAN on random operands (numbers across their domains,
    /// zeros, infinities, NaNs, denormals, out-of-range and invalid ones) under every rounding control, against KVM:
    /// the status word must match but for PE and C1 (the processors' own approximations decide those), and every
    /// result be the same value or one unit in the last place away from the processor's.
    /// </summary>
    [Fact]
    public void Transcendental_instructions_match_kvm_within_one_unit_in_the_last_place()
    {
        HostRequirements.RequireKvm();
        int seedBase = DifferentialTests.SeedBase("VIRT_X87_SEED", DefaultSeed + 0x8000);
        using var kvm = new DiffVm(new KvmHypervisor());
        using var interp = new DiffVm(TestBackends.Interpreter());
        var failures = new StringBuilder();
        int failed = 0;
        int count = PerBatch * 2;
        for (int k = 0; k < count; k++)
        {
            int seed = seedBase + k;
            var (code, endRip, regs, scratch, listing) = BuildTranscendental(seed);
            var a = kvm.Run(code, endRip, regs, scratch);
            var b = interp.Run(code, endRip, regs, scratch);
            string? diff = a.Vector != b.Vector ? $"end: kvm vector {a.Vector}, interpreter {b.Vector}" : null;
            ushort swa = BitConverter.ToUInt16(a.Scratch, Outputs), swb = BitConverter.ToUInt16(b.Scratch, Outputs);
            // A denormal result of denormal operands: the processors' internal precision decides whether it is exact (UE).
            int ignored = 0x220 | (BitConverter.ToUInt16(a.Scratch, Outputs + 24) & 0x7FFF) switch { 0 => 0x10, _ => 0 };
            if (diff == null && ((swa ^ swb) & ~ignored) != 0)
            {
                diff = $"status: kvm {swa:x4}, interpreter {swb:x4}";
            }

            for (int i = 0; diff == null && i < 2; i++)
            {
                int o = Outputs + 16 + (16 * i);
                ulong ma = BitConverter.ToUInt64(a.Scratch, o), mb = BitConverter.ToUInt64(b.Scratch, o);
                ushort sa = BitConverter.ToUInt16(a.Scratch, o + 8), sb = BitConverter.ToUInt16(b.Scratch, o + 8);
                if (!WithinOneUnit(ma, sa, mb, sb))
                {
                    diff = $"result {i}: kvm {sa:x4}:{ma:x16}, interpreter {sb:x4}:{mb:x16}";
                }
            }

            if (diff != null)
            {
                failed++;
                if (failed <= 8)
                {
                    failures.AppendLine($"seed {seed}: {diff}\n{listing}");
                }
            }
        }

        Assert.True(failed == 0, $"{failed} of {count} transcendental sequences differ (rerun one with VIRT_X87_SEED):\n{failures}");
    }

    /// <summary>Equal bits, or two finite numbers of one sign one unit in the last place apart.</summary>
    private static bool WithinOneUnit(ulong ma, ushort sa, ulong mb, ushort sb)
    {
        if (ma == mb && sa == sb)
        {
            return true;
        }

        bool finite = (sa & 0x7FFF) != 0x7FFF && (sb & 0x7FFF) != 0x7FFF;
        if (!finite || (sa & 0x8000) != (sb & 0x8000))
        {
            return false;
        }

        // Ordered as integers: exponent above significand (a denormal's integer bit is 0, so it orders below).
        UInt128 ka = ((UInt128)(uint)(sa & 0x7FFF) << 63) + (ma & 0x7FFFFFFFFFFFFFFF) + ((sa & 0x7FFF) == 0 ? ma >> 63 << 63 : 0);
        UInt128 kb = ((UInt128)(uint)(sb & 0x7FFF) << 63) + (mb & 0x7FFFFFFFFFFFFFFF) + ((sb & 0x7FFF) == 0 ? mb >> 63 << 63 : 0);
        return (ka > kb ? ka - kb : kb - ka) <= 1;
    }

    /// <summary>An operand for a transcendental instruction: usually a number with its exponent in [lo, hi], sometimes a special value.</summary>
    private static (ulong Mant, ushort Se) Operand(Random r, int lo, int hi, bool positive = false, bool inDomain = false)
    {
        ushort sign = positive || r.Next(2) == 0 ? (ushort)0 : (ushort)0x8000;
        return (inDomain ? 5 + r.Next(35) : r.Next(40)) switch
        {
            0 => (0, sign),
            1 => (1UL << 63, (ushort)(sign | 0x7FFF)),
            2 => (RandomSignificand(r) | (3UL << 62), (ushort)(sign | 0x7FFF)),
            3 => (RandomSignificand(r) >> r.Next(1, 63), sign),
            4 => (1UL << 63, (ushort)(sign | 16383)),
            5 => (RandomSignificand(r) | (1UL << 63), (ushort)((r.Next(2) == 0 ? 0 : 0x8000) | (16383 + r.Next(lo, hi + 1)))),
            _ => (RandomSignificand(r) | (1UL << 63), (ushort)(sign | (16383 + r.Next(lo, hi + 1)))),
        };
    }

    internal static (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing) BuildTranscendental(int seed)
    {
        var r = new Random(seed);
        var scratch = new byte[DiffVm.ScratchSize];
        int op = r.Next(8);
        var (x, y) = op switch
        {
            0 or 1 or 2 or 3 => (Operand(r, -70, r.Next(8) == 0 ? 64 : 40), default),    // FSIN, FCOS, FSINCOS, FPTAN
            4 => (r.Next(10) == 0 ? (1UL << 63, (ushort)(r.Next(2) == 0 ? 0x3FFF : 0xBFFF)) : Operand(r, -70, -1), default), // F2XM1
            5 => (Operand(r, -16000, 16000, positive: r.Next(10) != 0), Operand(r, -100, 100)), // FYL2X
            6 => (Operand(r, -70, -3, inDomain: true), Operand(r, -100, 100)),              // FYL2XP1, |x| < 1 - sqrt(2)/2
            _ => (Operand(r, -100, 100), Operand(r, -100, 100)),                            // FPATAN
        };
        BitConverter.TryWriteBytes(scratch.AsSpan(InputM80), x.Mant);
        BitConverter.TryWriteBytes(scratch.AsSpan(InputM80 + 8), x.Se);
        BitConverter.TryWriteBytes(scratch.AsSpan(InputM80 + 16), y.Mant);
        BitConverter.TryWriteBytes(scratch.AsSpan(InputM80 + 24), y.Se);
        BitConverter.TryWriteBytes(scratch.AsSpan(ControlWords), (ushort)(0x37F | (r.Next(4) << 10)));
        bool binary = op >= 5;
        var code = GuestProgram.Assemble(64, DiffVm.CodeAddress, a =>
        {
            a.fninit();
            a.fldcw(__word_ptr[rbx + ControlWords]);
            if (binary)
            {
                a.fld(__tword_ptr[rbx + InputM80 + 16]);
            }

            a.fld(__tword_ptr[rbx + InputM80]);
            switch (op)
            {
                case 0: a.fsin(); break;
                case 1: a.fcos(); break;
                case 2: a.fsincos(); break;
                case 3: a.fptan(); break;
                case 4: a.f2xm1(); break;
                case 5: a.fyl2x(); break;
                case 6: a.fyl2xp1(); break;
                default: a.fpatan(); break;
            }

            a.fnstsw(__word_ptr[rbx + Outputs]);
            a.fstp(__tword_ptr[rbx + Outputs + 16]);
            if (op is 2 or 3)
            {
                a.fstp(__tword_ptr[rbx + Outputs + 32]);
            }

            a.hlt();
        });
        var regs = new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1800, Rflags = 0x202, Rbx = DiffVm.ScratchAddress };
        string listing = $"  x {x.Se:x4}:{x.Mant:x16}, y {y.Se:x4}:{y.Mant:x16}, control {BitConverter.ToUInt16(scratch, ControlWords):x4}\n{DiffVm.Listing(code)}";
        return (code, DiffVm.CodeAddress + (ulong)code.Length - 1, regs, scratch, listing);
    }

    /// <summary>The shortest prefix of the sequence whose end state differs, with both FNSAVE images: where to look first.</summary>
    private static string FirstDifference(int seed, DiffVm kvm, DiffVm other)
    {
        for (int n = 0; n < 64; n++)
        {
            var (code, endRip, regs, scratch, listing) = Build(seed, n);
            var a = kvm.Run(code, endRip, regs, scratch);
            var fa = kvm.Vcpu.GetFpuState();
            var b = other.Run(code, endRip, regs, scratch);
            if (Compare(a, fa, b, other.Vcpu.GetFpuState()) is { } d)
            {
                var lines = listing.Split('\n');
                string last = string.Join('\n', lines.Where(l => !l.Contains("fnsave", StringComparison.Ordinal) && !l.Contains("mov qword", StringComparison.Ordinal) && !l.Contains("hlt", StringComparison.Ordinal)).TakeLast(4));
                return $"  first difference after {n} steps: {d}\n  kvm   fnsave {Convert.ToHexString(a.Scratch, SaveArea, 108)}\n  other fnsave {Convert.ToHexString(b.Scratch, SaveArea, 108)}\n  ending with:\n{last}";
            }
        }

        return "  no prefix differs";
    }

    private static string? Compare(SequenceResult kvm, in FpuState kvmFpu, SequenceResult other, in FpuState otherFpu)
    {
        var sb = new StringBuilder(DifferentialTests.Compare(kvm, other));
        if (kvm.Vector != -2 && kvm.Vector == other.Vector)
        {
            // Ended in an exception before the FNSAVE: the x87 state as each backend reports it.
            if (kvmFpu.ControlWord != otherFpu.ControlWord || kvmFpu.StatusWord != otherFpu.StatusWord || kvmFpu.AbridgedTagWord != otherFpu.AbridgedTagWord)
            {
                sb.Append($"fcw/fsw/ftw: kvm {kvmFpu.ControlWord:x}/{kvmFpu.StatusWord:x}/{kvmFpu.AbridgedTagWord:x}, other {otherFpu.ControlWord:x}/{otherFpu.StatusWord:x}/{otherFpu.AbridgedTagWord:x}; ");
            }

            ReadOnlySpan<byte> ra = kvmFpu.Registers, rb = otherFpu.Registers;
            for (int i = 0; i < 8; i++)
            {
                if (!ra.Slice(16 * i, 10).SequenceEqual(rb.Slice(16 * i, 10)))
                {
                    sb.Append($"st{i}: kvm {Convert.ToHexString(ra.Slice(16 * i, 10))}, other {Convert.ToHexString(rb.Slice(16 * i, 10))}; ");
                }
            }
        }

        return sb.Length == 0 ? null : sb.ToString();
    }

    /// <summary>An 80-bit value of a class chosen at random: the operand mix that reaches every path of the arithmetic.</summary>
    private static (ulong Mant, ushort Se) RandomExtended(Random r)
    {
        ushort sign = r.Next(2) == 0 ? (ushort)0 : (ushort)0x8000;
        ulong mant = RandomSignificand(r);
        int cls = r.Next(100);
        return cls switch
        {
            < 40 => (mant | (1UL << 63), (ushort)(sign | (16383 + r.Next(-70, 70)))),
            < 50 => (mant | (1UL << 63), (ushort)(sign | r.Next(1, 80))),                 // near the smallest normal
            < 58 => (mant | (1UL << 63), (ushort)(sign | (0x7FFE - r.Next(0, 80)))),      // near the largest
            < 64 => (mant >> r.Next(1, 64), sign),                                          // denormal
            < 66 => (mant | (1UL << 63), sign),                                             // pseudo-denormal
            < 70 => (0, sign),
            < 74 => (1UL << 63, (ushort)(sign | 0x7FFF)),
            < 78 => (mant | (3UL << 62), (ushort)(sign | 0x7FFF)),                          // quiet NaN
            < 81 => ((mant & ~(1UL << 62)) | (1UL << 63) | 1, (ushort)(sign | 0x7FFF)),     // signaling NaN
            < 83 => (mant & ~(1UL << 63), (ushort)(sign | r.Next(1, 0x7FFF))),             // unnormal or pseudo-NaN
            < 92 => IntegerValue(r.Next(-1000, 1000)),
            _ => (mant | (1UL << 63), (ushort)(sign | (16383 + r.Next(60, 70)))),          // near 2^63, for integer stores
        };
    }

    private static (ulong Mant, ushort Se) IntegerValue(long v)
    {
        if (v == 0)
        {
            return (0, 0);
        }

        ulong m = (ulong)Math.Abs(v);
        int lz = System.Numerics.BitOperations.LeadingZeroCount(m);
        return (m << lz, (ushort)((v < 0 ? 0x8000 : 0) | (16383 + 63 - lz)));
    }

    /// <summary>Random bits, all ones, a single bit, few bits, or a halfway pattern for the rounding.</summary>
    private static ulong RandomSignificand(Random r) => r.Next(8) switch
    {
        0 => ulong.MaxValue,
        1 => 1UL << r.Next(64),
        2 => (ulong)r.Next(1, 256) << 56,
        3 => (1UL << 63) | (1UL << r.Next(0, 41)),       // a single bit at a rounding position of 24, 53 or 64 bits
        4 => (1UL << 63) | (1UL << 39),                   // a tie for 24-bit precision when the bits below are 0
        _ => ((ulong)r.NextInt64() << 1) | (uint)r.Next(2),
    };

    private static ulong RandomDouble(Random r)
    {
        ulong sign = (ulong)r.Next(2) << 63;
        ulong frac = RandomSignificand(r) & 0xFFFFFFFFFFFFF;
        return r.Next(12) switch
        {
            0 => sign,
            1 => sign | frac,                                               // denormal (or zero)
            2 => sign | 0x7FF0000000000000,
            3 => sign | 0x7FF8000000000000 | frac,
            4 => sign | 0x7FF0000000000000 | (frac & 0x7FFFFFFFFFFFF) | 1, // signaling NaN
            5 => sign | ((ulong)r.Next(1, 40) << 52) | frac,
            6 => sign | ((ulong)r.Next(0x7D0, 0x7FF) << 52) | frac,
            _ => sign | ((ulong)(1023 + r.Next(-60, 64)) << 52) | frac,
        };
    }

    private static uint RandomSingle(Random r)
    {
        uint sign = (uint)r.Next(2) << 31;
        uint frac = (uint)(RandomSignificand(r) >> 41);
        return r.Next(12) switch
        {
            0 => sign,
            1 => sign | frac,
            2 => sign | 0x7F800000,
            3 => sign | 0x7FC00000 | frac,
            4 => sign | 0x7F800000 | (frac & 0x3FFFFF) | 1,
            5 => sign | ((uint)r.Next(1, 20) << 23) | frac,
            _ => sign | ((uint)(127 + r.Next(-40, 40)) << 23) | frac,
        };
    }

    /// <summary>A control word: usually every exception masked, now and then one unmasked; any rounding, any precision (the reserved one too).</summary>
    private static ushort RandomControlWord(Random r)
    {
        // DE is left masked: with it unmasked, the processors differ on whether a load of a denormal completes.
        int masks = r.Next(12) == 0 ? 0x3F & ~(1 << (int)new[] { 0, 2, 3, 4, 5 }[r.Next(5)]) : 0x3F;
        int pc = r.Next(7) switch { 0 => 1, 1 or 2 => 0, 3 or 4 => 2, _ => 3 };
        return (ushort)(0x40 | masks | (pc << 8) | (r.Next(4) << 10));
    }

    internal static (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing) Build(int seed, int limit = int.MaxValue)
    {
        var r = new Random(seed);
        var scratch = new byte[DiffVm.ScratchSize];
        for (int i = 0; i < 16; i++)
        {
            var (m, se) = RandomExtended(r);
            BitConverter.TryWriteBytes(scratch.AsSpan(InputM80 + (16 * i)), m);
            BitConverter.TryWriteBytes(scratch.AsSpan(InputM80 + (16 * i) + 8), se);
            BitConverter.TryWriteBytes(scratch.AsSpan(InputM64 + (16 * i)), RandomDouble(r));
            BitConverter.TryWriteBytes(scratch.AsSpan(InputM32 + (16 * i)), RandomSingle(r));
            long v = r.Next(4) switch { 0 => r.Next(-100, 100), 1 => r.NextInt64(), 2 => r.Next(), _ => (short)r.Next() };
            BitConverter.TryWriteBytes(scratch.AsSpan(InputInt + (16 * i)), v);
        }

        for (int i = 0; i < 32; i++)
        {
            BitConverter.TryWriteBytes(scratch.AsSpan(ControlWords + (2 * i)), RandomControlWord(r));
        }

        int output = 0;
        int depth = 0;
        var code = GuestProgram.Assemble(64, DiffVm.CodeAddress, a =>
        {
            // The same register contents on every backend: FNINIT empties the registers but keeps what they hold.
            a.fninit();
            for (int i = 0; i < 8; i++)
            {
                a.fldz();
            }

            a.fninit();
            a.fldcw(__word_ptr[rbx + ControlWords]);
            int count = r.Next(8, 28);
            for (int n = 0; n < Math.Min(count, limit); n++)
            {
                Emit(a, r, ref output, ref depth);
            }

            a.fnstsw(ax);
            a.fnsave(__[rbx + SaveArea]);
            // The last instruction and data pointers (offsets 12 to 27 of the 32-bit image) are not compared.
            a.mov(__qword_ptr[rbx + SaveArea + 12], 0);
            a.mov(__qword_ptr[rbx + SaveArea + 20], 0);
            a.hlt();
        });
        var regs = new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1800, Rflags = 0x202, Rbx = DiffVm.ScratchAddress };
        return (code, DiffVm.CodeAddress + (ulong)code.Length - 1, regs, scratch, DiffVm.Listing(code));
    }

    private static AssemblerMemoryOperand Out(ref int output) => __[rbx + Outputs + (16 * (output++ % 80))];

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "A weighted menu of instruction forms.")]
    private static void Emit(Assembler a, Random r, ref int output, ref int depth)
    {
        var sti = new AssemblerRegisterST(Register.ST0 + r.Next(1, 8));
        int slot = 16 * r.Next(16);
        // Keep the stack mostly between one and seven values, with an overflow or underflow now and then.
        bool load = depth < 2 || (depth < 7 && r.Next(3) == 0) || r.Next(40) == 0;
        if (load)
        {
            switch (r.Next(12))
            {
                case 0: case 1: a.fld(__tword_ptr[rbx + InputM80 + slot]); break;
                case 2: case 3: a.fld(__qword_ptr[rbx + InputM64 + slot]); break;
                case 4: a.fld(__dword_ptr[rbx + InputM32 + slot]); break;
                case 5: a.fild(__word_ptr[rbx + InputInt + slot]); break;
                case 6: a.fild(__dword_ptr[rbx + InputInt + slot]); break;
                case 7: a.fild(__qword_ptr[rbx + InputInt + slot]); break;
                case 8: a.fld(sti); break;
                case 9:
                    switch (r.Next(7))
                    {
                        case 0: a.fld1(); break;
                        case 1: a.fldz(); break;
                        case 2: a.fldpi(); break;
                        case 3: a.fldl2e(); break;
                        case 4: a.fldl2t(); break;
                        case 5: a.fldlg2(); break;
                        default: a.fldln2(); break;
                    }

                    break;
                default: a.fld(__tword_ptr[rbx + InputM80 + slot]); break;
            }

            depth++;
            return;
        }

        int memSize = r.Next(3);
        AssemblerMemoryOperand Mem(int baseOffset) => memSize switch
        {
            0 => __dword_ptr[rbx + InputM32 + slot],
            1 => __qword_ptr[rbx + InputM64 + slot],
            _ => r.Next(2) == 0 ? __word_ptr[rbx + InputInt + slot] : __dword_ptr[rbx + InputInt + slot],
        };

        switch (r.Next(30))
        {
            case 0: case 1: case 2: case 3: case 4: case 5:
            {
                // FADD, FSUB, FSUBR, FMUL, FDIV, FDIVR in their register, popping and memory forms.
                int op = r.Next(6);
                int form = r.Next(4);
                if (form == 3)
                {
                    var m = Mem(0);
                    bool integer = memSize == 2;
                    switch (op)
                    {
                        case 0: if (integer) { a.fiadd(m); } else { a.fadd(m); } break;
                        case 1: if (integer) { a.fisub(m); } else { a.fsub(m); } break;
                        case 2: if (integer) { a.fisubr(m); } else { a.fsubr(m); } break;
                        case 3: if (integer) { a.fimul(m); } else { a.fmul(m); } break;
                        case 4: if (integer) { a.fidiv(m); } else { a.fdiv(m); } break;
                        default: if (integer) { a.fidivr(m); } else { a.fdivr(m); } break;
                    }

                    break;
                }

                switch ((op, form))
                {
                    case (0, 0): a.fadd(st0, sti); break;
                    case (0, 1): a.fadd(sti, st0); break;
                    case (0, _): a.faddp(sti, st0); depth--; break;
                    case (1, 0): a.fsub(st0, sti); break;
                    case (1, 1): a.fsub(sti, st0); break;
                    case (1, _): a.fsubp(sti, st0); depth--; break;
                    case (2, 0): a.fsubr(st0, sti); break;
                    case (2, 1): a.fsubr(sti, st0); break;
                    case (2, _): a.fsubrp(sti, st0); depth--; break;
                    case (3, 0): a.fmul(st0, sti); break;
                    case (3, 1): a.fmul(sti, st0); break;
                    case (3, _): a.fmulp(sti, st0); depth--; break;
                    case (4, 0): a.fdiv(st0, sti); break;
                    case (4, 1): a.fdiv(sti, st0); break;
                    case (4, _): a.fdivp(sti, st0); depth--; break;
                    case (_, 0): a.fdivr(st0, sti); break;
                    case (_, 1): a.fdivr(sti, st0); break;
                    default: a.fdivrp(sti, st0); depth--; break;
                }

                break;
            }

            case 6: a.fsqrt(); break;
            case 7: a.frndint(); break;
            case 8: a.fscale(); break;
            case 9: a.fprem(); a.fnstsw(__word_ptr[rbx + Outputs + (16 * (output++ % 80))]); break;
            case 10: a.fprem1(); a.fnstsw(__word_ptr[rbx + Outputs + (16 * (output++ % 80))]); break;
            case 11: a.fxtract(); depth++; break;
            case 12: if (r.Next(2) == 0) { a.fchs(); } else { a.fabs(); } break;
            case 13: a.fxch(st0, sti); break;
            case 14: case 15:
            {
                switch (r.Next(9))
                {
                    case 0: a.fcom(st0, sti); break;
                    case 1: a.fcomp(st0, sti); depth--; break;
                    case 2: a.fucom(st0, sti); break;
                    case 3: a.fucomp(st0, sti); depth--; break;
                    case 4: a.fucompp(); depth -= 2; break;
                    case 5: a.fcompp(); depth -= 2; break;
                    case 6: a.ftst(); break;
                    case 7: a.fxam(); break;
                    default:
                        var m = Mem(0);
                        if (memSize == 2) { a.ficom(m); } else { a.fcom(m); }
                        break;
                }

                a.fnstsw(__word_ptr[rbx + Outputs + (16 * (output++ % 80))]);
                break;
            }

            case 16:
            {
                switch (r.Next(4))
                {
                    case 0: a.fcomi(st0, sti); break;
                    case 1: a.fucomi(st0, sti); break;
                    case 2: a.fcomip(st0, sti); depth--; break;
                    default: a.fucomip(st0, sti); depth--; break;
                }

                a.pushfq();
                a.pop(rax);
                a.mov(__qword_ptr[rbx + Outputs + (16 * (output++ % 80))], rax);
                // FCOMI's C1 is 0 in the SDM, while AMD processors leave it as it was: FXAM sets C1 for both.
                a.fxam();
                break;
            }

            case 17: case 18: case 19:
            {
                // Stores of every format.
                switch (r.Next(10))
                {
                    case 0: a.fst(__dword_ptr[rbx + Outputs + (16 * (output++ % 80))]); break;
                    case 1: a.fst(__qword_ptr[rbx + Outputs + (16 * (output++ % 80))]); break;
                    case 2: a.fstp(__dword_ptr[rbx + Outputs + (16 * (output++ % 80))]); depth--; break;
                    case 3: a.fstp(__qword_ptr[rbx + Outputs + (16 * (output++ % 80))]); depth--; break;
                    case 4: a.fstp(__tword_ptr[rbx + Outputs + (16 * (output++ % 80))]); depth--; break;
                    case 5: a.fst(sti); break;
                    case 6: a.fstp(sti); depth--; break;
                    case 7: a.fstp(st0); depth--; break;
                    default: a.fst(__qword_ptr[rbx + Outputs + (16 * (output++ % 80))]); break;
                }

                break;
            }

            case 20: case 21:
            {
                var o = Out(ref output);
                switch (r.Next(8))
                {
                    case 0: a.fist(__word_ptr[o]); break;
                    case 1: a.fist(__dword_ptr[o]); break;
                    case 2: a.fistp(__word_ptr[o]); depth--; break;
                    case 3: a.fistp(__dword_ptr[o]); depth--; break;
                    case 4: a.fistp(__qword_ptr[o]); depth--; break;
                    case 5: a.fisttp(__word_ptr[o]); depth--; break;
                    case 6: a.fisttp(__qword_ptr[o]); depth--; break;
                    default: a.fbstp(__tword_ptr[o]); depth--; break;
                }

                break;
            }

            case 22: case 23:
                a.fldcw(__word_ptr[rbx + ControlWords + (2 * r.Next(32))]);
                break;
            case 24:
                a.fnstsw(__word_ptr[rbx + Outputs + (16 * (output++ % 80))]);
                a.fnclex();
                break;
            case 25:
                switch (r.Next(5))
                {
                    case 0: a.fincstp(); break;
                    case 1: a.fdecstp(); break;
                    case 2: a.emms(); depth = 0; break; // an MMX instruction also reports a pending exception
                    default: a.ffree(sti); break;
                }

                break;
            case 26:
                a.wait();
                break;
            case 27:
                // A round trip through memory of the environment or the whole state (pending exceptions included);
                // the image's instruction and data pointers are not compared.
                if (r.Next(2) == 0)
                {
                    a.fnstenv(__[rbx + EnvArea]);
                    a.fldenv(__[rbx + EnvArea]);
                }
                else
                {
                    a.fnsave(__[rbx + EnvArea]);
                    a.frstor(__[rbx + EnvArea]);
                }

                a.mov(__qword_ptr[rbx + EnvArea + 12], 0);
                a.mov(__qword_ptr[rbx + EnvArea + 20], 0);
                break;
            default:
            {
                var m = Mem(0);
                switch (r.Next(3))
                {
                    case 0: if (memSize == 2) { a.fimul(m); } else { a.fmul(m); } break;
                    case 1: if (memSize == 2) { a.fiadd(m); } else { a.fadd(m); } break;
                    default: if (memSize == 2) { a.fidiv(m); } else { a.fdiv(m); } break;
                }

                break;
            }
        }

        depth = Math.Max(depth, 0);
    }
}
