using System.Buffers.Binary;
using System.Text;
using Iced.Intel;
using Virt.Boot;
using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Cpu.Interpreter.Tests.Sse;
using Virt.Cpu.Kvm;
using Virt.Memory;
using Virt.Testing;

namespace Virt.Cpu.Interpreter.Tests.Avx;

/// <summary>
/// Random CPL 3 sequences of FMA and F16C instructions (every 128- and 256-bit, packed and scalar form, register and
/// memory operands) run on KVM, the interpreter and the JIT tier and compared bit for bit: the sixteen YMM registers,
/// MXCSR, the exception the sequence ended with and the scratch memory. The operands are zeros, denormals,
/// infinities, quiet and signalling NaNs with payloads, values at the edges of the exponent range and, for the first
/// instruction, triples built for it: products that cancel the addend exactly or nearly, that overflow or underflow,
/// that are far below the addend. MXCSR has a random rounding control, DAZ and FTZ, and now and then unmasked
/// exceptions and sticky flags. VIRT_FMA_SEED and VIRT_FMA_COUNT choose the seeds.
/// </summary>
public sealed class FmaDifferentialTests
{
    private const int DefaultSeed = 0xF3A_0000;
    private const int YInit = 0x1000, YDump = 0x1400, MxInit = 0x1600, MxDump = 0x1604, Slots = 0xE00;

    private static readonly int PerBatch = Environment.GetEnvironmentVariable("VIRT_FMA_COUNT") is { } n ? int.Parse(n, System.Globalization.CultureInfo.InvariantCulture) : 1500;

    private static readonly Code[] Codes = BuildCodes();

    private static readonly Code[] F16cCodes = [.. Codes.Where(c => c.Mnemonic() is Mnemonic.Vcvtph2ps or Mnemonic.Vcvtps2ph)];

    public static TheoryData<int> Batches() => [0, 1];

    [Fact]
    public void Generator_covers_every_fma_and_f16c_form()
    {
        // 4 kinds x 3 orders x (PS, PD) x 2 widths, 4 x 3 x (SS, SD), 2 x 3 x (PS, PD) x 2 widths for ADDSUB and SUBADD; 2 + 2 F16C forms.
        Assert.Equal(48 + 24 + 24 + 4, Codes.Length);
        Assert.Equal(4, F16cCodes.Length);
    }

    [Theory]
    [MemberData(nameof(Batches))]
    public void Random_fma_and_f16c_sequences_match_kvm(int batch)
    {
        HostRequirements.RequireKvm();
        int seedBase = DifferentialTests.SeedBase("VIRT_FMA_SEED", DefaultSeed);
        using var kvm = new AvxVm(new KvmHypervisor());
        using var interp = new AvxVm(TestBackends.Interpreter());
        using var jit = new AvxVm(TestBackends.Jit());
        var failures = new StringBuilder();
        int failed = 0, completed = 0, simdExceptions = 0;
        for (int k = 0; k < PerBatch; k++)
        {
            int seed = seedBase + (batch * PerBatch) + k;
            var (code, endRip, scratch, listing) = Build(seed);
            var a = kvm.Run(code, endRip, scratch);
            completed += a.Result.Vector == -2 ? 1 : 0;
            simdExceptions += a.Result.Vector == 19 ? 1 : 0;
            var b = interp.Run(code, endRip, scratch);
            string? diff = Compare(a, b);
            if (diff == null && k % 8 == 0)
            {
                diff = Compare(a, jit.Run(code, endRip, scratch)) is { } d ? "JIT tier: " + d : null;
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

        // The sequences must mostly run to the end (not all stop at an AVX #UD), and some end in #XM.
        Assert.True(completed > PerBatch / 2 && (simdExceptions > 0 || PerBatch < 100), $"{completed} of {PerBatch} sequences completed on KVM, {simdExceptions} ended in #XM");
        Assert.True(failed == 0, $"{failed} of {PerBatch} FMA/F16C sequences differ (rerun one with VIRT_FMA_SEED and VIRT_FMA_COUNT=1):\n{failures}");
    }

    /// <summary>
    /// Overflow and underflow with their exceptions masked and unmasked, exact and inexact in the precision and in the
    /// denormal format, with FTZ: MXCSR and the exception must match KVM (unmasked, PE follows the rounding to the
    /// precision with an unbounded exponent; UE is raised for an exact tiny result).
    /// </summary>
    [Fact]
    public void Overflow_and_underflow_flags_match_kvm()
    {
        HostRequirements.RequireKvm();
        using var kvm = new AvxVm(new KvmHypervisor());
        using var interp = new AvxVm(TestBackends.Interpreter());
        var sb = new StringBuilder();
        // XMM1 = a, XMM2 = b, XMM0 = c for VFMADD231SD/PD XMM0, XMM1, XMM2; the packed form's element 1 is 1/3 · 3.1 + 0 (inexact).
        (double A, double B, double C, uint Mx, string Name)[] cases =
        [
            (1e300, 1e300, 0, 0x1F80 & ~(1u << 10), "OE unmasked overflow"),
            (Math.ScaleB(1, 1000), Math.ScaleB(1, 100), 0, 0x1F80 & ~(1u << 10), "OE unmasked exact overflow"),
            (Math.ScaleB(1 + Math.ScaleB(1, -52), -1000), Math.ScaleB(1, -30), 0, 0x1F80 & ~(1u << 11), "UE unmasked exact-unbounded"),
            (Math.ScaleB(1 + Math.ScaleB(1, -52), -1000), Math.ScaleB(1, -30), 0, 0x1F80 & ~(1u << 11) | 0x8000, "UE unmasked exact-unbounded FTZ"),
            (Math.ScaleB(1 + Math.ScaleB(1, -52), -1000), Math.ScaleB(1, -30), 0, 0x1F80 | 0x8000, "FTZ masked"),
            (1e-300, 1e-300, 0, 0x1F80 & ~(1u << 11), "UE unmasked tiny inexact"),
            (Math.ScaleB(1.5, -1022), 0.5, 0, 0x1F80 & ~(1u << 11), "UE unmasked tiny exact"),
            (Math.ScaleB(1.5, -1022), 0.5, 0, 0x1F80, "UE masked tiny exact"),
            (Math.ScaleB(1.5, -1022), 0.5, 0, 0x1F80 & ~(1u << 12), "PE unmasked tiny exact"),
            (1e-300, 1e-300, 0, 0x1F80 & ~(1u << 12), "PE unmasked tiny inexact"),
            (1e300, 1e300, 0, 0x1F80 & ~(1u << 12), "PE unmasked overflow"),
            (1e-300, 1e-300, 0, 0x1F80 & ~(3u << 11), "PE UE unmasked tiny inexact"),
            (1e300, 1e300, 0, 0x1F80 & ~(5u << 10), "PE OE unmasked overflow"),
        ];
        foreach (var (a, b, c, mx, name) in cases)
        {
            foreach (bool packed in new[] { false, true })
            {
                var scratch = new byte[DiffVm.ScratchSize];
                BinaryPrimitives.WriteInt64LittleEndian(scratch.AsSpan(YInit + 32), BitConverter.DoubleToInt64Bits(a));
                BinaryPrimitives.WriteInt64LittleEndian(scratch.AsSpan(YInit + 64), BitConverter.DoubleToInt64Bits(b));
                BinaryPrimitives.WriteInt64LittleEndian(scratch.AsSpan(YInit), BitConverter.DoubleToInt64Bits(c));
                BinaryPrimitives.WriteInt64LittleEndian(scratch.AsSpan(YInit + 32 + 8), BitConverter.DoubleToInt64Bits(1.0 / 3));
                BinaryPrimitives.WriteInt64LittleEndian(scratch.AsSpan(YInit + 64 + 8), BitConverter.DoubleToInt64Bits(3.1));
                BinaryPrimitives.WriteUInt32LittleEndian(scratch.AsSpan(MxInit), mx);
                var list = new List<Instruction>();
                for (int i = 0; i < 3; i++)
                {
                    list.Add(Instruction.Create(Code.VEX_Vmovups_ymm_ymmm256, Register.YMM0 + i, new MemoryOperand(Register.RBX, YInit + (32 * i))));
                }

                list.Add(Instruction.Create(Code.Ldmxcsr_m32, new MemoryOperand(Register.RBX, MxInit)));
                list.Add(Instruction.Create(packed ? Code.VEX_Vfmadd231pd_xmm_xmm_xmmm128 : Code.VEX_Vfmadd231sd_xmm_xmm_xmmm64, Register.XMM0, Register.XMM1, Register.XMM2));
                list.Add(Instruction.Create(Code.Stmxcsr_m32, new MemoryOperand(Register.RBX, MxDump)));
                list.Add(Instruction.Create(Code.Hlt));
                var writer = new SseDifferentialTests.BufferWriter();
                BlockEncoder.TryEncode(64, new InstructionBlock(writer, list, DiffVm.CodeAddress), out _, out var result, BlockEncoderOptions.ReturnNewInstructionOffsets);
                var code = writer.ToArray();
                ulong end = DiffVm.CodeAddress + result.NewInstructionOffsets[^1];
                var k = kvm.Run(code, end, scratch);
                var n = interp.Run(code, end, scratch);
                if (k.Result.Vector != n.Result.Vector || k.Mxcsr != n.Mxcsr)
                {
                    sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"{name} packed={packed}: KVM #{k.Result.Vector} MXCSR {k.Mxcsr:x}, interpreter #{n.Result.Vector} MXCSR {n.Mxcsr:x}");
                }
            }
        }

        Assert.True(sb.Length == 0, sb.ToString());
    }

    /// <summary>Every VEX form that needs FMA or F16C alone.</summary>
    private static Code[] BuildCodes()
    {
        var list = new List<Code>();
        foreach (var code in Enum.GetValues<Code>())
        {
            var oc = code.ToOpCode();
            if (oc.Encoding != EncodingKind.VEX || !oc.Mode64)
            {
                continue;
            }

            var f = code.CpuidFeatures();
            if (f is [Iced.Intel.CpuidFeature.FMA] or [Iced.Intel.CpuidFeature.F16C])
            {
                list.Add(code);
            }
        }

        return [.. list];
    }

    /// <summary>The results of one run.</summary>
    private sealed record Outcome(SequenceResult Result, byte[] Ymm, uint Mxcsr);

    private static string? Compare(Outcome a, Outcome b)
    {
        if (a.Result.Vector != b.Result.Vector || a.Result.Exit != b.Result.Exit || a.Result.Rip != b.Result.Rip || a.Result.ErrorCode != b.Result.ErrorCode)
        {
            return $"ended with {a.Result.Exit} #{a.Result.Vector} at {a.Result.Rip:x} on KVM, {b.Result.Exit} #{b.Result.Vector} at {b.Result.Rip:x}";
        }

        if (a.Mxcsr != b.Mxcsr)
        {
            return $"MXCSR {a.Mxcsr:x} on KVM, {b.Mxcsr:x}";
        }

        for (int i = 0; i < 16; i++)
        {
            var x = a.Ymm.AsSpan(32 * i, 32);
            var y = b.Ymm.AsSpan(32 * i, 32);
            if (!x.SequenceEqual(y))
            {
                return $"YMM{i} {Hex(x)} on KVM, {Hex(y)}";
            }
        }

        for (int i = 0; i < a.Result.Scratch.Length; i++)
        {
            if (a.Result.Scratch[i] != b.Result.Scratch[i])
            {
                return $"memory at +{i:x}: {Hex(a.Result.Scratch.AsSpan(i & ~15, 16))} on KVM, {Hex(b.Result.Scratch.AsSpan(i & ~15, 16))}";
            }
        }

        return null;
    }

    /// <summary>A 32-byte register as its 64-bit quarters, high to low.</summary>
    private static string Hex(ReadOnlySpan<byte> b)
    {
        var sb = new StringBuilder();
        for (int q = (b.Length / 8) - 1; q >= 0; q--)
        {
            sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"{BinaryPrimitives.ReadUInt64LittleEndian(b[(8 * q)..]):x16}{(q > 0 ? "_" : string.Empty)}");
        }

        return sb.ToString();
    }

    private static (byte[] Code, ulong EndRip, byte[] Scratch, string Listing) Build(int seed)
    {
        var rng = new Random(seed);
        var scratch = new byte[DiffVm.ScratchSize];
        var list = new List<Instruction>();
        for (int i = 0; i < 16; i++)
        {
            list.Add(Instruction.Create(Code.VEX_Vmovups_ymm_ymmm256, Register.YMM0 + i, new MemoryOperand(Register.RBX, YInit + (32 * i))));
            Fill(rng, scratch.AsSpan(YInit + (32 * i), 32));
        }

        for (int i = 0; i < Slots; i += 32)
        {
            Fill(rng, scratch.AsSpan(i, 32));
        }

        list.Add(Instruction.Create(Code.Ldmxcsr_m32, new MemoryOperand(Register.RBX, MxInit)));
        int first = list.Count;
        int n = rng.Next(3) == 0 ? rng.Next(2, 5) : 1;
        for (int i = 0; i < n; i++)
        {
            // One instruction in six is F16C (4 of the 100 forms).
            var pool = rng.Next(6) == 0 ? F16cCodes : Codes;
            var ins = Make(rng, pool[rng.Next(pool.Length)]);
            if (i == 0 && rng.Next(3) != 0)
            {
                Craft(rng, ins, scratch);
            }

            list.Add(ins);
        }

        int last = list.Count;
        for (int i = 0; i < 16; i++)
        {
            list.Add(Instruction.Create(Code.VEX_Vmovups_ymmm256_ymm, new MemoryOperand(Register.RBX, YDump + (32 * i)), Register.YMM0 + i));
        }

        list.Add(Instruction.Create(Code.Stmxcsr_m32, new MemoryOperand(Register.RBX, MxDump)));
        list.Add(Instruction.Create(Code.Hlt));

        // Rounding control, DAZ, FTZ; all exceptions masked half the time, else each unmasked with probability 1/3;
        // sticky flags now and then.
        uint mxcsr = (uint)rng.Next(4) << 13;
        mxcsr |= rng.Next(3) == 0 ? 1u << 6 : 0;
        mxcsr |= rng.Next(3) == 0 ? 1u << 15 : 0;
        mxcsr |= rng.Next(2) == 0 ? 0x1F80u : (uint)(rng.Next(64) | rng.Next(64)) << 7;
        mxcsr |= rng.Next(4) == 0 ? (uint)rng.Next(64) : 0;
        BinaryPrimitives.WriteUInt32LittleEndian(scratch.AsSpan(MxInit), mxcsr);

        var writer = new SseDifferentialTests.BufferWriter();
        var block = new InstructionBlock(writer, list, DiffVm.CodeAddress);
        if (!BlockEncoder.TryEncode(64, block, out string? error, out var result, BlockEncoderOptions.ReturnNewInstructionOffsets))
        {
            throw new InvalidOperationException(error);
        }

        var listing = new StringBuilder();
        var formatter = new NasmFormatter();
        var output = new StringOutput();
        for (int i = first; i < last; i++)
        {
            formatter.Format(list[i], output);
            listing.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"  {output.ToStringAndReset()}");
            for (int j = 0; j < list[i].OpCount; j++)
            {
                var op = list[i];
                if (op.GetOpKind(j) == OpKind.Register)
                {
                    int r = op.GetOpRegister(j) >= Register.YMM0 ? op.GetOpRegister(j) - Register.YMM0 : op.GetOpRegister(j) - Register.XMM0;
                    listing.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"    reg{r} = {Hex(scratch.AsSpan(YInit + (32 * r), 32))}");
                }
                else if (op.GetOpKind(j) == OpKind.Memory)
                {
                    listing.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"    mem+{op.MemoryDisplacement32:x} = {Hex(scratch.AsSpan((int)op.MemoryDisplacement32, 32))}");
                }
            }
        }

        listing.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"  mxcsr {mxcsr:x}");
        var code = writer.ToArray();
        return (code, DiffVm.CodeAddress + result.NewInstructionOffsets[^1], scratch, listing.ToString());
    }

    private static Instruction Make(Random rng, Code code)
    {
        var oc = code.ToOpCode();
        var ops = new object[oc.OpCount];
        for (int i = 0; i < oc.OpCount; i++)
        {
            var kind = oc.GetOpKind(i);
            if (kind is OpCodeOperandKind.xmm_or_mem or OpCodeOperandKind.ymm_or_mem && rng.Next(3) == 0)
            {
                ops[i] = new MemoryOperand(Register.RBX, rng.Next(Slots - 32));
            }
            else if (kind == OpCodeOperandKind.imm8)
            {
                ops[i] = rng.Next(2) == 0 ? rng.Next(8) : rng.Next(256);
            }
            else
            {
                bool ymm = kind is OpCodeOperandKind.ymm_reg or OpCodeOperandKind.ymm_vvvv or OpCodeOperandKind.ymm_or_mem or OpCodeOperandKind.ymm_rm;
                ops[i] = (ymm ? Register.YMM0 : Register.XMM0) + rng.Next(16);
            }
        }

        return ops switch
        {
            [Register a, Register b] => Instruction.Create(code, a, b),
            [Register a, MemoryOperand b] => Instruction.Create(code, a, b),
            [Register a, Register b, Register c] => Instruction.Create(code, a, b, c),
            [Register a, Register b, MemoryOperand c] => Instruction.Create(code, a, b, c),
            [Register a, Register b, int c] => Instruction.Create(code, a, b, c),
            [MemoryOperand a, Register b, int c] => Instruction.Create(code, a, b, c),
            _ => throw new InvalidOperationException($"unexpected operands for {code}"),
        };
    }

    /// <summary>Random contents for a 32-byte register or memory slot: singles, doubles, halves or singles in the half range.</summary>
    private static void Fill(Random rng, Span<byte> chunk)
    {
        switch (rng.Next(4))
        {
            case 0:
                for (int i = 0; i < 8; i++)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(chunk[(4 * i)..], Single(rng, rng.Next(4)));
                }

                break;
            case 1:
                for (int i = 0; i < 4; i++)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(chunk[(8 * i)..], Double(rng, rng.Next(4)));
                }

                break;
            case 2:
                for (int i = 0; i < 16; i++)
                {
                    BinaryPrimitives.WriteUInt16LittleEndian(chunk[(2 * i)..], Half(rng));
                }

                break;
            default:
                for (int i = 0; i < 8; i++)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(chunk[(4 * i)..], HalfRangeSingle(rng));
                }

                break;
        }
    }

    private static ulong Sign(Random rng, int bit) => rng.Next(2) == 0 ? 0 : 1UL << bit;

    /// <summary>A single: <paramref name="kind"/> 0 special values, 1 any finite number, 2 moderate numbers, 3 short mantissas.</summary>
    private static uint Single(Random rng, int kind)
    {
        uint s = (uint)Sign(rng, 31);
        if (kind == 0)
        {
            return s | (rng.Next(12) switch
            {
                0 => 0u,
                1 => 0x7F800000,
                2 => 0x7FC00000 | (uint)rng.Next(0x400000),
                3 => 0x7F800001 + (uint)rng.Next(0x3FFFFF),
                4 => (uint)rng.Next(1, 0x800000),
                5 => (uint)rng.Next(1, 16),
                6 => 0x7F7FFFFF - (uint)rng.Next(4),
                7 => 0x00800000 + (uint)rng.Next(4) - 2,
                8 => 0x3F800000,
                _ => (uint)rng.Next(0x7F800000),
            });
        }

        uint e = kind == 1 ? (uint)rng.Next(0, 255) : (uint)rng.Next(100, 156);
        uint m = (uint)rng.Next(0x800000);
        if (kind == 3)
        {
            m &= 0x7FF000;
        }

        return s | (e << 23) | m;
    }

    private static ulong Double(Random rng, int kind)
    {
        ulong s = Sign(rng, 63);
        if (kind == 0)
        {
            return s | (rng.Next(12) switch
            {
                0 => 0UL,
                1 => 0x7FF0000000000000,
                2 => 0x7FF8000000000000 | (ulong)rng.NextInt64(1L << 51),
                3 => 0x7FF0000000000001 + (ulong)rng.NextInt64((1L << 51) - 1),
                4 => (ulong)rng.NextInt64(1, 1L << 52),
                5 => (ulong)rng.Next(1, 16),
                6 => 0x7FEFFFFFFFFFFFFF - (ulong)rng.Next(4),
                7 => 0x0010000000000000 + (ulong)rng.Next(4) - 2,
                8 => 0x3FF0000000000000,
                _ => (ulong)rng.NextInt64(0x7FF0000000000000),
            });
        }

        ulong e = kind == 1 ? (ulong)rng.Next(0, 2047) : (ulong)rng.Next(900, 1150);
        ulong m = (ulong)rng.NextInt64(1L << 52);
        if (kind == 3)
        {
            m &= 0xFFFFFFF000000;
        }

        return s | (e << 52) | m;
    }

    private static ushort Half(Random rng) => (ushort)(Sign(rng, 15) | (uint)(rng.Next(8) switch
    {
        0 => 0,
        1 => 0x7C00,
        2 => 0x7E00 | rng.Next(0x200),
        3 => 0x7C01 + rng.Next(0x1FF),
        4 => rng.Next(1, 0x400),
        _ => rng.Next(0x7C00),
    }));

    /// <summary>A single near the half-precision range: around its overflow, its denormals and below them, or special.</summary>
    private static uint HalfRangeSingle(Random rng)
    {
        uint s = (uint)Sign(rng, 31);
        return rng.Next(8) switch
        {
            0 => Single(rng, 0),
            1 => s | (uint)(0x477FE000 + rng.Next(-0x4000, 0x4000)), // 65504, 65520
            2 => s | (uint)((rng.Next(100, 113) << 23) | rng.Next(0x800000)), // half denormals and below
            3 => s | (uint)((rng.Next(112, 114) << 23) + rng.Next(-8, 8)),
            4 => s | (uint)((rng.Next(113, 143) << 23) | (rng.Next(0x800000) & ~0x3FFF)) | (uint)(rng.Next(2) << 12),
            _ => s | (uint)((rng.Next(90, 146) << 23) | rng.Next(0x800000)),
        };
    }

    /// <summary>
    /// For an FMA instruction, writes lane triples built for it into its operands (the multiplicands and the addend
    /// as the 132, 213 or 231 order places them): exact and near cancellation, overflow, underflow, a small product.
    /// </summary>
    private static void Craft(Random rng, Instruction ins, byte[] scratch)
    {
        string name = ins.Mnemonic.ToString();
        if (!name.StartsWith("Vf", StringComparison.Ordinal))
        {
            return;
        }

        bool dbl = name.EndsWith('d');
        int order = name.Contains("132", StringComparison.Ordinal) ? 132 : name.Contains("213", StringComparison.Ordinal) ? 213 : 231;
        (int X, int Y, int Z) pos = order switch { 132 => (0, 2, 1), 213 => (1, 0, 2), _ => (1, 2, 0) };
        int lanes = dbl ? 4 : 8;
        Span<ulong> x = stackalloc ulong[lanes], y = stackalloc ulong[lanes], z = stackalloc ulong[lanes];
        for (int l = 0; l < lanes; l++)
        {
            (x[l], y[l], z[l]) = dbl ? TripleD(rng) : TripleS(rng);
        }

        void Put(int operand, Span<ulong> v)
        {
            int at = ins.GetOpKind(operand) == OpKind.Memory ? (int)ins.MemoryDisplacement32
                : YInit + (32 * (ins.GetOpRegister(operand) >= Register.YMM0 ? ins.GetOpRegister(operand) - Register.YMM0 : ins.GetOpRegister(operand) - Register.XMM0));
            for (int l = 0; l < lanes; l++)
            {
                if (dbl)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(scratch.AsSpan(at + (8 * l)), v[l]);
                }
                else
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(scratch.AsSpan(at + (4 * l)), (uint)v[l]);
                }
            }
        }

        Put(pos.Z, z);
        Put(pos.X, x);
        Put(pos.Y, y);
    }

    private static (ulong, ulong, ulong) TripleD(Random rng)
    {
        double a = BitConverter.UInt64BitsToDouble(Double(rng, 2 + rng.Next(2)));
        double b = BitConverter.UInt64BitsToDouble(Double(rng, 2 + rng.Next(2)));
        double c;
        switch (rng.Next(8))
        {
            case 6:
                // Every pairing of zeros, infinities, NaNs and denormals (∞ · 0 with a quiet NaN addend, ∞ − ∞, ...).
                return (SpecialD(rng), SpecialD(rng), SpecialD(rng));
            case 0:
            case 1:
                c = -(a * b);
                c = BitConverter.UInt64BitsToDouble(BitConverter.DoubleToUInt64Bits(c) + (ulong)rng.Next(-2, 3));
                break;
            case 2:
                // Overflow: exponents summing near the top.
                a = Math.ScaleB(1 + rng.NextDouble(), rng.Next(500, 520));
                b = Math.ScaleB(1 + rng.NextDouble(), 1023 - 510 + rng.Next(-4, 3)) * (rng.Next(2) == 0 ? 1 : -1);
                c = rng.Next(2) == 0 ? -double.MaxValue : Math.ScaleB(rng.NextDouble(), rng.Next(1000, 1024));
                break;
            case 3:
            {
                // Underflow: a product near the smallest normal, an addend that cancels part of it or nothing.
                int e = -1022 + rng.Next(-60, 4);
                a = Math.ScaleB(1 + rng.NextDouble(), e / 2);
                b = Math.ScaleB(1 + rng.NextDouble(), e - (e / 2)) * (rng.Next(2) == 0 ? 1 : -1);
                c = rng.Next(3) switch
                {
                    0 => 0,
                    1 => -Math.ScaleB(1.0, -1022) * (rng.Next(2) == 0 ? 1 : -1),
                    _ => BitConverter.UInt64BitsToDouble((ulong)rng.NextInt64(1, 1L << 53)) * (rng.Next(2) == 0 ? 1 : -1),
                };
                break;
            }

            case 4:
                c = BitConverter.UInt64BitsToDouble(Double(rng, 2));
                b = Math.ScaleB(b, -rng.Next(40, 200));
                break;
            default:
                a = BitConverter.UInt64BitsToDouble(Double(rng, rng.Next(2)));
                b = BitConverter.UInt64BitsToDouble(Double(rng, rng.Next(2)));
                c = BitConverter.UInt64BitsToDouble(Double(rng, rng.Next(2)));
                break;
        }

        return (BitConverter.DoubleToUInt64Bits(a), BitConverter.DoubleToUInt64Bits(b), BitConverter.DoubleToUInt64Bits(c));
    }

    private static (ulong, ulong, ulong) TripleS(Random rng)
    {
        float a = BitConverter.UInt32BitsToSingle(Single(rng, 2 + rng.Next(2)));
        float b = BitConverter.UInt32BitsToSingle(Single(rng, 2 + rng.Next(2)));
        float c;
        switch (rng.Next(8))
        {
            case 6:
                return (SpecialS(rng), SpecialS(rng), SpecialS(rng));
            case 0:
            case 1:
                c = -(a * b);
                c = BitConverter.UInt32BitsToSingle((uint)(BitConverter.SingleToUInt32Bits(c) + rng.Next(-2, 3)));
                break;
            case 2:
                a = MathF.ScaleB(1 + rng.NextSingle(), rng.Next(60, 68));
                b = MathF.ScaleB(1 + rng.NextSingle(), 127 - 64 + rng.Next(-4, 3)) * (rng.Next(2) == 0 ? 1 : -1);
                c = rng.Next(2) == 0 ? -float.MaxValue : MathF.ScaleB(rng.NextSingle(), rng.Next(120, 128));
                break;
            case 3:
            {
                int e = -126 + rng.Next(-30, 4);
                a = MathF.ScaleB(1 + rng.NextSingle(), e / 2);
                b = MathF.ScaleB(1 + rng.NextSingle(), e - (e / 2)) * (rng.Next(2) == 0 ? 1 : -1);
                c = rng.Next(3) switch
                {
                    0 => 0,
                    1 => -MathF.ScaleB(1f, -126) * (rng.Next(2) == 0 ? 1 : -1),
                    _ => BitConverter.UInt32BitsToSingle((uint)rng.Next(1, 1 << 24)) * (rng.Next(2) == 0 ? 1 : -1),
                };
                break;
            }

            case 4:
                c = BitConverter.UInt32BitsToSingle(Single(rng, 2));
                b = MathF.ScaleB(b, -rng.Next(20, 60));
                break;
            default:
                a = BitConverter.UInt32BitsToSingle(Single(rng, rng.Next(2)));
                b = BitConverter.UInt32BitsToSingle(Single(rng, rng.Next(2)));
                c = BitConverter.UInt32BitsToSingle(Single(rng, rng.Next(2)));
                break;
        }

        return (BitConverter.SingleToUInt32Bits(a), BitConverter.SingleToUInt32Bits(b), BitConverter.SingleToUInt32Bits(c));
    }

    private static ulong SpecialD(Random rng) => Sign(rng, 63) | (rng.Next(6) switch
    {
        0 => 0UL,
        1 => 0x7FF0000000000000UL,
        2 => 0x7FF8000000000000UL | (uint)rng.Next(4),
        3 => 0x7FF0000000000001UL + (ulong)rng.Next(4),
        4 => (ulong)rng.Next(1, 4) << 50,
        _ => 0x3FF0000000000000UL,
    });

    private static ulong SpecialS(Random rng) => Sign(rng, 31) | (rng.Next(6) switch
    {
        0 => 0u,
        1 => 0x7F800000,
        2 => 0x7FC00000 | (uint)rng.Next(4),
        3 => 0x7F800001 + (uint)rng.Next(4),
        4 => (uint)rng.Next(1, 4) << 21,
        _ => 0x3F800000,
    });

    /// <summary>A <see cref="DiffVm"/> whose CPL 3 code may use AVX: CR4.OSXSAVE set and XCR0 = x87 | SSE | AVX before each run.</summary>
    private sealed class AvxVm : IDisposable
    {
        private readonly DiffVm _vm;
        private readonly SpecialRegisters _sregs;

        public AvxVm(IHypervisor hypervisor)
        {
            _vm = new DiffVm(hypervisor);
            var s = ProcessorSetup.Prepare(_vm.Memory, _vm.Vcpu.GetSpecialRegisters(), StartMode.Long64, new ProcessorSetupOptions { KernelStack = DiffVm.KernelStackTop });
            s.Cr3 = DiffVm.PageTables;
            s.Idt = new DescriptorTable { Base = DiffVm.IdtAddress, Limit = (32 * 16) - 1 };
            s.Cs = ProcessorSetup.UserSegment(code: true);
            s.Ss = s.Ds = s.Es = ProcessorSetup.UserSegment(code: false);
            s.Fs = ProcessorSetup.UserSegment(code: false);
            s.Fs.Base = DiffVm.FsBase;
            s.Gs = ProcessorSetup.UserSegment(code: false);
            s.Gs.Base = DiffVm.GsBase;
            s.Cr4 |= 1UL << 18;
            _sregs = s;
        }

        public Outcome Run(byte[] code, ulong endRip, byte[] scratch)
        {
            var vcpu = _vm.Vcpu;
            _vm.Memory.Write(new GuestAddress(DiffVm.CodeAddress), code);
            _vm.Memory.Write(new GuestAddress(DiffVm.ScratchAddress), scratch);
            vcpu.SetSpecialRegisters(_sregs);
            vcpu.SetXsaveState(XsaveState.FromFpu(FpuState.Initial, 7));
            vcpu.SetGeneralRegisters(new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1000, Rflags = 0x202, Rbx = DiffVm.ScratchAddress });
            VcpuExit exit;
            int guard = 0;
            do
            {
                exit = vcpu.Run();
            }
            while (exit.Reason == VcpuExitReason.Interrupted && ++guard < 100);

            var r = vcpu.GetGeneralRegisters();
            var outScratch = new byte[DiffVm.ScratchSize];
            _vm.Memory.Read(new GuestAddress(DiffVm.ScratchAddress), outScratch);
            var x = vcpu.GetXsaveState();
            var area = x.Area;
            ulong bv = BinaryPrimitives.ReadUInt64LittleEndian(area[512..]);
            var ymm = new byte[512];
            for (int i = 0; i < 16; i++)
            {
                if ((bv & 2) != 0)
                {
                    area.Slice(160 + (16 * i), 16).CopyTo(ymm.AsSpan(32 * i));
                }

                if ((bv & 4) != 0 && area.Length >= 576 + 256)
                {
                    area.Slice(576 + (16 * i), 16).CopyTo(ymm.AsSpan((32 * i) + 16));
                }
            }

            uint mxcsr = BinaryPrimitives.ReadUInt32LittleEndian(area[24..]);
            if (exit.Reason != VcpuExitReason.Halt || r.Rip < DiffVm.HandlerAddress || r.Rip >= DiffVm.HandlerAddress + (32 * 16))
            {
                return new Outcome(new SequenceResult(exit.ToString(), -1, 0, r.Rip, r.Rflags, 0, [], outScratch), ymm, mxcsr);
            }

            int vector = (int)((r.Rip - DiffVm.HandlerAddress) / 16);
            bool hasError = vector is 8 or 10 or 11 or 12 or 13 or 14 or 17;
            ulong frame = r.Rsp;
            ulong error = hasError ? _vm.Memory.Read<ulong>(new GuestAddress(frame)) : 0;
            if (hasError)
            {
                frame += 8;
            }

            ulong rip = _vm.Memory.Read<ulong>(new GuestAddress(frame));
            if (vector == 13 && rip == endRip && error == 0)
            {
                vector = -2; // the closing HLT: a normal end
            }

            return new Outcome(new SequenceResult("halt", vector, error, rip, 0, 0, [], outScratch), ymm, mxcsr);
        }

        public void Dispose() => _vm.Dispose();
    }
}
