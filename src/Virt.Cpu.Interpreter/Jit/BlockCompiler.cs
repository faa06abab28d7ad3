using System.Reflection;
using System.Reflection.Emit;

namespace Virt.Cpu.Interpreter.Jit;

/// <summary>
/// Translates one decoded <see cref="Block"/> to IL (a collectible <see cref="DynamicMethod"/> the .NET JIT
/// compiles). Each op is specialised: registers, sizes, immediates and displacements are constants. The common
/// integer forms run inline on guest registers held in IL locals; memory accesses inline the software TLB's
/// fast path and call the interpreter's slow path; every other form calls <see cref="InterpreterVcpu.JitStep"/>,
/// which runs that one op as the interpreter does. Before anything that can fault, exit or read CPU state the
/// locals and the pending flags are written back, and <c>_opIndex</c> names the op, so a fault restarts at the
/// faulting instruction with those before it retired. A block whose final branch targets its own start loops
/// in place while the budget allows a whole iteration and nothing needs the run loop.
/// </summary>
internal sealed class BlockCompiler
{
    private const BindingFlags Any = BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic;

    private static readonly FieldInfo CpuField = Field(typeof(InterpreterVcpu), "_cpu");
    private static readonly FieldInfo RetiredField = Field(typeof(InterpreterVcpu), "_retired");
    private static readonly FieldInfo ExitRequestedField = Field(typeof(InterpreterVcpu), "_exitRequested");
    private static readonly FieldInfo RemoteCodeWriteField = Field(typeof(InterpreterVcpu), "_remoteCodeWritePending");
    private static readonly FieldInfo WriteTlbFlushField = Field(typeof(InterpreterVcpu), "_writeTlbFlushRequested");
    private static readonly FieldInfo PlatField = Field(typeof(InterpreterVcpu), "_plat");
    private static readonly FieldInfo AttentionField = Field(typeof(InterpreterPlatform), "_attention");
    private static readonly MethodInfo LoopLimitMethod = Method(nameof(InterpreterVcpu.JitLoopLimit));
    private static readonly FieldInfo StopField = Field(typeof(InterpreterVcpu), "_stop");
    private static readonly FieldInfo OpIndexField = Field(typeof(InterpreterVcpu), "_opIndex");
    private static readonly FieldInfo RtlbField = Field(typeof(InterpreterVcpu), "_rtlb");
    private static readonly FieldInfo WtlbField = Field(typeof(InterpreterVcpu), "_wtlb");
    private static readonly FieldInfo GprField = Field(typeof(CpuState), nameof(CpuState.Gpr));
    private static readonly FieldInfo GprElement = Field(typeof(GprFile), "_element0");
    private static readonly FieldInfo SegBaseField = Field(typeof(CpuState), nameof(CpuState.SegBase));
    private static readonly FieldInfo SegBaseElement = Field(typeof(SegmentBaseFile), "_element0");
    private static readonly FieldInfo RipField = Field(typeof(CpuState), nameof(CpuState.Rip));
    private static readonly FieldInfo LzOpField = Field(typeof(CpuState), nameof(CpuState.LzOp));
    private static readonly FieldInfo LzSizeField = Field(typeof(CpuState), nameof(CpuState.LzSize));
    private static readonly FieldInfo LzAField = Field(typeof(CpuState), nameof(CpuState.LzA));
    private static readonly FieldInfo LzBField = Field(typeof(CpuState), nameof(CpuState.LzB));
    private static readonly FieldInfo LzRField = Field(typeof(CpuState), nameof(CpuState.LzR));
    private static readonly FieldInfo LzCfField = Field(typeof(CpuState), nameof(CpuState.LzCf));
    private static readonly FieldInfo TagField = Field(typeof(TlbEntry), nameof(TlbEntry.Tag));
    private static readonly FieldInfo HostField = Field(typeof(TlbEntry), nameof(TlbEntry.Host));
    private static readonly MethodInfo StepMethod = Method(nameof(InterpreterVcpu.JitStep));
    private static readonly MethodInfo CarryMethod = Method(nameof(InterpreterVcpu.JitCarry));
    private static readonly MethodInfo CondMethod = Method(nameof(InterpreterVcpu.JitCond));
    private static readonly MethodInfo ReadSlowMethod = Method(nameof(InterpreterVcpu.JitReadSlow));
    private static readonly MethodInfo ReadRmwSlowMethod = Method(nameof(InterpreterVcpu.JitReadRmwSlow));
    private static readonly MethodInfo WriteSlowMethod = Method(nameof(InterpreterVcpu.JitWriteSlow));
    private static readonly MethodInfo MayIterateMethod = Method(nameof(InterpreterVcpu.JitMayIterate));

    // Lazy-flag kinds (InterpreterVcpu.Flags.cs): -1 here means "in CpuState, not known at compile time".
    private const int Unknown = -1, LzAdd = 1, LzSub = 2, LzLogic = 3, LzInc = 4, LzDec = 5;

    private readonly Block _b;
    private readonly Op[] _ops;
    private readonly ILGenerator _il;
    private readonly int _bitness;
    private readonly ulong _userKey;
    private readonly LocalBuilder?[] _reg = new LocalBuilder?[16];
    private readonly LocalBuilder _gpr, _cpu, _rtlb, _wtlb, _lin, _val, _entry, _tmp;
    private readonly LocalBuilder _fa, _fb, _fr, _fcf, _ta, _tb, _tc;
    private int _flagKind = Unknown;
    private int _flagSize;
    private bool _flagsDirty;

    private BlockCompiler(Block b, ILGenerator il)
    {
        _b = b;
        _ops = b.Ops;
        _il = il;
        _bitness = b.ModeKey & 0x7F;
        _userKey = (ulong)(b.ModeKey >> 7) & 1;
        _gpr = il.DeclareLocal(typeof(ulong).MakeByRefType());
        _cpu = il.DeclareLocal(typeof(CpuState).MakeByRefType());
        _rtlb = il.DeclareLocal(typeof(TlbEntry[]));
        _wtlb = il.DeclareLocal(typeof(TlbEntry[]));
        _entry = il.DeclareLocal(typeof(TlbEntry).MakeByRefType());
        _lin = il.DeclareLocal(typeof(ulong));
        _val = il.DeclareLocal(typeof(ulong));
        _tmp = il.DeclareLocal(typeof(ulong));
        _fa = il.DeclareLocal(typeof(ulong));
        _fb = il.DeclareLocal(typeof(ulong));
        _fr = il.DeclareLocal(typeof(ulong));
        _fcf = il.DeclareLocal(typeof(ulong));
        _ta = il.DeclareLocal(typeof(ulong));
        _tb = il.DeclareLocal(typeof(ulong));
        _tc = il.DeclareLocal(typeof(ulong));
    }

    /// <summary>Compiles <paramref name="b"/>, or returns null when no op of it would run inline (compiling would gain nothing).</summary>
    public static CompiledBlock? Compile(Block b)
    {
        var ops = b.Ops;
        if (b.Count == 0 || ops.Length < b.Count)
        {
            return null;
        }

        bool any = false;
        for (int i = 0; i < b.Count; i++)
        {
            any |= IsInline(in ops[i], b.ModeKey & 0x7F, i == b.Count - 1);
        }

        if (!any)
        {
            return null;
        }

        var dm = new DynamicMethod($"guest_{b.Lin:x}", typeof(void), [typeof(InterpreterVcpu), typeof(Block)], typeof(InterpreterVcpu), skipVisibility: true);
        var il = dm.GetILGenerator(256 + (b.Count * 160));
        new BlockCompiler(b, il).Emit();
        return dm.CreateDelegate<CompiledBlock>();
    }

    private static FieldInfo Field(Type t, string name) =>
        t.GetField(name, Any) ?? throw new MissingFieldException(t.Name, name);

    private static MethodInfo Method(string name) =>
        typeof(InterpreterVcpu).GetMethod(name, Any) ?? throw new MissingMethodException(nameof(InterpreterVcpu), name);

    private static ulong Mask(int size) => size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    private static bool IsAluInlineSub(byte sub) => sub is Translator.AluAdd or Translator.AluOr or Translator.AluAnd
        or Translator.AluSub or Translator.AluXor or Translator.AluCmp or Translator.AluTest;

    private static bool MemOk(in Op op) => op.AddrSize is 8 or 4 or 2 && op.Seg < 6;

    /// <summary>Whether the compiled code runs <paramref name="op"/> itself (else it calls the interpreter for it).</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per inline form, each with the operand shapes the emitter handles.")]
    private static bool IsInline(in Op op, int bitness, bool last)
    {
        _ = bitness;
        switch (op.Inline)
        {
            case InlineOp.Nop:
                return true;
            case InlineOp.AluRR:
            case InlineOp.AluRI:
                return IsAluInlineSub(op.Sub) && op.Size is 1 or 2 or 4 or 8;
            case InlineOp.AluRR64:
            case InlineOp.AluRI64:
                return IsAluInlineSub(op.Sub);
            case InlineOp.Alu:
                return IsAluInlineSub(op.Sub) && op.Size is 1 or 2 or 4 or 8 && OperandsOk(in op);
            case InlineOp.IncDecR64:
                return true;
            case InlineOp.IncDec:
                return op.Size is 1 or 2 or 4 or 8 && (op.K0 == OpKindX.Reg || (op.K0 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.MovRR:
            case InlineOp.MovRI:
                return op.Size is 1 or 2 or 4 or 8;
            case InlineOp.MovRM:
            case InlineOp.MovMR:
                return op.Size is 1 or 2 or 4 or 8 && MemOk(in op);
            case InlineOp.Mov:
                return op.Size is 1 or 2 or 4 or 8 && OperandsOk(in op) && op.K0 is OpKindX.Reg or OpKindX.Mem;
            case InlineOp.Lea:
                return op.Size is 2 or 4 or 8 && op.AddrSize is 2 or 4 or 8;
            case InlineOp.Movzx:
            case InlineOp.Movsx:
                return op.Size is 1 or 2 or 4 or 8 && op.Size2 is 1 or 2 or 4 or 8 && op.K0 == OpKindX.Reg
                    && (op.K1 == OpKindX.Reg || (op.K1 == OpKindX.Mem && MemOk(in op)));
            case InlineOp.Jcc:
            case InlineOp.Jmp:
                return last;
            default:
                return false;
        }
    }

    private static bool OperandsOk(in Op op)
    {
        bool mem = op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem;
        return (op.K0 is OpKindX.Reg or OpKindX.Mem) && (op.K1 is OpKindX.Reg or OpKindX.Mem or OpKindX.Imm) && (!mem || MemOk(in op))
            && !(op.K0 == OpKindX.Mem && op.K1 == OpKindX.Mem);
    }

    private static ulong OpStart(in Op op) => op.Next - op.Len;

    // ---- Registers -----------------------------------------------------------------------------------

    private void Use(int r)
    {
        if (r >= 16)
        {
            r -= 16;
        }

        _reg[r] ??= _il.DeclareLocal(typeof(ulong));
    }

    private void UseOperandRegs(in Op op, bool k0, bool k1)
    {
        if (k0 && op.K0 == OpKindX.Reg)
        {
            Use(RegOf(op.R0, op.Size));
        }

        if (k1 && op.K1 == OpKindX.Reg)
        {
            Use(RegOf(op.R1, op.Inline is InlineOp.Movzx or InlineOp.Movsx ? op.Size2 : op.Size));
        }

        if (op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem || op.Inline == InlineOp.Lea)
        {
            if (op.Base != 0xFF)
            {
                Use(op.Base);
            }

            if (op.Index != 0xFF)
            {
                Use(op.Index);
            }
        }
    }

    private static int RegOf(int r, int size) => size == 1 && r >= 16 ? r - 16 : r;

    private void LoadGprAddress(int r)
    {
        _il.Emit(OpCodes.Ldloc, _gpr);
        if (r != 0)
        {
            _il.Emit(OpCodes.Ldc_I4, r * 8);
            _il.Emit(OpCodes.Add);
        }
    }

    private void LoadAllRegs()
    {
        for (int r = 0; r < 16; r++)
        {
            if (_reg[r] is { } l)
            {
                LoadGprAddress(r);
                _il.Emit(OpCodes.Ldind_I8);
                _il.Emit(OpCodes.Stloc, l);
            }
        }
    }

    private void WriteBackRegs()
    {
        for (int r = 0; r < 16; r++)
        {
            if (_reg[r] is { } l)
            {
                LoadGprAddress(r);
                _il.Emit(OpCodes.Ldloc, l);
                _il.Emit(OpCodes.Stind_I8);
            }
        }
    }

    /// <summary>Pushes register <paramref name="r"/> of <paramref name="size"/> bytes, zero-extended to 64 bits.</summary>
    private void GetReg(int r, int size)
    {
        if (size == 1 && r >= 16)
        {
            _il.Emit(OpCodes.Ldloc, _reg[r - 16]!);
            _il.Emit(OpCodes.Ldc_I4_8);
            _il.Emit(OpCodes.Shr_Un);
            _il.Emit(OpCodes.Conv_U1);
            _il.Emit(OpCodes.Conv_U8);
            return;
        }

        _il.Emit(OpCodes.Ldloc, _reg[r]!);
        switch (size)
        {
            case 4: _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Conv_U8); break;
            case 2: _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Conv_U8); break;
            case 1: _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Conv_U8); break;
            default: break;
        }
    }

    /// <summary>Stores the value on the stack into register <paramref name="r"/> as an x86 write of <paramref name="size"/> bytes does.</summary>
    private void SetReg(int r, int size)
    {
        if (size == 8)
        {
            _il.Emit(OpCodes.Stloc, _reg[r]!);
            return;
        }

        if (size == 4)
        {
            _il.Emit(OpCodes.Conv_U4);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Stloc, _reg[r]!);
            return;
        }

        _il.Emit(OpCodes.Stloc, _tmp);
        int full = RegOf(r, size);
        var l = _reg[full]!;
        _il.Emit(OpCodes.Ldloc, l);
        if (size == 2)
        {
            _il.Emit(OpCodes.Ldc_I8, unchecked((long)~0xFFFFUL));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _tmp);
            _il.Emit(OpCodes.Conv_U2);
            _il.Emit(OpCodes.Conv_U8);
        }
        else if (r < 16)
        {
            _il.Emit(OpCodes.Ldc_I8, unchecked((long)~0xFFUL));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _tmp);
            _il.Emit(OpCodes.Conv_U1);
            _il.Emit(OpCodes.Conv_U8);
        }
        else
        {
            _il.Emit(OpCodes.Ldc_I8, unchecked((long)~0xFF00UL));
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _tmp);
            _il.Emit(OpCodes.Conv_U1);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Ldc_I4_8);
            _il.Emit(OpCodes.Shl);
        }

        _il.Emit(OpCodes.Or);
        _il.Emit(OpCodes.Stloc, l);
    }

    // ---- Flags ---------------------------------------------------------------------------------------

    private void SetFlags(int kind, int size)
    {
        _flagKind = kind;
        _flagSize = size;
        _flagsDirty = true;
    }

    private void StoreCpuField(FieldInfo f, LocalBuilder value)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldloc, value);
        _il.Emit(OpCodes.Stfld, f);
    }

    private void StoreCpuField(FieldInfo f, int value)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldc_I4, value);
        _il.Emit(OpCodes.Stfld, f);
    }

    /// <summary>Stores the pending flags into the lazy-flag fields of <see cref="CpuState"/> (no change to what the compiler knows).</summary>
    private void EmitFlagStore()
    {
        if (!_flagsDirty || _flagKind == Unknown)
        {
            return;
        }

        StoreCpuField(LzOpField, _flagKind);
        StoreCpuField(LzSizeField, _flagSize);
        StoreCpuField(LzAField, _fa);
        StoreCpuField(LzBField, _fb);
        StoreCpuField(LzRField, _fr);
        if (_flagKind is LzInc or LzDec)
        {
            StoreCpuField(LzCfField, _fcf);
        }
    }

    /// <summary>Writes registers and flags back: after this the CPU state is what the interpreter would hold.</summary>
    private void EmitSync(int opIndex)
    {
        WriteBackRegs();
        EmitFlagStore();
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldc_I4, opIndex);
        _il.Emit(OpCodes.Stfld, OpIndexField);
    }

    /// <summary>Pushes the carry flag (0 or 1) as a ulong.</summary>
    private void EmitCarry()
    {
        switch (_flagKind)
        {
            case LzAdd:
                _il.Emit(OpCodes.Ldloc, _fr);
                _il.Emit(OpCodes.Ldloc, _fa);
                _il.Emit(OpCodes.Clt_Un);
                _il.Emit(OpCodes.Conv_U8);
                break;
            case LzSub:
                _il.Emit(OpCodes.Ldloc, _fa);
                _il.Emit(OpCodes.Ldloc, _fb);
                _il.Emit(OpCodes.Clt_Un);
                _il.Emit(OpCodes.Conv_U8);
                break;
            case LzLogic:
                _il.Emit(OpCodes.Ldc_I4_0);
                _il.Emit(OpCodes.Conv_U8);
                break;
            case LzInc:
            case LzDec:
                _il.Emit(OpCodes.Ldloc, _fcf);
                break;
            default:
                _il.Emit(OpCodes.Ldarg_0);
                _il.Emit(OpCodes.Call, CarryMethod);
                break;
        }
    }

    private void SignExtend(LocalBuilder v, int size)
    {
        _il.Emit(OpCodes.Ldloc, v);
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_I1); _il.Emit(OpCodes.Conv_I8); break;
            case 2: _il.Emit(OpCodes.Conv_I2); _il.Emit(OpCodes.Conv_I8); break;
            case 4: _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Conv_I8); break;
            default: break;
        }
    }

    private void EmitSignOfResult()
    {
        _il.Emit(OpCodes.Ldloc, _fr);
        _il.Emit(OpCodes.Ldc_I8, unchecked((long)(1UL << ((_flagSize * 8) - 1))));
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Cgt_Un);
    }

    private void EmitZeroResult()
    {
        _il.Emit(OpCodes.Ldloc, _fr);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Ceq);
    }

    /// <summary>Pushes condition <paramref name="cc"/> (an int32, 0 or 1), straight from the operands where the producer is known.</summary>
    private void EmitCondition(int cc)
    {
        int c = cc >> 1;
        bool direct = true;
        if (_flagKind != Unknown && c == 2)
        {
            EmitZeroResult();
        }
        else if (_flagKind != Unknown && c == 4)
        {
            EmitSignOfResult();
        }
        else if (_flagKind == LzSub && c is 1 or 3 or 6 or 7)
        {
            bool signed = c >= 6;
            if (signed)
            {
                SignExtend(_fa, _flagSize);
                SignExtend(_fb, _flagSize);
            }
            else
            {
                _il.Emit(OpCodes.Ldloc, _fa);
                _il.Emit(OpCodes.Ldloc, _fb);
            }

            if (c is 1 or 6)
            {
                _il.Emit(signed ? OpCodes.Clt : OpCodes.Clt_Un);
            }
            else
            {
                // a <= b is !(a > b)
                _il.Emit(signed ? OpCodes.Cgt : OpCodes.Cgt_Un);
                _il.Emit(OpCodes.Ldc_I4_0);
                _il.Emit(OpCodes.Ceq);
            }
        }
        else if (_flagKind == LzLogic && c is 0 or 1)
        {
            _il.Emit(OpCodes.Ldc_I4_0);
        }
        else if (_flagKind == LzLogic && c is 3)
        {
            EmitZeroResult();
        }
        else if (_flagKind == LzLogic && c is 6)
        {
            EmitSignOfResult();
        }
        else if (_flagKind == LzLogic && c is 7)
        {
            EmitZeroResult();
            EmitSignOfResult();
            _il.Emit(OpCodes.Or);
        }
        else if (_flagKind == LzAdd && c == 1)
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Ldloc, _fa);
            _il.Emit(OpCodes.Clt_Un);
        }
        else if (_flagKind is LzInc or LzDec && c == 1)
        {
            _il.Emit(OpCodes.Ldloc, _fcf);
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Cgt_Un);
        }
        else
        {
            direct = false;
            EmitFlagStore();
            _flagsDirty = false;
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldc_I4, cc);
            _il.Emit(OpCodes.Call, CondMethod);
        }

        if (direct && (cc & 1) != 0)
        {
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Ceq);
        }
    }

    // ---- Memory --------------------------------------------------------------------------------------

    /// <summary>Computes the linear address of the memory operand into <see cref="_lin"/>.</summary>
    private void EmitLinear(in Op op)
    {
        EmitOffset(in op);
        if (op.AddrSize != 8 || op.Seg >= 4 || _bitness != 64)
        {
            _il.Emit(OpCodes.Ldloc, _cpu);
            _il.Emit(OpCodes.Ldflda, SegBaseField);
            _il.Emit(OpCodes.Ldflda, SegBaseElement);
            if (op.Seg != 0)
            {
                _il.Emit(OpCodes.Ldc_I4, op.Seg * 8);
                _il.Emit(OpCodes.Add);
            }

            _il.Emit(OpCodes.Ldind_I8);
            _il.Emit(OpCodes.Add);
            if (op.AddrSize != 8 && _bitness != 64)
            {
                _il.Emit(OpCodes.Ldc_I8, 0xFFFFFFFFL);
                _il.Emit(OpCodes.And);
            }
        }

        _il.Emit(OpCodes.Stloc, _lin);
    }

    /// <summary>Pushes the offset of the memory operand (before the segment base), wrapped to the address size.</summary>
    private void EmitOffset(in Op op)
    {
        _il.Emit(OpCodes.Ldc_I8, op.Disp);
        if (op.Base != 0xFF)
        {
            _il.Emit(OpCodes.Ldloc, _reg[op.Base]!);
            _il.Emit(OpCodes.Add);
        }

        if (op.Index != 0xFF)
        {
            _il.Emit(OpCodes.Ldloc, _reg[op.Index]!);
            if (op.Scale != 0)
            {
                _il.Emit(OpCodes.Ldc_I4, (int)op.Scale);
                _il.Emit(OpCodes.Shl);
            }

            _il.Emit(OpCodes.Add);
        }

        if (op.AddrSize == 4)
        {
            _il.Emit(OpCodes.Ldc_I8, 0xFFFFFFFFL);
            _il.Emit(OpCodes.And);
        }
        else if (op.AddrSize == 2)
        {
            _il.Emit(OpCodes.Ldc_I8, 0xFFFFL);
            _il.Emit(OpCodes.And);
        }
    }

    /// <summary>Branches to <paramref name="slow"/> unless the TLB entry (read or write) maps <see cref="_lin"/> for <paramref name="size"/> bytes; leaves the entry in <see cref="_entry"/>.</summary>
    private void EmitTlbCheck(LocalBuilder tlb, int size, Label slow)
    {
        _il.Emit(OpCodes.Ldloc, tlb);
        _il.Emit(OpCodes.Ldloc, _lin);
        _il.Emit(OpCodes.Ldc_I4, 12);
        _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Conv_I4);
        _il.Emit(OpCodes.Ldc_I4, 0xFF);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldelema, typeof(TlbEntry));
        _il.Emit(OpCodes.Stloc, _entry);
        _il.Emit(OpCodes.Ldloc, _entry);
        _il.Emit(OpCodes.Ldfld, TagField);
        _il.Emit(OpCodes.Ldloc, _lin);
        _il.Emit(OpCodes.Ldc_I4, 11);
        _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Ldc_I8, unchecked((long)~1UL));
        _il.Emit(OpCodes.And);
        if (_userKey != 0)
        {
            _il.Emit(OpCodes.Ldc_I4_1);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Or);
        }

        _il.Emit(OpCodes.Bne_Un, slow);
        if (size > 1)
        {
            _il.Emit(OpCodes.Ldloc, _lin);
            _il.Emit(OpCodes.Ldc_I8, 0xFFFL);
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldc_I8, (long)(4096 - size));
            _il.Emit(OpCodes.Bgt_Un, slow);
        }
    }

    private void EmitHostPointer()
    {
        _il.Emit(OpCodes.Ldloc, _entry);
        _il.Emit(OpCodes.Ldfld, HostField);
        _il.Emit(OpCodes.Ldloc, _lin);
        _il.Emit(OpCodes.Ldc_I8, 0xFFFL);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Conv_I);
        _il.Emit(OpCodes.Add);
    }

    /// <summary>Reads <paramref name="size"/> bytes at <see cref="_lin"/> into <see cref="_val"/> (RMW: checked for writing first).</summary>
    private void EmitRead(int size, int opIndex, bool rmw)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitTlbCheck(rmw ? _wtlb : _rtlb, size, slow);
        EmitHostPointer();
        if (size > 1)
        {
            _il.Emit(OpCodes.Unaligned, (byte)1);
        }

        switch (size)
        {
            case 1: _il.Emit(OpCodes.Ldind_U1); _il.Emit(OpCodes.Conv_U8); break;
            case 2: _il.Emit(OpCodes.Ldind_U2); _il.Emit(OpCodes.Conv_U8); break;
            case 4: _il.Emit(OpCodes.Ldind_U4); _il.Emit(OpCodes.Conv_U8); break;
            default: _il.Emit(OpCodes.Ldind_I8); break;
        }

        _il.Emit(OpCodes.Stloc, _val);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(slow);
        EmitSync(opIndex);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldloc, _lin);
        _il.Emit(OpCodes.Ldc_I4, size);
        _il.Emit(OpCodes.Call, rmw ? ReadRmwSlowMethod : ReadSlowMethod);
        _il.Emit(OpCodes.Stloc, _val);
        _il.MarkLabel(done);
    }

    /// <summary>Writes the low <paramref name="size"/> bytes of <paramref name="value"/> at <see cref="_lin"/>; a write that hits cached code ends the block after this instruction.</summary>
    private void EmitWrite(int size, LocalBuilder value, int opIndex)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitTlbCheck(_wtlb, size, slow);
        EmitHostPointer();
        _il.Emit(OpCodes.Ldloc, value);
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Stind_I1); break;
            case 2: _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Unaligned, (byte)1); _il.Emit(OpCodes.Stind_I2); break;
            case 4: _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Unaligned, (byte)1); _il.Emit(OpCodes.Stind_I4); break;
            default: _il.Emit(OpCodes.Unaligned, (byte)1); _il.Emit(OpCodes.Stind_I8); break;
        }

        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(slow);
        EmitSync(opIndex);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldloc, _lin);
        _il.Emit(OpCodes.Ldc_I4, size);
        _il.Emit(OpCodes.Ldloc, value);
        _il.Emit(OpCodes.Call, WriteSlowMethod);

        // A write to a page with cached code invalidated blocks (maybe this one): stop after this instruction.
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldfld, StopField);
        _il.Emit(OpCodes.Brfalse, done);
        EmitRetire(opIndex + 1);
        EmitSetRip(_ops[opIndex].Next);
        _il.Emit(OpCodes.Ret);
        _il.MarkLabel(done);
    }

    // ---- Exits ---------------------------------------------------------------------------------------

    private void EmitRetire(int count)
    {
        if (count == 0)
        {
            return;
        }

        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldfld, RetiredField);
        _il.Emit(OpCodes.Ldc_I8, (long)count);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Stfld, RetiredField);
    }

    private void EmitSetRip(ulong rip)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldc_I8, unchecked((long)rip));
        _il.Emit(OpCodes.Stfld, RipField);
    }

    // ---- The block -----------------------------------------------------------------------------------

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The dispatch over inline forms, one emitter each.")]
    private void Emit()
    {
        int n = _b.Count;
        bool[] inline = new bool[n];
        for (int i = 0; i < n; i++)
        {
            inline[i] = IsInline(in _ops[i], _bitness, i == n - 1);
            _hasFallback |= !inline[i];
            if (inline[i])
            {
                UseOperandRegs(in _ops[i], true, true);
            }
        }

        // Prologue: references to the register file, the CPU state and the TLBs; registers into locals.
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldflda, CpuField);
        _il.Emit(OpCodes.Stloc, _cpu);
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldflda, GprField);
        _il.Emit(OpCodes.Ldflda, GprElement);
        _il.Emit(OpCodes.Stloc, _gpr);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldfld, RtlbField);
        _il.Emit(OpCodes.Stloc, _rtlb);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldfld, WtlbField);
        _il.Emit(OpCodes.Stloc, _wtlb);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Stfld, StopField);
        LoadAllRegs();

        ulong startRip = OpStart(in _ops[0]);
        ref Op lastOp = ref _ops[n - 1];
        bool selfLoop = inline[n - 1] && IsBranch(in lastOp) && lastOp.Target == startRip;
        if (selfLoop && !_hasFallback)
        {
            _loopLimit = _il.DeclareLocal(typeof(long));
            _plat = _il.DeclareLocal(typeof(InterpreterPlatform));
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldc_I4, n);
            _il.Emit(OpCodes.Call, LoopLimitMethod);
            _il.Emit(OpCodes.Stloc, _loopLimit);
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldfld, PlatField);
            _il.Emit(OpCodes.Stloc, _plat);
        }

        _headLabel = _il.DefineLabel();
        if (selfLoop && !_hasFallback)
        {
            // The first iteration starts from flags in the CPU state; later ones from the flags of the one before,
            // still in locals: emit the body twice and loop on the second copy, so no iteration stores flags.
            _flagKind = Unknown;
            _flagsDirty = false;
            EmitOps(inline, startRip);
            _il.MarkLabel(_headLabel);
            _flagKind = _loopFlagKind;
            _flagSize = _loopFlagSize;
            _flagsDirty = _flagKind != Unknown;
            EmitOps(inline, startRip);
        }
        else
        {
            _il.MarkLabel(_headLabel);
            _flagKind = Unknown;
            _flagsDirty = false;
            EmitOps(inline, startRip);
        }
    }

    private LocalBuilder? _loopLimit;
    private LocalBuilder? _plat;
    private bool _hasFallback;
    private int _loopFlagKind = Unknown;
    private int _loopFlagSize;

    private void EmitOps(bool[] inline, ulong startRip)
    {
        int n = inline.Length;
        for (int i = 0; i < n; i++)
        {
            ref Op op = ref _ops[i];
            bool last = i == n - 1;
            if (!inline[i])
            {
                EmitFallback(i, last);
                continue;
            }

            switch (op.Inline)
            {
                case InlineOp.Nop:
                    break;
                case InlineOp.AluRR:
                case InlineOp.AluRI:
                case InlineOp.AluRR64:
                case InlineOp.AluRI64:
                case InlineOp.Alu:
                    EmitAlu(i);
                    break;
                case InlineOp.IncDecR64:
                case InlineOp.IncDec:
                    EmitIncDec(i);
                    break;
                case InlineOp.MovRR:
                    GetReg(op.R1, op.Size);
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.MovRI:
                    _il.Emit(OpCodes.Ldc_I8, unchecked((long)op.Imm));
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.MovRM:
                    EmitLinear(in op);
                    EmitRead(op.Size, i, rmw: false);
                    _il.Emit(OpCodes.Ldloc, _val);
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.MovMR:
                    EmitLinear(in op);
                    GetReg(op.R1, op.Size);
                    _il.Emit(OpCodes.Stloc, _val);
                    EmitWrite(op.Size, _val, i);
                    break;
                case InlineOp.Mov:
                    EmitMov(i);
                    break;
                case InlineOp.Lea:
                    EmitOffset(in op);
                    SetReg(op.R0, op.Size);
                    break;
                case InlineOp.Movzx:
                case InlineOp.Movsx:
                    EmitMovx(i);
                    break;
                case InlineOp.Jcc:
                case InlineOp.Jmp:
                    _loopFlagKind = _flagKind;
                    _loopFlagSize = _flagSize;
                    EmitBranch(i, startRip);
                    break;
                default:
                    throw new InvalidProgramException($"Op {op.Inline} marked inline without an emitter.");
            }
        }

        if (inline[n - 1] && !IsBranch(in _ops[n - 1]))
        {
            EmitExit(n, _ops[n - 1].Next);
        }
    }

    private static bool IsBranch(in Op op) => op.Inline is InlineOp.Jcc or InlineOp.Jmp;

    /// <summary>Leaves the block normally: state written back, <paramref name="retired"/> instructions counted, RIP set.</summary>
    private void EmitExit(int retired, ulong rip)
    {
        WriteBackRegs();
        EmitFlagStore();
        EmitRetire(retired);
        EmitSetRip(rip);
        _il.Emit(OpCodes.Ret);
    }

    private void EmitFallback(int i, bool last)
    {
        ref Op op = ref _ops[i];
        WriteBackRegs();
        EmitFlagStore();
        EmitSetRip(OpStart(in op));
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldc_I4, i);
        _il.Emit(OpCodes.Call, StepMethod);
        // stack: vcpu, r (0 or 1)
        if (last)
        {
            // _retired += i + r; RIP was set by the step.
            _il.Emit(OpCodes.Conv_I8);
            if (i != 0)
            {
                _il.Emit(OpCodes.Ldc_I8, (long)i);
                _il.Emit(OpCodes.Add);
            }

            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldfld, RetiredField);
            _il.Emit(OpCodes.Add);
            _il.Emit(OpCodes.Stfld, RetiredField);
            _il.Emit(OpCodes.Ret);
            return;
        }

        var go = _il.DefineLabel();
        var leave = _il.DefineLabel();
        _il.Emit(OpCodes.Conv_I8);
        _il.Emit(OpCodes.Stloc, _tmp);
        _il.Emit(OpCodes.Pop);
        _il.Emit(OpCodes.Ldloc, _tmp);
        _il.Emit(OpCodes.Brfalse, leave);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldfld, StopField);
        _il.Emit(OpCodes.Brfalse, go);
        _il.MarkLabel(leave);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldfld, RetiredField);
        _il.Emit(OpCodes.Ldloc, _tmp);
        _il.Emit(OpCodes.Add);
        if (i != 0)
        {
            _il.Emit(OpCodes.Ldc_I8, (long)i);
            _il.Emit(OpCodes.Add);
        }

        _il.Emit(OpCodes.Stfld, RetiredField);
        _il.Emit(OpCodes.Ret);
        _il.MarkLabel(go);
        LoadAllRegs();
        _flagKind = Unknown;
        _flagsDirty = false;
    }

    private void EmitBranch(int i, ulong startRip)
    {
        ref Op op = ref _ops[i];
        int n = i + 1;
        bool selfLoop = op.Target == startRip;
        if (op.Inline == InlineOp.Jmp)
        {
            if (selfLoop)
            {
                EmitBackEdge(n, startRip);
            }
            else
            {
                EmitExit(n, op.Target);
            }

            return;
        }

        var taken = _il.DefineLabel();
        EmitCondition(op.Sub);
        _il.Emit(OpCodes.Brtrue, taken);
        EmitExit(n, op.Next);
        _il.MarkLabel(taken);
        if (selfLoop)
        {
            EmitBackEdge(n, startRip);
        }
        else
        {
            EmitExit(n, op.Target);
        }
    }

    /// <summary>
    /// The end of an iteration of a self-loop: count it, and run the next one when the budget allows a whole one
    /// and nothing needs the run loop. A block without interpreter calls cannot change the vCPU's own conditions
    /// (pending interrupt, shadow, debug state), so only the limit computed on entry and what other threads set
    /// are checked; a block with calls checks everything.
    /// </summary>
    private void EmitBackEdge(int n, ulong startRip)
    {
        if (_hasFallback)
        {
            EmitFlagStore();
        }

        EmitRetire(n);
        var leave = _il.DefineLabel();
        if (_hasFallback)
        {
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldc_I4, n);
            _il.Emit(OpCodes.Call, MayIterateMethod);
            _il.Emit(OpCodes.Brfalse, leave);
        }
        else
        {
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldfld, RetiredField);
            _il.Emit(OpCodes.Ldloc, _loopLimit!);
            _il.Emit(OpCodes.Bgt, leave);
            foreach (var f in (FieldInfo[])[ExitRequestedField, RemoteCodeWriteField, WriteTlbFlushField])
            {
                _il.Emit(OpCodes.Ldarg_0);
                _il.Emit(OpCodes.Volatile);
                _il.Emit(OpCodes.Ldfld, f);
                _il.Emit(OpCodes.Brtrue, leave);
            }

            var go = _il.DefineLabel();
            _il.Emit(OpCodes.Ldloc, _plat!);
            _il.Emit(OpCodes.Brfalse, go);
            _il.Emit(OpCodes.Ldloc, _plat!);
            _il.Emit(OpCodes.Volatile);
            _il.Emit(OpCodes.Ldfld, AttentionField);
            _il.Emit(OpCodes.Brfalse, go);
            EmitFlagStore();
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldc_I4, n);
            _il.Emit(OpCodes.Call, MayIterateMethod);
            _il.Emit(OpCodes.Brfalse, leave);
            _il.MarkLabel(go);
        }

        _il.Emit(OpCodes.Br, _headLabel);
        _il.MarkLabel(leave);
        WriteBackRegs();
        EmitFlagStore();
        EmitSetRip(startRip);
        _il.Emit(OpCodes.Ret);
    }

    private Label _headLabel;

    // ---- Operations ----------------------------------------------------------------------------------

    private void EmitAlu(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Inline is InlineOp.AluRR64 or InlineOp.AluRI64 ? 8 : op.Size;
        (byte k0, byte k1) = op.Inline switch
        {
            InlineOp.AluRR or InlineOp.AluRR64 => (OpKindX.Reg, OpKindX.Reg),
            InlineOp.AluRI or InlineOp.AluRI64 => (OpKindX.Reg, OpKindX.Imm),
            _ => (op.K0, op.K1),
        };
        bool writes = op.Sub < Translator.AluCmp;
        if (k0 == OpKindX.Mem)
        {
            EmitLinear(in op);
            EmitRead(size, i, rmw: writes);
            _il.Emit(OpCodes.Ldloc, _val);
        }
        else
        {
            GetReg(op.R0, size);
        }

        _il.Emit(OpCodes.Stloc, _ta);
        EmitSource(in op, k1, size, i);

        _il.Emit(OpCodes.Stloc, _tb);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldloc, _tb);
        int kind;
        switch (op.Sub)
        {
            case Translator.AluAdd:
                _il.Emit(OpCodes.Add);
                kind = LzAdd;
                break;
            case Translator.AluSub:
            case Translator.AluCmp:
                _il.Emit(OpCodes.Sub);
                kind = LzSub;
                break;
            case Translator.AluOr:
                _il.Emit(OpCodes.Or);
                kind = LzLogic;
                break;
            case Translator.AluXor:
                _il.Emit(OpCodes.Xor);
                kind = LzLogic;
                break;
            default:
                _il.Emit(OpCodes.And);
                kind = LzLogic;
                break;
        }

        if (kind != LzLogic && size < 8)
        {
            _il.Emit(OpCodes.Ldc_I8, unchecked((long)Mask(size)));
            _il.Emit(OpCodes.And);
        }

        _il.Emit(OpCodes.Stloc, _fr);
        if (kind == LzLogic)
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            _il.Emit(OpCodes.Stloc, _fa);
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Stloc, _fb);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _ta);
            _il.Emit(OpCodes.Stloc, _fa);
            _il.Emit(OpCodes.Ldloc, _tb);
            _il.Emit(OpCodes.Stloc, _fb);
        }

        SetFlags(kind, size);
        if (!writes)
        {
            return;
        }

        if (k0 == OpKindX.Mem)
        {
            EmitWrite(size, _fr, i);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            SetReg(op.R0, size);
        }
    }

    private void EmitIncDec(int i)
    {
        ref Op op = ref _ops[i];
        bool reg = op.Inline == InlineOp.IncDecR64 || op.K0 == OpKindX.Reg;
        int size = op.Inline == InlineOp.IncDecR64 ? 8 : op.Size;
        if (reg)
        {
            GetReg(op.R0, size);
        }
        else
        {
            EmitLinear(in op);
            EmitRead(size, i, rmw: true);
            _il.Emit(OpCodes.Ldloc, _val);
        }

        _il.Emit(OpCodes.Stloc, _ta);
        EmitCarry();
        _il.Emit(OpCodes.Stloc, _tc);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(op.Sub == 0 ? OpCodes.Add : OpCodes.Sub);
        if (size < 8)
        {
            _il.Emit(OpCodes.Ldc_I8, unchecked((long)Mask(size)));
            _il.Emit(OpCodes.And);
        }

        _il.Emit(OpCodes.Stloc, _fr);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _fa);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _fb);
        _il.Emit(OpCodes.Ldloc, _tc);
        _il.Emit(OpCodes.Stloc, _fcf);
        SetFlags(op.Sub == 0 ? LzInc : LzDec, size);
        if (reg)
        {
            _il.Emit(OpCodes.Ldloc, _fr);
            SetReg(op.R0, size);
        }
        else
        {
            EmitWrite(size, _fr, i);
        }
    }

    /// <summary>Pushes the source operand of op <paramref name="i"/> (register R1, immediate, or memory read) as a 64-bit value.</summary>
    private void EmitSource(in Op op, byte kind, int size, int i)
    {
        switch (kind)
        {
            case OpKindX.Reg:
                GetReg(op.R1, size);
                break;
            case OpKindX.Imm:
                _il.Emit(OpCodes.Ldc_I8, unchecked((long)op.Imm));
                break;
            default:
                EmitLinear(in op);
                EmitRead(size, i, rmw: false);
                _il.Emit(OpCodes.Ldloc, _val);
                break;
        }
    }

    private void EmitMov(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        EmitSource(in op, op.K1, size, i);

        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, size);
            return;
        }

        _il.Emit(OpCodes.Stloc, _tb);
        EmitLinear(in op);
        EmitWrite(size, _tb, i);
    }

    private void EmitMovx(int i)
    {
        ref Op op = ref _ops[i];
        if (op.K1 == OpKindX.Reg)
        {
            GetReg(op.R1, op.Size2);
        }
        else
        {
            EmitLinear(in op);
            EmitRead(op.Size2, i, rmw: false);
            _il.Emit(OpCodes.Ldloc, _val);
        }

        if (op.Inline == InlineOp.Movsx)
        {
            switch (op.Size2)
            {
                case 1: _il.Emit(OpCodes.Conv_I1); _il.Emit(OpCodes.Conv_I8); break;
                case 2: _il.Emit(OpCodes.Conv_I2); _il.Emit(OpCodes.Conv_I8); break;
                case 4: _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Conv_I8); break;
                default: break;
            }

            if (op.Size < 8)
            {
                _il.Emit(OpCodes.Ldc_I8, unchecked((long)Mask(op.Size)));
                _il.Emit(OpCodes.And);
            }
        }

        SetReg(op.R0, op.Size);
    }
}
