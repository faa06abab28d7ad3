using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Turns an Iced <see cref="Instruction"/> into an <see cref="Op"/>.</summary>
internal static class Translator
{
    public const byte AluAdd = 0, AluOr = 1, AluAdc = 2, AluSbb = 3, AluAnd = 4, AluSub = 5, AluXor = 6, AluCmp = 7, AluTest = 8;

    public static int RegIndex(Register r)
    {
        if (r >= Register.AH && r <= Register.BH)
        {
            return 16 + (r - Register.AH);
        }

        var full = r.GetFullRegister();
        if (full >= Register.RAX && full <= Register.R15)
        {
            return full - Register.RAX;
        }

        return 0;
    }

    private static ulong SizeMask(int size) => size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    /// <param name="ins">The decoded instruction.</param>
    /// <param name="bitness">The code size it was decoded for.</param>
    /// <param name="smp">The partition has several vCPUs: locked read-modify-writes, XCHG with memory and MFENCE run as <see cref="InlineOp.Locked"/>.</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static Op Translate(in Instruction ins, int bitness, bool smp = false)
    {
        var op = new Op
        {
            Len = (byte)ins.Length,
            Next = ins.NextIP,
            Base = 0xFF,
            Index = 0xFF,
            AddrSize = (byte)(bitness / 8),
            Seg = 3,
        };
        if (ins.HasRepPrefix || ins.HasRepePrefix)
        {
            op.Pfx |= Pfx.Rep;
        }

        if (ins.HasRepnePrefix)
        {
            op.Pfx |= Pfx.Repne;
        }

        if (ins.HasLockPrefix)
        {
            op.Pfx |= Pfx.Lock;
        }

        int count = Math.Min(ins.OpCount, 3);
        for (int i = 0; i < count; i++)
        {
            FillOperand(ref op, in ins, i, bitness);
        }

        if (op.K1 == OpKindX.Imm && op.Size != 0)
        {
            op.Imm &= SizeMask(op.Size);
        }

        int index = InstructionTable.IndexOf(ins.Code);
        var form = InstructionTable.At(index);
        op.Form = (ushort)index;
        op.Inline = form.Inline;
        op.Sub = form.Sub;
        if (form.Size != 0)
        {
            op.Size = form.Size;
        }

        Complete(ref op, in ins, bitness, form.Shape);
        if (smp && IsLocked(in ins, in op))
        {
            op.Inline = InlineOp.Locked;
        }

        return op;
    }

    /// <summary>Whether the instruction must be atomic against other vCPUs (or order their memory accesses, MFENCE).</summary>
    private static bool IsLocked(in Instruction ins, in Op op) =>
        ins.Mnemonic == Mnemonic.Mfence
        || (ins.Code != Code.INVALID && (op.K0 == OpKindX.Mem || op.K1 == OpKindX.Mem)
            && (ins.HasLockPrefix || ins.Mnemonic == Mnemonic.Xchg));

    /// <summary>Fills operand <paramref name="i"/> (register, memory, immediate or branch target) into <paramref name="op"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FillOperand(ref Op op, in Instruction ins, int i, int bitness)
    {
        var kind = ins.GetOpKind(i);
        byte k;
        byte reg = 0;
        switch (kind)
        {
            case OpKind.Register:
                k = OpKindX.Reg;
                reg = (byte)RegIndex(ins.GetOpRegister(i));
                if (i == 0 || op.Size == 0)
                {
                    int sz = ins.GetOpRegister(i).GetSize();
                    if (i == 0)
                    {
                        op.Size = (byte)sz;
                    }
                }

                break;
            case OpKind.Memory:
                k = OpKindX.Mem;
                FillMemory(ref op, in ins, bitness);
                if (i == 0)
                {
                    op.Size = (byte)ins.MemorySize.GetSize();
                }

                break;
            case OpKind.Immediate8:
            case OpKind.Immediate16:
            case OpKind.Immediate32:
            case OpKind.Immediate64:
            case OpKind.Immediate8to16:
            case OpKind.Immediate8to32:
            case OpKind.Immediate8to64:
            case OpKind.Immediate32to64:
                k = OpKindX.Imm;
                op.Imm = ins.GetImmediate(i);
                break;
            case OpKind.Immediate8_2nd:
                k = OpKindX.Imm;
                op.Target = ins.Immediate8_2nd;
                break;
            case OpKind.NearBranch16:
            case OpKind.NearBranch32:
            case OpKind.NearBranch64:
                k = OpKindX.None;
                op.Target = ins.NearBranchTarget;
                break;
            default:
                k = OpKindX.None;
                break;
        }

        if (i == 0)
        {
            op.K0 = k;
            op.R0 = reg;
        }
        else if (i == 1)
        {
            op.K1 = k;
            op.R1 = reg;
        }
        else
        {
            op.R2 = reg;
            op.K2 = k;
            if (k == OpKindX.Imm && op.K1 != OpKindX.Imm)
            {
                op.Size2 = 0xFF; // third operand is an immediate (IMUL r, r/m, imm; SHLD r/m, r, imm)
            }
        }
    }

    /// <summary>The operand details a form's <see cref="Shape"/> adds to the generic operand fill.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per operand shape of the instruction table, each a few assignments.")]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Complete(ref Op op, in Instruction ins, int bitness, Shape shape)
    {
        switch (shape)
        {
            case Shape.None:
                break;
            case Shape.Alu:
                Alu(ref op, op.Sub);
                break;
            case Shape.Mov:
                op.Inline = (op.K0, op.K1) switch
                {
                    (OpKindX.Reg, OpKindX.Reg) => InlineOp.MovRR,
                    (OpKindX.Reg, OpKindX.Imm) => InlineOp.MovRI,
                    (OpKindX.Reg, OpKindX.Mem) => InlineOp.MovRM,
                    (OpKindX.Mem, OpKindX.Reg) => InlineOp.MovMR,
                    _ => InlineOp.Mov,
                };
                break;
            case Shape.MovToSreg:
                op.Sub = (byte)(ins.Op0Register - Register.ES);
                op.Size = 2;
                break;
            case Shape.MovFromSreg:
                op.Sub = (byte)(ins.Op1Register - Register.ES);
                break;
            case Shape.MovToCr:
                op.Sub = (byte)(ins.Op0Register - Register.CR0);
                op.Size = (byte)ins.Op1Register.GetSize();
                break;
            case Shape.MovFromCr:
                op.Sub = (byte)(ins.Op1Register - Register.CR0);
                break;
            case Shape.MovToDr:
                op.Sub = (byte)(ins.Op0Register - Register.DR0);
                op.Size = (byte)ins.Op1Register.GetSize();
                break;
            case Shape.MovFromDr:
                op.Sub = (byte)(ins.Op1Register - Register.DR0);
                break;
            case Shape.IncDec:
                if (op.K0 == OpKindX.Reg && op.Size == 8)
                {
                    op.Inline = InlineOp.IncDecR64;
                }

                break;
            case Shape.Extend:
                op.Size2 = SrcSize(in ins);
                break;
            case Shape.Condition:
                op.Sub = (byte)(ins.ConditionCode - 1);
                break;
            case Shape.CallNear:
                op.Size2 = (byte)StackOpSize(in ins, bitness);
                break;
            case Shape.CallFar:
                op.Size2 = (byte)StackOpSize(in ins, bitness);
                FarOperand(ref op, in ins);
                break;
            case Shape.JmpFar:
                FarOperand(ref op, in ins);
                break;
            case Shape.Ret:
                op.Size2 = (byte)StackOpSize(in ins, bitness);
                op.Imm = ins.OpCount > 0 ? (ulong)ins.Immediate16 : 0UL;
                break;
            case Shape.RetFar:
                op.Size2 = (byte)FarRetSize(in ins, bitness);
                op.Imm = ins.OpCount > 0 ? (ulong)ins.Immediate16 : 0UL;
                break;
            case Shape.Loop:
                op.Size = (byte)CounterSize(in ins);
                break;
            case Shape.Push:
                op.Size = (byte)StackOpSize(in ins, bitness);
                if (op.K0 == OpKindX.Imm)
                {
                    op.Imm = ins.GetImmediate(0) & SizeMask(op.Size);
                }

                break;
            case Shape.SegmentStack:
                op.Sub = (byte)(ins.Op0Register - Register.ES);
                op.Size = (byte)StackOpSize(in ins, bitness);
                break;
            case Shape.StackSized:
                op.Size = (byte)StackOpSize(in ins, bitness);
                break;
            case Shape.Enter:
                op.Size = (byte)StackOpSize(in ins, bitness);
                op.Imm = ins.Immediate16;
                op.Target = ins.Immediate8_2nd;
                break;
            case Shape.Imul:
                op.Inline = ins.OpCount == 1 ? InlineOp.MulDiv : InlineOp.Imul2;
                op.Sub = (byte)(ins.OpCount == 1 ? 1 : 0); // MulDiv: 1 is IMUL
                if (ins.OpCount == 3)
                {
                    op.Imm = ins.GetImmediate(2) & SizeMask(op.Size);
                }

                break;
            case Shape.Shift:
                Shift(ref op, in ins);
                break;
            case Shape.ShiftDouble:
                if (ins.Op2Kind == OpKind.Register)
                {
                    op.Sub = 1; // count in CL
                }
                else
                {
                    op.Imm = ins.Immediate8;
                }

                break;
            case Shape.String:
                String(ref op, in ins);
                break;
            case Shape.In:
                op.Size = (byte)ins.Op0Register.GetSize();
                op.Sub = (byte)(ins.Op1Kind == OpKind.Register ? 1 : 0);
                op.Imm = ins.Op1Kind == OpKind.Register ? 0UL : ins.Immediate8;
                break;
            default:
                op.Size = (byte)ins.Op1Register.GetSize();
                op.Sub = (byte)(ins.Op0Kind == OpKind.Register ? 1 : 0);
                op.Imm = ins.Op0Kind == OpKind.Register ? 0UL : ins.Immediate8;
                break;
        }
    }

    private static void Alu(ref Op op, byte sub)
    {
        op.Sub = sub;
        op.Inline = (op.K0, op.K1) switch
        {
            (OpKindX.Reg, OpKindX.Reg) => op.Size == 8 ? InlineOp.AluRR64 : InlineOp.AluRR,
            (OpKindX.Reg, OpKindX.Imm) => op.Size == 8 ? InlineOp.AluRI64 : InlineOp.AluRI,
            _ => InlineOp.Alu,
        };
    }

    private static void Shift(ref Op op, in Instruction ins)
    {
        if (ins.OpCount < 2)
        {
            op.Imm = 1;
            op.K1 = OpKindX.Imm;
        }
        else if (ins.Op1Kind == OpKind.Register)
        {
            op.K1 = OpKindX.Reg; // CL
            op.R1 = 1;
        }
        else
        {
            op.K1 = OpKindX.Imm;
            op.Imm = ins.Immediate8;
        }
    }

    private static void String(ref Op op, in Instruction ins)
    {
        op.Seg = 3;
        op.AddrSize = 8;
        for (int i = 0; i < ins.OpCount; i++)
        {
            switch (ins.GetOpKind(i))
            {
                case OpKind.MemorySegSI:
                case OpKind.MemoryESDI:
                    op.AddrSize = 2;
                    break;
                case OpKind.MemorySegESI:
                case OpKind.MemoryESEDI:
                    op.AddrSize = 4;
                    break;
                case OpKind.MemorySegRSI:
                case OpKind.MemoryESRDI:
                    op.AddrSize = 8;
                    break;
                default:
                    break;
            }

            if (ins.GetOpKind(i) is OpKind.MemorySegSI or OpKind.MemorySegESI or OpKind.MemorySegRSI)
            {
                op.Seg = (byte)(ins.MemorySegment - Register.ES);
            }
        }
    }

    private static void FillMemory(ref Op op, in Instruction ins, int bitness)
    {
        op.Seg = (byte)(ins.MemorySegment - Register.ES);
        var b = ins.MemoryBase;
        var x = ins.MemoryIndex;
        if (b == Register.RIP || b == Register.EIP)
        {
            op.Disp = (long)ins.MemoryDisplacement64;
            op.AddrSize = (byte)(b == Register.RIP ? 8 : 4);
            return;
        }

        op.Disp = (long)ins.MemoryDisplacement64;
        if (b != Register.None)
        {
            op.Base = (byte)RegIndex(b);
            op.AddrSize = (byte)b.GetSize();
        }

        if (x != Register.None)
        {
            op.Index = (byte)RegIndex(x);
            op.AddrSize = (byte)x.GetSize();
            op.Scale = (byte)System.Numerics.BitOperations.Log2((uint)ins.MemoryIndexScale);
        }

        if (b == Register.None && x == Register.None)
        {
            // Displacement-only: Iced already gives the displacement at the effective address size.
            op.AddrSize = (byte)(bitness == 64 ? 8 : ins.MemoryDisplSize == 2 ? 2 : 4);
        }
    }

    private static byte SrcSize(in Instruction ins) => ins.Op1Kind == OpKind.Register
        ? (byte)ins.Op1Register.GetSize()
        : (byte)ins.MemorySize.GetSize();

    private static int StackOpSize(in Instruction ins, int bitness)
    {
        int s = ins.StackPointerIncrement;
        if (s != 0)
        {
            return Math.Abs(s);
        }

        return bitness == 64 ? 8 : bitness == 32 ? 4 : 2;
    }

    private static int FarRetSize(in Instruction ins, int bitness) => ins.Code switch
    {
        Code.Retfw or Code.Retfw_imm16 => 2,
        Code.Retfd or Code.Retfd_imm16 => 4,
        Code.Retfq or Code.Retfq_imm16 => 8,
        _ => bitness == 16 ? 2 : 4,
    };

    private static int CounterSize(in Instruction ins)
    {
        var name = ins.Code.ToString();
        return name.EndsWith("_RCX", StringComparison.Ordinal) ? 8 : name.EndsWith("_ECX", StringComparison.Ordinal) ? 4 : 2;
    }

    private static void FarOperand(ref Op op, in Instruction ins)
    {
        if (ins.Op0Kind is OpKind.FarBranch16 or OpKind.FarBranch32)
        {
            op.Sub = 0; // direct ptr16:16/32
            op.Target = ins.Op0Kind == OpKind.FarBranch16 ? ins.FarBranch16 : ins.FarBranch32;
            op.Imm = ins.FarBranchSelector;
            op.Size = (byte)(ins.Op0Kind == OpKind.FarBranch16 ? 2 : 4);
        }
        else
        {
            op.Sub = 1; // m16:16/32/64
            op.Size = (byte)(ins.MemorySize.GetSize() - 2);
        }
    }
}
