using Iced.Intel;
using IcedFeature = Iced.Intel.CpuidFeature;

namespace Virt.Cpu.Interpreter.Tests.Differential;

/// <summary>
/// Builds random CPL 3 instruction sequences from every general-purpose instruction form Iced knows that
/// the interpreter advertises, with memory operands pointing into a scratch buffer.
/// </summary>
internal sealed class SequenceGenerator
{
    /// <summary>Registers random instructions may read and write. RBX/RSI/RDI/RBP hold scratch pointers, R12 a small index, RSP the stack.</summary>
    public static readonly Register[] FreeRegisters =
        [Register.RAX, Register.RCX, Register.RDX, Register.R8, Register.R9, Register.R10, Register.R11, Register.R13, Register.R14, Register.R15];

    private static readonly Register[] BaseRegisters = [Register.RBX, Register.RSI, Register.RDI, Register.RBP, Register.RSP];

    private static readonly HashSet<IcedFeature> Implemented =
    [
        IcedFeature.INTEL8086, IcedFeature.INTEL8086_ONLY, IcedFeature.INTEL186, IcedFeature.INTEL286, IcedFeature.INTEL386,
        IcedFeature.INTEL486, IcedFeature.X64, IcedFeature.CMOV, IcedFeature.CX8, IcedFeature.CMPXCHG16B,
        IcedFeature.POPCNT, IcedFeature.LZCNT, IcedFeature.BMI1, IcedFeature.BMI2, IcedFeature.SSE4_2, IcedFeature.MULTIBYTENOP,
    ];

    private static readonly HashSet<Mnemonic> Excluded =
    [
        // Control flow, I/O, privileged, time, identity, segment loads and task state: covered by hand-written tests.
        Mnemonic.Jmp, Mnemonic.Call, Mnemonic.Ret, Mnemonic.Retf, Mnemonic.Iret, Mnemonic.Iretd, Mnemonic.Iretq,
        Mnemonic.Loop, Mnemonic.Loope, Mnemonic.Loopne, Mnemonic.Jrcxz, Mnemonic.Jecxz, Mnemonic.Jcxz,
        Mnemonic.In, Mnemonic.Out, Mnemonic.Insb, Mnemonic.Insw, Mnemonic.Insd, Mnemonic.Outsb, Mnemonic.Outsw, Mnemonic.Outsd,
        Mnemonic.Hlt, Mnemonic.Cpuid, Mnemonic.Rdtsc, Mnemonic.Rdtscp, Mnemonic.Rdpmc, Mnemonic.Int, Mnemonic.Int1, Mnemonic.Into,
        Mnemonic.Int3, Mnemonic.Syscall, Mnemonic.Sysenter, Mnemonic.Sysexit, Mnemonic.Sysret, Mnemonic.Swapgs,
        Mnemonic.Popf, Mnemonic.Popfd, Mnemonic.Popfq, Mnemonic.Pushf, Mnemonic.Pushfd, Mnemonic.Pushfq,
        Mnemonic.Enter, Mnemonic.Leave, Mnemonic.Lss, Mnemonic.Lfs, Mnemonic.Lgs, Mnemonic.Lar, Mnemonic.Lsl, Mnemonic.Verr, Mnemonic.Verw,
        Mnemonic.Smsw, Mnemonic.Sgdt, Mnemonic.Sidt, Mnemonic.Str, Mnemonic.Sldt, Mnemonic.Cli, Mnemonic.Sti, Mnemonic.Wait,
        Mnemonic.Movsb, Mnemonic.Movsw, Mnemonic.Movsd, Mnemonic.Movsq, Mnemonic.Stosb, Mnemonic.Stosw, Mnemonic.Stosd, Mnemonic.Stosq,
        Mnemonic.Lodsb, Mnemonic.Lodsw, Mnemonic.Lodsd, Mnemonic.Lodsq, Mnemonic.Cmpsb, Mnemonic.Cmpsw, Mnemonic.Cmpsd, Mnemonic.Cmpsq,
        Mnemonic.Scasb, Mnemonic.Scasw, Mnemonic.Scasd, Mnemonic.Scasq, Mnemonic.Xlatb, Mnemonic.Push, Mnemonic.Pop,
        Mnemonic.Ud0, Mnemonic.Ud1, Mnemonic.Mov, Mnemonic.Prefetchw, Mnemonic.Clflushopt, Mnemonic.Nop,
    ];

    private static readonly Code[] Candidates = BuildCandidates();

    private static readonly Code[] JccCodes = [.. Enum.GetValues<Code>().Where(c => c.IsJccNear() && c.ToString().EndsWith("_rel32_64", StringComparison.Ordinal))];

    private readonly Random _rng;
    private int _id;

    private readonly Code[]? _focus;

    public SequenceGenerator(int seed) => _rng = new Random(seed);

    /// <summary>A generator that draws two instructions in three from the forms that need <paramref name="focus"/>.</summary>
    public SequenceGenerator(int seed, IcedFeature focus)
        : this(seed)
    {
        _focus = [.. Candidates.Where(c => c.CpuidFeatures().Contains(focus))];
        if (_focus.Length == 0)
        {
            throw new InvalidOperationException($"no candidate needs {focus}");
        }
    }

    /// <summary>The candidate forms that need <paramref name="feature"/>.</summary>
    public static IEnumerable<Code> CandidatesOf(IcedFeature feature) => Candidates.Where(c => c.CpuidFeatures().Contains(feature));

    public static int CandidateCount => Candidates.Length;

    /// <summary>Every candidate form.</summary>
    public static IReadOnlyList<Code> AllCandidates => Candidates;

    private static Code[] BuildCandidates()
    {
        var list = new List<Code>();
        foreach (Code code in Enum.GetValues<Code>())
        {
            var info = code.ToOpCode();
            if (!info.IsInstruction || info.Encoding is not (EncodingKind.Legacy or EncodingKind.VEX) || !info.Mode64)
            {
                continue;
            }

            if (Excluded.Contains(code.Mnemonic()))
            {
                continue;
            }

            bool ok = true;
            for (int i = 0; i < info.OpCount && ok; i++)
            {
                ok = Fillable(info.GetOpKind(i));
            }

            if (!ok)
            {
                continue;
            }

            // Feature check on a sample instruction.
            bool features = true;
            foreach (var f in code.CpuidFeatures())
            {
                features &= Implemented.Contains(f);
            }

            if (features)
            {
                list.Add(code);
            }
        }

        // Plain MOV forms between registers and memory.
        list.AddRange([Code.Mov_rm64_r64, Code.Mov_r64_rm64, Code.Mov_rm32_r32, Code.Mov_r32_rm32, Code.Mov_rm16_r16, Code.Mov_rm8_r8, Code.Mov_r8_rm8, Code.Mov_rm64_imm32, Code.Mov_r64_imm64, Code.Mov_rm8_imm8, Code.Push_r64, Code.Pop_r64, Code.Push_rm64, Code.Pushq_imm32]);
        return [.. list];
    }

    private static bool Fillable(OpCodeOperandKind k) => k switch
    {
        OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r32_or_mem or OpCodeOperandKind.r64_or_mem
            or OpCodeOperandKind.mem or OpCodeOperandKind.r8_reg or OpCodeOperandKind.r16_reg or OpCodeOperandKind.r32_reg
            or OpCodeOperandKind.r64_reg or OpCodeOperandKind.r8_opcode or OpCodeOperandKind.r16_opcode or OpCodeOperandKind.r32_opcode
            or OpCodeOperandKind.r64_opcode or OpCodeOperandKind.r32_rm or OpCodeOperandKind.r64_rm or OpCodeOperandKind.r32_vvvv
            or OpCodeOperandKind.r64_vvvv or OpCodeOperandKind.imm8 or OpCodeOperandKind.imm8sex16 or OpCodeOperandKind.imm8sex32
            or OpCodeOperandKind.imm8sex64 or OpCodeOperandKind.imm16 or OpCodeOperandKind.imm32 or OpCodeOperandKind.imm32sex64
            or OpCodeOperandKind.imm64 or OpCodeOperandKind.imm8_const_1 or OpCodeOperandKind.al or OpCodeOperandKind.cl
            or OpCodeOperandKind.ax or OpCodeOperandKind.dx or OpCodeOperandKind.eax or OpCodeOperandKind.rax => true,
        _ => false,
    };

    /// <summary>A random sequence ending in <c>hlt</c> (which faults at CPL 3 and so ends the run).</summary>
    public List<Instruction> Next(int maxLength, out Instruction end)
    {
        var list = new List<Instruction>();
        _id = 1;
        int n = _rng.Next(1, maxLength + 1);
        var pendingJumps = new List<(int index, int skip)>();
        var groups = new List<int>();
        for (int k = 0; k < n; k++)
        {
            groups.Add(list.Count);
            int r = _rng.Next(100);
            if (r < 5)
            {
                // Forward conditional jump over the next 0-3 instructions.
                var cc = Pick(JccCodes);
                var j = Instruction.CreateBranch(cc, 0);
                pendingJumps.Add((list.Count, _rng.Next(0, 4)));
                Add(list, j);
                continue;
            }

            if (r < 8)
            {
                AddString(list);
                continue;
            }

            if (r < 10)
            {
                var call = Instruction.CreateBranch(Code.Call_rel32_64, 0);
                pendingJumps.Add((list.Count, 0));
                Add(list, call);
                groups.Add(list.Count);
                Add(list, Instruction.Create(Code.Pop_r64, Pick(FreeRegisters)));
                continue;
            }

            if (r < 12)
            {
                Add(list, Instruction.Create(r == 10 ? Code.Std : Code.Cld));
                continue;
            }

            var ins = RandomInstruction();
            if (ins is not Instruction i)
            {
                k--;
                continue;
            }

            Add(list, i);
            var undefined = i.RflagsUndefined | MultiBitRotateOverflow(i);
            if (undefined != RflagsBits.None)
            {
                AddSanitizer(list, undefined);
            }
        }

        end = Instruction.Create(Code.Hlt);
        groups.Add(list.Count);
        Add(list, end);
        foreach (var (index, skip) in pendingJumps)
        {
            // Jump to the start of a later group, never into the middle of a flag-sanitizing sequence.
            int g = groups.FindLastIndex(x => x <= index);
            int target = groups[Math.Min(g + 1 + skip, groups.Count - 1)];
            var j = list[index];
            j.NearBranch64 = list[target].IP;
            list[index] = j;
        }

        return list;
    }

    private void Add(List<Instruction> list, Instruction i)
    {
        i.IP = (ulong)_id++;
        list.Add(i);
    }

    /// <summary>
    /// OF after a rotate or shift whose count is not the constant 1 is undefined (SDM, RCL/RCR/ROL/ROR and SAL/SAR/SHL/SHR:
    /// "OF is undefined for multi-bit rotates"), and processors differ: when an 8- or 16-bit RCL/RCR count is a
    /// multiple of 9 or 17, some Intel parts recompute OF and others leave every flag as it was.
    /// </summary>
    private static RflagsBits MultiBitRotateOverflow(in Instruction i)
    {
        bool shiftOrRotate = i.Mnemonic is Mnemonic.Rcl or Mnemonic.Rcr or Mnemonic.Rol or Mnemonic.Ror
            or Mnemonic.Shl or Mnemonic.Sal or Mnemonic.Shr or Mnemonic.Sar;
        bool countIsOne = i.OpCount == 2 && i.GetOpKind(1) == OpKind.Immediate8 && i.Immediate8 == 1
            || i.Code.ToString().EndsWith("_1", StringComparison.Ordinal);
        return shiftOrRotate && !countIsOne ? RflagsBits.OF : RflagsBits.None;
    }

    /// <summary>Clears flags the last instruction left undefined: pushfq; and [rsp], ~mask; popfq.</summary>
    public void AddSanitizer(List<Instruction> list, RflagsBits undefined)
    {
        ulong mask = 0;
        if ((undefined & RflagsBits.CF) != 0) { mask |= 1; }
        if ((undefined & RflagsBits.PF) != 0) { mask |= 4; }
        if ((undefined & RflagsBits.AF) != 0) { mask |= 0x10; }
        if ((undefined & RflagsBits.ZF) != 0) { mask |= 0x40; }
        if ((undefined & RflagsBits.SF) != 0) { mask |= 0x80; }
        if ((undefined & RflagsBits.OF) != 0) { mask |= 0x800; }
        Add(list, Instruction.Create(Code.Pushfq));
        Add(list, Instruction.Create(Code.And_rm64_imm32, new MemoryOperand(Register.RSP), (int)~mask));
        Add(list, Instruction.Create(Code.Popfq));
    }

    private void AddString(List<Instruction> list)
    {
        Code[] codes =
        [
            Code.Movsb_m8_m8, Code.Movsw_m16_m16, Code.Movsd_m32_m32, Code.Movsq_m64_m64, Code.Stosb_m8_AL, Code.Stosw_m16_AX,
            Code.Stosd_m32_EAX, Code.Stosq_m64_RAX, Code.Lodsb_AL_m8, Code.Lodsq_RAX_m64, Code.Cmpsb_m8_m8, Code.Cmpsq_m64_m64,
            Code.Scasb_AL_m8, Code.Scasd_EAX_m32,
        ];
        var code = Pick(codes);
        Add(list, Instruction.Create(Code.Mov_r32_imm32, Register.ECX, _rng.Next(0, 12)));
        var info = code.ToOpCode();
        int rep = _rng.Next(3);
        Instruction s = code.Mnemonic() switch
        {
            Mnemonic.Movsb or Mnemonic.Movsw or Mnemonic.Movsd or Mnemonic.Movsq =>
                rep == 0 ? Instruction.CreateMovsb(64) : Instruction.CreateRepMovsb(64),
            _ => default,
        };
        s = code.Mnemonic() switch
        {
            Mnemonic.Movsb => rep == 0 ? Instruction.CreateMovsb(64) : Instruction.CreateRepMovsb(64),
            Mnemonic.Movsw => rep == 0 ? Instruction.CreateMovsw(64) : Instruction.CreateRepMovsw(64),
            Mnemonic.Movsd => rep == 0 ? Instruction.CreateMovsd(64) : Instruction.CreateRepMovsd(64),
            Mnemonic.Movsq => rep == 0 ? Instruction.CreateMovsq(64) : Instruction.CreateRepMovsq(64),
            Mnemonic.Stosb => rep == 0 ? Instruction.CreateStosb(64) : Instruction.CreateRepStosb(64),
            Mnemonic.Stosw => rep == 0 ? Instruction.CreateStosw(64) : Instruction.CreateRepStosw(64),
            Mnemonic.Stosd => rep == 0 ? Instruction.CreateStosd(64) : Instruction.CreateRepStosd(64),
            Mnemonic.Stosq => rep == 0 ? Instruction.CreateStosq(64) : Instruction.CreateRepStosq(64),
            Mnemonic.Lodsb => rep == 0 ? Instruction.CreateLodsb(64) : Instruction.CreateRepLodsb(64),
            Mnemonic.Lodsq => rep == 0 ? Instruction.CreateLodsq(64) : Instruction.CreateRepLodsq(64),
            Mnemonic.Cmpsb => rep == 0 ? Instruction.CreateCmpsb(64) : rep == 1 ? Instruction.CreateRepeCmpsb(64) : Instruction.CreateRepneCmpsb(64),
            Mnemonic.Cmpsq => rep == 0 ? Instruction.CreateCmpsq(64) : rep == 1 ? Instruction.CreateRepeCmpsq(64) : Instruction.CreateRepneCmpsq(64),
            Mnemonic.Scasb => rep == 0 ? Instruction.CreateScasb(64) : rep == 1 ? Instruction.CreateRepeScasb(64) : Instruction.CreateRepneScasb(64),
            _ => rep == 0 ? Instruction.CreateScasd(64) : rep == 1 ? Instruction.CreateRepeScasd(64) : Instruction.CreateRepneScasd(64),
        };
        _ = info;
        Add(list, s);
    }

    private T Pick<T>(T[] items) => items[_rng.Next(items.Length)];

    private ulong RandomValue(int bits)
    {
        ulong v = _rng.Next(8) switch
        {
            0 => 0,
            1 => 1,
            2 => ulong.MaxValue,
            3 => 1UL << (bits - 1),
            4 => (1UL << (bits - 1)) - 1,
            5 => (ulong)_rng.Next(0, 70),
            _ => (ulong)_rng.NextInt64() ^ ((ulong)_rng.Next() << 33),
        };
        return bits >= 64 ? v : v & ((1UL << bits) - 1);
    }

    private Register Gpr(int size)
    {
        var full = Pick(FreeRegisters);
        int idx = full - Register.RAX;
        if (size == 1 && _rng.Next(6) == 0 && idx < 4)
        {
            // AH, CH, DH (BH is not free).
            return Register.AH + idx;
        }

        return size switch
        {
            1 => idx < 4 ? Register.AL + idx : Register.R8L + (idx - 8),
            2 => Register.AX + idx,
            4 => Register.EAX + idx,
            _ => full,
        };
    }

    private MemoryOperand Memory()
    {
        var b = Pick(BaseRegisters);
        int disp = _rng.Next(10) switch
        {
            0 => _rng.Next(-0x2000, 0x3000), // may leave the scratch pages: #PF
            1 => 0,
            _ => _rng.Next(-200, 200),
        };
        Register seg = _rng.Next(12) switch { 0 => Register.FS, 1 => Register.GS, _ => Register.None };
        if (_rng.Next(3) == 0)
        {
            int scale = 1 << _rng.Next(4);
            return new MemoryOperand(b, Register.R12, scale, disp, disp is >= -128 and <= 127 ? 1 : 4, false, seg);
        }

        return new MemoryOperand(b, Register.None, 1, disp, disp is >= -128 and <= 127 ? 1 : 4, false, seg);
    }

    private Instruction? RandomInstruction()
    {
        var code = _focus != null && _rng.Next(3) != 0 ? Pick(_focus) : Pick(Candidates);
        var info = code.ToOpCode();
        var ins = new Instruction { Code = code };
        int memSize = 0;
        try
        {
            for (int i = 0; i < info.OpCount; i++)
            {
                var k = info.GetOpKind(i);
                switch (k)
                {
                    case OpCodeOperandKind.r8_or_mem:
                    case OpCodeOperandKind.r16_or_mem:
                    case OpCodeOperandKind.r32_or_mem:
                    case OpCodeOperandKind.r64_or_mem:
                    case OpCodeOperandKind.mem:
                        if (k == OpCodeOperandKind.mem || _rng.Next(2) == 0)
                        {
                            var m = Memory();
                            ins.SetOpKind(i, OpKind.Memory);
                            ins.MemoryBase = m.Base;
                            ins.MemoryIndex = m.Index;
                            ins.MemoryIndexScale = m.Scale;
                            ins.MemoryDisplacement64 = (ulong)m.Displacement;
                            ins.MemoryDisplSize = m.DisplSize;
                            ins.SegmentPrefix = m.SegmentPrefix;
                            memSize = 1;
                        }
                        else
                        {
                            ins.SetOpKind(i, OpKind.Register);
                            ins.SetOpRegister(i, Gpr(SizeOf(k)));
                        }

                        break;
                    case OpCodeOperandKind.r8_reg:
                    case OpCodeOperandKind.r8_opcode:
                        ins.SetOpKind(i, OpKind.Register);
                        ins.SetOpRegister(i, Gpr(1));
                        break;
                    case OpCodeOperandKind.r16_reg:
                    case OpCodeOperandKind.r16_opcode:
                        ins.SetOpKind(i, OpKind.Register);
                        ins.SetOpRegister(i, Gpr(2));
                        break;
                    case OpCodeOperandKind.r32_reg:
                    case OpCodeOperandKind.r32_opcode:
                    case OpCodeOperandKind.r32_rm:
                    case OpCodeOperandKind.r32_vvvv:
                        ins.SetOpKind(i, OpKind.Register);
                        ins.SetOpRegister(i, Gpr(4));
                        break;
                    case OpCodeOperandKind.r64_reg:
                    case OpCodeOperandKind.r64_opcode:
                    case OpCodeOperandKind.r64_rm:
                    case OpCodeOperandKind.r64_vvvv:
                        ins.SetOpKind(i, OpKind.Register);
                        ins.SetOpRegister(i, Gpr(8));
                        break;
                    case OpCodeOperandKind.al: ins.SetOpKind(i, OpKind.Register); ins.SetOpRegister(i, Register.AL); break;
                    case OpCodeOperandKind.cl: ins.SetOpKind(i, OpKind.Register); ins.SetOpRegister(i, Register.CL); break;
                    case OpCodeOperandKind.ax: ins.SetOpKind(i, OpKind.Register); ins.SetOpRegister(i, Register.AX); break;
                    case OpCodeOperandKind.dx: ins.SetOpKind(i, OpKind.Register); ins.SetOpRegister(i, Register.DX); break;
                    case OpCodeOperandKind.eax: ins.SetOpKind(i, OpKind.Register); ins.SetOpRegister(i, Register.EAX); break;
                    case OpCodeOperandKind.rax: ins.SetOpKind(i, OpKind.Register); ins.SetOpRegister(i, Register.RAX); break;
                    case OpCodeOperandKind.imm8:
                        ins.SetOpKind(i, i == 2 && info.GetOpKind(1) is OpCodeOperandKind.imm16 ? OpKind.Immediate8_2nd : OpKind.Immediate8);
                        if (ins.GetOpKind(i) == OpKind.Immediate8_2nd)
                        {
                            ins.Immediate8_2nd = (byte)RandomValue(8);
                        }
                        else
                        {
                            ins.Immediate8 = (byte)(_rng.Next(3) == 0 ? (ulong)_rng.Next(0, 70) : RandomValue(8));
                        }

                        break;
                    case OpCodeOperandKind.imm8sex16: ins.SetOpKind(i, OpKind.Immediate8to16); ins.Immediate8to16 = (sbyte)RandomValue(8); break;
                    case OpCodeOperandKind.imm8sex32: ins.SetOpKind(i, OpKind.Immediate8to32); ins.Immediate8to32 = (sbyte)RandomValue(8); break;
                    case OpCodeOperandKind.imm8sex64: ins.SetOpKind(i, OpKind.Immediate8to64); ins.Immediate8to64 = (sbyte)RandomValue(8); break;
                    case OpCodeOperandKind.imm16: ins.SetOpKind(i, OpKind.Immediate16); ins.Immediate16 = (ushort)RandomValue(16); break;
                    case OpCodeOperandKind.imm32: ins.SetOpKind(i, OpKind.Immediate32); ins.Immediate32 = (uint)RandomValue(32); break;
                    case OpCodeOperandKind.imm32sex64: ins.SetOpKind(i, OpKind.Immediate32to64); ins.Immediate32to64 = (int)RandomValue(32); break;
                    case OpCodeOperandKind.imm64: ins.SetOpKind(i, OpKind.Immediate64); ins.Immediate64 = RandomValue(64); break;
                    case OpCodeOperandKind.imm8_const_1: ins.SetOpKind(i, OpKind.Immediate8); ins.Immediate8 = 1; break;
                    default:
                        return null;
                }
            }

            if (memSize != 0 && info.CanUseLockPrefix && ins.Op0Kind == OpKind.Memory && _rng.Next(3) == 0)
            {
                ins.HasLockPrefix = true;
            }

            // Undefined results: 16-bit double shifts by more than 16 and BSWAP of 16-bit registers.
            if (code.Mnemonic() is Mnemonic.Shld or Mnemonic.Shrd && (info.GetOpKind(1) == OpCodeOperandKind.r16_reg))
            {
                if (ins.Op2Kind != OpKind.Immediate8)
                {
                    return null;
                }

                ins.Immediate8 = (byte)_rng.Next(0, 17);
            }

            if (code.Mnemonic() == Mnemonic.Bswap && info.GetOpKind(0) == OpCodeOperandKind.r16_opcode)
            {
                return null;
            }

            // Check that it encodes.
            var w = new NullWriter();
            var enc = Encoder.Create(64, w);
            if (!enc.TryEncode(ins, 0x10000, out _, out _))
            {
                return null;
            }

            return ins;
        }
        catch (ArgumentException)
        {
            return null;
        }
    }

    private static int SizeOf(OpCodeOperandKind k) => k switch
    {
        OpCodeOperandKind.r8_or_mem => 1,
        OpCodeOperandKind.r16_or_mem => 2,
        OpCodeOperandKind.r32_or_mem => 4,
        _ => 8,
    };

    private sealed class NullWriter : CodeWriter
    {
        public override void WriteByte(byte value)
        {
        }
    }
}
