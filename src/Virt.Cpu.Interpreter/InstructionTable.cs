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

/// <summary>One row of the instruction table: a form, its dispatch key, how it is translated, and its properties.</summary>
internal readonly record struct InstructionForm(H Handler, IsaGroup Group, FormFlags Flags, Shape Shape = Shape.None, byte Sub = 0, byte Size = 0)
{
    public bool EndsBlock => (Flags & FormFlags.EndsBlock) != 0;
}

/// <summary>
/// The interpreter's instruction set: every supported form (an Iced <see cref="Mnemonic"/>, or one
/// <see cref="Code"/> where a mnemonic has forms with different handlers) bound to its handler, the translation of
/// its operands and its properties. Forms the table does not name are x87 (their mnemonic starts with F),
/// SSE (a legacy encoding with an XMM operand, or a scalar conversion to a general register), or invalid (#UD).
/// </summary>
internal static class InstructionTable
{
    private const FormFlags E = FormFlags.EndsBlock, P = FormFlags.Privileged, L = FormFlags.Lockable, F = FormFlags.MayFault;

    private static readonly InstructionForm Invalid = new(H.Invalid, IsaGroup.Invalid, F | E);
    private static readonly InstructionForm X87 = new(H.X87, IsaGroup.X87, F);
    private static readonly InstructionForm Sse = new(H.Sse, IsaGroup.Sse, F);

    /// <summary>Rows keyed by mnemonic: they cover every <see cref="Code"/> of the mnemonic that <see cref="ByCode"/> does not name.</summary>
    private static readonly (Mnemonic Mnemonic, InstructionForm Form)[] ByMnemonic =
    [
        // Integer ALU (IntegerAlu.cs)
        (Mnemonic.Add, new(H.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluAdd)),
        (Mnemonic.Or, new(H.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluOr)),
        (Mnemonic.Adc, new(H.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluAdc)),
        (Mnemonic.Sbb, new(H.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluSbb)),
        (Mnemonic.And, new(H.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluAnd)),
        (Mnemonic.Sub, new(H.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluSub)),
        (Mnemonic.Xor, new(H.Alu, IsaGroup.IntegerAlu, L, Shape.Alu, Translator.AluXor)),
        (Mnemonic.Cmp, new(H.Alu, IsaGroup.IntegerAlu, 0, Shape.Alu, Translator.AluCmp)),
        (Mnemonic.Test, new(H.Alu, IsaGroup.IntegerAlu, 0, Shape.Alu, Translator.AluTest)),
        (Mnemonic.Inc, new(H.IncDec, IsaGroup.IntegerAlu, L, Shape.IncDec, 0)),
        (Mnemonic.Dec, new(H.IncDec, IsaGroup.IntegerAlu, L, Shape.IncDec, 1)),
        (Mnemonic.Neg, new(H.Neg, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Not, new(H.Not, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Cmpxchg, new(H.Cmpxchg, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Xadd, new(H.Xadd, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Cmpxchg8b, new(H.Cmpxchg8b, IsaGroup.IntegerAlu, L)),
        (Mnemonic.Cmpxchg16b, new(H.Cmpxchg16b, IsaGroup.IntegerAlu, L | F)),

        // Multiply and divide (MultiplyDivide.cs)
        (Mnemonic.Mul, new(H.Mul, IsaGroup.MultiplyDivide, 0)),
        (Mnemonic.Imul, new(H.Imul2, IsaGroup.MultiplyDivide, 0, Shape.Imul)),
        (Mnemonic.Div, new(H.Div, IsaGroup.MultiplyDivide, F)),
        (Mnemonic.Idiv, new(H.Idiv, IsaGroup.MultiplyDivide, F)),

        // Shifts and rotates (Shift.cs)
        (Mnemonic.Rol, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 0)),
        (Mnemonic.Ror, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 1)),
        (Mnemonic.Rcl, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 2)),
        (Mnemonic.Rcr, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 3)),
        (Mnemonic.Shl, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 4)),
        (Mnemonic.Shr, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 5)),
        (Mnemonic.Sal, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 6)),
        (Mnemonic.Sar, new(H.Shift, IsaGroup.Shift, 0, Shape.Shift, 7)),
        (Mnemonic.Shld, new(H.Shld, IsaGroup.Shift, 0, Shape.ShiftDouble)),
        (Mnemonic.Shrd, new(H.Shrd, IsaGroup.Shift, 0, Shape.ShiftDouble)),

        // Bit tests, scans and BMI1 (Bit.cs)
        (Mnemonic.Bt, new(H.Bt, IsaGroup.Bit, 0, Sub: 0)),
        (Mnemonic.Bts, new(H.Bt, IsaGroup.Bit, L, Sub: 1)),
        (Mnemonic.Btr, new(H.Bt, IsaGroup.Bit, L, Sub: 2)),
        (Mnemonic.Btc, new(H.Bt, IsaGroup.Bit, L, Sub: 3)),
        (Mnemonic.Bsf, new(H.Bsf, IsaGroup.Bit, 0)),
        (Mnemonic.Bsr, new(H.Bsr, IsaGroup.Bit, 0)),
        (Mnemonic.Tzcnt, new(H.Tzcnt, IsaGroup.Bit, 0)),
        (Mnemonic.Lzcnt, new(H.Lzcnt, IsaGroup.Bit, 0)),
        (Mnemonic.Popcnt, new(H.Popcnt, IsaGroup.Bit, 0)),
        (Mnemonic.Andn, new(H.Andn, IsaGroup.Bit, 0)),
        (Mnemonic.Bextr, new(H.Bextr, IsaGroup.Bit, 0)),
        (Mnemonic.Blsi, new(H.Blsi, IsaGroup.Bit, 0)),
        (Mnemonic.Blsmsk, new(H.Blsmsk, IsaGroup.Bit, 0)),
        (Mnemonic.Blsr, new(H.Blsr, IsaGroup.Bit, 0)),

        // Data transfer (DataTransfer.cs)
        (Mnemonic.Mov, new(H.Mov, IsaGroup.DataTransfer, 0, Shape.Mov)),
        (Mnemonic.Lea, new(H.Lea, IsaGroup.DataTransfer, 0)),
        (Mnemonic.Movzx, new(H.Movzx, IsaGroup.DataTransfer, 0, Shape.Extend)),
        (Mnemonic.Movsx, new(H.Movsx, IsaGroup.DataTransfer, 0, Shape.Extend)),
        (Mnemonic.Movsxd, new(H.Movsx, IsaGroup.DataTransfer, 0, Shape.Extend)),
        (Mnemonic.Xchg, new(H.Xchg, IsaGroup.DataTransfer, L)),
        (Mnemonic.Bswap, new(H.Bswap, IsaGroup.DataTransfer, 0)),
        (Mnemonic.Cbw, new(H.Cbw, IsaGroup.DataTransfer, 0, Size: 2)),
        (Mnemonic.Cwde, new(H.Cbw, IsaGroup.DataTransfer, 0, Size: 4)),
        (Mnemonic.Cdqe, new(H.Cbw, IsaGroup.DataTransfer, 0, Size: 8)),
        (Mnemonic.Cwd, new(H.Cwd, IsaGroup.DataTransfer, 0, Size: 2)),
        (Mnemonic.Cdq, new(H.Cwd, IsaGroup.DataTransfer, 0, Size: 4)),
        (Mnemonic.Cqo, new(H.Cwd, IsaGroup.DataTransfer, 0, Size: 8)),
        (Mnemonic.Xlatb, new(H.Xlat, IsaGroup.DataTransfer, 0)),
        (Mnemonic.Cmovo, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovno, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovb, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovae, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmove, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovne, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovbe, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmova, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovs, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovns, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovp, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovnp, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovl, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovge, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovle, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Cmovg, new(H.Cmovcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Seto, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setno, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setb, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setae, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Sete, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setne, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setbe, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Seta, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Sets, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setns, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setp, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setnp, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setl, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setge, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setle, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),
        (Mnemonic.Setg, new(H.Setcc, IsaGroup.DataTransfer, 0, Shape.Condition)),

        // Stack (Stack.cs)
        (Mnemonic.Push, new(H.Push, IsaGroup.Stack, 0, Shape.Push)),
        (Mnemonic.Pop, new(H.Pop, IsaGroup.Stack, 0)),
        (Mnemonic.Pushf, new(H.Pushf, IsaGroup.Stack, F, Size: 2)),
        (Mnemonic.Pushfd, new(H.Pushf, IsaGroup.Stack, F, Size: 4)),
        (Mnemonic.Pushfq, new(H.Pushf, IsaGroup.Stack, F, Size: 8)),
        (Mnemonic.Popf, new(H.Popf, IsaGroup.Stack, E | F, Size: 2)),
        (Mnemonic.Popfd, new(H.Popf, IsaGroup.Stack, E | F, Size: 4)),
        (Mnemonic.Popfq, new(H.Popf, IsaGroup.Stack, E | F, Size: 8)),
        (Mnemonic.Enter, new(H.Enter, IsaGroup.Stack, 0, Shape.Enter)),
        (Mnemonic.Leave, new(H.Leave, IsaGroup.Stack, 0, Shape.StackSized)),

        // String instructions (String.cs)
        (Mnemonic.Movsb, new(H.Movs, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Movsw, new(H.Movs, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Movsq, new(H.Movs, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Stosb, new(H.Stos, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Stosw, new(H.Stos, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Stosd, new(H.Stos, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Mnemonic.Stosq, new(H.Stos, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Lodsb, new(H.Lods, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Lodsw, new(H.Lods, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Lodsd, new(H.Lods, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Mnemonic.Lodsq, new(H.Lods, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Cmpsb, new(H.Cmps, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Cmpsw, new(H.Cmps, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Cmpsq, new(H.Cmps, IsaGroup.String, 0, Shape.String, Size: 8)),
        (Mnemonic.Scasb, new(H.Scas, IsaGroup.String, 0, Shape.String, Size: 1)),
        (Mnemonic.Scasw, new(H.Scas, IsaGroup.String, 0, Shape.String, Size: 2)),
        (Mnemonic.Scasd, new(H.Scas, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Mnemonic.Scasq, new(H.Scas, IsaGroup.String, 0, Shape.String, Size: 8)),

        // Control flow (ControlFlow.cs)
        (Mnemonic.Jo, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jno, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jb, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jae, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Je, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jne, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jbe, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Ja, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Js, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jns, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jp, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jnp, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jl, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jge, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jle, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jg, new(H.Jcc, IsaGroup.ControlFlow, 0, Shape.Condition)),
        (Mnemonic.Jcxz, new(H.Jcxz, IsaGroup.ControlFlow, 0, Size: 2)),
        (Mnemonic.Jecxz, new(H.Jcxz, IsaGroup.ControlFlow, 0, Size: 4)),
        (Mnemonic.Jrcxz, new(H.Jcxz, IsaGroup.ControlFlow, 0, Size: 8)),
        (Mnemonic.Loop, new(H.Loop, IsaGroup.ControlFlow, 0, Shape.Loop, 0)),
        (Mnemonic.Loope, new(H.Loop, IsaGroup.ControlFlow, 0, Shape.Loop, 1)),
        (Mnemonic.Loopne, new(H.Loop, IsaGroup.ControlFlow, 0, Shape.Loop, 2)),
        (Mnemonic.Ret, new(H.Ret, IsaGroup.ControlFlow, 0, Shape.Ret)),
        (Mnemonic.Retf, new(H.RetFar, IsaGroup.ControlFlow, F, Shape.RetFar)),
        (Mnemonic.Int, new(H.Int, IsaGroup.ControlFlow, F)),
        (Mnemonic.Int3, new(H.Int3, IsaGroup.ControlFlow, F)),
        (Mnemonic.Into, new(H.Into, IsaGroup.ControlFlow, F)),
        (Mnemonic.Int1, new(H.Int1, IsaGroup.ControlFlow, F)),
        (Mnemonic.Iret, new(H.Iret, IsaGroup.ControlFlow, F, Size: 2)),
        (Mnemonic.Iretd, new(H.Iret, IsaGroup.ControlFlow, F, Size: 4)),
        (Mnemonic.Iretq, new(H.Iret, IsaGroup.ControlFlow, F, Size: 8)),
        (Mnemonic.Syscall, new(H.Syscall, IsaGroup.ControlFlow, F)),
        (Mnemonic.Sysenter, new(H.Sysenter, IsaGroup.ControlFlow, F)),
        (Mnemonic.Sysexit, new(H.Sysexit, IsaGroup.ControlFlow, F)),
        (Mnemonic.Sysexitq, new(H.Sysexit, IsaGroup.ControlFlow, F)),

        // Flag control (FlagControl.cs)
        (Mnemonic.Lahf, new(H.Lahf, IsaGroup.FlagControl, 0)),
        (Mnemonic.Sahf, new(H.Sahf, IsaGroup.FlagControl, 0)),
        (Mnemonic.Clc, new(H.FlagOp, IsaGroup.FlagControl, 0, Sub: 0)),
        (Mnemonic.Stc, new(H.FlagOp, IsaGroup.FlagControl, 0, Sub: 1)),
        (Mnemonic.Cmc, new(H.FlagOp, IsaGroup.FlagControl, 0, Sub: 2)),
        (Mnemonic.Cld, new(H.FlagOp, IsaGroup.FlagControl, 0, Sub: 3)),
        (Mnemonic.Std, new(H.FlagOp, IsaGroup.FlagControl, 0, Sub: 4)),
        (Mnemonic.Cli, new(H.Cli, IsaGroup.FlagControl, E | F)),
        (Mnemonic.Sti, new(H.Sti, IsaGroup.FlagControl, E | F)),

        // Port I/O (PortIo.cs)
        (Mnemonic.In, new(H.In, IsaGroup.PortIo, E | F, Shape.In)),
        (Mnemonic.Out, new(H.Out, IsaGroup.PortIo, E | F, Shape.Out)),
        (Mnemonic.Insb, new(H.Ins, IsaGroup.PortIo, E | F, Shape.String, Size: 1)),
        (Mnemonic.Insw, new(H.Ins, IsaGroup.PortIo, E | F, Shape.String, Size: 2)),
        (Mnemonic.Insd, new(H.Ins, IsaGroup.PortIo, E | F, Shape.String, Size: 4)),
        (Mnemonic.Outsb, new(H.Outs, IsaGroup.PortIo, E | F, Shape.String, Size: 1)),
        (Mnemonic.Outsw, new(H.Outs, IsaGroup.PortIo, E | F, Shape.String, Size: 2)),
        (Mnemonic.Outsd, new(H.Outs, IsaGroup.PortIo, E | F, Shape.String, Size: 4)),

        // Segmentation (Segmentation.cs)
        (Mnemonic.Lar, new(H.Lar, IsaGroup.Segmentation, F)),
        (Mnemonic.Lsl, new(H.Lsl, IsaGroup.Segmentation, F)),
        (Mnemonic.Verr, new(H.Verr, IsaGroup.Segmentation, F)),
        (Mnemonic.Verw, new(H.Verw, IsaGroup.Segmentation, F)),

        // System (System.cs)
        (Mnemonic.Hlt, new(H.Hlt, IsaGroup.System, E | P | F)),
        (Mnemonic.Cpuid, new(H.Cpuid, IsaGroup.System, E | F)),
        (Mnemonic.Rdtsc, new(H.Rdtsc, IsaGroup.System, E | F)),
        (Mnemonic.Rdtscp, new(H.Rdtscp, IsaGroup.System, E | F)),
        (Mnemonic.Rdpmc, new(H.Rdpmc, IsaGroup.System, F)),
        (Mnemonic.Swapgs, new(H.Swapgs, IsaGroup.System, E | P | F)),
        (Mnemonic.Rdmsr, new(H.Rdmsr, IsaGroup.System, E | P | F)),
        (Mnemonic.Wrmsr, new(H.Wrmsr, IsaGroup.System, E | P | F)),
        (Mnemonic.Lgdt, new(H.Lgdt, IsaGroup.System, E | P | F)),
        (Mnemonic.Lidt, new(H.Lidt, IsaGroup.System, E | P | F)),
        (Mnemonic.Sgdt, new(H.Sgdt, IsaGroup.System, 0)),
        (Mnemonic.Sidt, new(H.Sidt, IsaGroup.System, 0)),
        (Mnemonic.Ltr, new(H.Ltr, IsaGroup.System, E | P | F)),
        (Mnemonic.Str, new(H.Str, IsaGroup.System, F)),
        (Mnemonic.Lldt, new(H.Lldt, IsaGroup.System, E | P | F)),
        (Mnemonic.Sldt, new(H.Sldt, IsaGroup.System, F)),
        (Mnemonic.Invlpg, new(H.Invlpg, IsaGroup.System, E | P | F)),
        (Mnemonic.Clts, new(H.Clts, IsaGroup.System, E | P | F)),
        (Mnemonic.Wbinvd, new(H.Clts, IsaGroup.System, E | P | F, Sub: 1)),
        (Mnemonic.Invd, new(H.Clts, IsaGroup.System, E | P | F, Sub: 1)),
        (Mnemonic.Smsw, new(H.Smsw, IsaGroup.System, 0)),
        (Mnemonic.Lmsw, new(H.Lmsw, IsaGroup.System, E | P | F)),
        (Mnemonic.Clflush, new(H.Clflush, IsaGroup.System, 0)),
        (Mnemonic.Clflushopt, new(H.Clflush, IsaGroup.System, 0)),
        (Mnemonic.Wait, new(H.Wait, IsaGroup.X87, F)),
        (Mnemonic.Ud0, new(H.Invalid, IsaGroup.Invalid, F)),
        (Mnemonic.Ud1, new(H.Invalid, IsaGroup.Invalid, F)),
        (Mnemonic.Ud2, new(H.Invalid, IsaGroup.Invalid, E | F)),

        // Hints and barriers that need nothing from an interpreter.
        (Mnemonic.Nop, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Pause, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Lfence, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Mfence, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Sfence, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchnta, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetcht0, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetcht1, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetcht2, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchw, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetch, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchit0, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchit1, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Prefetchwt1, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Cldemote, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Endbr64, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Endbr32, new(H.Nop, IsaGroup.System, 0)),
        (Mnemonic.Reservednop, new(H.Nop, IsaGroup.System, 0)),
    ];

    /// <summary>Rows for single forms: mnemonics whose forms need different handlers (MOV to a control register, far JMP, ...).</summary>
    private static readonly (Code Code, InstructionForm Form)[] ByCode =
    [
        (Code.Mov_Sreg_rm16, new(H.MovToSreg, IsaGroup.Segmentation, E | F, Shape.MovToSreg)),
        (Code.Mov_Sreg_r32m16, new(H.MovToSreg, IsaGroup.Segmentation, E | F, Shape.MovToSreg)),
        (Code.Mov_Sreg_r64m16, new(H.MovToSreg, IsaGroup.Segmentation, E | F, Shape.MovToSreg)),
        (Code.Mov_rm16_Sreg, new(H.MovFromSreg, IsaGroup.Segmentation, 0, Shape.MovFromSreg)),
        (Code.Mov_r32m16_Sreg, new(H.MovFromSreg, IsaGroup.Segmentation, 0, Shape.MovFromSreg)),
        (Code.Mov_r64m16_Sreg, new(H.MovFromSreg, IsaGroup.Segmentation, 0, Shape.MovFromSreg)),
        (Code.Mov_cr_r32, new(H.MovToCr, IsaGroup.System, E | P | F, Shape.MovToCr)),
        (Code.Mov_cr_r64, new(H.MovToCr, IsaGroup.System, E | P | F, Shape.MovToCr)),
        (Code.Mov_r32_cr, new(H.MovFromCr, IsaGroup.System, P | F, Shape.MovFromCr)),
        (Code.Mov_r64_cr, new(H.MovFromCr, IsaGroup.System, P | F, Shape.MovFromCr)),
        (Code.Mov_dr_r32, new(H.MovToDr, IsaGroup.System, P | F, Shape.MovToDr)),
        (Code.Mov_dr_r64, new(H.MovToDr, IsaGroup.System, P | F, Shape.MovToDr)),
        (Code.Mov_r32_dr, new(H.MovFromDr, IsaGroup.System, P | F, Shape.MovFromDr)),
        (Code.Mov_r64_dr, new(H.MovFromDr, IsaGroup.System, P | F, Shape.MovFromDr)),
        (Code.Pushw_ES, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushd_ES, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushw_CS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushd_CS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushw_SS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushd_SS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushw_DS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushd_DS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushw_FS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushd_FS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushq_FS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushw_GS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushd_GS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Pushq_GS, new(H.PushSeg, IsaGroup.Segmentation, 0, Shape.SegmentStack)),
        (Code.Popw_ES, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popd_ES, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popw_CS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popw_SS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popd_SS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popw_DS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popd_DS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popw_FS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popd_FS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popq_FS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popw_GS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popd_GS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Popq_GS, new(H.PopSeg, IsaGroup.Segmentation, E | F, Shape.SegmentStack)),
        (Code.Jmp_rel8_16, new(H.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel8_32, new(H.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel8_64, new(H.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel16, new(H.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel32_32, new(H.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rel32_64, new(H.Jmp, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rm16, new(H.JmpInd, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rm32, new(H.JmpInd, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_rm64, new(H.JmpInd, IsaGroup.ControlFlow, 0)),
        (Code.Jmp_ptr1616, new(H.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_ptr1632, new(H.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_m1616, new(H.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_m1632, new(H.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Jmp_m1664, new(H.JmpFar, IsaGroup.ControlFlow, F, Shape.JmpFar)),
        (Code.Call_rel16, new(H.Call, IsaGroup.ControlFlow, 0, Shape.CallNear)),
        (Code.Call_rel32_32, new(H.Call, IsaGroup.ControlFlow, 0, Shape.CallNear)),
        (Code.Call_rel32_64, new(H.Call, IsaGroup.ControlFlow, 0, Shape.CallNear)),
        (Code.Call_rm16, new(H.CallInd, IsaGroup.ControlFlow, 0, Shape.CallNear)),
        (Code.Call_rm32, new(H.CallInd, IsaGroup.ControlFlow, 0, Shape.CallNear)),
        (Code.Call_rm64, new(H.CallInd, IsaGroup.ControlFlow, 0, Shape.CallNear)),
        (Code.Call_ptr1616, new(H.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_ptr1632, new(H.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_m1616, new(H.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_m1632, new(H.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Call_m1664, new(H.CallFar, IsaGroup.ControlFlow, F, Shape.CallFar)),
        (Code.Sysretd, new(H.Sysret, IsaGroup.ControlFlow, F, Size: 4)),
        (Code.Sysretq, new(H.Sysret, IsaGroup.ControlFlow, F, Size: 8)),

        // MOVSD and CMPSD are also SSE2 mnemonics: only these forms are the string instructions.
        (Code.Movsd_m32_m32, new(H.Movs, IsaGroup.String, 0, Shape.String, Size: 4)),
        (Code.Cmpsd_m32_m32, new(H.Cmps, IsaGroup.String, 0, Shape.String, Size: 4)),
    ];

    /// <summary>Row index per <see cref="Code"/>, classified on first use (0: not yet; races only store the same value).</summary>
    private static readonly ushort[] FormIndexByCode = new ushort[Enum.GetValues<Code>().Length];

    private static readonly InstructionForm[] Forms = BuildForms(out FormIndexByMnemonic, out FormIndexByCodeRow);
    private static readonly ushort[] FormIndexByMnemonic;
    private static readonly Dictionary<Code, ushort> FormIndexByCodeRow;

    private const ushort InvalidIndex = 1, X87Index = 2, SseIndex = 3;

    /// <summary>The table row of an instruction form.</summary>
    public static ref readonly InstructionForm Get(Code code)
    {
        int i = FormIndexByCode[(int)code];
        if (i == 0)
        {
            i = Classify(code);
            FormIndexByCode[(int)code] = (ushort)i;
        }

        return ref Forms[i];
    }

    /// <summary>Every row (for tests and listings): the form's mnemonic or code and its row.</summary>
    public static IEnumerable<(string Form, InstructionForm Row)> Rows =>
        ByMnemonic.Select(r => (r.Mnemonic.ToString(), r.Form)).Concat(ByCode.Select(r => (r.Code.ToString(), r.Form)));

    private static InstructionForm[] BuildForms(out ushort[] byMnemonic, out Dictionary<Code, ushort> byCode)
    {
        var forms = new List<InstructionForm> { default, Invalid, X87, Sse };
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

        if (info.Encoding != EncodingKind.Legacy)
        {
            return InvalidIndex;
        }

        if (m is Mnemonic.Ldmxcsr or Mnemonic.Stmxcsr or Mnemonic.Movnti or Mnemonic.Cvtss2si or Mnemonic.Cvttss2si or Mnemonic.Cvtsd2si or Mnemonic.Cvttsd2si)
        {
            return SseIndex;
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
