using System.Reflection;
using System.Reflection.Emit;

namespace Virt.Cpu.Interpreter.Jit;

/// <summary>
/// Forms the interpreter runs through their handlers (NEG, NOT, XCHG, PUSHF, BSWAP, CBW/CWD and their wider forms, MOV
/// from a segment register, BT/BTS/BTR/BTC, CMPXCHG, XADD, and SHL/SHR/SAR by CL, and the indirect CALL, which its dispatch runs inline for immediate
/// counts only) that
/// compiled code runs inline, each doing what its handler does in the same order: a read-modify-write of memory is
/// checked for writing before it reads, a write that faults leaves the registers as before the instruction, and
/// anything the fast path does not cover goes to the interpreter.
/// </summary>
internal sealed partial class BlockCompiler
{
    private static readonly FieldInfo FlagsField = Field(typeof(CpuState), nameof(CpuState.Flags));
    private static readonly MethodInfo PushfValueMethod = Method(nameof(InterpreterVcpu.PushfImage));
    private static readonly MethodInfo Reverse64 = typeof(System.Buffers.Binary.BinaryPrimitives).GetMethod(nameof(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness), [typeof(ulong)])!;
    private static readonly MethodInfo Reverse32 = typeof(System.Buffers.Binary.BinaryPrimitives).GetMethod(nameof(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness), [typeof(uint)])!;

    /// <summary>Byte offset in <see cref="CpuState"/> of each segment register's selector.</summary>
    private static readonly int[] SelectorOffsets = ComputeSelectorOffsets();

    private static readonly MethodInfo SetCarryMethod = Method(nameof(InterpreterVcpu.JitSetCarry));

    private LocalBuilder? _shiftCount;

    /// <summary>RFLAGS.VM: PUSHF in virtual-8086 mode has IOPL rules of its own, which the interpreter applies.</summary>
    private const long RflagsVm = 1L << 17;

    /// <summary>
    /// NEG (<c>Sub</c> 0) or NOT (1) of a register or memory, as the handlers run them: the operand read (memory checked
    /// for writing first), the result written back. NEG leaves SUB's flags of 0 minus the operand (CF set unless the
    /// operand is 0, OF for the most negative value), as the interpreter's lazy flags have them; NOT changes no flag (its
    /// result needs no mask: the register or memory store keeps only the operand's bytes).
    /// </summary>
    private void EmitNegNot(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        bool reg = op.K0 == OpKindX.Reg;
        EmitLoadRmOperand(in op, size, i, reg);
        if (op.Sub == 1)
        {
            _il.Emit(OpCodes.Ldloc, _ta);
            _il.Emit(OpCodes.Not);
            _il.Emit(OpCodes.Stloc, _tb);
            EmitStoreRmResult(in op, size, i, reg, _tb);
            return;
        }

        // SUB 0 - x: the operand becomes the subtrahend.
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _tb);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _ta);
        EmitAddSub(sub: true, size);
        EmitStoreRmResult(in op, size, i, reg, _fr);
    }

    /// <summary>
    /// XCHG of two registers (the first written first, so the same register on both sides keeps its value, a 32-bit one
    /// zero-extended), or of memory and a register as the handler runs it (not locked: a partition with several vCPUs
    /// translates it to <see cref="InlineOp.Locked"/>): the memory checked for writing and read, the register's value
    /// written, and only then the register set to what was read.
    /// </summary>
    private void EmitXchg(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        if (op.K0 == OpKindX.Reg)
        {
            GetReg(op.R0, size);
            _il.Emit(OpCodes.Stloc, _ta);
            GetReg(op.R1, size);
            SetReg(op.R0, size);
            _il.Emit(OpCodes.Ldloc, _ta);
            SetReg(op.R1, size);
            return;
        }

        EmitLoadRmOperand(in op, size, i, reg: false);
        GetReg(op.R1, size);
        _il.Emit(OpCodes.Stloc, _tb);
        EmitWriteThenSetReg(in op, size, i, _tb, op.R1, _ta);
    }

    /// <summary>
    /// PUSHF/PUSHFQ in 64-bit mode: RFLAGS (the pending flags stored, then materialized by
    /// <see cref="InterpreterVcpu.PushfImage"/>, the handler's own) pushed with VM and RF clear;
    /// RSP moves once the store succeeded. With RFLAGS.VM set the interpreter runs the instruction (its IOPL check) and
    /// the method returns after it.
    /// </summary>
    private void EmitPushf(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        var fast = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _cpu);
        _il.Emit(OpCodes.Ldfld, FlagsField);
        EmitI8(RflagsVm);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Brfalse, fast);
        EmitInterpreterStepAndLeave(i);
        _il.MarkLabel(fast);

        EmitFlagsToState();
        EmitCallOut(() =>
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Call, PushfValueMethod);
            _il.Emit(OpCodes.Stloc, _tb);
        });
        EmitStackSlot(size);
        EmitWrite(size, _tb, i, () => EmitPushRsp(size), op.Next);
    }

    /// <summary>
    /// A cold path: the state written back, op <paramref name="i"/> of the block being emitted runs in the interpreter
    /// (which sets RIP, faults or exits as it does), and the method returns with its count.
    /// </summary>
    private void EmitInterpreterStepAndLeave(int i)
    {
        EmitWriteBack();
        EmitSetRip(OpStart(in _ops[i]));
        _il.Emit(OpCodes.Ldarg_1);
        EmitLoadCurrentBlock();
        EmitI4(i);
        _il.Emit(OpCodes.Call, StepMethod);
        _il.Emit(OpCodes.Conv_I8);
        _il.Emit(OpCodes.Stloc, _tmp);
        EmitRetiredAfterStep(i);
        _il.Emit(OpCodes.Ret);
    }

    /// <summary>BSWAP of a 64- or 32-bit register (the 32-bit result zero-extended); of a 16-bit one, 0 in the low word, as the handler leaves it.</summary>
    private void EmitBswap(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        if (size == 2)
        {
            _il.Emit(OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Conv_U8);
        }
        else if (size == 4)
        {
            GetReg(op.R0, 4);
            _il.Emit(OpCodes.Conv_U4);
            _il.Emit(OpCodes.Call, Reverse32);
            _il.Emit(OpCodes.Conv_U8);
        }
        else
        {
            GetReg(op.R0, 8);
            _il.Emit(OpCodes.Call, Reverse64);
        }

        SetReg(op.R0, size);
    }

    /// <summary>CBW/CWDE/CDQE (<c>Sub</c> 0): the low half of the accumulator sign-extended into it; CWD/CDQ/CQO (1): its sign copied into every bit of RDX's part of the size.</summary>
    private void EmitAccExtend(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        if (op.Sub == 0)
        {
            GetReg(0, size / 2);
            SignExtendTop(size / 2);
            SetReg(0, size);
            return;
        }

        GetReg(0, size);
        SignExtendTop(size);
        EmitI4(63);
        _il.Emit(OpCodes.Shr);
        SetReg(2, size);
    }

    /// <summary>MOV from segment register <c>Sub</c>: its selector zero-extended into a register, or stored as a word to memory.</summary>
    private void EmitMovFromSreg(int i)
    {
        ref Op op = ref _ops[i];
        _il.Emit(OpCodes.Ldloc, _cpu);
        EmitI4(SelectorOffsets[op.Sub]);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Ldind_U2);
        _il.Emit(OpCodes.Conv_U8);
        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, op.Size);
            return;
        }

        _il.Emit(OpCodes.Stloc, _tb);
        EmitLinear(in op);
        EmitWrite(2, _tb, i);
    }

    /// <summary>
    /// SHL/SAL, SHR or SAR by CL, as the interpreter's shift runs it: the count masked (to 5 bits, 6 for 64-bit operands)
    /// and the operand read (memory checked for writing first) before anything else; a count of 0 changes no flag and
    /// writes nothing back but a 32-bit register (its upper half cleared); otherwise the result is written and the flags
    /// are the shift's (SF, ZF and PF from the result, CF the last bit shifted out, OF for SHL the result's sign xor CF,
    /// for SHR the operand's sign, for SAR 0). Counts past the width (bytes and words) shift everything out. As the two
    /// outcomes leave different flags, both leave them in the CPU state: the pending flags are stored first.
    /// </summary>
    private void EmitShiftByCl(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        int bits = size * 8;
        bool reg = op.K0 == OpKindX.Reg;
        var count = _shiftCount ??= _il.DeclareLocal(typeof(int));
        EmitFlagsToState();
        _il.Emit(OpCodes.Ldloc, _reg[1]!);
        _il.Emit(OpCodes.Conv_I4);
        EmitI4(size == 8 ? 0x3F : 0x1F);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Stloc, count);
        EmitLoadRmOperand(in op, size, i, reg);
        var zero = _il.DefineLabel();
        var done = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, count);
        _il.Emit(OpCodes.Brfalse, zero);
        switch (op.Sub)
        {
            case 5: // SHR
                _il.Emit(OpCodes.Ldloc, _ta);
                _il.Emit(OpCodes.Ldloc, count);
                _il.Emit(OpCodes.Shr_Un);
                _il.Emit(OpCodes.Stloc, _fr);
                EmitShiftedBit(_ta, count, signed: false, size);
                EmitBitOf(_ta, bits - 1, signed: false);
                EmitI4(11);
                _il.Emit(OpCodes.Shl);
                _il.Emit(OpCodes.Or);
                _il.Emit(OpCodes.Stloc, _fcf);
                break;
            case 7: // SAR
                SignExtend(_ta, size);
                _il.Emit(OpCodes.Ldloc, count);
                _il.Emit(OpCodes.Shr);
                EmitTruncate(size);

                _il.Emit(OpCodes.Stloc, _fr);
                EmitShiftedBit(_ta, count, signed: true, size);
                _il.Emit(OpCodes.Stloc, _fcf);
                break;
            default: // SHL, SAL
                _il.Emit(OpCodes.Ldloc, _ta);
                _il.Emit(OpCodes.Ldloc, count);
                _il.Emit(OpCodes.Shl);
                EmitTruncate(size);

                _il.Emit(OpCodes.Stloc, _fr);

                // CF is the last bit shifted out: bit 64 - count of a quadword; for smaller operands, which fit in 32
                // bits and shift by 31 at most, bit `bits` of the unmasked 64-bit shift (0 once the count passes the width).
                _il.Emit(OpCodes.Ldloc, _ta);
                if (size == 8)
                {
                    EmitI4(64);
                    _il.Emit(OpCodes.Ldloc, count);
                    _il.Emit(OpCodes.Sub);
                    _il.Emit(OpCodes.Shr_Un);
                }
                else
                {
                    _il.Emit(OpCodes.Ldloc, count);
                    _il.Emit(OpCodes.Shl);
                    EmitI4(bits);
                    _il.Emit(OpCodes.Shr_Un);
                }

                _il.Emit(OpCodes.Ldc_I4_1);
                _il.Emit(OpCodes.Conv_U8);
                _il.Emit(OpCodes.And);
                _il.Emit(OpCodes.Stloc, _tc);
                _il.Emit(OpCodes.Ldloc, _tc);
                EmitBitOf(_fr, bits - 1, signed: false);
                _il.Emit(OpCodes.Ldloc, _tc);
                _il.Emit(OpCodes.Xor);
                EmitI4(11);
                _il.Emit(OpCodes.Shl);
                _il.Emit(OpCodes.Or);
                _il.Emit(OpCodes.Stloc, _fcf);
                break;
        }

        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _fa);
        SetFlags(LzShift, size);
        _fbImm = 0;
        EmitStoreRmResult(in op, size, i, reg, _fr);
        EmitFlagsToState();
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(zero);
        if (reg && size == 4)
        {
            GetReg(op.R0, 4);
            SetReg(op.R0, 4);
        }

        _il.MarkLabel(done);
    }

    /// <summary>Pushes bit <paramref name="count"/> - 1 of <paramref name="v"/> (sign-extended from <paramref name="size"/> bytes when <paramref name="signed"/>) as a ulong 0 or 1: the last bit a right shift by <paramref name="count"/> moved out.</summary>
    private void EmitShiftedBit(LocalBuilder v, LocalBuilder count, bool signed, int size)
    {
        if (signed)
        {
            SignExtend(v, size);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, v);
        }

        _il.Emit(OpCodes.Ldloc, count);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Sub);
        _il.Emit(signed ? OpCodes.Shr : OpCodes.Shr_Un);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.And);
    }

    private static int[] ComputeSelectorOffsets()
    {
        var state = new CpuState();
        var offsets = new int[6];
        for (int s = 0; s < offsets.Length; s++)
        {
            offsets[s] = (int)System.Runtime.CompilerServices.Unsafe.ByteOffset(
                ref System.Runtime.CompilerServices.Unsafe.As<CpuState, byte>(ref state),
                ref System.Runtime.CompilerServices.Unsafe.As<ushort, byte>(ref state.Seg[s].Selector));
        }

        return offsets;
    }

    /// <summary>
    /// BT, BTS, BTR or BTC (<c>Sub</c> 0-3) as the handler runs it: the bit offset (an immediate or a register, masked to
    /// the width), the operand read (memory checked for writing first unless BT; BT of memory by a register addresses a
    /// bit string, the signed offset picking the unit beyond the operand), CF set to the bit with the other flags as they
    /// were (<see cref="InterpreterVcpu.JitSetCarry"/>, from the pending flags stored), then the bit set, cleared or
    /// toggled and the operand written back.
    /// </summary>
    private void EmitBt(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        int bits = size * 8;
        bool reg = op.K0 == OpKindX.Reg;
        var bit = _shiftCount ??= _il.DeclareLocal(typeof(int));
        if (op.K1 == OpKindX.Imm)
        {
            EmitI4((int)(op.Imm & (ulong)(bits - 1)));
            _il.Emit(OpCodes.Stloc, bit);
            EmitPushRm(in op, size, i, reg, rmw: op.Sub != 0);
            _il.Emit(OpCodes.Stloc, _ta);
        }
        else if (reg)
        {
            GetReg(op.R1, size);
            _il.Emit(OpCodes.Conv_I4);
            EmitI4(bits - 1);
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Stloc, bit);
            GetReg(op.R0, size);
            _il.Emit(OpCodes.Stloc, _ta);
        }
        else
        {
            // BT of a bit string: the operand's address plus the signed offset's unit times the size.
            EmitLinear(in op);
            GetReg(op.R1, size);
            SignExtendTop(size);
            _il.Emit(OpCodes.Stloc, _tb);
            _il.Emit(OpCodes.Ldloc, _lin);
            _il.Emit(OpCodes.Ldloc, _tb);
            EmitI4(size == 8 ? 6 : size == 4 ? 5 : 4);
            _il.Emit(OpCodes.Shr);
            EmitI8(size);
            _il.Emit(OpCodes.Mul);
            _il.Emit(OpCodes.Add);
            if (_bitness != 64)
            {
                EmitI8(0xFFFFFFFFL);
                _il.Emit(OpCodes.And);
            }

            _il.Emit(OpCodes.Stloc, _lin);
            _il.Emit(OpCodes.Ldloc, _tb);
            _il.Emit(OpCodes.Conv_I4);
            EmitI4(bits - 1);
            _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Stloc, bit);
            EmitRead(size, i, rmw: false);
            _il.Emit(OpCodes.Ldloc, _val);
            _il.Emit(OpCodes.Stloc, _ta);
        }

        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldloc, bit);
        _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Stloc, _tc);
        EmitFlagsToState();
        EmitCallOut(() =>
        {
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldloc, _tc);
            _il.Emit(OpCodes.Call, SetCarryMethod);
        });
        if (op.Sub == 0)
        {
            return;
        }

        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Ldloc, bit);
        _il.Emit(OpCodes.Shl);
        if (op.Sub == 2)
        {
            _il.Emit(OpCodes.Not);
            _il.Emit(OpCodes.And);
        }
        else
        {
            _il.Emit(op.Sub == 1 ? OpCodes.Or : OpCodes.Xor);
        }

        _il.Emit(OpCodes.Stloc, _tb);
        EmitStoreRmResult(in op, size, i, reg, _tb);
    }

    /// <summary>
    /// CMPXCHG as the handler runs it (not locked: a partition with several vCPUs translates it to
    /// <see cref="InlineOp.Locked"/>): the destination read (memory checked for writing first), CMP's flags of the
    /// accumulator and it; when equal, the source written to the destination; otherwise a memory destination written back
    /// unchanged, then the accumulator loaded with it.
    /// </summary>
    private void EmitCmpxchg(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        bool reg = op.K0 == OpKindX.Reg;
        EmitPushRm(in op, size, i, reg, rmw: true);
        _il.Emit(OpCodes.Stloc, _tb);
        GetReg(0, size);
        _il.Emit(OpCodes.Stloc, _ta);
        EmitAddSub(sub: true, size);
        var differ = _il.DefineLabel();
        var done = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldloc, _tb);
        _il.Emit(OpCodes.Bne_Un, differ);
        GetReg(op.R1, size);
        _il.Emit(OpCodes.Stloc, _tc);
        EmitStoreRmResult(in op, size, i, reg, _tc);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(differ);
        if (reg)
        {
            _il.Emit(OpCodes.Ldloc, _tb);
            SetReg(0, size);
        }
        else
        {
            EmitWriteThenSetReg(in op, size, i, _tb, 0, _tb);
        }

        _il.MarkLabel(done);
    }

    /// <summary>
    /// XADD as the handler runs it (not locked, as CMPXCHG): the destination read (memory checked for writing first), ADD's
    /// flags of it and the source register; a memory destination gets the sum, then the register the old value; with a
    /// register destination the register gets the old value first, so with the same register on both sides the sum wins.
    /// </summary>
    private void EmitXadd(int i)
    {
        ref Op op = ref _ops[i];
        int size = op.Size;
        bool reg = op.K0 == OpKindX.Reg;
        EmitLoadRmOperand(in op, size, i, reg);
        GetReg(op.R1, size);
        _il.Emit(OpCodes.Stloc, _tb);
        EmitAddSub(sub: false, size);
        if (reg)
        {
            _il.Emit(OpCodes.Ldloc, _ta);
            SetReg(op.R1, size);
            _il.Emit(OpCodes.Ldloc, _fr);
            SetReg(op.R0, size);
            return;
        }

        EmitWriteThenSetReg(in op, size, i, _fr, op.R1, _ta);
    }

    /// <summary>
    /// <c>_ta + _tb</c> or <c>_ta - _tb</c> into <c>_fr</c>, cut to the operand size, with the flag operands and kind
    /// ADD or SUB leaves (<c>_fa</c> = <c>_ta</c>, <c>_fb</c> = <c>_tb</c>): NEG, CMPXCHG's compare, XADD.
    /// </summary>
    private void EmitAddSub(bool sub, int size)
    {
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldloc, _tb);
        _il.Emit(sub ? OpCodes.Sub : OpCodes.Add);
        EmitTruncate(size);

        _il.Emit(OpCodes.Stloc, _fr);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _fa);
        _il.Emit(OpCodes.Ldloc, _tb);
        _il.Emit(OpCodes.Stloc, _fb);
        SetFlags(sub ? LzSub : LzAdd, size);
    }

    /// <summary>
    /// Writes <paramref name="value"/> to the memory operand of op <paramref name="i"/> (its address formed by the read
    /// before) and, once the store succeeded, register <paramref name="r"/> from <paramref name="from"/>: XCHG, XADD
    /// and CMPXCHG leave their register alone when the write faults.
    /// </summary>
    private void EmitWriteThenSetReg(in Op op, int size, int i, LocalBuilder value, int r, LocalBuilder from) =>
        EmitWrite(size, value, i, () =>
        {
            _il.Emit(OpCodes.Ldloc, from);
            SetReg(r, size);
        }, op.Next);

    /// <summary>
    /// CALL through a register or memory (64-bit, the block's last op) as the interpreter runs it: the target read first
    /// (a memory fault leaves the state as before the call), then the return address pushed (RSP moves once the store
    /// succeeded), then RIP set to the target and the method leaves through exit 0 with the target as a computed RIP, as
    /// RET does (<see cref="EmitChain"/>).
    /// </summary>
    private void EmitCallInd(int i)
    {
        ref Op op = ref _ops[i];
        var target = _callTarget ??= _il.DeclareLocal(typeof(ulong));
        EmitPushRm(in op, 8, i, op.K0 == OpKindX.Reg, rmw: false);
        _il.Emit(OpCodes.Stloc, target);
        EmitI8(unchecked((long)op.Next));
        _il.Emit(OpCodes.Stloc, _tb);
        EmitStackSlot(8);
        EmitWrite(8, _tb, i, () => EmitPushRsp(8), 0, target);
        EmitExpectedTarget(i + 1, target);
        EmitRetire(i + 1);
        EmitWriteBack();
        EmitSetRip(target);
        EmitChain(0, target);
    }

    private LocalBuilder? _callTarget;
}
