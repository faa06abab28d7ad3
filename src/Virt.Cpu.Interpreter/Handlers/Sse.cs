using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>SSE and SSE2 instructions (legacy encodings), dispatched on the Iced mnemonic from the SSE handler.</summary>
internal sealed partial class InterpreterVcpu
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref Vector128<byte> Xr(int i) => ref Unsafe.Add(ref Unsafe.As<XmmRegisterFile, Vector128<byte>>(ref _cpu.Fpu.Xmm), i);

    private static int XmmIndex(Register r) => r - Register.XMM0;

    /// <summary>CR0.EM or a clear CR4.OSFXSR makes SSE undefined; CR0.TS defers the state (#NM).</summary>
    private void CheckSseEnabled()
    {
        if (_vexLane)
        {
            return; // a VEX form: CheckAvxEnabled decided
        }

        if ((_cpu.Cr0 & Cr0.Emulation) != 0 || (_cpu.Cr4 & Cr4.OsFxsr) == 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        if ((_cpu.Cr0 & Cr0.TaskSwitched) != 0)
        {
            throw Fault(Vectors.NM, 0);
        }
    }

    /// <summary>Legacy-SSE 16-byte memory operands must be aligned except for the explicitly unaligned forms.</summary>
    private static bool NeedsAlignment(Mnemonic m) => m is not (Mnemonic.Movups or Mnemonic.Movupd or Mnemonic.Movdqu or Mnemonic.Lddqu
        or Mnemonic.Pcmpestri or Mnemonic.Pcmpestri64 or Mnemonic.Pcmpestrm or Mnemonic.Pcmpestrm64 or Mnemonic.Pcmpistri or Mnemonic.Pcmpistrm);

    private Vector128<byte> ReadXmmMem(ulong ea, int size, bool aligned)
    {
        if (aligned && size == 16 && (ea & 15) != 0 && !_vexLane)
        {
            throw Fault(Vectors.GP, 0);
        }

        if (size == 16)
        {
            // 16-byte SSE operands are not alignment-checked: the aligned forms raise #GP above, the others accept any address.
            _alignExempt = true;
            try
            {
                ulong lo = Read(ea, 8);
                ulong hi = Read(ea + 8, 8);
                return Vector128.Create(lo, hi).AsByte();
            }
            finally
            {
                _alignExempt = false;
            }
        }

        return Vector128.Create(Read(ea, size), 0UL).AsByte();
    }

    private void WriteXmmMem(ulong ea, int size, Vector128<byte> v, bool aligned)
    {
        if (aligned && size == 16 && (ea & 15) != 0 && !_vexLane)
        {
            throw Fault(Vectors.GP, 0);
        }

        var q = v.AsUInt64();
        if (size == 16)
        {
            ProbeWrite(ea, 16);
            _alignExempt = true;
            try
            {
                Write(ea, 8, q.GetElement(0));
                Write(ea + 8, 8, q.GetElement(1));
            }
            finally
            {
                _alignExempt = false;
            }
        }
        else
        {
            Write(ea, size, q.GetElement(0));
        }
    }

    /// <summary>Operand <paramref name="i"/> as an XMM value: a register, or memory of the instruction's memory size zero-extended.</summary>
    private Vector128<byte> SrcX(ref Op op, in Instruction ins, int i)
    {
        if (ins.GetOpKind(i) == OpKind.Register)
        {
            return Xr(XmmIndex(ins.GetOpRegister(i)));
        }

        return ReadXmmMem(Ea(ref op), ins.MemorySize.GetSize(), NeedsAlignment(ins.Mnemonic));
    }

    /// <summary>Merges the exception flags of this instruction into MXCSR; an unmasked one raises #XM (or #UD without CR4.OSXMMEXCPT) before the destination is written.</summary>
    private void CommitSseFlags()
    {
        uint f = _sseFlags;
        if (f == 0 || (_vexLane && !_vexCommitNow))
        {
            return; // nothing raised, or a lane of a VEX form, whose flags are committed once both lanes ran
        }

        _sseFlags = 0;
        uint unmasked = f & ~(_cpu.Fpu.Mxcsr >> 7) & 0x3F;
        if ((unmasked & (MxIe | MxDe | MxZe)) != 0)
        {
            // An unmasked invalid-operation, denormal or divide-by-zero exception in any element is found before the
            // results are computed: only those flags are set, no post-computation ones (SDM Vol. 1, 11.5.1).
            f &= MxIe | MxDe | MxZe;
        }

        _cpu.Fpu.Mxcsr |= f;
        if (unmasked != 0)
        {
            throw Fault((_cpu.Cr4 & Cr4.OsXmmExcpt) != 0 ? Vectors.XM : Vectors.UD, 0);
        }
    }

    private ulong GprOperand(ref Op op, in Instruction ins, int i, int size)
    {
        if (ins.GetOpKind(i) == OpKind.Register)
        {
            return GetReg(Translator.RegIndex(ins.GetOpRegister(i)), size);
        }

        return Read(Ea(ref op), size);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong Sse(ref Op op, in Instruction ins)
    {
        ExecSse(ref op, in ins);
        return op.Next;
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The SSE group's dispatch on the Iced mnemonic: one case per instruction family, each a call or a line.")]
    private void ExecSse(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        if (m == Mnemonic.Movnti)
        {
            // MOVNTI is an SSE2 store of a general register; it does not touch SSE state.
            int sz = ins.Op1Register.GetSize();
            Write(Ea(ref op), sz, GetReg(Translator.RegIndex(ins.Op1Register), sz));
            return;
        }

        CheckIsa(ins.Code);
        CheckSseEnabled();
        _sseFlags = 0;
        ExecSseBody(ref op, in ins);
    }

    /// <summary>An SSE instruction after the checks of its group (also one lane of a VEX form: see <see cref="ExecVexLanes"/>).</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The SSE group's dispatch on the Iced mnemonic: one case per instruction family, each a call or a line.")]
    private void ExecSseBody(ref Op op, in Instruction ins)
    {
        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Movaps:
            case Mnemonic.Movapd:
            case Mnemonic.Movdqa:
            case Mnemonic.Movups:
            case Mnemonic.Movupd:
            case Mnemonic.Movdqu:
            case Mnemonic.Movntps:
            case Mnemonic.Movntpd:
            case Mnemonic.Movntdq:
                if (ins.Op0Kind == OpKind.Register)
                {
                    Xr(XmmIndex(ins.Op0Register)) = SrcX(ref op, in ins, 1);
                }
                else
                {
                    WriteXmmMem(Ea(ref op), 16, Xr(XmmIndex(ins.Op1Register)), NeedsAlignment(m));
                }

                return;
            case Mnemonic.Movd:
            case Mnemonic.Movq:
                ExecMovdq(ref op, in ins);
                return;
            case Mnemonic.Maskmovdqu:
                MaskedStore(in ins, Xr(XmmIndex(ins.Op1Register)), Xr(XmmIndex(ins.Op2Register)), 16);
                return;
            case Mnemonic.Movss:
            case Mnemonic.Movsd:
            {
                int size = m == Mnemonic.Movss ? 4 : 8;
                if (ins.Op0Kind == OpKind.Memory)
                {
                    WriteXmmMem(Ea(ref op), size, Xr(XmmIndex(ins.Op1Register)), false);
                }
                else if (ins.Op1Kind == OpKind.Memory)
                {
                    Xr(XmmIndex(ins.Op0Register)) = ReadXmmMem(Ea(ref op), size, false);
                }
                else
                {
                    ref var d = ref Xr(XmmIndex(ins.Op0Register));
                    var s = Xr(XmmIndex(ins.Op1Register));
                    d = size == 4 ? d.AsUInt32().WithElement(0, s.AsUInt32().GetElement(0)).AsByte() : d.AsUInt64().WithElement(0, s.AsUInt64().GetElement(0)).AsByte();
                }

                return;
            }

            case Mnemonic.Movlps:
            case Mnemonic.Movlpd:
            case Mnemonic.Movhps:
            case Mnemonic.Movhpd:
            {
                int lane = m is Mnemonic.Movlps or Mnemonic.Movlpd ? 0 : 1;
                if (ins.Op0Kind == OpKind.Memory)
                {
                    Write(Ea(ref op), 8, Xr(XmmIndex(ins.Op1Register)).AsUInt64().GetElement(lane));
                }
                else
                {
                    ref var d = ref Xr(XmmIndex(ins.Op0Register));
                    d = d.AsUInt64().WithElement(lane, Read(Ea(ref op), 8)).AsByte();
                }

                return;
            }

            case Mnemonic.Movhlps:
            case Mnemonic.Movlhps:
            {
                ref var d = ref Xr(XmmIndex(ins.Op0Register));
                var s = Xr(XmmIndex(ins.Op1Register)).AsUInt64();
                d = m == Mnemonic.Movhlps ? d.AsUInt64().WithElement(0, s.GetElement(1)).AsByte() : d.AsUInt64().WithElement(1, s.GetElement(0)).AsByte();
                return;
            }

            case Mnemonic.Movmskps:
            case Mnemonic.Movmskpd:
            case Mnemonic.Pmovmskb:
            {
                var s = Xr(XmmIndex(ins.Op1Register));
                uint mask = m switch
                {
                    Mnemonic.Movmskps => s.AsSingle().ExtractMostSignificantBits(),
                    Mnemonic.Movmskpd => s.AsDouble().ExtractMostSignificantBits(),
                    _ => s.ExtractMostSignificantBits(),
                };
                SetReg(Translator.RegIndex(ins.Op0Register), ins.Op0Register.GetSize(), mask);
                return;
            }

            case Mnemonic.Pextrw:
            {
                ulong w = Xr(XmmIndex(ins.Op1Register)).AsUInt16().GetElement(ins.Immediate8 & 7);
                if (ins.Op0Kind != OpKind.Register)
                {
                    Write(Ea(ref op), 2, w); // the SSE4.1 memory form
                }
                else
                {
                    SetReg(Translator.RegIndex(ins.Op0Register), ins.Op0Register.GetSize(), w);
                }

                return;
            }

            case Mnemonic.Pinsrw:
            {
                ushort w = (ushort)GprOperand(ref op, in ins, 1, 2);
                ref var d = ref Xr(XmmIndex(ins.Op0Register));
                d = d.AsUInt16().WithElement(ins.Immediate8 & 7, w).AsByte();
                return;
            }

            case Mnemonic.Ldmxcsr:
            {
                uint v = (uint)Read(Ea(ref op), 4);
                if ((v & ~MxcsrMask) != 0)
                {
                    throw Fault(Vectors.GP, 0);
                }

                _cpu.Fpu.Mxcsr = v;
                return;
            }

            case Mnemonic.Stmxcsr:
                Write(Ea(ref op), 4, _cpu.Fpu.Mxcsr);
                return;
            default:
                break;
        }

        if (ExecSseInteger(ref op, in ins) || ExecSseFloat(ref op, in ins) || ExecSse4(ref op, in ins) || ExecSseString(ref op, in ins))
        {
            return;
        }

        throw Fault(Vectors.UD, 0);
    }

    private void ExecMovdq(ref Op op, in Instruction ins)
    {
        switch (ins.Code)
        {
            case Code.Movd_xmm_rm32:
            case Code.Movq_xmm_rm64:
            {
                int size = ins.Code == Code.Movd_xmm_rm32 ? 4 : 8;
                Xr(XmmIndex(ins.Op0Register)) = Vector128.Create(GprOperand(ref op, in ins, 1, size), 0UL).AsByte();
                return;
            }

            case Code.Movd_rm32_xmm:
            case Code.Movq_rm64_xmm:
            {
                int size = ins.Code == Code.Movd_rm32_xmm ? 4 : 8;
                ulong v = Xr(XmmIndex(ins.Op1Register)).AsUInt64().GetElement(0);
                if (ins.Op0Kind == OpKind.Register)
                {
                    SetReg(Translator.RegIndex(ins.Op0Register), size, v);
                }
                else
                {
                    Write(Ea(ref op), size, v);
                }

                return;
            }

            case Code.Movq_xmm_xmmm64:
                Xr(XmmIndex(ins.Op0Register)) = Vector128.Create(SrcX(ref op, in ins, 1).AsUInt64().GetElement(0), 0UL).AsByte();
                return;
            case Code.Movq_xmmm64_xmm:
            {
                ulong v = Xr(XmmIndex(ins.Op1Register)).AsUInt64().GetElement(0);
                if (ins.Op0Kind == OpKind.Register)
                {
                    Xr(XmmIndex(ins.Op0Register)) = Vector128.Create(v, 0UL).AsByte();
                }
                else
                {
                    Write(Ea(ref op), 8, v);
                }

                return;
            }

            default:
                throw Fault(Vectors.UD, 0); // the MMX forms run in the MMX group
        }
    }

}
