using System.Text;
using Iced.Intel;
using Virt.Cpu.Interpreter.Tests.Differential;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>
/// Random CPL 3 sequences of every MMX-register form (MMX, and the MMX forms of SSE, SSE2 and SSSE3), mixed with
/// EMMS, FNINIT and x87 pushes that move TOP and fill the tag word, must leave the same MMX registers (the x87
/// significands and exponents), x87 status and tag words, XMM registers, MXCSR, general registers, flags and memory
/// on KVM and on the interpreter.
/// </summary>
public sealed class MmxDifferentialTests
{
    private const int XmmInit = 0x1800;
    private const int XmmDump = 0x1A00;
    private const int MxcsrDump = 0x1B00;
    private const int X87Dump = 0x1B10;
    private const int MmInit = 0x1100;
    private const int FxArea = 0x1C00;
    private const int Slots = 16;

    /// <summary>Sequences per batch (three batches): each MMX form runs at least ten times, with register and with memory operands.</summary>
    private const int PerBatch = 500;

    private const int DefaultSeed = 0x3A30;

    private static readonly Code[] Codes = BuildCodes();

    public static TheoryData<int> Batches() => new() { 0, 1, 2 };

    [Fact]
    public void Generator_covers_the_mmx_forms()
    {
        var mnemonics = Codes.Select(c => c.Mnemonic()).ToHashSet();
        foreach (var m in new[]
        {
            Mnemonic.Movd, Mnemonic.Movq, Mnemonic.Packsswb, Mnemonic.Punpckhbw, Mnemonic.Paddusw, Mnemonic.Pmaddwd, Mnemonic.Psraw, Mnemonic.Pshufw,
            Mnemonic.Pmovmskb, Mnemonic.Psadbw, Mnemonic.Pinsrw, Mnemonic.Pextrw, Mnemonic.Paddq, Mnemonic.Pmuludq, Mnemonic.Movq2dq, Mnemonic.Movdq2q,
            Mnemonic.Cvtpi2ps, Mnemonic.Cvttpd2pi, Mnemonic.Pshufb, Mnemonic.Palignr, Mnemonic.Phaddsw, Mnemonic.Pmulhrsw, Mnemonic.Movntq,
        })
        {
            Assert.Contains(m, mnemonics);
        }
    }

    [Theory]
    [MemberData(nameof(Batches))]
    public void Random_mmx_sequences_match_kvm(int batch) =>
        DifferentialTests.RunBatch(batch, PerBatch, "VIRT_MMX_DIFF_SEED", DefaultSeed, "MMX sequences", Build);

    /// <summary>
    /// The seeds <see cref="Random_mmx_sequences_match_kvm"/> runs reach every MMX form, with register and with memory
    /// operands, several times each. Special values (NaNs, infinities, denormals, integer and saturation boundaries,
    /// lane masks) come from <see cref="SseDifferentialTests.Fill"/> for every register and slot of every sequence; known
    /// results, EMMS and the x87 aliasing are checked apart in <see cref="MmxSemanticsTests"/>.
    /// </summary>
    [Fact]
    public void The_seeded_sample_runs_every_mmx_form()
    {
        var counts = DifferentialTests.FormsRun(Batches().Count, PerBatch, "VIRT_MMX_DIFF_SEED", DefaultSeed, Build);
        DifferentialTests.AssertEveryFormRan(Codes, counts, atLeast: 5);
    }

    private static Code[] BuildCodes()
    {
        var list = new List<Code>();
        foreach (var code in Enum.GetValues<Code>())
        {
            var oc = code.ToOpCode();
            if (oc.Encoding != EncodingKind.Legacy || !oc.Mode64 || code.Mnemonic() is Mnemonic.Maskmovq)
            {
                continue;
            }

            bool ok = oc.OpCount is >= 1 and <= 3;
            bool mm = false;
            for (int i = 0; i < oc.OpCount && ok; i++)
            {
                switch (oc.GetOpKind(i))
                {
                    case OpCodeOperandKind.mm_reg:
                    case OpCodeOperandKind.mm_rm:
                    case OpCodeOperandKind.mm_or_mem:
                        mm = true;
                        break;
                    case OpCodeOperandKind.xmm_reg:
                    case OpCodeOperandKind.xmm_rm:
                    case OpCodeOperandKind.xmm_or_mem:
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

            if (ok && mm)
            {
                list.Add(code);
            }
        }

        return [.. list];
    }

    private static Instruction Next(Random rng) => rng.Next(20) switch
    {
        0 => Instruction.Create(Code.Emms),
        1 => Instruction.Create(Code.Fld1),
        2 => Instruction.Create(Code.Fldz),
        3 => Instruction.Create(Code.Fninit),
        _ => SseDifferentialTests.Make(rng, Codes[rng.Next(Codes.Length)]),
    };

    private static (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing) Build(int seed)
    {
        var rng = new Random(seed);
        var list = new List<Instruction> { Instruction.Create(Code.Fninit) };
        for (int i = 0; i < 16; i++)
        {
            list.Add(Instruction.Create(Code.Movups_xmm_xmmm128, Register.XMM0 + i, new MemoryOperand(Register.RBX, XmmInit + (16 * i))));
        }

        for (int i = 0; i < 8; i++)
        {
            list.Add(Instruction.Create(Code.Movq_mm_mmm64, Register.MM0 + i, new MemoryOperand(Register.RBX, MmInit + (8 * i))));
        }

        list.Add(Instruction.Create(Code.Ldmxcsr_m32, new MemoryOperand(Register.RBX, MxcsrDump + 8)));
        if (rng.Next(3) == 0)
        {
            // Start some runs with TOP away from 0 and some registers empty.
            list.Add(Instruction.Create(Code.Emms));
            for (int i = rng.Next(1, 4); i > 0; i--)
            {
                list.Add(Instruction.Create(Code.Fld1));
            }
        }

        int first = list.Count;
        int n = rng.Next(1, 9);
        for (int i = 0; i < n; i++)
        {
            list.Add(Next(rng));
        }

        int last = list.Count;

        // The x87 state after the sequence, read before anything else touches it: status and tag words and the eight
        // registers (stack order) through FXSAVE, copied to the dump; then the FXSAVE area is cleared, as its
        // instruction and data pointers are not compared.
        list.Add(Instruction.Create(Code.Fxsave_m512byte, new MemoryOperand(Register.RBX, FxArea)));
        list.Add(Instruction.Create(Code.Mov_r16_rm16, Register.AX, new MemoryOperand(Register.RBX, FxArea + 2)));
        list.Add(Instruction.Create(Code.Mov_rm16_r16, new MemoryOperand(Register.RBX, X87Dump), Register.AX));
        list.Add(Instruction.Create(Code.Mov_r8_rm8, Register.AL, new MemoryOperand(Register.RBX, FxArea + 4)));
        list.Add(Instruction.Create(Code.Mov_rm8_r8, new MemoryOperand(Register.RBX, X87Dump + 2), Register.AL));
        for (int i = 0; i < 8; i++)
        {
            list.Add(Instruction.Create(Code.Mov_r64_rm64, Register.RAX, new MemoryOperand(Register.RBX, FxArea + 32 + (16 * i))));
            list.Add(Instruction.Create(Code.Mov_rm64_r64, new MemoryOperand(Register.RBX, X87Dump + 16 + (16 * i)), Register.RAX));
            list.Add(Instruction.Create(Code.Mov_r16_rm16, Register.AX, new MemoryOperand(Register.RBX, FxArea + 40 + (16 * i))));
            list.Add(Instruction.Create(Code.Mov_rm16_r16, new MemoryOperand(Register.RBX, X87Dump + 24 + (16 * i)), Register.AX));
        }

        for (int i = 0; i < 16; i++)
        {
            list.Add(Instruction.Create(Code.Movups_xmmm128_xmm, new MemoryOperand(Register.RBX, XmmDump + (16 * i)), Register.XMM0 + i));
        }

        list.Add(Instruction.Create(Code.Stmxcsr_m32, new MemoryOperand(Register.RBX, MxcsrDump)));
        list.Add(Instruction.Create(Code.Xorps_xmm_xmmm128, Register.XMM0, Register.XMM0));
        for (int i = 0; i < 32; i++)
        {
            list.Add(Instruction.Create(Code.Movups_xmmm128_xmm, new MemoryOperand(Register.RBX, FxArea + (16 * i)), Register.XMM0));
        }

        list.Add(Instruction.Create(Code.Hlt));

        var writer = new SseDifferentialTests.BufferWriter();
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
            SseDifferentialTests.Fill(rng, scratch.AsSpan(16 * i, 16), extended: true);
        }

        for (int i = 0; i < 16; i++)
        {
            SseDifferentialTests.Fill(rng, scratch.AsSpan(XmmInit + (16 * i), 16), extended: true);
        }

        for (int i = 0; i < 4; i++)
        {
            SseDifferentialTests.Fill(rng, scratch.AsSpan(MmInit + (16 * i), 16), extended: true);
        }

        uint mxcsr = 0x1F80u | ((uint)rng.Next(4) << 13);
        BitConverter.TryWriteBytes(scratch.AsSpan(MxcsrDump + 8), mxcsr);
        ulong R() => rng.Next(4) switch { 0 => (ulong)rng.Next(0, 100), 1 => (ulong)(long)rng.Next(int.MinValue, int.MaxValue), _ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40) };
        var regs = new GeneralRegisters
        {
            Rax = R(), Rcx = R(), Rdx = R(), Rsi = R(), Rdi = R(), R8 = R(), R9 = R(), R10 = R(), R11 = R(), R12 = R(), R13 = R(), R14 = R(), R15 = R(),
            Rbx = DiffVm.ScratchAddress,
            Rsp = DiffVm.ScratchAddress + 0x1000,
            Rip = DiffVm.CodeAddress,
            Rflags = 0x202 | ((ulong)rng.Next() & 0x8D5),
        };

        var listing = DiffVm.Listing(list, first - 4, last);

        listing.AppendLine($"  mxcsr {mxcsr:x}");
        return (code, endRip, regs, scratch, listing.ToString());
    }
}
