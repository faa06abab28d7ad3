using System.Text;
using Iced.Intel;
using Virt.Cpu.Interpreter.Tests.Differential;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>
/// Random CPL 3 sequences of SSE/SSE2 instructions over XMM registers, general registers and aligned scratch
/// slots, seeded with special values (zeros, infinities, quiet and signalling NaNs, denormals, integer
/// boundaries) and a random MXCSR rounding mode, must leave the same XMM registers, MXCSR, registers, flags
/// and memory on KVM and on the interpreter.
/// </summary>
public sealed class SseDifferentialTests
{
    private const int XmmInit = 0x1800;
    private const int XmmDump = 0x1A00;
    private const int MxcsrDump = 0x1B00;
    private const int Slots = 16;

    private static readonly Mnemonic[] Excluded =
    [
        Mnemonic.Rcpps, Mnemonic.Rcpss, Mnemonic.Rsqrtps, Mnemonic.Rsqrtss, // approximations differ by design
        Mnemonic.Ldmxcsr, Mnemonic.Maskmovdqu, // (MASKMOVDQU stores at RDI, which random sequences do not aim: MmxSemanticsTests)
    ];

    private static readonly Register[] Gprs =
    [
        Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI, Register.R8, Register.R9, Register.R10,
        Register.R11, Register.R12, Register.R13, Register.R14, Register.R15,
    ];

    private static readonly Code[] Codes = BuildCodes(Iced.Intel.CpuidFeature.SSE, Iced.Intel.CpuidFeature.SSE2);

    public static TheoryData<int> Batches() => new() { 0, 1, 2, 3, 4 };

    [Fact]
    public void Generator_covers_the_sse2_instruction_classes()
    {
        var mnemonics = Codes.Select(c => c.Mnemonic()).ToHashSet();
        foreach (var m in new[] { Mnemonic.Addps, Mnemonic.Sqrtsd, Mnemonic.Cmpps, Mnemonic.Ucomisd, Mnemonic.Cvttsd2si, Mnemonic.Cvtpd2ps, Mnemonic.Pmaddwd, Mnemonic.Psadbw, Mnemonic.Packuswb, Mnemonic.Pshufhw, Mnemonic.Movhlps, Mnemonic.Pmovmskb, Mnemonic.Psrldq })
        {
            Assert.Contains(m, mnemonics);
        }
    }

    [Theory]
    [MemberData(nameof(Batches))]
    public void Random_sse_sequences_match_kvm(int batch) =>
        DifferentialTests.RunBatch(batch, perBatch: 1000, "VIRT_SSE_DIFF_SEED", defaultSeed: 0x55E0, "SSE sequences", seed => Build(seed, Codes, extended: false));

    /// <summary>
    /// Every legacy 64-bit form over XMM registers (with general registers, memory and imm8 operands) whose CPUID
    /// features are all in <paramref name="features"/> and which needs the first of them.
    /// </summary>
    internal static Code[] BuildCodes(params Iced.Intel.CpuidFeature[] features)
    {
        var list = new List<Code>();
        foreach (var code in Enum.GetValues<Code>())
        {
            var oc = code.ToOpCode();
            if (oc.Encoding != EncodingKind.Legacy || !oc.Mode64 || Array.IndexOf(Excluded, code.Mnemonic()) >= 0)
            {
                continue;
            }

            var needs = code.CpuidFeatures();
            if (needs.Length == 0 || needs.Any(f => Array.IndexOf(features, f) < 0) || (features.Length == 1 && needs[0] != features[0]))
            {
                continue;
            }

            bool ok = oc.OpCount is >= 1 and <= 3;
            bool xmm = false;
            for (int i = 0; i < oc.OpCount && ok; i++)
            {
                switch (oc.GetOpKind(i))
                {
                    case OpCodeOperandKind.xmm_reg:
                    case OpCodeOperandKind.xmm_rm:
                    case OpCodeOperandKind.xmm_or_mem:
                        xmm = true;
                        break;
                    case OpCodeOperandKind.r32_reg:
                    case OpCodeOperandKind.r64_reg:
                    case OpCodeOperandKind.r32_rm:
                    case OpCodeOperandKind.r64_rm:
                    case OpCodeOperandKind.r32_or_mem:
                    case OpCodeOperandKind.r64_or_mem:
                    case OpCodeOperandKind.mem:
                    case OpCodeOperandKind.imm8:
                        break;
                    default:
                        ok = false;
                        break;
                }
            }

            if (ok && (xmm || code.Mnemonic() is Mnemonic.Movnti or Mnemonic.Stmxcsr))
            {
                list.Add(code);
            }
        }

        return [.. list];
    }

    private static uint SpecialSingle(Random rng) => rng.Next(16) switch
    {
        0 => 0,
        1 => 0x80000000,
        2 => 0x7F800000,
        3 => 0xFF800000,
        4 => 0x7FC00000 | (uint)rng.Next(0, 0x400000),
        5 => 0x7F800001 | (uint)rng.Next(0, 0x3FFFFF),
        6 => (uint)rng.Next(1, 0x800000) | (rng.Next(2) == 0 ? 0 : 0x80000000),
        7 => BitConverter.SingleToUInt32Bits(rng.Next(-100, 100)),
        8 => BitConverter.SingleToUInt32Bits(rng.Next(-100, 100) + 0.5f),
        9 => BitConverter.SingleToUInt32Bits(2147483648f * (rng.Next(2) == 0 ? 1 : -1)),
        10 => 0x7F7FFFFF | (rng.Next(2) == 0 ? 0 : 0x80000000),
        11 => BitConverter.SingleToUInt32Bits(1f / 3f),
        _ => (uint)rng.Next() ^ ((uint)rng.Next(2) << 31),
    };

    private static ulong SpecialDouble(Random rng) => rng.Next(16) switch
    {
        0 => 0,
        1 => 0x8000000000000000,
        2 => 0x7FF0000000000000,
        3 => 0xFFF0000000000000,
        4 => 0x7FF8000000000000 | (ulong)rng.NextInt64(0, 1L << 51),
        5 => 0x7FF0000000000001 | (ulong)rng.NextInt64(0, (1L << 51) - 1),
        6 => (ulong)rng.NextInt64(1, 1L << 52) | (rng.Next(2) == 0 ? 0 : 0x8000000000000000),
        7 => BitConverter.DoubleToUInt64Bits(rng.Next(-100, 100)),
        8 => BitConverter.DoubleToUInt64Bits(rng.Next(-100, 100) + 0.5),
        9 => BitConverter.DoubleToUInt64Bits(9223372036854775808.0 * (rng.Next(2) == 0 ? 1 : -1)),
        10 => BitConverter.DoubleToUInt64Bits(2147483647.5 * (rng.Next(2) == 0 ? 1 : -1)),
        11 => BitConverter.DoubleToUInt64Bits(1.0 / 3.0),
        12 => BitConverter.DoubleToUInt64Bits(1e300 * (rng.Next(2) == 0 ? 1 : -1)),
        _ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next(2) << 63),
    };

    internal static void Fill(Random rng, Span<byte> chunk, bool extended)
    {
        switch (rng.Next(extended ? 6 : 4))
        {
            case 4:
                // Short strings over a small alphabet with NUL terminators: string compares find matches and ends.
                for (int i = 0; i < 16; i++)
                {
                    chunk[i] = (byte)(rng.Next(8) == 0 ? 0 : rng.Next(3) == 0 ? 0x80 + rng.Next(3) : 0x41 + rng.Next(4));
                }

                break;
            case 5:
                // Lane masks and byte selectors: all-zero or all-one elements, indexes with and without bit 7.
                for (int i = 0; i < 16; i++)
                {
                    chunk[i] = (byte)(rng.Next(4) switch { 0 => 0, 1 => 0xFF, 2 => rng.Next(16), _ => 0x80 | rng.Next(16) });
                }

                break;
            case 0:
                for (int i = 0; i < 4; i++)
                {
                    BitConverter.TryWriteBytes(chunk[(i * 4)..], SpecialSingle(rng));
                }

                break;
            case 1:
                for (int i = 0; i < 2; i++)
                {
                    BitConverter.TryWriteBytes(chunk[(i * 8)..], SpecialDouble(rng));
                }

                break;
            case 2:
                for (int i = 0; i < 8; i++)
                {
                    BitConverter.TryWriteBytes(chunk[(i * 2)..], (short)(rng.Next(5) switch { 0 => short.MinValue, 1 => short.MaxValue, 2 => rng.Next(-3, 3), _ => rng.Next() }));
                }

                break;
            default:
                rng.NextBytes(chunk);
                break;
        }
    }

    internal static Instruction Make(Random rng, Code code)
    {
        var oc = code.ToOpCode();
        var ops = new object[oc.OpCount];
        bool usedMemory = false;
        for (int i = 0; i < oc.OpCount; i++)
        {
            var kind = oc.GetOpKind(i);
            bool reg32 = kind is OpCodeOperandKind.r32_reg or OpCodeOperandKind.r32_rm or OpCodeOperandKind.r32_or_mem;
            bool memory = kind == OpCodeOperandKind.mem
                || (!usedMemory && kind is OpCodeOperandKind.xmm_or_mem or OpCodeOperandKind.mm_or_mem or OpCodeOperandKind.r32_or_mem or OpCodeOperandKind.r64_or_mem && rng.Next(3) == 0);
            if (memory)
            {
                usedMemory = true;
                ops[i] = new MemoryOperand(Register.RBX, 16 * rng.Next(Slots));
            }
            else if (kind is OpCodeOperandKind.xmm_reg or OpCodeOperandKind.xmm_rm or OpCodeOperandKind.xmm_or_mem)
            {
                ops[i] = Register.XMM0 + rng.Next(16);
            }
            else if (kind is OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm or OpCodeOperandKind.mm_or_mem)
            {
                ops[i] = Register.MM0 + rng.Next(8);
            }
            else if (kind == OpCodeOperandKind.imm8)
            {
                ops[i] = rng.Next(256);
            }
            else
            {
                var r = Gprs[rng.Next(Gprs.Length)];
                ops[i] = reg32 ? r - Register.RAX + Register.EAX : r;
            }
        }

        return ops switch
        {
            [Register a] => Instruction.Create(code, a),
            [MemoryOperand a] => Instruction.Create(code, a),
            [Register a, Register b] => Instruction.Create(code, a, b),
            [Register a, MemoryOperand b] => Instruction.Create(code, a, b),
            [MemoryOperand a, Register b] => Instruction.Create(code, a, b),
            [Register a, int b] => Instruction.Create(code, a, b),
            [Register a, Register b, int c] => Instruction.Create(code, a, b, c),
            [Register a, MemoryOperand b, int c] => Instruction.Create(code, a, b, c),
            [MemoryOperand a, Register b, int c] => Instruction.Create(code, a, b, c),
            _ => throw new InvalidOperationException($"unexpected operands for {code}"),
        };
    }

    /// <summary>
    /// One sequence of 1-8 instructions from <paramref name="codes"/>; <paramref name="extended"/> adds string and mask
    /// patterns to the XMM contents and small signed lengths in RAX/RDX (the explicit-length string compares).
    /// </summary>
    internal static (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing) Build(int seed, Code[] codes, bool extended)
    {
        var rng = new Random(seed);
        var list = new List<Instruction>();
        for (int i = 0; i < 16; i++)
        {
            list.Add(Instruction.Create(Code.Movups_xmm_xmmm128, Register.XMM0 + i, new MemoryOperand(Register.RBX, XmmInit + (16 * i))));
        }

        list.Add(Instruction.Create(Code.Ldmxcsr_m32, new MemoryOperand(Register.RBX, MxcsrDump + 8)));
        int first = list.Count;
        int n = rng.Next(1, 9);
        for (int i = 0; i < n; i++)
        {
            list.Add(Make(rng, codes[rng.Next(codes.Length)]));
        }

        int last = list.Count;
        for (int i = 0; i < 16; i++)
        {
            list.Add(Instruction.Create(Code.Movups_xmmm128_xmm, new MemoryOperand(Register.RBX, XmmDump + (16 * i)), Register.XMM0 + i));
        }

        list.Add(Instruction.Create(Code.Stmxcsr_m32, new MemoryOperand(Register.RBX, MxcsrDump)));
        list.Add(Instruction.Create(Code.Hlt));

        var writer = new BufferWriter();
        var block = new InstructionBlock(writer, list, DiffVm.CodeAddress);
        if (!BlockEncoder.TryEncode(64, block, out string? error, out var result, BlockEncoderOptions.ReturnNewInstructionOffsets))
        {
            throw new InvalidOperationException(error);
        }

        var code = writer.ToArray();
        ulong endRip = DiffVm.CodeAddress + result.NewInstructionOffsets[^1];
        var scratch = new byte[DiffVm.ScratchSize];
        for (int i = 0; i < Slots; i++)
        {
            Fill(rng, scratch.AsSpan(16 * i, 16), extended);
        }

        for (int i = 0; i < 16; i++)
        {
            Fill(rng, scratch.AsSpan(XmmInit + (16 * i), 16), extended);
        }

        uint mxcsr = 0x1F80u | ((uint)rng.Next(4) << 13);
        BitConverter.TryWriteBytes(scratch.AsSpan(MxcsrDump + 8), mxcsr);
        ulong R() => rng.Next(4) switch { 0 => (ulong)rng.Next(0, 100), 1 => (ulong)(long)rng.Next(int.MinValue, int.MaxValue), _ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40) };
        var regs = new GeneralRegisters
        {
            Rax = R(), Rcx = R(), Rdx = R(), Rsi = R(), Rdi = R(), R8 = R(), R9 = R(), R10 = R(), R11 = R(), R12 = R(), R13 = R(), R14 = R(), R15 = R(),
            Rbx = DiffVm.ScratchAddress,
            Rbp = 0,
            Rsp = DiffVm.ScratchAddress + 0x1000,
            Rip = DiffVm.CodeAddress,
            Rflags = 0x202 | ((ulong)rng.Next() & 0x8D5),
        };
        if (extended && rng.Next(2) == 0)
        {
            regs.Rax = (ulong)(long)rng.Next(-20, 21);
            regs.Rdx = (ulong)(long)rng.Next(-20, 21);
        }

        var listing = DiffVm.Listing(list, first, last);

        listing.AppendLine($"  mxcsr {mxcsr:x}");
        return (code, endRip, regs, scratch, listing.ToString());
    }

    internal sealed class BufferWriter : CodeWriter
    {
        private readonly List<byte> _bytes = [];

        public override void WriteByte(byte value) => _bytes.Add(value);

        public byte[] ToArray() => [.. _bytes];
    }
}
