using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// VEX-encoded vector instructions (AVX, AVX2, FMA, F16C). A VEX form of an SSE instruction runs the SSE instruction's
/// own handler (one <see cref="VexForm"/> per code, found at start-up from Iced's code names) on each 128-bit lane: the
/// lane's first source goes into a spare XMM register that stands in for the destination, a register second source into
/// another, a memory operand's upper lane is 16 bytes further on, and the results are written to the destination only
/// after both lanes ran and MXCSR's exceptions were decided, with bits 255:128 cleared for a 128-bit form. Instructions
/// without an SSE counterpart, and those that cross lanes, have their own cases.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    // Extension bits of AvxTables.IsaByCode and _avxEnabled.
    private const byte AvxIsaAvx = 1, AvxIsaAvx2 = 2, AvxIsaFma = 4, AvxIsaF16c = 8;

    // VexForm flags.
    private const byte VexNds = 1, VexYmm = 2, VexCount = 4, VexOp0Source = 8;

    /// <summary>The AVX extensions the vCPU's CPUID table advertises.</summary>
    private byte _avxEnabled;

    /// <summary>An SSE handler is running for a VEX form: no SSE enable or CPUID check of its own, no #XM yet, and 16-byte memory operands may be anywhere (the aligned VEX moves are not run through SSE handlers).</summary>
    private bool _vexLane;

    /// <summary>With <see cref="_vexLane"/>: the form writes a general register or RFLAGS (VCOMISS, VCVTSD2SI, ...), one lane only, so MXCSR's exceptions are decided by the SSE handler itself, before it writes.</summary>
    private bool _vexCommitNow;

    /// <summary>How a VEX code runs an SSE handler.</summary>
    /// <param name="Legacy">The SSE code.</param>
    /// <param name="Flags">VexNds (the VEX form has a first source in VEX.vvvv, operand 1, that the SSE form reads from its destination), VexYmm (256-bit), VexCount (the last vector source is a shift count, the same for both lanes), VexOp0Source (operand 0 is not written).</param>
    /// <param name="ImmShift">For the upper lane, the immediate is shifted right by this many bits (blends and SHUFPD select per element).</param>
    private readonly record struct VexForm(Code Legacy, byte Flags, byte ImmShift);

    /// <summary>
    /// The AVX decode tables, built at the first VEX instruction a process meets rather than with the interpreter's
    /// other tables: they take milliseconds that a process running no AVX code would otherwise pay at start-up.
    /// </summary>
    private static class AvxTables
    {
        /// <summary>Per <see cref="Code"/>: the AVX extensions it needs (0 for codes that are not VEX vector instructions).</summary>
        public static readonly byte[] IsaByCode = BuildAvxIsaByCode();

        /// <summary>Per <see cref="Code"/>: the SSE code whose handler runs a VEX form on each lane, or <see cref="Code.INVALID"/>.</summary>
        public static readonly VexForm[] VexForms = BuildVexForms();

        /// <summary>Per <see cref="Mnemonic"/>: the FMA form, or default (Kind 0xFF) for other mnemonics.</summary>
        public static readonly FmaForm[] FmaForms = BuildFmaForms();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref Vector128<byte> Yh(int i) => ref Unsafe.Add(ref Unsafe.As<XmmRegisterFile, Vector128<byte>>(ref _cpu.YmmHigh), i);

    private static bool IsVec(Register r) => r is >= Register.XMM0 and <= Register.XMM15 or >= Register.YMM0 and <= Register.YMM15;

    private static bool IsYmm(Register r) => r is >= Register.YMM0 and <= Register.YMM15;

    /// <summary>The register number of an XMM or YMM register.</summary>
    private static int VecIndex(Register r) => IsYmm(r) ? r - Register.YMM0 : r - Register.XMM0;

    private Vector256<byte> GetY(int i) => Vector256.Create(Xr(i), Yh(i));

    private void SetY(int i, Vector256<byte> v)
    {
        Xr(i) = v.GetLower();
        Yh(i) = v.GetUpper();
    }

    /// <summary>Writes a VEX destination register: a YMM register whole, an XMM register with bits 255:128 cleared.</summary>
    private void SetVexDest(Register r, Vector256<byte> v)
    {
        int i = VecIndex(r);
        Xr(i) = v.GetLower();
        Yh(i) = IsYmm(r) ? v.GetUpper() : default;
    }

    /// <summary>Operand <paramref name="i"/> as a 256-bit value: a YMM register, an XMM register (upper half zero), or memory of the instruction's memory size zero-extended, without an alignment check.</summary>
    private Vector256<byte> SrcY(ref Op op, in Instruction ins, int i)
    {
        if (ins.GetOpKind(i) == OpKind.Register)
        {
            var r = ins.GetOpRegister(i);
            int n = VecIndex(r);
            return IsYmm(r) ? GetY(n) : Vector256.Create(Xr(n), Vector128<byte>.Zero);
        }

        return ReadVecMem(Ea(ref op), ins.MemorySize.GetSize(), alignment: 1);
    }

    /// <summary>Reads <paramref name="size"/> bytes (up to 32) zero-extended; #GP when <paramref name="alignment"/> is more than 1 and the address is not a multiple of it.</summary>
    private Vector256<byte> ReadVecMem(ulong ea, int size, int alignment)
    {
        if (alignment > 1 && (ea & (ulong)(alignment - 1)) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        if (size <= 8)
        {
            return Vector256.Create(Read(ea, size), 0UL, 0UL, 0UL).AsByte();
        }

        _alignExempt = true;
        try
        {
            Span<byte> bytes = stackalloc byte[32];
            bytes.Clear();
            ReadBytes(ea, bytes[..size]);
            return Vector256.Create<byte>(bytes);
        }
        finally
        {
            _alignExempt = false;
        }
    }

    /// <summary>Writes the low <paramref name="size"/> bytes (16 or 32) of <paramref name="v"/>; the whole range is checked before any byte is stored.</summary>
    private void WriteVecMem(ulong ea, int size, Vector256<byte> v, int alignment)
    {
        if (alignment > 1 && (ea & (ulong)(alignment - 1)) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        Span<byte> bytes = stackalloc byte[32];
        v.CopyTo(bytes);
        _alignExempt = true;
        try
        {
            ProbeWrite(ea, size);
            WriteBytes(ea, bytes[..size]);
        }
        finally
        {
            _alignExempt = false;
        }
    }

    /// <summary>#UD unless the OS enabled AVX state (CR4.OSXSAVE and XCR0 bits 1 and 2) and CPUID lists the code's extension; #NM while CR0.TS is set.</summary>
    private void CheckAvxEnabled(Code code)
    {
        byte need = AvxTables.IsaByCode[(int)code];
        if (need == 0 || (need & _avxEnabled) != need || (_cpu.Cr4 & Cr4.OsXsave) == 0 || (_cpu.Xcr0 & 6) != 6)
        {
            throw Fault(Vectors.UD, 0);
        }

        if ((_cpu.Cr0 & Cr0.TaskSwitched) != 0)
        {
            throw Fault(Vectors.NM, 0);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong Avx(ref Op op, in Instruction ins)
    {
        CheckAvxEnabled(ins.Code);
        _sseFlags = 0;
        if (!ExecVexElementwise(ref op, in ins) && !ExecAvxSpecial(ref op, in ins) && !ExecAvx2(ref op, in ins) && !ExecFma(ref op, in ins))
        {
            var form = AvxTables.VexForms[(int)ins.Code];
            if (form.Legacy == Code.INVALID)
            {
                throw Fault(Vectors.UD, 0);
            }

            ExecVexLanes(ref op, in ins, form);
        }

        return op.Next;
    }

    /// <summary>Runs the SSE handler of <paramref name="form"/> on each lane of the VEX instruction <paramref name="ins"/> (see the type's summary).</summary>
    private void ExecVexLanes(ref Op op, in Instruction ins, VexForm form)
    {
        bool ymm = (form.Flags & VexYmm) != 0;
        bool nds = (form.Flags & VexNds) != 0;
        bool destVec = (form.Flags & VexOp0Source) == 0 && ins.Op0Kind == OpKind.Register && IsVec(ins.Op0Register);

        // Two stand-in registers the instruction does not name (nor XMM0, which some SSE forms use implicitly); their
        // values are put back whatever happens.
        uint named = 1;
        for (int i = 0; i < ins.OpCount; i++)
        {
            if (ins.GetOpKind(i) == OpKind.Register && IsVec(ins.GetOpRegister(i)))
            {
                named |= 1u << VecIndex(ins.GetOpRegister(i));
            }
        }

        int t0 = BitOperations.TrailingZeroCount(~named & 0xFFFF);
        int t1 = BitOperations.TrailingZeroCount(~(named | (1u << t0)) & 0xFFFF);
        var saved0 = Xr(t0);
        var saved1 = Xr(t1);
        var li = ins;
        li.Code = form.Legacy;
        Vector128<byte> lo = default, hi = default;
        _vexLane = true;
        _vexCommitNow = !destVec && !ymm;
        try
        {
            for (int h = 0; h < (ymm ? 2 : 1); h++)
            {
                Op lane = op;
                if (destVec)
                {
                    var first = ins.GetOpRegister(nds ? 1 : 0);
                    Xr(t0) = h == 0 ? Xr(VecIndex(first)) : Yh(VecIndex(first));
                    li.Op0Kind = OpKind.Register;
                    li.Op0Register = Register.XMM0 + t0;
                }

                SetLaneOperands(ref lane, ref li, in ins, form, h, t1);
                ExecSseBody(ref lane, in li);
                if (destVec)
                {
                    (h == 0 ? ref lo : ref hi) = Xr(t0);
                }
            }
        }
        finally
        {
            _vexLane = false;
            _vexCommitNow = false;
            Xr(t0) = saved0;
            Xr(t1) = saved1;
        }

        CommitSseFlags();
        if (destVec)
        {
            int d = VecIndex(ins.Op0Register);
            Xr(d) = lo;
            Yh(d) = hi;
        }
        else if (ins.Mnemonic is Mnemonic.Vpcmpestrm or Mnemonic.Vpcmpestrm64 or Mnemonic.Vpcmpistrm)
        {
            Yh(0) = default; // the mask went to XMM0, a VEX write: bits 255:128 cleared
        }
    }

    /// <summary>Operands 1 and up of the SSE stand-in <paramref name="li"/> for lane <paramref name="h"/>: a vector register's lane in stand-in <paramref name="t1"/>, memory 16 bytes on for the upper lane, the immediate shifted for it where elements select.</summary>
    private void SetLaneOperands(ref Op lane, ref Instruction li, in Instruction ins, VexForm form, int h, int t1)
    {
        bool nds = (form.Flags & VexNds) != 0;
        bool count = (form.Flags & VexCount) != 0;
        for (int j = 1; j < li.OpCount; j++)
        {
            int v = nds ? j + 1 : j;
            var kind = ins.GetOpKind(v);
            li.SetOpKind(j, kind);
            if (kind == OpKind.Register)
            {
                var r = ins.GetOpRegister(v);
                if (IsVec(r))
                {
                    // The lower lane reads the register itself (VMASKMOVDQU has two vector sources); the upper one its
                    // upper half, through the stand-in.
                    int n = VecIndex(r);
                    r = Register.XMM0 + n;
                    if (h == 1 && !count)
                    {
                        Xr(t1) = Yh(n);
                        r = Register.XMM0 + t1;
                    }
                }

                li.SetOpRegister(j, r);
            }
            else if (kind == OpKind.Memory && h == 1 && !count)
            {
                lane.Disp += 16;
            }
            else if (kind == OpKind.Immediate8 && h == 1)
            {
                li.Immediate8 = (byte)(ins.Immediate8 >> form.ImmShift);
            }
        }
    }

    private static byte[] BuildAvxIsaByCode()
    {
        var map = new byte[Enum.GetValues<Code>().Length];
        foreach (var code in Enum.GetValues<Code>())
        {
            if (code.ToOpCode().Encoding != EncodingKind.VEX)
            {
                continue;
            }

            byte need = 0;
            bool other = false;
            foreach (var f in code.CpuidFeatures())
            {
                switch (f)
                {
                    case Iced.Intel.CpuidFeature.AVX: need |= AvxIsaAvx; break;
                    case Iced.Intel.CpuidFeature.AVX2: need |= AvxIsaAvx2; break;
                    case Iced.Intel.CpuidFeature.FMA: need |= AvxIsaFma; break;
                    case Iced.Intel.CpuidFeature.F16C: need |= AvxIsaF16c; break;
                    default: other = true; break;
                }
            }

            // Codes that also need another extension (VAES, VPCLMULQDQ, AES, GFNI, AVX-VNNI, ...) stay invalid.
            map[(int)code] = other ? (byte)0 : need;
        }

        return map;
    }

    /// <summary>Whether <paramref name="code"/> is a VEX vector instruction of AVX, AVX2, FMA or F16C (the AVX handler's forms).</summary>
    internal static bool IsAvxCode(Code code) => AvxTables.IsaByCode[(int)code] != 0;

    private static VexForm[] BuildVexForms()
    {
        var forms = new VexForm[Enum.GetValues<Code>().Length];
        var names = new Dictionary<string, Code>(StringComparer.Ordinal);
        foreach (var code in Enum.GetValues<Code>())
        {
            if (code.ToOpCode().Encoding == EncodingKind.Legacy)
            {
                names[code.ToString()] = code;
            }
        }

        foreach (var code in Enum.GetValues<Code>())
        {
            if (AvxTables.IsaByCode[(int)code] == 0)
            {
                continue;
            }

            string name = code.ToString();
            if (!name.StartsWith("VEX_V", StringComparison.Ordinal))
            {
                continue;
            }

            string[] parts = name[5..].Split('_');
            string mnemonic = char.ToUpperInvariant(parts[0][0]) + parts[0][1..];
            bool ymm = name.Contains("ymm", StringComparison.Ordinal);
            string[] ops = [.. parts.Skip(1).Select(o => o.Replace("ymmm256", "xmmm128", StringComparison.Ordinal).Replace("ymm", "xmm", StringComparison.Ordinal).Replace("m256", "m128", StringComparison.Ordinal))];
            byte flags = ymm ? VexYmm : (byte)0;
            Code legacy = Code.INVALID;
            bool nds = false;
            if (names.TryGetValue(string.Join('_', [mnemonic, .. ops]), out var same))
            {
                legacy = same;
            }
            else if (ops.Length >= 2 && names.TryGetValue(string.Join('_', [mnemonic, ops[0], .. ops.Skip(2)]), out var withNds))
            {
                legacy = withNds;
                nds = true;
            }

            flags |= nds ? VexNds : (byte)0;

            if (legacy == Code.INVALID)
            {
                continue;
            }

            var m = legacy.Mnemonic();
            if (m is Mnemonic.Movaps or Mnemonic.Movapd or Mnemonic.Movdqa or Mnemonic.Movntps or Mnemonic.Movntpd or Mnemonic.Movntdq
                or Mnemonic.Movntdqa or Mnemonic.Movups or Mnemonic.Movupd or Mnemonic.Movdqu or Mnemonic.Lddqu
                || (ymm && m is Mnemonic.Pmovmskb or Mnemonic.Movmskps or Mnemonic.Movmskpd or Mnemonic.Ptest or Mnemonic.Cvtpd2ps
                    or Mnemonic.Cvtpd2dq or Mnemonic.Cvttpd2dq))
            {
                continue; // whole-register moves (aligned to their size or not), and 256-bit forms across the lanes: their own cases
            }

            if (m is Mnemonic.Ptest or Mnemonic.Comiss or Mnemonic.Comisd or Mnemonic.Ucomiss or Mnemonic.Ucomisd
                or Mnemonic.Pcmpestri or Mnemonic.Pcmpestri64 or Mnemonic.Pcmpestrm or Mnemonic.Pcmpestrm64 or Mnemonic.Pcmpistri or Mnemonic.Pcmpistrm)
            {
                flags |= VexOp0Source;
            }

            if (m is Mnemonic.Psllw or Mnemonic.Pslld or Mnemonic.Psllq or Mnemonic.Psrlw or Mnemonic.Psrld or Mnemonic.Psrlq or Mnemonic.Psraw or Mnemonic.Psrad
                && ops[^1] == "xmmm128")
            {
                flags |= VexCount;
            }

            byte immShift = m switch
            {
                Mnemonic.Blendps => 4,
                Mnemonic.Blendpd or Mnemonic.Shufpd => 2,
                Mnemonic.Mpsadbw => 3,
                _ => 0,
            };
            forms[(int)code] = new VexForm(legacy, flags, immShift);
        }

        return forms;
    }
}
