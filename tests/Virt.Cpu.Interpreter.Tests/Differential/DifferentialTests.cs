using System.Text;
using Iced.Intel;
using IcedFeature = Iced.Intel.CpuidFeature;
using Virt.Cpu.Kvm;
using Virt.Testing;

namespace Virt.Cpu.Interpreter.Tests.Differential;

/// <summary>Random CPL 3 instruction sequences must end identically on KVM (hardware) and on the interpreter.</summary>
public sealed class DifferentialTests
{
    private const ulong FlagsCompared = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800;
    private const string Names = "rax rcx rdx rbx rsp rbp rsi rdi r8  r9  r10 r11 r12 r13 r14 r15";

    /// <summary>Sequences per batch.</summary>
    private const int PerBatch = 2000;

    private const int DefaultSeed = 0x5EED;

    /// <summary>
    /// Candidate forms the generator leaves out on purpose (their results are undefined: 16-bit double shifts by CL,
    /// which may exceed 16 (the generator gives their immediate forms counts up to 16 instead), and BSWAP of a 16-bit
    /// register).
    /// </summary>
    private static readonly Code[] NotGenerated = [Code.Shld_rm16_r16_CL, Code.Shrd_rm16_r16_CL, Code.Bswap_r16];

    /// <summary>
    /// Six batches of 2000 (the first 12,000 seeds the suite ran with ten batches): every generated form runs at least 28
    /// times with register operands and as often with a memory operand, most of them about 120 times in all
    /// (<see cref="The_seeded_sample_runs_every_generated_form"/> holds the sample to at least 20).
    /// </summary>
    public static TheoryData<int> Batches()
    {
        var d = new TheoryData<int>();
        for (int i = 0; i < 6; i++)
        {
            d.Add(i);
        }

        return d;
    }

    [Theory]
    [MemberData(nameof(Batches))]
    public void Random_user_mode_sequences_match_kvm(int batch) =>
        RunBatch(batch, PerBatch, "VIRT_DIFF_SEED", DefaultSeed, "sequences", Build);

    /// <summary>
    /// The seeds <see cref="Random_user_mode_sequences_match_kvm"/> runs reach every form the generator draws from, with
    /// register operands and with a memory operand. The reserved NOPs are held to their register forms: with a memory
    /// operand most of their encodings decode as prefetch hints, which the generator leaves out.
    /// </summary>
    [Fact]
    public void The_seeded_sample_runs_every_generated_form()
    {
        var counts = FormsRun(Batches().Count, PerBatch, "VIRT_DIFF_SEED", DefaultSeed, Build);
        var forms = SequenceGenerator.AllCandidates.Where(c => Array.IndexOf(NotGenerated, c) < 0).ToArray();
        AssertEveryFormRan(forms.Where(c => c.Mnemonic() != Mnemonic.Reservednop), counts, atLeast: 20);
        AssertEveryFormRan(forms.Where(c => c.Mnemonic() == Mnemonic.Reservednop), counts, atLeast: 20, registerOnly: true);
    }

    /// <summary>
    /// Runs one batch of generated sequences on KVM and on the interpreter and fails with the first five
    /// differences (seed, difference, listing). <paramref name="seedVariable"/> replays a run from another seed.
    /// Every <paramref name="jitEvery"/>-th sequence also runs with the JIT tier compiling everything (each one is a
    /// .NET JIT compilation of its own, a few milliseconds, where KVM and the interpreter take tens of microseconds).
    /// <paramref name="compatibility"/> runs the sequences as 32-bit code; <paramref name="normalize"/> drops from each
    /// outcome what the sequences leave undefined before the outcomes are compared.
    /// </summary>
    internal static void RunBatch(int batch, int perBatch, string seedVariable, int defaultSeed, string what,
        Func<int, (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing)> build, int jitEvery = 1,
        bool compatibility = false, Func<SequenceResult, SequenceResult>? normalize = null)
    {
        HostRequirements.RequireKvm();
        int seedBase = SeedBase(seedVariable, defaultSeed);
        normalize ??= r => r;
        using var kvm = new DiffVm(new KvmHypervisor(), compatibility);
        using var interp = new DiffVm(TestBackends.Interpreter(), compatibility);
        using var jit = new DiffVm(TestBackends.Jit(), compatibility);
        var failures = new StringBuilder();
        int failed = 0;
        for (int k = 0; k < perBatch; k++)
        {
            int seed = seedBase + (batch * perBatch) + k;
            var (code, endRip, regs, scratch, listing) = build(seed);
            var a = normalize(kvm.Run(code, endRip, regs, scratch));
            var b = normalize(interp.Run(code, endRip, regs, scratch));
            string? diff = Compare(a, b);
            if (diff == null && k % jitEvery == 0 && Compare(a, normalize(jit.Run(code, endRip, regs, scratch))) is { } jitDiff)
            {
                diff = "JIT tier: " + jitDiff;
            }

            if (diff != null)
            {
                failed++;
                if (failed <= 5)
                {
                    failures.AppendLine($"seed {seed}: {diff}\n{listing}");
                }
            }
        }

        Assert.True(failed == 0, $"{failed} of {perBatch} {what} differ (rerun one with {seedVariable}):\n{failures}");
    }

    /// <summary>The first seed of a suite: <paramref name="seedVariable"/> when it is set, else <paramref name="defaultSeed"/>.</summary>
    internal static int SeedBase(string seedVariable, int defaultSeed) =>
        Environment.GetEnvironmentVariable(seedVariable) is { } s ? int.Parse(s, System.Globalization.CultureInfo.InvariantCulture) : defaultSeed;

    /// <summary>
    /// How many times each form runs in the sequences <see cref="RunBatch"/> builds for <paramref name="batches"/> batches
    /// of <paramref name="perBatch"/> (the same seeds), counted apart with register operands only and with a memory operand.
    /// The forms are decoded from the bytes that run, so the fixed frame around the random part counts as well.
    /// </summary>
    internal static Dictionary<(Code Code, bool Memory), int> FormsRun(int batches, int perBatch, string seedVariable, int defaultSeed,
        Func<int, (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing)> build)
    {
        int seedBase = SeedBase(seedVariable, defaultSeed);
        var counts = new Dictionary<(Code, bool), int>();
        for (int seed = seedBase; seed < seedBase + (batches * perBatch); seed++)
        {
            byte[] code = build(seed).Code;
            var decoder = Iced.Intel.Decoder.Create(64, new ByteArrayCodeReader(code), DiffVm.CodeAddress);
            while (decoder.IP < DiffVm.CodeAddress + (ulong)code.Length)
            {
                decoder.Decode(out var ins);
                bool memory = false;
                for (int i = 0; i < ins.OpCount; i++)
                {
                    memory |= ins.GetOpKind(i) == OpKind.Memory;
                }

                counts[(ins.Code, memory)] = counts.GetValueOrDefault((ins.Code, memory)) + 1;
            }
        }

        return counts;
    }

    /// <summary>
    /// Fails unless every form of <paramref name="forms"/> ran at least <paramref name="atLeast"/> times in
    /// <paramref name="counts"/> with a register operand (forms that take one) and as often with a memory operand (forms
    /// that take one, unless <paramref name="registerOnly"/>): the random sample a suite runs reaches every form it is
    /// meant to compare, with either operand.
    /// </summary>
    internal static void AssertEveryFormRan(IEnumerable<Code> forms, Dictionary<(Code Code, bool Memory), int> counts, int atLeast, bool registerOnly = false)
    {
        var missing = new List<string>();
        int fewest = int.MaxValue;
        foreach (var code in forms)
        {
            var oc = code.ToOpCode();
            bool memoryOnly = false, memoryToo = false;
            for (int i = 0; i < oc.OpCount; i++)
            {
                var kind = oc.GetOpKind(i);
                memoryOnly |= kind == OpCodeOperandKind.mem;
                memoryToo |= kind is OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r32_or_mem
                    or OpCodeOperandKind.r64_or_mem or OpCodeOperandKind.mm_or_mem or OpCodeOperandKind.xmm_or_mem;
            }

            foreach (bool memory in new[] { false, true })
            {
                if ((memory && (registerOnly || (!memoryOnly && !memoryToo))) || (!memory && memoryOnly))
                {
                    continue;
                }

                int n = counts.GetValueOrDefault((code, memory));
                fewest = Math.Min(fewest, n);
                if (n < atLeast)
                {
                    missing.Add($"{code}{(memory ? " (memory)" : "")}: {n}");
                }
            }
        }

        Assert.True(fewest != int.MaxValue, "no forms to check");
        Assert.True(missing.Count == 0, $"forms run fewer than {atLeast} times:\n{string.Join('\n', missing)}");
        TestContext.Current.TestOutputHelper?.WriteLine($"every form ran at least {fewest} times");
    }

    internal static (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing) Build(int seed) => Build(seed, null);

    internal static (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing) Build(int seed, IcedFeature? focus)
    {
        var gen = focus is { } f ? new SequenceGenerator(seed, f) : new SequenceGenerator(seed);
        var list = gen.Next(12, out _);
        var writer = new BufferWriter();
        var block = new InstructionBlock(writer, list, DiffVm.CodeAddress);
        if (!BlockEncoder.TryEncode(64, block, out string? error, out var result, BlockEncoderOptions.ReturnNewInstructionOffsets))
        {
            throw new InvalidOperationException(error);
        }

        var code = writer.ToArray();
        ulong endRip = DiffVm.CodeAddress + result.NewInstructionOffsets[^1];
        var rng = new Random(seed ^ 0x3C3C3C);
        ulong R() => rng.Next(4) switch { 0 => (ulong)rng.Next(0, 100), 1 => ulong.MaxValue - (ulong)rng.Next(0, 3), _ => (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40) };
        var regs = new GeneralRegisters
        {
            Rax = R(), Rcx = R(), Rdx = R(), R8 = R(), R9 = R(), R10 = R(), R11 = R(), R13 = R(), R14 = R(), R15 = R(),
            Rbx = DiffVm.ScratchAddress + 0x400 + (ulong)rng.Next(0, 0x800),
            Rsi = DiffVm.ScratchAddress + 0x800 + (ulong)rng.Next(0, 0x800),
            Rdi = DiffVm.ScratchAddress + 0x800 + (ulong)rng.Next(0, 0x800),
            Rbp = DiffVm.ScratchAddress + 0xF80 + (ulong)rng.Next(0, 0x100),
            R12 = (ulong)rng.Next(0, 16),
            Rsp = DiffVm.ScratchAddress + 0x1800,
            Rip = DiffVm.CodeAddress,
            Rflags = 0x202 | ((ulong)rng.Next() & 0x8D5), // IF set, as user code runs
        };
        var scratch = new byte[DiffVm.ScratchSize];
        rng.NextBytes(scratch);

        var listing = new StringBuilder(DiffVm.Listing(code));
        listing.AppendLine($"  start: {regs.ToString().Replace("\n", " ", StringComparison.Ordinal)}");
        return (code, endRip, regs, scratch, listing.ToString());
    }

    internal static string? Compare(SequenceResult kvm, SequenceResult interp)
    {
        var sb = new StringBuilder();
        if (kvm.Exit != interp.Exit || kvm.Vector != interp.Vector)
        {
            sb.Append($"end: kvm {kvm.Exit}/vector {kvm.Vector}, interpreter {interp.Exit}/vector {interp.Vector}; ");
        }

        if (kvm.ErrorCode != interp.ErrorCode)
        {
            sb.Append($"error code: kvm {kvm.ErrorCode:x}, interpreter {interp.ErrorCode:x}; ");
        }

        if (kvm.Rip != interp.Rip)
        {
            sb.Append($"rip: kvm {kvm.Rip:x}, interpreter {interp.Rip:x}; ");
        }

        if (((kvm.Rflags ^ interp.Rflags) & FlagsCompared) != 0)
        {
            sb.Append($"rflags: kvm {kvm.Rflags:x}, interpreter {interp.Rflags:x}; ");
        }

        if (kvm.Cr2 != interp.Cr2)
        {
            sb.Append($"cr2: kvm {kvm.Cr2:x}, interpreter {interp.Cr2:x}; ");
        }

        var names = Names.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        for (int i = 0; i < 16; i++)
        {
            if (kvm.Gprs[i] != interp.Gprs[i])
            {
                sb.Append($"{names[i]}: kvm {kvm.Gprs[i]:x}, interpreter {interp.Gprs[i]:x}; ");
            }
        }

        for (int i = 0; i < kvm.Scratch.Length; i++)
        {
            if (kvm.Scratch[i] != interp.Scratch[i])
            {
                sb.Append($"scratch+{i:x}: kvm {kvm.Scratch[i]:x2}, interpreter {interp.Scratch[i]:x2}; ");
                break;
            }
        }

        return sb.Length == 0 ? null : sb.ToString();
    }

    private sealed class BufferWriter : CodeWriter
    {
        private readonly List<byte> _bytes = [];

        public override void WriteByte(byte value) => _bytes.Add(value);

        public byte[] ToArray() => [.. _bytes];
    }
}

/// <summary>
/// The general suite focused on one extension: sequences in which two instructions in three need it. A class of its own
/// so that it runs in parallel with the integer batches of <see cref="DifferentialTests"/> instead of after them.
/// </summary>
/// <remarks>
/// BMI2 has 16 forms and SSE4.2 reaches the general-purpose generator only through CRC32's 5: the samples are sized so
/// that every form runs well over a hundred times with register operands and as often with a memory operand
/// (<see cref="The_focused_sample_runs_every_form_of_the_extension"/> holds them to that), drawing its operands from
/// the generator's small, near-maximum and random values. Known values are checked apart from the random sample (the
/// CRC-32C check value, PDEP/PEXT masks, a shift and a BZHI index past the operand width:
/// <c>Sse4SemanticsTests.Crc32_pdep_pext_and_shifts_give_known_values</c>), and the unfocused batches of
/// <see cref="DifferentialTests"/> run these forms too.
/// </remarks>
public sealed class ExtensionDifferentialTests
{
    /// <summary>The fewest runs of each form (register and memory operands apart) a focused sample must hold.</summary>
    private const int EachFormAtLeast = 100;

    /// <summary>The extensions and how many sequences each gets (CRC32 is one operation in five widths: fewer suffice).</summary>
    public static TheoryData<string, int> Extensions() => new() { { "BMI2", 2000 }, { "SSE4_2", 1000 } };

    private static int DefaultSeed(IcedFeature f) => 0xB312 + (int)f;

    /// <summary>Sequences in which two instructions in three need <paramref name="feature"/> (BMI2; SSE4.2's CRC32).</summary>
    [Theory]
    [MemberData(nameof(Extensions))]
    public void Random_sequences_focused_on_an_extension_match_kvm(string feature, int sequences)
    {
        var f = Enum.Parse<IcedFeature>(feature);
        DifferentialTests.RunBatch(0, sequences, "VIRT_DIFF_SEED", DefaultSeed(f), $"{feature} sequences", seed => DifferentialTests.Build(seed, f));
    }

    /// <summary>The seeds <see cref="Random_sequences_focused_on_an_extension_match_kvm"/> runs reach every form of the extension.</summary>
    [Theory]
    [MemberData(nameof(Extensions))]
    public void The_focused_sample_runs_every_form_of_the_extension(string feature, int sequences)
    {
        var f = Enum.Parse<IcedFeature>(feature);
        var forms = SequenceGenerator.CandidatesOf(f).ToArray();
        Assert.NotEmpty(forms);
        var counts = DifferentialTests.FormsRun(1, sequences, "VIRT_DIFF_SEED", DefaultSeed(f), seed => DifferentialTests.Build(seed, f));
        DifferentialTests.AssertEveryFormRan(forms, counts, EachFormAtLeast);
    }
}
