using System.Reflection;
using System.Reflection.Emit;
using System.Runtime.Intrinsics;
using Iced.Intel;
using Virt.X86;
using Label = System.Reflection.Emit.Label;

namespace Virt.Cpu.Interpreter.Jit;

/// <summary>
/// The SSE integer and move forms compiled code runs itself (legacy encodings: MOVDQA/MOVDQU/MOVAPS/MOVUPS and
/// friends, MOVD/MOVQ, the logic operations, PADD/PSUB, PCMPEQ, PMINUB/PMAXUB, the unpacks, PSHUFD, PSHUFB, shifts by
/// an immediate, PMOVMSKB). XMM registers stay in the CPU state: each op loads its operands from there and stores its
/// result there, so nothing about them is written back or reloaded. Each op first checks what the interpreter's SSE
/// handler checks before anything else (CR0.EM, CR0.TS, CR4.OSFXSR, and for SSSE3 forms the CPUID feature) and goes
/// to its slow path when a check fails, when a 16-byte aligned form's address is misaligned, or when the TLB does not
/// map the whole operand: the slow path runs the op in the interpreter's own handler from the state written back, so
/// every fault (#UD, #NM, #GP, #PF, #AC), MMIO access and write to cached code is the interpreter's. MOVD/MOVQ with a
/// 4- or 8-byte memory operand use the general memory paths, as the interpreter's handler makes plain accesses.
/// </summary>
internal sealed partial class BlockCompiler
{
    private static readonly int XmmOffset = ComputeXmmOffset();
    private static readonly FieldInfo Cr0Field = Field(typeof(CpuState), nameof(CpuState.Cr0));
    private static readonly FieldInfo Cr4Field = Field(typeof(CpuState), nameof(CpuState.Cr4));
    private static readonly FieldInfo IsaEnabledField = Field(typeof(InterpreterVcpu), "_isaEnabled");
    private static readonly MethodInfo SseStepMethod = Method(nameof(InterpreterVcpu.JitSseStep));
    private static readonly MethodInfo VectorZero = typeof(Vector128<byte>).GetProperty(nameof(Vector128<byte>.Zero))!.GetMethod!;

    /// <summary>SSE forms compiled inline (<c>VIRT_INTERPRETER_JIT_SSE=0</c> hands them to the interpreter, for comparison).</summary>
    private static readonly bool SseInline = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_SSE") != "0";

    private LocalBuilder? _xv;

    private enum SseKind : byte
    {
        None,

        /// <summary>xmm &lt;- xmm/m128 (MOVDQA/MOVDQU/MOVAPS/MOVUPS/MOVAPD/MOVUPD).</summary>
        Load,

        /// <summary>xmm/m128 &lt;- xmm (their store encodings, MOVNTDQ/MOVNTPS/MOVNTPD).</summary>
        Store,

        /// <summary>xmm &lt;- op(xmm, xmm/m128).</summary>
        Binary,

        /// <summary>PSHUFD xmm, xmm/m128, imm8.</summary>
        Pshufd,

        /// <summary>PSLL/PSRL/PSRA W/D/Q xmm, imm8.</summary>
        ShiftImm,

        /// <summary>PSLLDQ/PSRLDQ xmm, imm8.</summary>
        ByteShift,

        /// <summary>PMOVMSKB r32/r64, xmm.</summary>
        Pmovmskb,

        /// <summary>MOVD xmm, r/m32; MOVQ xmm, r/m64.</summary>
        ToXmm,

        /// <summary>MOVD r/m32, xmm; MOVQ r/m64, xmm.</summary>
        FromXmm,

        /// <summary>MOVQ xmm, xmm/m64.</summary>
        MovqLoad,

        /// <summary>MOVQ xmm/m64, xmm.</summary>
        MovqStore,
    }

    /// <summary>How a compiled SSE op runs: its kind, whether a 16-byte memory operand must be aligned, the <see cref="SseOps"/> method, the shift's width and direction.</summary>
    private readonly record struct SseForm(SseKind Kind, bool Aligned = false, string? Op = null, int Width = 0, int ShiftKind = 0)
    {
        public static readonly SseForm None = new(SseKind.None);
    }

    private static int ComputeXmmOffset()
    {
        var state = new CpuState();
        return (int)System.Runtime.CompilerServices.Unsafe.ByteOffset(
            ref System.Runtime.CompilerServices.Unsafe.As<CpuState, byte>(ref state),
            ref System.Runtime.CompilerServices.Unsafe.As<XmmRegisterFile, byte>(ref state.Fpu.Xmm));
    }

    /// <summary>Whether op <paramref name="i"/> of <paramref name="b"/> runs inline (a general form, or an SSE form this file compiles).</summary>
    private static bool IsInline(Block b, int i)
    {
        ref Op op = ref b.Ops[i];
        return IsInline(in op, b.ModeKey & 0x7F, i == b.Count - 1)
            || (op.Inline == InlineOp.None && i < b.Instrs.Length && SseFormOf(in op, in b.Instrs[i]).Kind != SseKind.None);
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The table of compiled SSE forms, one line each.")]
    private static SseForm SseFormOf(in Op op, in Instruction ins)
    {
        if (!SseInline)
        {
            return SseForm.None;
        }

        var form = ins.Code switch
        {
            Code.Movdqa_xmm_xmmm128 or Code.Movaps_xmm_xmmm128 or Code.Movapd_xmm_xmmm128 => new SseForm(SseKind.Load, Aligned: true),
            Code.Movdqu_xmm_xmmm128 or Code.Movups_xmm_xmmm128 or Code.Movupd_xmm_xmmm128 => new SseForm(SseKind.Load),
            Code.Movdqa_xmmm128_xmm or Code.Movaps_xmmm128_xmm or Code.Movapd_xmmm128_xmm
                or Code.Movntdq_m128_xmm or Code.Movntps_m128_xmm or Code.Movntpd_m128_xmm => new SseForm(SseKind.Store, Aligned: true),
            Code.Movdqu_xmmm128_xmm or Code.Movups_xmmm128_xmm or Code.Movupd_xmmm128_xmm => new SseForm(SseKind.Store),
            Code.Pxor_xmm_xmmm128 or Code.Xorps_xmm_xmmm128 or Code.Xorpd_xmm_xmmm128 => Binary(nameof(SseOps.Xor)),
            Code.Por_xmm_xmmm128 or Code.Orps_xmm_xmmm128 or Code.Orpd_xmm_xmmm128 => Binary(nameof(SseOps.Or)),
            Code.Pand_xmm_xmmm128 or Code.Andps_xmm_xmmm128 or Code.Andpd_xmm_xmmm128 => Binary(nameof(SseOps.And)),
            Code.Pandn_xmm_xmmm128 or Code.Andnps_xmm_xmmm128 or Code.Andnpd_xmm_xmmm128 => Binary(nameof(SseOps.AndNot)),
            Code.Paddb_xmm_xmmm128 => Binary(nameof(SseOps.AddB)),
            Code.Paddw_xmm_xmmm128 => Binary(nameof(SseOps.AddW)),
            Code.Paddd_xmm_xmmm128 => Binary(nameof(SseOps.AddD)),
            Code.Paddq_xmm_xmmm128 => Binary(nameof(SseOps.AddQ)),
            Code.Psubb_xmm_xmmm128 => Binary(nameof(SseOps.SubB)),
            Code.Psubw_xmm_xmmm128 => Binary(nameof(SseOps.SubW)),
            Code.Psubd_xmm_xmmm128 => Binary(nameof(SseOps.SubD)),
            Code.Psubq_xmm_xmmm128 => Binary(nameof(SseOps.SubQ)),
            Code.Pcmpeqb_xmm_xmmm128 => Binary(nameof(SseOps.CmpEqB)),
            Code.Pcmpeqw_xmm_xmmm128 => Binary(nameof(SseOps.CmpEqW)),
            Code.Pcmpeqd_xmm_xmmm128 => Binary(nameof(SseOps.CmpEqD)),
            Code.Pminub_xmm_xmmm128 => Binary(nameof(SseOps.MinUB)),
            Code.Pmaxub_xmm_xmmm128 => Binary(nameof(SseOps.MaxUB)),
            Code.Punpcklbw_xmm_xmmm128 => Binary(nameof(SseOps.UnpackLowB)),
            Code.Punpcklwd_xmm_xmmm128 => Binary(nameof(SseOps.UnpackLowW)),
            Code.Punpckldq_xmm_xmmm128 => Binary(nameof(SseOps.UnpackLowD)),
            Code.Punpcklqdq_xmm_xmmm128 => Binary(nameof(SseOps.UnpackLowQ)),
            Code.Punpckhbw_xmm_xmmm128 => Binary(nameof(SseOps.UnpackHighB)),
            Code.Punpckhwd_xmm_xmmm128 => Binary(nameof(SseOps.UnpackHighW)),
            Code.Punpckhdq_xmm_xmmm128 => Binary(nameof(SseOps.UnpackHighD)),
            Code.Punpckhqdq_xmm_xmmm128 => Binary(nameof(SseOps.UnpackHighQ)),
            Code.Pshufb_xmm_xmmm128 => Binary(nameof(SseOps.ShuffleBytes)),
            Code.Pshufd_xmm_xmmm128_imm8 => new SseForm(SseKind.Pshufd, Aligned: true),
            Code.Psllw_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 16, ShiftKind: 0),
            Code.Pslld_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 32, ShiftKind: 0),
            Code.Psllq_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 64, ShiftKind: 0),
            Code.Psrlw_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 16, ShiftKind: 1),
            Code.Psrld_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 32, ShiftKind: 1),
            Code.Psrlq_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 64, ShiftKind: 1),
            Code.Psraw_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 16, ShiftKind: 2),
            Code.Psrad_xmm_imm8 => new SseForm(SseKind.ShiftImm, Width: 32, ShiftKind: 2),
            Code.Pslldq_xmm_imm8 => new SseForm(SseKind.ByteShift, ShiftKind: 0),
            Code.Psrldq_xmm_imm8 => new SseForm(SseKind.ByteShift, ShiftKind: 1),
            Code.Pmovmskb_r32_xmm or Code.Pmovmskb_r64_xmm => new SseForm(SseKind.Pmovmskb),
            Code.Movd_xmm_rm32 or Code.Movq_xmm_rm64 => new SseForm(SseKind.ToXmm),
            Code.Movd_rm32_xmm or Code.Movq_rm64_xmm => new SseForm(SseKind.FromXmm),
            Code.Movq_xmm_xmmm64 => new SseForm(SseKind.MovqLoad),
            Code.Movq_xmmm64_xmm => new SseForm(SseKind.MovqStore),
            _ => SseForm.None,
        };
        if (form.Kind == SseKind.None)
        {
            return form;
        }

        bool mem = op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem;
        if (mem && (!MemOk(in op) || ins.MemorySize.GetSize() != (form.Kind switch
        {
            SseKind.ToXmm or SseKind.FromXmm => ins.Code is Code.Movd_xmm_rm32 or Code.Movd_rm32_xmm ? 4 : 8,
            SseKind.MovqLoad or SseKind.MovqStore => 8,
            _ => 16,
        })))
        {
            return SseForm.None;
        }

        return form;

        static SseForm Binary(string op) => new(SseKind.Binary, Aligned: true, Op: op);
    }

    private static int XmmOf(in Instruction ins, int operand) => ins.GetOpRegister(operand) - Register.XMM0;

    /// <summary>The general register of an SSE op's register operand (MOVD/MOVQ, PMOVMSKB), or -1.</summary>
    private static int SseGpr(in Instruction ins, SseKind kind)
    {
        int k = kind switch
        {
            SseKind.Pmovmskb or SseKind.FromXmm => 0,
            SseKind.ToXmm => 1,
            _ => -1,
        };
        return k >= 0 && ins.GetOpKind(k) == OpKind.Register ? Translator.RegIndex(ins.GetOpRegister(k)) : -1;
    }

    private void UseSseRegs(in Op op, in Instruction ins)
    {
        if (op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem)
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

        if (SseGpr(in ins, SseFormOf(in op, in ins).Kind) is var r and >= 0)
        {
            Use(r);
        }
    }

    /// <summary>Pushes a reference to XMM register <paramref name="x"/> in the CPU state.</summary>
    private void LoadXmmAddress(int x)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        EmitI4(XmmOffset + (x * 16));
        _il.Emit(OpCodes.Add);
    }

    private void LoadXmm(int x)
    {
        LoadXmmAddress(x);
        _il.Emit(OpCodes.Ldobj, typeof(Vector128<byte>));
    }

    private void StoreXmm() => _il.Emit(OpCodes.Stobj, typeof(Vector128<byte>));

    private void CallSse(string name) => _il.Emit(OpCodes.Call, typeof(SseOps).GetMethod(name)!);

    /// <summary>
    /// Branches to <paramref name="slow"/> unless the interpreter's handler would pass its checks before the operation:
    /// SSE enabled (CR0.EM clear, CR4.OSFXSR set), no deferred FPU state (CR0.TS clear), the form's CPUID features
    /// advertised (<paramref name="need"/>, <c>IsaFeatures.cs</c>).
    /// </summary>
    private void EmitSseGuard(int need, Label slow)
    {
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldfld, Cr0Field);
        EmitI8((long)(Cr0.Emulation | Cr0.TaskSwitched));
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Brtrue, slow);
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldfld, Cr4Field);
        EmitI8((long)Cr4.OsFxsr);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Brfalse, slow);
        if (need != 0)
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldfld, IsaEnabledField);
            EmitI4(need);
            _il.Emit(OpCodes.And);
            EmitI4(need);
            _il.Emit(OpCodes.Bne_Un, slow);
        }
    }

    /// <summary>The 16-byte memory operand's address into <see cref="_lin"/>, to <paramref name="slow"/> when misaligned (aligned forms) or not mapped by <paramref name="tlb"/> in one page; the host pointer left in the TLB entry.</summary>
    private void EmitXmmAddress(in Op op, bool aligned, LocalBuilder tlb, Label slow)
    {
        EmitLinear(in op);
        if (aligned)
        {
            _il.Emit(OpCodes.Ldloc, _lin);
            EmitI8(15);
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Brtrue, slow);
        }

        EmitTlbCheck(tlb, 16, slow);
    }

    /// <summary>The 16-byte source operand (operand 1) into <see cref="_xv"/>.</summary>
    private void EmitXmmSource(in Op op, in Instruction ins, bool aligned, Label slow)
    {
        _xv ??= _il.DeclareLocal(typeof(Vector128<byte>));
        if (ins.Op1Kind == OpKind.Register)
        {
            LoadXmm(XmmOf(in ins, 1));
        }
        else
        {
            EmitXmmAddress(in op, aligned, _rtlb, slow);
            EmitHostPointer();
            CallSse(nameof(SseOps.Load16));
        }

        _il.Emit(OpCodes.Stloc, _xv);
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per compiled SSE form.")]
    private void EmitSse(int i)
    {
        ref Op op = ref _ops[i];
        ref Instruction ins = ref _region[_cur].Instrs[i];
        var f = SseFormOf(in op, in ins);
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        bool writesMemory = false;
        int gpr = SseGpr(in ins, f.Kind);
        EmitSseGuard(InterpreterVcpu.IsaNeed(ins.Code), slow);
        switch (f.Kind)
        {
            case SseKind.Load:
                EmitXmmSource(in op, in ins, f.Aligned, slow);
                LoadXmmAddress(XmmOf(in ins, 0));
                _il.Emit(OpCodes.Ldloc, _xv!);
                StoreXmm();
                break;
            case SseKind.Store:
                if (ins.Op0Kind == OpKind.Register)
                {
                    LoadXmmAddress(XmmOf(in ins, 0));
                    LoadXmm(XmmOf(in ins, 1));
                    StoreXmm();
                }
                else
                {
                    writesMemory = true;
                    EmitXmmAddress(in op, f.Aligned, _wtlb, slow);
                    EmitHostPointer();
                    LoadXmm(XmmOf(in ins, 1));
                    CallSse(nameof(SseOps.Store16));
                }

                break;
            case SseKind.Binary:
            {
                EmitXmmSource(in op, in ins, f.Aligned, slow);
                int d = XmmOf(in ins, 0);
                LoadXmmAddress(d);
                LoadXmm(d);
                _il.Emit(OpCodes.Ldloc, _xv!);
                CallSse(f.Op!);
                StoreXmm();
                break;
            }

            case SseKind.Pshufd:
                EmitXmmSource(in op, in ins, f.Aligned, slow);
                LoadXmmAddress(XmmOf(in ins, 0));
                _il.Emit(OpCodes.Ldloc, _xv!);
                EmitI4(ins.Immediate8);
                CallSse(nameof(SseOps.ShuffleD));
                StoreXmm();
                break;
            case SseKind.ShiftImm:
            {
                int d = XmmOf(in ins, 0);
                int count = ins.Immediate8;
                LoadXmmAddress(d);
                if (count >= f.Width && f.ShiftKind != 2)
                {
                    // Counts past the lane width clear the lanes (arithmetic shifts fill them with the sign, below).
                    _il.Emit(OpCodes.Call, VectorZero);
                }
                else
                {
                    LoadXmm(d);
                    EmitI4(Math.Min(count, f.Width - 1));
                    CallSse((f.ShiftKind, f.Width) switch
                    {
                        (0, 16) => nameof(SseOps.ShlW),
                        (0, 32) => nameof(SseOps.ShlD),
                        (0, _) => nameof(SseOps.ShlQ),
                        (1, 16) => nameof(SseOps.ShrW),
                        (1, 32) => nameof(SseOps.ShrD),
                        (1, _) => nameof(SseOps.ShrQ),
                        (_, 16) => nameof(SseOps.SarW),
                        _ => nameof(SseOps.SarD),
                    });
                }

                StoreXmm();
                break;
            }

            case SseKind.ByteShift:
            {
                int d = XmmOf(in ins, 0);
                int count = ins.Immediate8;
                LoadXmmAddress(d);
                if (count > 15)
                {
                    _il.Emit(OpCodes.Call, VectorZero);
                }
                else
                {
                    LoadXmm(d);
                    EmitI4(count);
                    CallSse(f.ShiftKind == 0 ? nameof(SseOps.ShiftLeftBytes) : nameof(SseOps.ShiftRightBytes));
                }

                StoreXmm();
                break;
            }

            case SseKind.Pmovmskb:
                LoadXmm(XmmOf(in ins, 1));
                CallSse(nameof(SseOps.MoveMask));
                _il.Emit(OpCodes.Conv_U8);
                SetReg(gpr, ins.Op0Register.GetSize());
                break;
            case SseKind.ToXmm:
            {
                int size = ins.Code == Code.Movd_xmm_rm32 ? 4 : 8;
                if (gpr < 0)
                {
                    EmitLinear(in op);
                    EmitRead(size, i, rmw: false);
                }

                LoadXmmAddress(XmmOf(in ins, 0));
                if (gpr >= 0)
                {
                    GetReg(gpr, size);
                }
                else
                {
                    _il.Emit(OpCodes.Ldloc, _val);
                }

                CallSse(nameof(SseOps.FromScalar));
                StoreXmm();
                break;
            }

            case SseKind.FromXmm:
            case SseKind.MovqStore:
            {
                int size = ins.Code == Code.Movd_rm32_xmm ? 4 : 8;
                if (ins.Op0Kind == OpKind.Register && f.Kind == SseKind.MovqStore)
                {
                    LoadXmmAddress(XmmOf(in ins, 0));
                    LoadXmm(XmmOf(in ins, 1));
                    CallSse(nameof(SseOps.Low));
                    CallSse(nameof(SseOps.FromScalar));
                    StoreXmm();
                }
                else if (ins.Op0Kind == OpKind.Register)
                {
                    LoadXmm(XmmOf(in ins, 1));
                    CallSse(nameof(SseOps.Low));
                    SetReg(gpr, size);
                }
                else
                {
                    EmitLinear(in op);
                    LoadXmm(XmmOf(in ins, 1));
                    CallSse(nameof(SseOps.Low));
                    _il.Emit(OpCodes.Stloc, _val);
                    EmitWrite(size, _val, i);
                }

                break;
            }

            case SseKind.MovqLoad:
                if (ins.Op1Kind != OpKind.Register)
                {
                    EmitLinear(in op);
                    EmitRead(8, i, rmw: false);
                }

                LoadXmmAddress(XmmOf(in ins, 0));
                if (ins.Op1Kind == OpKind.Register)
                {
                    LoadXmm(XmmOf(in ins, 1));
                    CallSse(nameof(SseOps.Low));
                }
                else
                {
                    _il.Emit(OpCodes.Ldloc, _val);
                }

                CallSse(nameof(SseOps.FromScalar));
                StoreXmm();
                break;
            default:
                throw new InvalidProgramException($"SSE form {ins.Code} marked inline without an emitter.");
        }

        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(slow);
        EmitSseSlow(i, gpr, writesMemory);
        _il.MarkLabel(done);
    }

    /// <summary>
    /// The slow path of SSE op <paramref name="i"/>: the state written back, the op runs in the interpreter's handler
    /// (which raises its faults, or makes the access the fast path could not), and compiled code goes on after it with
    /// the general register it may have written (<paramref name="gpr"/>) read back; a write that hit cached code
    /// (<paramref name="writesMemory"/>) ends the block after the op, as other writes do.
    /// </summary>
    private void EmitSseSlow(int i, int gpr, bool writesMemory)
    {
        EmitSync(i);
        EmitCallOut(
            () =>
            {
                _il.Emit(OpCodes.Ldarg_1);
                EmitLoadCurrentBlock();
                EmitI4(i);
                _il.Emit(OpCodes.Call, SseStepMethod);
            },
            written: true);
        if (gpr >= 0 && !_loops)
        {
            // (A method that loops read every register back above.)
            LoadGprAddress(gpr);
            _il.Emit(OpCodes.Ldind_I8);
            _il.Emit(OpCodes.Stloc, _reg[gpr]!);
        }

        if (writesMemory)
        {
            var go = _il.DefineLabel();
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldfld, StopField);
            _il.Emit(OpCodes.Brfalse, go);
            EmitRetire(i + 1);
            EmitLeave(_ops[i].Next, -1, synced: true);
            _il.MarkLabel(go);
        }
    }
}
