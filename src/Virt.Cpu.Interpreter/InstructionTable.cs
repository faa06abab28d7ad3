using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>The ISA group an instruction form belongs to; its handler lives in the file named after the group.</summary>
internal enum IsaGroup : byte
{
    Invalid,
    IntegerAlu,
    MultiplyDivide,
    Shift,
    Bit,
    DataTransfer,
    Stack,
    String,
    ControlFlow,
    FlagControl,
    PortIo,
    Segmentation,
    System,
    X87,
    Sse,
    Mmx,
    Avx,
}

/// <summary>Properties of an instruction form.</summary>
[Flags]
internal enum FormFlags : byte
{
    None = 0,

    /// <summary>May change the mode, paging, interrupt state or privilege, or needs the host: the decoded block ends after it.</summary>
    EndsBlock = 1,

    /// <summary>CPL 0 only (#GP otherwise, in protected mode).</summary>
    Privileged = 2,

    /// <summary>Accepts a LOCK prefix with a memory destination (Iced rejects LOCK on every other form at decode).</summary>
    Lockable = 4,

    /// <summary>Raises an exception for a reason other than its memory operands (privilege, IOPL, divide error, a bad selector, an unsupported mode).</summary>
    MayFault = 8,

    /// <summary>Reads or writes the stack through SS without a memory operand (a fault there is #SS, not #GP).</summary>
    StackAccess = 16,
}

/// <summary>How the translator completes an <see cref="Op"/> after filling in the operands.</summary>
internal enum Shape : byte
{
    None,
    Alu,
    Mov,
    MovToSreg,
    MovFromSreg,
    MovToCr,
    MovFromCr,
    MovToDr,
    MovFromDr,
    IncDec,
    Extend,
    Condition,
    CallNear,
    CallFar,
    JmpFar,
    Ret,
    RetFar,
    Loop,
    Push,
    SegmentStack,
    StackSized,
    Enter,
    Imul,
    Shift,
    ShiftDouble,
    String,
    In,
    Out,
}

/// <summary>A handler: executes one instruction and returns the RIP of the next.</summary>
internal delegate ulong Handler(ref Op op, in Instruction ins);

/// <summary>
/// The forms the executor runs inline, in its own switch, because they dominate ordinary code (moves, ALU,
/// branches, stack, string moves); every other form runs through its row's <see cref="Handler"/>.
/// </summary>
internal enum InlineOp : byte
{
    /// <summary>Not inline: the form's handler runs.</summary>
    None,
    Nop,
    Alu,
    AluRR,
    AluRI,
    AluRR64,
    AluRI64,
    IncDecR64,
    Mov,
    MovRR,
    MovRI,
    MovRM,
    MovMR,
    Lea,
    IncDec,
    Movzx,
    Movsx,
    Cmovcc,
    Setcc,
    Jcc,
    Jmp,
    JmpInd,
    Call,
    CallInd,
    Ret,
    Jcxz,
    Loop,
    Push,
    Pop,
    Shift,
    Imul2,

    /// <summary>
    /// One-operand MUL (<see cref="Op.Sub"/> 0) or IMUL (1): RDX:RAX (AX for bytes) from RAX times the operand; DIV (2) or
    /// IDIV (3) of RDX:RAX (AX) by it. Compiled code runs it inline; the interpreter's dispatch calls the form's handler
    /// (its default case), which keeps the hot dispatch method as it is.
    /// </summary>
    MulDiv,

    /// <summary>NEG and NOT (<see cref="Op.Sub"/> 0 and 1) of a register or memory: compiled code runs them inline; the interpreter's dispatch calls the form's handler.</summary>
    NegNot,

    /// <summary>XCHG of two registers or of a register and memory (compiled inline; the interpreter calls the handler).</summary>
    Xchg,

    /// <summary>PUSHF/PUSHFQ (compiled inline in 64-bit mode; the interpreter calls the handler).</summary>
    Pushf,

    /// <summary>BSWAP (compiled inline; the interpreter calls the handler).</summary>
    Bswap,

    /// <summary>CBW/CWDE/CDQE (<see cref="Op.Sub"/> 0) and CWD/CDQ/CQO (1) (compiled inline; the interpreter calls the handlers).</summary>
    AccExtend,

    /// <summary>MOV from a segment register (compiled inline; the interpreter calls the handler).</summary>
    MovFromSreg,

    /// <summary>BT, BTS, BTR, BTC (<see cref="Op.Sub"/> 0-3) (compiled inline; the interpreter calls the handler).</summary>
    Bt,

    /// <summary>CMPXCHG (compiled inline; the interpreter calls the handler; locked on a partition with several vCPUs).</summary>
    Cmpxchg,

    /// <summary>XADD (compiled inline; the interpreter calls the handler; locked on a partition with several vCPUs).</summary>
    Xadd,
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,

    /// <summary>A locked read-modify-write (or MFENCE) on a partition with several vCPUs: atomic on the host memory.</summary>
    Locked,
}

/// <summary>
/// One row of the instruction table: the handler of a form (bound to a vCPU), or the inline operation that
/// runs it, how its operands are completed, and its properties.
/// </summary>
internal sealed record InstructionForm(Func<InterpreterVcpu, Handler>? Bind, InlineOp Inline, IsaGroup Group, FormFlags Flags, Shape Shape, byte Sub, byte Size)
{
    public bool EndsBlock => (Flags & FormFlags.EndsBlock) != 0;
}

/// <summary>
/// The interpreter's instruction set: every supported form (an Iced <see cref="Mnemonic"/>, or one
/// <see cref="Code"/> where a mnemonic has forms with different handlers) bound to its handler, the translation of
/// its operands and its properties. Forms the table does not name are x87 (their mnemonic starts with F),
/// MMX (a legacy encoding with an MMX register operand, and EMMS), SSE (a legacy encoding with an XMM operand,
/// or a scalar conversion to a general register), AVX (a VEX encoding of AVX, AVX2, FMA or F16C), or invalid (#UD).
/// </summary>
internal static class InstructionTable
{
    private const FormFlags E = FormFlags.EndsBlock, P = FormFlags.Privileged, L = FormFlags.Lockable, F = FormFlags.MayFault,
        S = FormFlags.StackAccess;

    private static readonly InstructionForm Invalid = Run(c => c.Invalid, IsaGroup.Invalid, F | E);
    private static readonly InstructionForm X87 = Run(c => c.X87, IsaGroup.X87, F);
    private static readonly InstructionForm Sse = Run(c => c.Sse, IsaGroup.Sse, F);
    private static readonly InstructionForm Mmx = Run(c => c.Mmx, IsaGroup.Mmx, F);
    private static readonly InstructionForm Avx = Run(c => c.Avx, IsaGroup.Avx, F);

    private static InstructionForm Run(Func<InterpreterVcpu, Handler> bind, IsaGroup group, FormFlags flags, Shape shape = Shape.None, byte Sub = 0, byte Size = 0) =>
        new(bind, InlineOp.None, group, flags, shape, Sub, Size);

    private static InstructionForm Inline(InlineOp inline, IsaGroup group, FormFlags flags, Shape shape = Shape.None, byte Sub = 0, byte Size = 0) =>
        new(null, inline, group, flags, shape, Sub, Size);

    private static InstructionForm Form(Func<InterpreterVcpu, Handler> bind, InlineOp inline, IsaGroup group, FormFlags flags, Shape shape = Shape.None, byte Sub = 0, byte Size = 0) =>
        new(bind, inline, group, flags, shape, Sub, Size);

    /// <summary>Rows keyed by mnemonic: they cover every <see cref="Code"/> of the mnemonic that <see cref="ByCode"/> does not name.</summary>
    private static readonly (Mnemonic Mnemonic, InstructionForm Form)[] ByMnemonic =
    [
        // Integer ALU (IntegerAlu.cs)
        (Mnemonic.Add, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluAdd)),
        (Mnemonic.Or, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluOr)),
        (Mnemonic.Adc, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluAdc)),
        (Mnemonic.Sbb, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluSbb)),
        (Mnemonic.And, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluAnd)),
        (Mnemonic.Sub, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluSub)),
        (Mnemonic.Xor, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluXor)),
        (Mnemonic.Cmp, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, 0, Shape.Alu, Translator.AluCmp)),
        (Mnemonic.Test, Inline(InlineOp.Alu, IsaGroup.IntegerAlu, 0, Shape.Alu, Translator.AluTest)),
        (Mnemonic.Inc, Inline(InlineOp.IncDec, IsaGroup.IntegerAlu, L, Shape.IncDec, 0)),
        (Mnemonic.Dec, Inline(InlineOp.IncDec, IsaGroup.IntegerAlu, L, Shape.IncDec, 1)),
        (Mnemonic.Neg, Form(c => c.Neg, InlineOp.NegNot, IsaGroup.IntegerAlu, L, Sub: 0)),
        (Mnemonic.Not, Form(c => c.Not, InlineOp.NegNot, IsaGroup.IntegerAlu, L, Sub: 1)),
        (Mnemonic.Cmpxchg, Form(c => c.Cmpxchg, InlineOp.Cmpxchg, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Xadd, Form(c => c.Xadd, InlineOp.Xadd, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Cmpxchg8b, Run(c => c.Cmpxchg8b, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Cmpxchg16b, Run(c => c.Cmpxchg16b, IsaGroup.IntegerAlu, L | F)),

        // Multiply and divide (MultiplyDivide.cs)
        (Mnemonic.Mul, Form(c => c.Mul, InlineOp.MulDiv, IsaGroup.MultiplyDivide, 0)),
        (Mnemonic.Imul, Form(c => c.Imul1, InlineOp.Imul2, IsaGroup.MultiplyDivide, 0, Shape.Imul)),
        (Mnemonic.Div, Form(c => c.Div, InlineOp.MulDiv, IsaGroup.MultiplyDivide, F, Sub: 2)),
        (Mnemonic.Idiv, Form(c => c.Idiv, InlineOp.MulDiv, IsaGroup.MultiplyDivide, F, Sub: 3)),

        // Shifts and rotates (Shift.cs)
        (Mnemonic.Rol, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 0)),
        (Mnemonic.Ror, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 1)),
        (Mnemonic.Rcl, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 2)),
        (Mnemonic.Rcr, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 3)),
        (Mnemonic.Shl, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 4)),
        (Mnemonic.Shr, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 5)),
        (Mnemonic.Sal, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 6)),
        (Mnemonic.Sar, Inline(InlineOp.Shift, IsaGroup.Shift, 0, Shape.Shift, 7)),
        (Mnemonic.Shld, Run(c => c.Shld, IsaGroup.Shift, 0, Shape.ShiftDouble)),
        (Mnemonic.Shrd, Run(c => c.Shrd, IsaGroup.Shift, 0, Shape.ShiftDouble)),

        // Bit tests, scans and BMI1 (Bit.cs)
        (Mnemonic.Bt, Form(c => c.Bt, InlineOp.Bt, IsaGroup.Bit, 0, Sub: 0)),
        (Mnemonic.Bts, Form(c => c.Bt, InlineOp.Bt, IsaGroup.Bit, L, Sub: 1)),
        (Mnemonic.Btr, Form(c => c.Bt, InlineOp.Bt, IsaGroup.Bit, L, Sub: 2)),
        (Mnemonic.Btc, Form(c => c.Bt, InlineOp.Bt, IsaGroup.Bit, L, Sub: 3)),
        (Mnemonic.Bsf, Run(c => c.Bsf, IsaGroup.Bit, 0)),
        (Mnemonic.Bsr, Run(c => c.Bsr, IsaGroup.Bit, 0)),
        (Mnemonic.Tzcnt, Run(c => c.Tzcnt, IsaGroup.Bit, 0)),
        (Mnemonic.Lzcnt, Run(c => c.Lzcnt, IsaGroup.Bit, 0)),
        (Mnemonic.Popcnt, Run(c => c.Popcnt, IsaGroup.Bit, 0)),
        (Mnemonic.Andn, Run(c => c.Andn, IsaGroup.Bit, 0)),
        (Mnemonic.Bextr, Run(c => c.Bextr, IsaGroup.Bit, 0)),
        (Mnemonic.Blsi, Run(c => c.Blsi, IsaGroup.Bit, 0)),
        (Mnemonic.Blsmsk, Run(c => c.Blsmsk, IsaGroup.Bit, 0)),
        (Mnemonic.Blsr, Run(c => c.Blsr, IsaGroup.Bit, 0)),
        (Mnemonic.Bzhi, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Mulx, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Pdep, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Pext, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Rorx, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Sarx, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Shlx, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Shrx, Run(c => c.Bmi2, IsaGroup.Bit, F)),
        (Mnemonic.Crc32, Run(c => c.Crc32, IsaGroup.Bit, F)),

        // Data transfer (DataTransfer.cs)
        (Mnemonic.Mov, Inline(InlineOp.Mov, IsaGroup.DataTransfer, 0, Shape.Mov)),
        (Mnemonic.Lea, Inline(InlineOp.Lea, IsaGroup.DataTransfer, 0)),
        (Mnemonic.Movzx, Inline(InlineOp.Movzx, IsaGroup.DataTransfer, 0, Shape.Extend)),
        (Mnemonic.Movsx, Inline(InlineOp.Movsx, IsaGroup.DataTransfer, 0, Shape.Extend)),
        (Mnemonic.Movsxd, Inline(InlineOp.Movsx, IsaGroup.DataTransfer, 0, Shape.Extend)),
        (Mnemonic.Xchg, Form(c => c.Xchg, InlineOp.Xchg, IsaGroup.DataTransfer, L)),
        (Mnemonic.Bswap, Form(c => c.Bswap, InlineOp.Bswap, IsaGroup.DataTransfer, 0)),
        (Mnemonic.Cbw, Form(c => c.Cbw, InlineOp.AccExtend, IsaGroup.DataTransfer, 0, Sub: 0, Size: 2)),
        (Mnemonic.Cwde, Form(c => c.Cbw, InlineOp.AccExtend, IsaGroup.DataTransfer, 0, Sub: 0, Size: 4)),
        (Mnemonic.Cdqe, Form(c => c.Cbw, InlineOp.AccExtend, IsaGroup.DataTransfer, 0, Sub: 0, Size: 8)),
        (Mnemonic.Cwd, Form(c => c.Cwd, InlineOp.AccExtend, IsaGroup.DataTransfer, 0, Sub: 1, Size: 2)),
        (Mnemonic.Cdq, Form(c => c.Cwd, InlineOp.AccExtend, IsaGroup.DataTransfer, 0, Sub: 1, Size: 4)),
        (Mnemonic.Cqo, Form(c => c.Cwd, InlineOp.AccExtend, IsaGroup.DataTransfer, 0, Sub: 1, Size: 8)),
        (Mnemonic.Xlatb, Run(c => c.Xlat, IsaGroup.DataTransfer, 0)),
        (Mnemonic.Cmovo, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovno, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovb, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovae, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmove, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovne, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovbe, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmova, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovs, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovns, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovp, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovnp, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovl, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovge, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovle, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovg, Inline(InlineOp.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Seto, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setno, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setb, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setae, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Sete, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setne, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setbe, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Seta, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Sets, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setns, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setp, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setnp, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setl, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setge, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setle, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setg, Inline(InlineOp.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),

        // Stack (Stack.cs)
        (Mnemonic.Push, Inline(InlineOp.Push, IsaGroup.Stack, S, Shape.Push)),
        (Mnemonic.Pop, Inline(InlineOp.Pop, IsaGroup.Stack, S)),
        (Mnemonic.Pushf, Form(c => c.Pushf, InlineOp.Pushf, IsaGroup.Stack, F | S, Size: 2)),
        (Mnemonic.Pushfd, Form(c => c.Pushf, InlineOp.Pushf, IsaGroup.Stack, F | S, Size: 4)),
        (Mnemonic.Pushfq, Form(c => c.Pushf, InlineOp.Pushf, IsaGroup.Stack, F | S, Size: 8)),
        (Mnemonic.Popf, Run(c => c.Popf, IsaGroup.Stack, E | F | S, Size: 2)),
        (Mnemonic.Popfd, Run(c => c.Popf, IsaGroup.Stack, E | F | S, Size: 4)),
        (Mnemonic.Popfq, Run(c => c.Popf, IsaGroup.Stack, E | F | S, Size: 8)),
        (Mnemonic.Enter, Run(c => c.Enter, IsaGroup.Stack, S, Shape.Enter)),
        (Mnemonic.Leave, Run(c => c.Leave, IsaGroup.Stack, S, Shape.StackSized)),

        // String instructions (String.cs)
        (Mnemonic.Movsb, Inline(InlineOp.Movs, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Movsw, Inline(InlineOp.Movs, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Movsq, Inline(InlineOp.Movs, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Stosb, Inline(InlineOp.Stos, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Stosw, Inline(InlineOp.Stos, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Stosd, Inline(InlineOp.Stos, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Mnemonic.Stosq, Inline(InlineOp.Stos, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Lodsb, Inline(InlineOp.Lods, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Lodsw, Inline(InlineOp.Lods, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Lodsd, Inline(InlineOp.Lods, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Mnemonic.Lodsq, Inline(InlineOp.Lods, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Cmpsb, Inline(InlineOp.Cmps, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Cmpsw, Inline(InlineOp.Cmps, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Cmpsq, Inline(InlineOp.Cmps, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Scasb, Inline(InlineOp.Scas, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Scasw, Inline(InlineOp.Scas, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Scasd, Inline(InlineOp.Scas, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Mnemonic.Scasq, Inline(InlineOp.Scas, IsaGroup.String, 0, Shape.String, Size: 8)),

        // Control flow (ControlFlow.cs)
        (Mnemonic.Jo, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jno, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jb, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jae, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Je, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jne, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jbe, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Ja, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Js, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jns, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jp, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jnp, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jl, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jge, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jle, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jg, Inline(InlineOp.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jcxz, Inline(InlineOp.Jcxz, IsaGroup.ControlFlow, 0, Size: 2)),
        (Mnemonic.Jecxz, Inline(InlineOp.Jcxz, IsaGroup.ControlFlow, 0, Size: 4)),
        (Mnemonic.Jrcxz, Inline(InlineOp.Jcxz, IsaGroup.ControlFlow, 0, Size: 8)),
        (Mnemonic.Loop, Inline(InlineOp.Loop, IsaGroup.ControlFlow, 0, Shape.Loop, 0)),
        (Mnemonic.Loope, Inline(InlineOp.Loop, IsaGroup.ControlFlow, 0, Shape.Loop, 1)),
        (Mnemonic.Loopne, Inline(InlineOp.Loop, IsaGroup.ControlFlow, 0, Shape.Loop, 2)),
        (Mnemonic.Ret, Inline(InlineOp.Ret, IsaGroup.ControlFlow, S, Shape.Ret)),
        (Mnemonic.Retf, Run(c => c.RetFar, IsaGroup.ControlFlow, F, Shape.RetFar)),
        (Mnemonic.Int, Run(c => c.Int, IsaGroup.ControlFlow, F)),
        (Mnemonic.Int3, Run(c => c.Int3, IsaGroup.ControlFlow, F)),
        (Mnemonic.Into, Run(c => c.Into, IsaGroup.ControlFlow, F)),
        (Mnemonic.Bound, Run(c => c.Bound, IsaGroup.ControlFlow, F)),

        // The instructions 64-bit mode dropped, and the far-pointer loads (Legacy.cs)
        (Mnemonic.Daa, Run(c => c.DecimalAdjust, IsaGroup.IntegerAlu, 0, Sub: 0)),
        (Mnemonic.Das, Run(c => c.DecimalAdjust, IsaGroup.IntegerAlu, 0, Sub: 1)),
        (Mnemonic.Aaa, Run(c => c.DecimalAdjust, IsaGroup.IntegerAlu, 0, Sub: 2)),
        (Mnemonic.Aas, Run(c => c.DecimalAdjust, IsaGroup.IntegerAlu, 0, Sub: 3)),
        (Mnemonic.Aam, Run(c => c.AsciiAdjust, IsaGroup.IntegerAlu, F, Sub: 0)),
        (Mnemonic.Aad, Run(c => c.AsciiAdjust, IsaGroup.IntegerAlu, 0, Sub: 1)),
        (Mnemonic.Salc, Run(c => c.Salc, IsaGroup.DataTransfer, 0)),
        (Mnemonic.Pusha, Run(c => c.Pusha, IsaGroup.Stack, S, Size: 2)),
        (Mnemonic.Pushad, Run(c => c.Pusha, IsaGroup.Stack, S, Size: 4)),
        (Mnemonic.Popa, Run(c => c.Popa, IsaGroup.Stack, S, Size: 2)),
        (Mnemonic.Popad, Run(c => c.Popa, IsaGroup.Stack, S, Size: 4)),
        (Mnemonic.Arpl, Run(c => c.Arpl, IsaGroup.Segmentation, F)),
        (Mnemonic.Les, Run(c => c.LoadFarPointer, IsaGroup.Segmentation, E | F, Sub: 0)),
        (Mnemonic.Lss, Run(c => c.LoadFarPointer, IsaGroup.Segmentation, E | F, Sub: 2)),
        (Mnemonic.Lds, Run(c => c.LoadFarPointer, IsaGroup.Segmentation, E | F, Sub: 3)),
        (Mnemonic.Lfs, Run(c => c.LoadFarPointer, IsaGroup.Segmentation, E | F, Sub: 4)),
        (Mnemonic.Lgs, Run(c => c.LoadFarPointer, IsaGroup.Segmentation, E | F, Sub: 5)),
        (Mnemonic.Int1, Run(c => c.Int1, IsaGroup.ControlFlow, F)),
        (Mnemonic.Iret, Run(c => c.Iret, IsaGroup.ControlFlow, F, Size: 2)),
        (Mnemonic.Iretd, Run(c => c.Iret, IsaGroup.ControlFlow, F, Size: 4)),
        (Mnemonic.Iretq, Run(c => c.Iret, IsaGroup.ControlFlow, F, Size: 8)),
        (Mnemonic.Syscall, Run(c => c.Syscall, IsaGroup.ControlFlow, F)),
        (Mnemonic.Sysenter, Run(c => c.Sysenter, IsaGroup.ControlFlow, F)),
        (Mnemonic.Sysexit, Run(c => c.Sysexit, IsaGroup.ControlFlow, F, Size: 4)),
        (Mnemonic.Sysexitq, Run(c => c.Sysexit, IsaGroup.ControlFlow, F, Size: 8)),

        // Flag control (FlagControl.cs)
        (Mnemonic.Lahf, Run(c => c.Lahf, IsaGroup.FlagControl, 0)),
        (Mnemonic.Sahf, Run(c => c.Sahf, IsaGroup.FlagControl, 0)),
        (Mnemonic.Clc, Run(c => c.FlagOp, IsaGroup.FlagControl, 0, Sub: 0)),
        (Mnemonic.Stc, Run(c => c.FlagOp, IsaGroup.FlagControl, 0, Sub: 1)),
        (Mnemonic.Cmc, Run(c => c.FlagOp, IsaGroup.FlagControl, 0, Sub: 2)),
        (Mnemonic.Cld, Run(c => c.FlagOp, IsaGroup.FlagControl, 0, Sub: 3)),
        (Mnemonic.Std, Run(c => c.FlagOp, IsaGroup.FlagControl, 0, Sub: 4)),
        (Mnemonic.Cli, Run(c => c.Cli, IsaGroup.FlagControl, E | F)),
        (Mnemonic.Sti, Run(c => c.Sti, IsaGroup.FlagControl, E | F)),

        // Port I/O (PortIo.cs)
        (Mnemonic.In, Run(c => c.In, IsaGroup.PortIo, E | F, Shape.In)),
        (Mnemonic.Out, Run(c => c.Out, IsaGroup.PortIo, E | F, Shape.Out)),
        (Mnemonic.Insb, Run(c => c.Ins, IsaGroup.PortIo, E | F, Shape.String, Size: 1)),
        (Mnemonic.Insw, Run(c => c.Ins, IsaGroup.PortIo, E | F, Shape.String, Size: 2)),
        (Mnemonic.Insd, Run(c => c.Ins, IsaGroup.PortIo, E | F, Shape.String, Size: 4)),
        (Mnemonic.Outsb, Run(c => c.Outs, IsaGroup.PortIo, E | F, Shape.String, Size: 1)),
        (Mnemonic.Outsw, Run(c => c.Outs, IsaGroup.PortIo, E | F, Shape.String, Size: 2)),
        (Mnemonic.Outsd, Run(c => c.Outs, IsaGroup.PortIo, E | F, Shape.String, Size: 4)),

        // Segmentation (Segmentation.cs)
        (Mnemonic.Lar, Run(c => c.Lar, IsaGroup.Segmentation, F)),
        (Mnemonic.Lsl, Run(c => c.Lsl, IsaGroup.Segmentation, F)),
        (Mnemonic.Verr, Run(c => c.Verr, IsaGroup.Segmentation, F)),
        (Mnemonic.Verw, Run(c => c.Verw, IsaGroup.Segmentation, F)),

        // System (System.cs)
        (Mnemonic.Hlt, Run(c => c.Hlt, IsaGroup.System, E | P | F)),
        (Mnemonic.Cpuid, Run(c => c.ExecuteCpuid, IsaGroup.System, E | F)),
        (Mnemonic.Xgetbv, Run(c => c.Xsave, IsaGroup.System, F)),
        (Mnemonic.Xsetbv, Run(c => c.Xsave, IsaGroup.System, E | P | F)),
        (Mnemonic.Xsave, Run(c => c.Xsave, IsaGroup.System, F)),
        (Mnemonic.Xsave64, Run(c => c.Xsave, IsaGroup.System, F)),
        (Mnemonic.Xsaveopt, Run(c => c.Xsave, IsaGroup.System, F)),
        (Mnemonic.Xsaveopt64, Run(c => c.Xsave, IsaGroup.System, F)),
        (Mnemonic.Xrstor, Run(c => c.Xsave, IsaGroup.System, F)),
        (Mnemonic.Xrstor64, Run(c => c.Xsave, IsaGroup.System, F)),
        (Mnemonic.Movbe, Run(c => c.Movbe, IsaGroup.DataTransfer, F)),
        (Mnemonic.Vmcall, Run(c => c.Hypercall, IsaGroup.System, E | F)),
        (Mnemonic.Vmmcall, Run(c => c.Hypercall, IsaGroup.System, E | F)),
        (Mnemonic.Rdtsc, Run(c => c.Rdtsc, IsaGroup.System, E | F)),
        (Mnemonic.Rdtscp, Run(c => c.Rdtscp, IsaGroup.System, E | F)),
        (Mnemonic.Rdpmc, Run(c => c.Rdpmc, IsaGroup.System, F)),
        (Mnemonic.Rdrand, Run(c => c.Rdrand, IsaGroup.System, F)),
        (Mnemonic.Rdseed, Run(c => c.Rdrand, IsaGroup.System, F)),
        (Mnemonic.Swapgs, Run(c => c.Swapgs, IsaGroup.System, E | P | F)),
        (Mnemonic.Rdmsr, Run(c => c.Rdmsr, IsaGroup.System, E | P | F)),
        (Mnemonic.Wrmsr, Run(c => c.Wrmsr, IsaGroup.System, E | P | F)),
        (Mnemonic.Lgdt, Run(c => c.Lgdt, IsaGroup.System, E | P | F)),
        (Mnemonic.Lidt, Run(c => c.Lidt, IsaGroup.System, E | P | F)),
        (Mnemonic.Sgdt, Run(c => c.Sgdt, IsaGroup.System, 0)),
        (Mnemonic.Sidt, Run(c => c.Sidt, IsaGroup.System, 0)),
        (Mnemonic.Ltr, Run(c => c.Ltr, IsaGroup.System, E | P | F)),
        (Mnemonic.Str, Run(c => c.Str, IsaGroup.System, F)),
        (Mnemonic.Lldt, Run(c => c.Lldt, IsaGroup.System, E | P | F)),
        (Mnemonic.Sldt, Run(c => c.Sldt, IsaGroup.System, F)),
        (Mnemonic.Invlpg, Run(c => c.Invlpg, IsaGroup.System, E | P | F)),
        (Mnemonic.Clts, Run(c => c.Clts, IsaGroup.System, E | P | F)),
        (Mnemonic.Wbinvd, Run(c => c.Clts, IsaGroup.System, E | P | F, Sub: 1)),
        (Mnemonic.Invd, Run(c => c.Clts, IsaGroup.System, E | P | F, Sub: 1)),
        (Mnemonic.Smsw, Run(c => c.Smsw, IsaGroup.System, 0)),
        (Mnemonic.Lmsw, Run(c => c.Lmsw, IsaGroup.System, E | P | F)),
        (Mnemonic.Clflush, Run(c => c.Clflush, IsaGroup.System, 0)),
        (Mnemonic.Clflushopt, Run(c => c.Clflush, IsaGroup.System, 0)),
        (Mnemonic.Wait, Run(c => c.Wait, IsaGroup.X87, F)),
        (Mnemonic.Ud0, Run(c => c.Invalid, IsaGroup.Invalid, F)),
        (Mnemonic.Ud1, Run(c => c.Invalid, IsaGroup.Invalid, F)),
        (Mnemonic.Ud2, Run(c => c.Invalid, IsaGroup.Invalid, E | F)),

        // Hints and barriers that need nothing from an interpreter.
        (Mnemonic.Nop, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Pause, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Lfence, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Mfence, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Sfence, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchnta, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetcht0, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetcht1, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetcht2, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchw, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetch, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchit0, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchit1, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchwt1, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Cldemote, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Endbr64, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Endbr32, Inline(InlineOp.Nop, IsaGroup.System, 0)),
        (Mnemonic.Reservednop, Inline(InlineOp.Nop, IsaGroup.System, 0)),
    ];

    /// <summary>Rows for single forms: mnemonics whose forms need different handlers (MOV to a control register, far JMP, ...).</summary>
    private static readonly (Code Code, InstructionForm Form)[] ByCode =
    [
        (Code.Mov_Sreg_rm16, Run(c => c.MovToSreg, IsaGroup.Segmentation, E | F, Shape.MovToSreg)),
        (Code.Mov_Sreg_r32m16, Run(c => c.MovToSreg, IsaGroup.Segmentation, E | F, Shape.MovToSreg)),
        (Code.Mov_Sreg_r64m16, Run(c => c.MovToSreg, IsaGroup.Segmentation, E | F, Shape.MovToSreg)),
        (Code.Mov_rm16_Sreg, Form(c => c.MovFromSreg, InlineOp.MovFromSreg, IsaGroup.Segmentation, 0, Shape.MovFromSreg)),
        (Code.Mov_r32m16_Sreg, Form(c => c.MovFromSreg, InlineOp.MovFromSreg, IsaGroup.Segmentation, 0, Shape.MovFromSreg)),
        (Code.Mov_r64m16_Sreg, Form(c => c.MovFromSreg, InlineOp.MovFromSreg, IsaGroup.Segmentation, 0, Shape.MovFromSreg)),
        (Code.Mov_cr_r32, Run(c => c.MovToCr, IsaGroup.System, E | P | F, Shape.MovToCr)),
        (Code.Mov_cr_r64, Run(c => c.MovToCr, IsaGroup.System, E | P | F, Shape.MovToCr)),
        (Code.Mov_r32_cr, Run(c => c.MovFromCr, IsaGroup.System, P | F, Shape.MovFromCr)),
        (Code.Mov_r64_cr, Run(c => c.MovFromCr, IsaGroup.System, P | F, Shape.MovFromCr)),
        (Code.Mov_dr_r32, Run(c => c.MovToDr, IsaGroup.System, P | F, Shape.MovToDr)),
        (Code.Mov_dr_r64, Run(c => c.MovToDr, IsaGroup.System, P | F, Shape.MovToDr)),
        (Code.Mov_r32_dr, Run(c => c.MovFromDr, IsaGroup.System, P | F, Shape.MovFromDr)),
        (Code.Mov_r64_dr, Run(c => c.MovFromDr, IsaGroup.System, P | F, Shape.MovFromDr)),
        (Code.Pushw_ES, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushd_ES, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushw_CS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushd_CS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushw_SS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushd_SS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushw_DS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushd_DS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushw_FS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushd_FS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushq_FS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushw_GS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushd_GS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Pushq_GS, Run(c => c.PushSeg, IsaGroup.Segmentation, S, Shape.SegmentStack)),
        (Code.Popw_ES, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popd_ES, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popw_CS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popw_SS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popd_SS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popw_DS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popd_DS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popw_FS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popd_FS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popq_FS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popw_GS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popd_GS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Popq_GS, Run(c => c.PopSeg, IsaGroup.Segmentation, E | F | S, Shape.SegmentStack)),
        (Code.Jmp_rel8_16, Inline(InlineOp.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel8_32, Inline(InlineOp.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel8_64, Inline(InlineOp.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel16, Inline(InlineOp.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel32_32, Inline(InlineOp.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel32_64, Inline(InlineOp.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rm16, Inline(InlineOp.JmpInd, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rm32, Inline(InlineOp.JmpInd, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rm64, Inline(InlineOp.JmpInd, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_ptr1616, Run(c => c.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_ptr1632, Run(c => c.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_m1616, Run(c => c.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_m1632, Run(c => c.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_m1664, Run(c => c.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Call_rel16, Inline(InlineOp.Call, IsaGroup.ControlFlow, S, Shape.CallNear)),
        (Code.Call_rel32_32, Inline(InlineOp.Call, IsaGroup.ControlFlow, S, Shape.CallNear)),
        (Code.Call_rel32_64, Inline(InlineOp.Call, IsaGroup.ControlFlow, S, Shape.CallNear)),
        (Code.Call_rm16, Inline(InlineOp.CallInd, IsaGroup.ControlFlow, S, Shape.CallNear)),
        (Code.Call_rm32, Inline(InlineOp.CallInd, IsaGroup.ControlFlow, S, Shape.CallNear)),
        (Code.Call_rm64, Inline(InlineOp.CallInd, IsaGroup.ControlFlow, S, Shape.CallNear)),
        (Code.Call_ptr1616, Run(c => c.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_ptr1632, Run(c => c.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_m1616, Run(c => c.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_m1632, Run(c => c.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_m1664, Run(c => c.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Sysretd, Run(c => c.Sysret, IsaGroup.ControlFlow, F, Size: 4)),
        (Code.Sysretq, Run(c => c.Sysret, IsaGroup.ControlFlow, F, Size: 8)),

        // MOVSD and CMPSD are also SSE2 mnemonics: only these forms are the string instructions.
        (Code.Movsd_m32_m32, Inline(InlineOp.Movs, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Code.Cmpsd_m32_m32, Inline(InlineOp.Cmps, IsaGroup.String, 0, Shape.String, Size: 4)),
    ];

    /// <summary>Row index per <see cref="Code"/>, classified on first use (0: not yet; races only store the same value).</summary>
    private static readonly ushort[] FormIndexByCode = new ushort[Enum.GetValues<Code>().Length];

    private static readonly InstructionForm[] Forms = BuildForms(out FormIndexByMnemonic, out FormIndexByCodeRow);
    private static readonly ushort[] FormIndexByMnemonic;
    private static readonly Dictionary<Code, ushort> FormIndexByCodeRow;

    private const ushort InvalidIndex = 1, X87Index = 2, SseIndex = 3, MmxIndex = 4, AvxIndex = 5;

    /// <summary>The row number of an instruction form: its index in <see cref="Bind"/>'s array and in <see cref="At"/>.</summary>
    public static int IndexOf(Code code)
    {
        int i = FormIndexByCode[(int)code];
        if (i == 0)
        {
            i = Classify(code);
            FormIndexByCode[(int)code] = (ushort)i;
        }

        return i;
    }

    public static InstructionForm At(int index) => Forms[index];

    /// <summary>Every row's handler bound to <paramref name="vcpu"/>, by row number (inline-only rows get the #UD handler; the executor never calls them).</summary>
    public static Handler[] Bind(InterpreterVcpu vcpu)
    {
        var handlers = new Handler[Forms.Length];
        Handler invalid = vcpu.Invalid;
        for (int i = 0; i < Forms.Length; i++)
        {
            handlers[i] = Forms[i]?.Bind?.Invoke(vcpu) ?? invalid;
        }

        return handlers;
    }

    /// <summary>Every row (for tests and listings): the form's mnemonic or code and its row.</summary>
    public static IEnumerable<(string Form, InstructionForm Row)> Rows =>
        ByMnemonic.Select(r => (r.Mnemonic.ToString(), r.Form)).Concat(ByCode.Select(r => (r.Code.ToString(), r.Form)));

    private static InstructionForm[] BuildForms(out ushort[] byMnemonic, out Dictionary<Code, ushort> byCode)
    {
        var forms = new List<InstructionForm> { Invalid, Invalid, X87, Sse, Mmx, Avx };
        byMnemonic = new ushort[Enum.GetValues<Mnemonic>().Length];
        foreach (var (m, form) in ByMnemonic)
        {
            byMnemonic[(int)m] = (ushort)forms.Count;
            forms.Add(form);
        }

        byCode = [];
        foreach (var (c, form) in ByCode)
        {
            byCode[c] = (ushort)forms.Count;
            forms.Add(form);
        }

        return [.. forms];
    }

    private static int Classify(Code code)
    {
        if (FormIndexByCodeRow.TryGetValue(code, out ushort row))
        {
            return row;
        }

        var m = code.Mnemonic();
        if (m is Mnemonic.Movsd or Mnemonic.Cmpsd || FormIndexByMnemonic[(int)m] == 0)
        {
            return ClassifyByRule(code, m);
        }

        return FormIndexByMnemonic[(int)m];
    }

    private static int ClassifyByRule(Code code, Mnemonic m)
    {
        var info = code.ToOpCode();
        if (m.ToString().StartsWith('F'))
        {
            return X87Index;
        }

        if (info.Encoding == EncodingKind.VEX && InterpreterVcpu.IsAvxCode(code))
        {
            return AvxIndex;
        }

        if (info.Encoding != EncodingKind.Legacy)
        {
            return InvalidIndex;
        }

        if (m is Mnemonic.Ldmxcsr or Mnemonic.Stmxcsr or Mnemonic.Movnti or Mnemonic.Cvtss2si or Mnemonic.Cvttss2si or Mnemonic.Cvtsd2si or Mnemonic.Cvttsd2si)
        {
            return SseIndex;
        }

        if (m == Mnemonic.Emms)
        {
            return MmxIndex;
        }

        for (int i = 0; i < info.OpCount; i++)
        {
            if (info.GetOpKind(i) is OpCodeOperandKind.mm_reg or OpCodeOperandKind.mm_rm or OpCodeOperandKind.mm_or_mem)
            {
                return MmxIndex;
            }
        }

        for (int i = 0; i < info.OpCount; i++)
        {
            if (info.GetOpKind(i) is OpCodeOperandKind.xmm_reg or OpCodeOperandKind.xmm_rm or OpCodeOperandKind.xmm_or_mem)
            {
                return SseIndex;
            }
        }

        return InvalidIndex;
    }
}
