using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// FXSAVE/FXRSTOR and the x87 control instructions (FNINIT, FNCLEX, FLDCW, FNSTCW, FNSTSW); loads, stores and
/// arithmetic are in the X87Arith part, FNSTENV/FLDENV/FNSAVE/FRSTOR in X87Environment, transcendental, remainder
/// and BCD instructions in X87Transcendental. Other x87 instructions raise #UD.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Size of the legacy FXSAVE area.</summary>
    private const int FxsaveSize = 512;

    // Offsets in the FXSAVE area.
    private const int FxFcw = 0, FxFsw = 2, FxFtw = 4, FxFop = 6, FxFip = 8, FxFdp = 16, FxMxcsr = 24, FxMxcsrMask = 28, FxSt = 32, FxXmm = 160;

    internal ulong X87(ref Op op, in Instruction ins)
    {
        ExecX87(ref op, in ins);
        return op.Next;
    }

    /// <summary>WAIT/FWAIT: #NM when CR0.MP and CR0.TS are both set, then #MF when an unmasked x87 exception is pending.</summary>
    internal ulong Wait(ref Op op, in Instruction _)
    {
        if ((_cpu.Cr0 & (Cr0.MonitorCoprocessor | Cr0.TaskSwitched)) == (Cr0.MonitorCoprocessor | Cr0.TaskSwitched))
        {
            throw Fault(Vectors.NM, 0);
        }

        ReportPendingX87Exception();
        return op.Next;
    }

    /// <summary>The x87 instructions that do not first report a pending unmasked exception (SDM Vol. 1, 8.3.11 and 8.7).</summary>
    private static bool IsNonWaitingX87(Mnemonic m) => m is Mnemonic.Fninit or Mnemonic.Fnclex or Mnemonic.Fnstcw or Mnemonic.Fnstsw
        or Mnemonic.Fnstenv or Mnemonic.Fnsave or Mnemonic.Fxsave or Mnemonic.Fxsave64 or Mnemonic.Fxrstor or Mnemonic.Fxrstor64;

    private void ExecX87(ref Op op, in Instruction ins)
    {
        // CR0.EM or CR0.TS: the x87/SSE state is not available (#NM), as for every x87 instruction.
        if ((_cpu.Cr0 & (Cr0.Emulation | Cr0.TaskSwitched)) != 0)
        {
            throw Fault(Vectors.NM, 0);
        }

        // An unmasked exception an earlier instruction raised is reported here, before this one does anything.
        if ((_cpu.Fpu.StatusWord & FswEs) != 0 && !IsNonWaitingX87(ins.Mnemonic))
        {
            ReportPendingX87Exception();
        }

        try
        {
            ExecX87Instruction(ref op, in ins);
        }
        catch (X87Abort)
        {
            // An unmasked exception: the flags, ES and B are set; the destination and the stack stay as they were.
        }
    }

    private void ExecX87Instruction(ref Op op, in Instruction ins)
    {
        switch (ins.Mnemonic)
        {
            case Mnemonic.Fxsave:
            case Mnemonic.Fxsave64:
                Fxsave(Ea(ref op), ins.Mnemonic == Mnemonic.Fxsave64);
                return;
            case Mnemonic.Fxrstor:
            case Mnemonic.Fxrstor64:
                Fxrstor(Ea(ref op), ins.Mnemonic == Mnemonic.Fxrstor64);
                return;
            case Mnemonic.Fninit:
            case Mnemonic.Finit:
            {
                // FNINIT resets the x87 part only; MXCSR and the XMM registers are kept, and so are the physical
                // registers' contents (TOP becomes 0, so they are first put in physical order).
                ResetFpuTop();
                var xmm = _cpu.Fpu.Xmm;
                uint mxcsr = _cpu.Fpu.Mxcsr;
                var regs = _cpu.Fpu.Registers;
                _cpu.Fpu = FpuState.Initial;
                _cpu.Fpu.Registers = regs;
                _cpu.Fpu.Xmm = xmm;
                _cpu.Fpu.Mxcsr = mxcsr;
                return;
            }

            case Mnemonic.Fnclex:
            case Mnemonic.Fclex:
                _cpu.Fpu.StatusWord &= 0x7F00;
                return;
            case Mnemonic.Fldcw:
                _cpu.Fpu.ControlWord = (ushort)Read(Ea(ref op), 2);
                UpdateFpuErrorSummary(); // unmasking a flag that is set makes it pending
                return;
            case Mnemonic.Fnstcw:
            case Mnemonic.Fstcw:
                Write(Ea(ref op), 2, _cpu.Fpu.ControlWord);
                return;
            case Mnemonic.Fnstsw:
            case Mnemonic.Fstsw:
                if (ins.Op0Kind == OpKind.Register)
                {
                    SetReg(0, 2, _cpu.Fpu.StatusWord);
                }
                else
                {
                    Write(Ea(ref op), 2, _cpu.Fpu.StatusWord);
                }

                return;
            default:
                if (!ExecX87Arith(ref op, in ins) && !ExecX87Environment(ref op, in ins) && !ExecX87Transcendental(ref op, in ins))
                {
                    throw Fault(Vectors.UD, 0);
                }

                return;
        }
    }

    private void Fxsave(ulong ea, bool rexW)
    {
        if ((ea & 15) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        // Bytes 416-511 are reserved or left to software: FXSAVE does not write them.
        ProbeWrite(ea, FxXmm + XmmImageBytes);
        Span<byte> area = stackalloc byte[FxsaveSize];
        FillFxsaveImage(area, rexW);
        WriteBytes(ea, area[..(FxXmm + XmmImageBytes)]);
    }

    /// <summary>The FXSAVE image of the x87 and SSE state (the legacy region of XSAVE too); registers outside the mode's reach are zero.</summary>
    private void FillFxsaveImage(Span<byte> area, bool rexW)
    {
        area.Clear();
        Unsafe.WriteUnaligned(ref area[FxFcw], _cpu.Fpu.ControlWord);
        Unsafe.WriteUnaligned(ref area[FxFsw], _cpu.Fpu.StatusWord);
        area[FxFtw] = _cpu.Fpu.AbridgedTagWord;
        Unsafe.WriteUnaligned(ref area[FxFop], _cpu.Fpu.LastOpcode);
        if (rexW)
        {
            Unsafe.WriteUnaligned(ref area[FxFip], _cpu.Fpu.LastInstructionPointer);
            Unsafe.WriteUnaligned(ref area[FxFdp], _cpu.Fpu.LastDataPointer);
        }
        else
        {
            // 32-bit format: offset and selector; the selectors are not tracked and read as zero.
            Unsafe.WriteUnaligned(ref area[FxFip], (uint)_cpu.Fpu.LastInstructionPointer);
            Unsafe.WriteUnaligned(ref area[FxFdp], (uint)_cpu.Fpu.LastDataPointer);
        }

        Unsafe.WriteUnaligned(ref area[FxMxcsr], _cpu.Fpu.Mxcsr);
        Unsafe.WriteUnaligned(ref area[FxMxcsrMask], MxcsrMask);
        ((ReadOnlySpan<byte>)_cpu.Fpu.Registers).CopyTo(area[FxSt..]);
        ((ReadOnlySpan<byte>)_cpu.Fpu.Xmm)[..XmmImageBytes].CopyTo(area[FxXmm..]);
    }

    private void Fxrstor(ulong ea, bool rexW)
    {
        if ((ea & 15) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        Span<byte> area = stackalloc byte[FxsaveSize];
        ReadBytes(ea, area);
        uint mxcsr = Unsafe.ReadUnaligned<uint>(ref area[FxMxcsr]);
        if ((mxcsr & ~MxcsrMask) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        LoadFxsaveX87(area, rexW);
        _cpu.Fpu.Mxcsr = mxcsr;
        area.Slice(FxXmm, XmmImageBytes).CopyTo(_cpu.Fpu.Xmm);
    }

    /// <summary>The x87 part of an FXSAVE image (everything but MXCSR and the XMM registers).</summary>
    private void LoadFxsaveX87(ReadOnlySpan<byte> area, bool rexW)
    {
        _cpu.Fpu.ControlWord = BinaryPrimitives.ReadUInt16LittleEndian(area[FxFcw..]);
        _cpu.Fpu.StatusWord = BinaryPrimitives.ReadUInt16LittleEndian(area[FxFsw..]);
        UpdateFpuErrorSummary(); // ES and B follow the loaded flags and masks, as after FLDENV
        _cpu.Fpu.AbridgedTagWord = area[FxFtw];
        _cpu.Fpu.LastOpcode = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(area[FxFop..]) & 0x7FF);
        _cpu.Fpu.LastInstructionPointer = rexW ? BinaryPrimitives.ReadUInt64LittleEndian(area[FxFip..]) : BinaryPrimitives.ReadUInt32LittleEndian(area[FxFip..]);
        _cpu.Fpu.LastDataPointer = rexW ? BinaryPrimitives.ReadUInt64LittleEndian(area[FxFdp..]) : BinaryPrimitives.ReadUInt32LittleEndian(area[FxFdp..]);
        area.Slice(FxSt, 128).CopyTo(_cpu.Fpu.Registers);
    }
}
