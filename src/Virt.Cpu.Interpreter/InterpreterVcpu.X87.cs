using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// FXSAVE/FXRSTOR and the x87 control instructions (FNINIT, FNCLEX, FLDCW, FNSTCW, FNSTSW); loads, stores and
/// arithmetic are in the X87Arith part. Other x87 instructions raise #UD.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>Size of the legacy FXSAVE area.</summary>
    private const int FxsaveSize = 512;

    // Offsets in the FXSAVE area.
    private const int FxFcw = 0, FxFsw = 2, FxFtw = 4, FxFop = 6, FxFip = 8, FxFdp = 16, FxMxcsr = 24, FxMxcsrMask = 28, FxSt = 32, FxXmm = 160;

    private void ExecX87(ref Op op, in Instruction ins)
    {
        // CR0.EM or CR0.TS: the x87/SSE state is not available (#NM), as for every x87 instruction.
        if ((_cr0 & (Cr0Em | Cr0Ts)) != 0)
        {
            throw Fault(Vectors.NM, 0);
        }

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
                // FNINIT resets the x87 part only; MXCSR and the XMM registers are kept.
                var xmm = _fpu.Xmm;
                uint mxcsr = _fpu.Mxcsr;
                var regs = _fpu.Registers;
                _fpu = FpuState.Initial;
                _fpu.Registers = regs;
                _fpu.Xmm = xmm;
                _fpu.Mxcsr = mxcsr;
                return;
            }

            case Mnemonic.Fnclex:
            case Mnemonic.Fclex:
                _fpu.StatusWord &= 0x7F00;
                return;
            case Mnemonic.Fldcw:
                _fpu.ControlWord = (ushort)Read(Ea(ref op), 2);
                return;
            case Mnemonic.Fnstcw:
            case Mnemonic.Fstcw:
                Write(Ea(ref op), 2, _fpu.ControlWord);
                return;
            case Mnemonic.Fnstsw:
            case Mnemonic.Fstsw:
                if (ins.Op0Kind == OpKind.Register)
                {
                    SetReg(0, 2, _fpu.StatusWord);
                }
                else
                {
                    Write(Ea(ref op), 2, _fpu.StatusWord);
                }

                return;
            default:
                if (!ExecX87Arith(ref op, in ins))
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

        ProbeWrite(ea, FxsaveSize);
        Span<byte> area = stackalloc byte[FxsaveSize];
        area.Clear();
        Unsafe.WriteUnaligned(ref area[FxFcw], _fpu.ControlWord);
        Unsafe.WriteUnaligned(ref area[FxFsw], _fpu.StatusWord);
        area[FxFtw] = _fpu.AbridgedTagWord;
        Unsafe.WriteUnaligned(ref area[FxFop], _fpu.LastOpcode);
        if (rexW)
        {
            Unsafe.WriteUnaligned(ref area[FxFip], _fpu.LastInstructionPointer);
            Unsafe.WriteUnaligned(ref area[FxFdp], _fpu.LastDataPointer);
        }
        else
        {
            // 32-bit format: offset and selector; the selectors are not tracked and read as zero.
            Unsafe.WriteUnaligned(ref area[FxFip], (uint)_fpu.LastInstructionPointer);
            Unsafe.WriteUnaligned(ref area[FxFdp], (uint)_fpu.LastDataPointer);
        }

        Unsafe.WriteUnaligned(ref area[FxMxcsr], _fpu.Mxcsr);
        Unsafe.WriteUnaligned(ref area[FxMxcsrMask], MxcsrMask);
        ((ReadOnlySpan<byte>)_fpu.Registers).CopyTo(area[FxSt..]);
        int xmmBytes = (_bitness == 64 ? 16 : 8) * 16;
        ((ReadOnlySpan<byte>)_fpu.Xmm)[..xmmBytes].CopyTo(area[FxXmm..]);
        for (int i = 0; i < FxsaveSize; i += 8)
        {
            Write(ea + (ulong)i, 8, Unsafe.ReadUnaligned<ulong>(ref area[i]));
        }
    }

    private void Fxrstor(ulong ea, bool rexW)
    {
        if ((ea & 15) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        Span<byte> area = stackalloc byte[FxsaveSize];
        for (int i = 0; i < FxsaveSize; i += 8)
        {
            Unsafe.WriteUnaligned(ref area[i], Read(ea + (ulong)i, 8));
        }

        uint mxcsr = Unsafe.ReadUnaligned<uint>(ref area[FxMxcsr]);
        if ((mxcsr & ~MxcsrMask) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        _fpu.ControlWord = Unsafe.ReadUnaligned<ushort>(ref area[FxFcw]);
        _fpu.StatusWord = Unsafe.ReadUnaligned<ushort>(ref area[FxFsw]);
        _fpu.AbridgedTagWord = area[FxFtw];
        _fpu.LastOpcode = (ushort)(Unsafe.ReadUnaligned<ushort>(ref area[FxFop]) & 0x7FF);
        _fpu.LastInstructionPointer = rexW ? Unsafe.ReadUnaligned<ulong>(ref area[FxFip]) : Unsafe.ReadUnaligned<uint>(ref area[FxFip]);
        _fpu.LastDataPointer = rexW ? Unsafe.ReadUnaligned<ulong>(ref area[FxFdp]) : Unsafe.ReadUnaligned<uint>(ref area[FxFdp]);
        _fpu.Mxcsr = mxcsr;
        area.Slice(FxSt, 128).CopyTo(_fpu.Registers);
        int xmmBytes = (_bitness == 64 ? 16 : 8) * 16;
        area.Slice(FxXmm, xmmBytes).CopyTo(_fpu.Xmm);
    }
}
