using System.Reflection;
using System.Reflection.Emit;

namespace Virt.Cpu.Interpreter.Jit;

/// <summary>
/// Forms the interpreter runs through their handlers (<see cref="InterpreterVcpu"/>'s NEG, NOT, XCHG, PUSHF) that
/// compiled code runs inline, each doing what its handler does in the same order: a read-modify-write of memory is
/// checked for writing before it reads, a write that faults leaves the registers as before the instruction, and
/// anything the fast path does not cover goes to the interpreter.
/// </summary>
internal sealed partial class BlockCompiler
{
    private static readonly FieldInfo FlagsField = Field(typeof(CpuState), nameof(CpuState.Flags));
    private static readonly MethodInfo PushfValueMethod = Method(nameof(InterpreterVcpu.JitPushfValue));

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

        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Sub);
        if (size < 8)
        {
            EmitI8(unchecked((long)Mask(size)));
            _il.Emit(OpCodes.And);
        }

        _il.Emit(OpCodes.Stloc, _fr);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _fa);
        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Stloc, _fb);
        SetFlags(LzSub, size);
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

        int r = op.R1;
        EmitLinear(in op);
        EmitRead(size, i, rmw: true);
        _il.Emit(OpCodes.Ldloc, _val);
        _il.Emit(OpCodes.Stloc, _ta);
        GetReg(r, size);
        _il.Emit(OpCodes.Stloc, _tb);
        EmitWrite(size, _tb, i, () =>
        {
            _il.Emit(OpCodes.Ldloc, _ta);
            SetReg(r, size);
        }, op.Next);
    }

    /// <summary>
    /// PUSHF/PUSHFQ in 64-bit mode: RFLAGS (the pending flags stored, then materialized by
    /// <see cref="InterpreterVcpu.JitPushfValue"/>, as the handler's read materializes them) pushed with VM and RF clear;
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

        EmitFlagStore();
        Flags = FlagState.InState;
        _flagsDirty = false;
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
}
