using Iced.Intel;

namespace Virt.Cpu.Interpreter;

/// <summary>Handler numbers: the executor's dense dispatch key.</summary>
internal enum H : byte
{
    Invalid,
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
    Neg,
    Not,
    Movzx,
    Movsx,
    Xchg,
    Cmpxchg,
    Xadd,
    Bswap,
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
    Pushf,
    Popf,
    Enter,
    Leave,
    Cbw,
    Cwd,
    Lahf,
    Sahf,
    FlagOp,
    Cli,
    Sti,
    Mul,
    Imul1,
    Div,
    Idiv,
    Imul2,
    Shift,
    Shld,
    Shrd,
    Bt,
    Bsf,
    Bsr,
    Tzcnt,
    Lzcnt,
    Popcnt,
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
    In,
    Out,
    Hlt,
    Cpuid,
    Rdtsc,
    Rdtscp,
    Int,
    Int3,
    Into,
    Int1,
    Iret,
    Syscall,
    Sysret,
    Swapgs,
    Rdmsr,
    Wrmsr,
    MovToCr,
    MovFromCr,
    MovToDr,
    MovFromDr,
    Lgdt,
    Lidt,
    Sgdt,
    Sidt,
    Ltr,
    Str,
    Lldt,
    Sldt,
    Invlpg,
    Clts,
    Smsw,
    Lmsw,
    Cmpxchg8b,
    Cmpxchg16b,
    MovToSreg,
    MovFromSreg,
    PushSeg,
    PopSeg,
    Clflush,
    Andn,
    Bextr,
    Blsi,
    Blsmsk,
    Blsr,
    Xlat,
    Lar,
    Lsl,
    Verr,
    Verw,
    JmpFar,
    CallFar,
    RetFar,
    Sysenter,
    Sysexit,
    Wait,
    Sse,
    X87,
    Rdpmc,
}

/// <summary>Turns an Iced <see cref="Instruction"/> into an <see cref="Op"/>.</summary>
internal static class Translator
{
    public const byte AluAdd = 0, AluOr = 1, AluAdc = 2, AluSbb = 3, AluAnd = 4, AluSub = 5, AluXor = 6, AluCmp = 7, AluTest = 8;

    /// <summary>Instructions that may change the mode, paging, interrupt state or privilege: they end a block.</summary>
    public static bool IsSystem(Mnemonic m) => m switch
    {
        Mnemonic.Hlt or Mnemonic.In or Mnemonic.Out or Mnemonic.Insb or Mnemonic.Insw or Mnemonic.Insd or Mnemonic.Outsb
            or Mnemonic.Outsw or Mnemonic.Outsd or Mnemonic.Cli or Mnemonic.Sti or Mnemonic.Popf or Mnemonic.Popfd
            or Mnemonic.Popfq or Mnemonic.Cpuid or Mnemonic.Rdmsr or Mnemonic.Wrmsr or Mnemonic.Lgdt or Mnemonic.Lidt
            or Mnemonic.Ltr or Mnemonic.Lldt or Mnemonic.Invlpg or Mnemonic.Clts or Mnemonic.Lmsw or Mnemonic.Swapgs
            or Mnemonic.Wbinvd or Mnemonic.Invd or Mnemonic.Rdtsc or Mnemonic.Rdtscp or Mnemonic.Ud2 => true,
        _ => false,
    };

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

    public static Op Translate(in Instruction ins, int bitness)
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

        int count = ins.OpCount;
        for (int i = 0; i < count && i < 3; i++)
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

        if (op.K1 == OpKindX.Imm && op.Size != 0)
        {
            op.Imm &= SizeMask(op.Size);
        }

        var m = ins.Mnemonic;
        switch (m)
        {
            case Mnemonic.Add: Alu(ref op, AluAdd); break;
            case Mnemonic.Or: Alu(ref op, AluOr); break;
            case Mnemonic.Adc: Alu(ref op, AluAdc); break;
            case Mnemonic.Sbb: Alu(ref op, AluSbb); break;
            case Mnemonic.And: Alu(ref op, AluAnd); break;
            case Mnemonic.Sub: Alu(ref op, AluSub); break;
            case Mnemonic.Xor: Alu(ref op, AluXor); break;
            case Mnemonic.Cmp: Alu(ref op, AluCmp); break;
            case Mnemonic.Test: Alu(ref op, AluTest); break;
            case Mnemonic.Mov:
                if (ins.Op0Kind == OpKind.Register && ins.Op0Register.IsSegmentRegister())
                {
                    op.H = H.MovToSreg;
                    op.Sub = (byte)(ins.Op0Register - Register.ES);
                    op.Size = 2;
                }
                else if (ins.Op1Kind == OpKind.Register && ins.Op1Register.IsSegmentRegister())
                {
                    op.H = H.MovFromSreg;
                    op.Sub = (byte)(ins.Op1Register - Register.ES);
                }
                else if (ins.Op0Kind == OpKind.Register && ins.Op0Register.IsCR())
                {
                    op.H = H.MovToCr;
                    op.Sub = (byte)(ins.Op0Register - Register.CR0);
                    op.Size = (byte)ins.Op1Register.GetSize();
                }
                else if (ins.Op1Kind == OpKind.Register && ins.Op1Register.IsCR())
                {
                    op.H = H.MovFromCr;
                    op.Sub = (byte)(ins.Op1Register - Register.CR0);
                }
                else if (ins.Op0Kind == OpKind.Register && ins.Op0Register.IsDR())
                {
                    op.H = H.MovToDr;
                    op.Sub = (byte)(ins.Op0Register - Register.DR0);
                    op.Size = (byte)ins.Op1Register.GetSize();
                }
                else if (ins.Op1Kind == OpKind.Register && ins.Op1Register.IsDR())
                {
                    op.H = H.MovFromDr;
                    op.Sub = (byte)(ins.Op1Register - Register.DR0);
                }
                else
                {
                    op.H = (op.K0, op.K1) switch
                    {
                        (OpKindX.Reg, OpKindX.Reg) => H.MovRR,
                        (OpKindX.Reg, OpKindX.Imm) => H.MovRI,
                        (OpKindX.Reg, OpKindX.Mem) => H.MovRM,
                        (OpKindX.Mem, OpKindX.Reg) => H.MovMR,
                        _ => H.Mov,
                    };
                }

                break;
            case Mnemonic.Lea: op.H = H.Lea; break;
            case Mnemonic.Inc: op.H = op.K0 == OpKindX.Reg && op.Size == 8 ? H.IncDecR64 : H.IncDec; op.Sub = 0; break;
            case Mnemonic.Dec: op.H = op.K0 == OpKindX.Reg && op.Size == 8 ? H.IncDecR64 : H.IncDec; op.Sub = 1; break;
            case Mnemonic.Neg: op.H = H.Neg; break;
            case Mnemonic.Not: op.H = H.Not; break;
            case Mnemonic.Movzx: op.H = H.Movzx; op.Size2 = SrcSize(in ins); break;
            case Mnemonic.Movsx:
            case Mnemonic.Movsxd: op.H = H.Movsx; op.Size2 = SrcSize(in ins); break;
            case Mnemonic.Xchg: op.H = H.Xchg; break;
            case Mnemonic.Cmpxchg: op.H = H.Cmpxchg; break;
            case Mnemonic.Xadd: op.H = H.Xadd; break;
            case Mnemonic.Bswap: op.H = H.Bswap; break;
            case Mnemonic.Nop:
            case Mnemonic.Pause:
            case Mnemonic.Lfence:
            case Mnemonic.Mfence:
            case Mnemonic.Sfence:
            case Mnemonic.Prefetchnta:
            case Mnemonic.Prefetcht0:
            case Mnemonic.Prefetcht1:
            case Mnemonic.Prefetcht2:
            case Mnemonic.Prefetchw:
            case Mnemonic.Prefetch:
            case Mnemonic.Prefetchit0:
            case Mnemonic.Prefetchit1:
            case Mnemonic.Cldemote:
            case Mnemonic.Prefetchwt1:
            case Mnemonic.Wbinvd:
            case Mnemonic.Invd:
            case Mnemonic.Endbr64:
            case Mnemonic.Endbr32:
            case Mnemonic.Reservednop:
                op.H = m is Mnemonic.Wbinvd or Mnemonic.Invd ? H.Clts : H.Nop;
                op.Sub = (byte)(m is Mnemonic.Wbinvd or Mnemonic.Invd ? 1 : 0);
                break;
            case Mnemonic.Jmp:
                op.H = ins.Op0Kind switch
                {
                    OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64 => H.Jmp,
                    OpKind.FarBranch16 or OpKind.FarBranch32 => H.JmpFar,
                    _ => ins.IsJmpFarIndirect ? H.JmpFar : H.JmpInd,
                };
                if (op.H == H.JmpFar)
                {
                    FarOperand(ref op, in ins);
                }

                break;
            case Mnemonic.Call:
                op.H = ins.Op0Kind switch
                {
                    OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64 => H.Call,
                    OpKind.FarBranch16 or OpKind.FarBranch32 => H.CallFar,
                    _ => ins.IsCallFarIndirect ? H.CallFar : H.CallInd,
                };
                op.Size2 = (byte)StackOpSize(in ins, bitness);
                if (op.H == H.CallFar)
                {
                    FarOperand(ref op, in ins);
                }

                break;
            case Mnemonic.Ret:
                op.H = H.Ret;
                op.Size2 = (byte)StackOpSize(in ins, bitness);
                op.Imm = ins.OpCount > 0 ? (ulong)ins.Immediate16 : 0UL;
                break;
            case Mnemonic.Retf:
                op.H = H.RetFar;
                op.Size2 = (byte)FarRetSize(in ins, bitness);
                op.Imm = ins.OpCount > 0 ? (ulong)ins.Immediate16 : 0UL;
                break;
            case Mnemonic.Jcxz:
            case Mnemonic.Jecxz:
            case Mnemonic.Jrcxz:
                op.H = H.Jcxz;
                op.Size = (byte)(m == Mnemonic.Jcxz ? 2 : m == Mnemonic.Jecxz ? 4 : 8);
                break;
            case Mnemonic.Loop:
            case Mnemonic.Loope:
            case Mnemonic.Loopne:
                op.H = H.Loop;
                op.Sub = (byte)(m == Mnemonic.Loop ? 0 : m == Mnemonic.Loope ? 1 : 2);
                op.Size = (byte)CounterSize(in ins);
                break;
            case Mnemonic.Push:
                if (ins.Op0Kind == OpKind.Register && ins.Op0Register.IsSegmentRegister())
                {
                    op.H = H.PushSeg;
                    op.Sub = (byte)(ins.Op0Register - Register.ES);
                    op.Size = (byte)StackOpSize(in ins, bitness);
                }
                else
                {
                    op.H = H.Push;
                    op.Size = (byte)StackOpSize(in ins, bitness);
                    if (op.K0 == OpKindX.Imm)
                    {
                        op.Imm = ins.GetImmediate(0) & SizeMask(op.Size);
                    }
                }

                break;
            case Mnemonic.Pop:
                if (ins.Op0Kind == OpKind.Register && ins.Op0Register.IsSegmentRegister())
                {
                    op.H = H.PopSeg;
                    op.Sub = (byte)(ins.Op0Register - Register.ES);
                    op.Size = (byte)StackOpSize(in ins, bitness);
                }
                else
                {
                    op.H = H.Pop;
                }

                break;
            case Mnemonic.Pushf:
            case Mnemonic.Pushfd:
            case Mnemonic.Pushfq:
                op.H = H.Pushf;
                op.Size = (byte)(m == Mnemonic.Pushf ? 2 : m == Mnemonic.Pushfd ? 4 : 8);
                break;
            case Mnemonic.Popf:
            case Mnemonic.Popfd:
            case Mnemonic.Popfq:
                op.H = H.Popf;
                op.Size = (byte)(m == Mnemonic.Popf ? 2 : m == Mnemonic.Popfd ? 4 : 8);
                break;
            case Mnemonic.Enter:
                op.H = H.Enter;
                op.Size = (byte)StackOpSize(in ins, bitness);
                op.Imm = ins.Immediate16;
                op.Target = ins.Immediate8_2nd;
                break;
            case Mnemonic.Leave:
                op.H = H.Leave;
                op.Size = (byte)StackOpSize(in ins, bitness);
                break;
            case Mnemonic.Cbw: op.H = H.Cbw; op.Size = 2; break;
            case Mnemonic.Cwde: op.H = H.Cbw; op.Size = 4; break;
            case Mnemonic.Cdqe: op.H = H.Cbw; op.Size = 8; break;
            case Mnemonic.Cwd: op.H = H.Cwd; op.Size = 2; break;
            case Mnemonic.Cdq: op.H = H.Cwd; op.Size = 4; break;
            case Mnemonic.Cqo: op.H = H.Cwd; op.Size = 8; break;
            case Mnemonic.Lahf: op.H = H.Lahf; break;
            case Mnemonic.Sahf: op.H = H.Sahf; break;
            case Mnemonic.Clc: op.H = H.FlagOp; op.Sub = 0; break;
            case Mnemonic.Stc: op.H = H.FlagOp; op.Sub = 1; break;
            case Mnemonic.Cmc: op.H = H.FlagOp; op.Sub = 2; break;
            case Mnemonic.Cld: op.H = H.FlagOp; op.Sub = 3; break;
            case Mnemonic.Std: op.H = H.FlagOp; op.Sub = 4; break;
            case Mnemonic.Cli: op.H = H.Cli; break;
            case Mnemonic.Sti: op.H = H.Sti; break;
            case Mnemonic.Mul: op.H = H.Mul; break;
            case Mnemonic.Div: op.H = H.Div; break;
            case Mnemonic.Idiv: op.H = H.Idiv; break;
            case Mnemonic.Imul:
                op.H = ins.OpCount == 1 ? H.Imul1 : H.Imul2;
                if (ins.OpCount == 3)
                {
                    op.Imm = ins.GetImmediate(2) & SizeMask(op.Size);
                }

                break;
            case Mnemonic.Rol: Shift(ref op, in ins, 0); break;
            case Mnemonic.Ror: Shift(ref op, in ins, 1); break;
            case Mnemonic.Rcl: Shift(ref op, in ins, 2); break;
            case Mnemonic.Rcr: Shift(ref op, in ins, 3); break;
            case Mnemonic.Shl: Shift(ref op, in ins, 4); break;
            case Mnemonic.Shr: Shift(ref op, in ins, 5); break;
            case Mnemonic.Sal: Shift(ref op, in ins, 6); break;
            case Mnemonic.Sar: Shift(ref op, in ins, 7); break;
            case Mnemonic.Shld:
            case Mnemonic.Shrd:
                op.H = m == Mnemonic.Shld ? H.Shld : H.Shrd;
                if (ins.Op2Kind == OpKind.Register)
                {
                    op.Sub = 1; // count in CL
                }
                else
                {
                    op.Imm = ins.Immediate8;
                }

                break;
            case Mnemonic.Bt: op.H = H.Bt; op.Sub = 0; break;
            case Mnemonic.Bts: op.H = H.Bt; op.Sub = 1; break;
            case Mnemonic.Btr: op.H = H.Bt; op.Sub = 2; break;
            case Mnemonic.Btc: op.H = H.Bt; op.Sub = 3; break;
            case Mnemonic.Bsf: op.H = H.Bsf; break;
            case Mnemonic.Bsr: op.H = H.Bsr; break;
            case Mnemonic.Tzcnt: op.H = H.Tzcnt; break;
            case Mnemonic.Lzcnt: op.H = H.Lzcnt; break;
            case Mnemonic.Popcnt: op.H = H.Popcnt; break;
            case Mnemonic.Andn: op.H = H.Andn; break;
            case Mnemonic.Bextr: op.H = H.Bextr; break;
            case Mnemonic.Blsi: op.H = H.Blsi; break;
            case Mnemonic.Blsmsk: op.H = H.Blsmsk; break;
            case Mnemonic.Blsr: op.H = H.Blsr; break;
            case Mnemonic.Movsb: String(ref op, in ins, H.Movs, 1); break;
            case Mnemonic.Movsw: String(ref op, in ins, H.Movs, 2); break;
            case Mnemonic.Movsd when ins.Code == Code.Movsd_m32_m32: String(ref op, in ins, H.Movs, 4); break;
            case Mnemonic.Movsq: String(ref op, in ins, H.Movs, 8); break;
            case Mnemonic.Stosb: String(ref op, in ins, H.Stos, 1); break;
            case Mnemonic.Stosw: String(ref op, in ins, H.Stos, 2); break;
            case Mnemonic.Stosd: String(ref op, in ins, H.Stos, 4); break;
            case Mnemonic.Stosq: String(ref op, in ins, H.Stos, 8); break;
            case Mnemonic.Lodsb: String(ref op, in ins, H.Lods, 1); break;
            case Mnemonic.Lodsw: String(ref op, in ins, H.Lods, 2); break;
            case Mnemonic.Lodsd: String(ref op, in ins, H.Lods, 4); break;
            case Mnemonic.Lodsq: String(ref op, in ins, H.Lods, 8); break;
            case Mnemonic.Cmpsb: String(ref op, in ins, H.Cmps, 1); break;
            case Mnemonic.Cmpsw: String(ref op, in ins, H.Cmps, 2); break;
            case Mnemonic.Cmpsd when ins.Code == Code.Cmpsd_m32_m32: String(ref op, in ins, H.Cmps, 4); break;
            case Mnemonic.Cmpsq: String(ref op, in ins, H.Cmps, 8); break;
            case Mnemonic.Scasb: String(ref op, in ins, H.Scas, 1); break;
            case Mnemonic.Scasw: String(ref op, in ins, H.Scas, 2); break;
            case Mnemonic.Scasd: String(ref op, in ins, H.Scas, 4); break;
            case Mnemonic.Scasq: String(ref op, in ins, H.Scas, 8); break;
            case Mnemonic.Insb: String(ref op, in ins, H.Ins, 1); break;
            case Mnemonic.Insw: String(ref op, in ins, H.Ins, 2); break;
            case Mnemonic.Insd: String(ref op, in ins, H.Ins, 4); break;
            case Mnemonic.Outsb: String(ref op, in ins, H.Outs, 1); break;
            case Mnemonic.Outsw: String(ref op, in ins, H.Outs, 2); break;
            case Mnemonic.Outsd: String(ref op, in ins, H.Outs, 4); break;
            case Mnemonic.In:
                op.H = H.In;
                op.Size = (byte)ins.Op0Register.GetSize();
                op.Sub = (byte)(ins.Op1Kind == OpKind.Register ? 1 : 0);
                op.Imm = ins.Op1Kind == OpKind.Register ? 0UL : ins.Immediate8;
                break;
            case Mnemonic.Out:
                op.H = H.Out;
                op.Size = (byte)ins.Op1Register.GetSize();
                op.Sub = (byte)(ins.Op0Kind == OpKind.Register ? 1 : 0);
                op.Imm = ins.Op0Kind == OpKind.Register ? 0UL : ins.Immediate8;
                break;
            case Mnemonic.Hlt: op.H = H.Hlt; break;
            case Mnemonic.Cpuid: op.H = H.Cpuid; break;
            case Mnemonic.Rdtsc: op.H = H.Rdtsc; break;
            case Mnemonic.Rdtscp: op.H = H.Rdtscp; break;
            case Mnemonic.Rdpmc: op.H = H.Rdpmc; break;
            case Mnemonic.Int: op.H = H.Int; op.Imm = ins.Immediate8; break;
            case Mnemonic.Int3: op.H = H.Int3; break;
            case Mnemonic.Into: op.H = H.Into; break;
            case Mnemonic.Int1: op.H = H.Int1; break;
            case Mnemonic.Iret: op.H = H.Iret; op.Size = 2; break;
            case Mnemonic.Iretd: op.H = H.Iret; op.Size = 4; break;
            case Mnemonic.Iretq: op.H = H.Iret; op.Size = 8; break;
            case Mnemonic.Syscall: op.H = H.Syscall; break;
            case Mnemonic.Sysret: op.H = H.Sysret; op.Size = (byte)(ins.Code == Code.Sysretq ? 8 : 4); break;
            case Mnemonic.Sysretq: op.H = H.Sysret; op.Size = 8; break;
            case Mnemonic.Sysenter: op.H = H.Sysenter; break;
            case Mnemonic.Sysexit:
            case Mnemonic.Sysexitq: op.H = H.Sysexit; break;
            case Mnemonic.Swapgs: op.H = H.Swapgs; break;
            case Mnemonic.Rdmsr: op.H = H.Rdmsr; break;
            case Mnemonic.Wrmsr: op.H = H.Wrmsr; break;
            case Mnemonic.Lgdt: op.H = H.Lgdt; break;
            case Mnemonic.Lidt: op.H = H.Lidt; break;
            case Mnemonic.Sgdt: op.H = H.Sgdt; break;
            case Mnemonic.Sidt: op.H = H.Sidt; break;
            case Mnemonic.Ltr: op.H = H.Ltr; break;
            case Mnemonic.Str: op.H = H.Str; break;
            case Mnemonic.Lldt: op.H = H.Lldt; break;
            case Mnemonic.Sldt: op.H = H.Sldt; break;
            case Mnemonic.Invlpg: op.H = H.Invlpg; break;
            case Mnemonic.Clts: op.H = H.Clts; break;
            case Mnemonic.Smsw: op.H = H.Smsw; break;
            case Mnemonic.Lmsw: op.H = H.Lmsw; break;
            case Mnemonic.Lar: op.H = H.Lar; break;
            case Mnemonic.Lsl: op.H = H.Lsl; break;
            case Mnemonic.Verr: op.H = H.Verr; break;
            case Mnemonic.Verw: op.H = H.Verw; break;
            case Mnemonic.Cmpxchg8b: op.H = H.Cmpxchg8b; break;
            case Mnemonic.Cmpxchg16b: op.H = H.Cmpxchg16b; break;
            case Mnemonic.Clflush:
            case Mnemonic.Clflushopt: op.H = H.Clflush; break;
            case Mnemonic.Xlatb: op.H = H.Xlat; break;
            case Mnemonic.Wait: op.H = H.Wait; break;
            case Mnemonic.Ud0:
            case Mnemonic.Ud1:
            case Mnemonic.Ud2: op.H = H.Invalid; break;
            default:
                if (ins.ConditionCode != ConditionCode.None && m.ToString().StartsWith("Set", StringComparison.Ordinal)) { op.H = H.Setcc; op.Sub = (byte)(ins.ConditionCode - 1); }
                else if (ins.ConditionCode != ConditionCode.None && m.ToString().StartsWith("Cmov", StringComparison.Ordinal)) { op.H = H.Cmovcc; op.Sub = (byte)(ins.ConditionCode - 1); }
                else if (ins.Code.IsJccShortOrNear()) { op.H = H.Jcc; op.Sub = (byte)(ins.ConditionCode - 1); }
                else if (IsX87(in ins)) { op.H = H.X87; }
                else if (ins.Encoding == EncodingKind.Legacy && IsSseCandidate(in ins)) { op.H = H.Sse; }
                else { op.H = H.Invalid; }

                break;
        }

        return op;
    }

    private static bool IsX87(in Instruction ins)
    {
        for (int i = 0; i < ins.OpCount; i++)
        {
            if (ins.GetOpKind(i) == OpKind.Register && ins.GetOpRegister(i).IsST())
            {
                return true;
            }
        }

        return ins.Mnemonic.ToString().StartsWith('F') || ins.Mnemonic == Mnemonic.Fxsave || ins.Mnemonic == Mnemonic.Fxrstor;
    }

    private static bool IsSseCandidate(in Instruction ins) => ins.Mnemonic is Mnemonic.Ldmxcsr or Mnemonic.Stmxcsr or Mnemonic.Movnti || UsesXmm(in ins) || IsSseScalarToGpr(in ins);

    /// <summary>CVT(T)SS2SI/SD2SI with a memory source name no XMM register.</summary>
    private static bool IsSseScalarToGpr(in Instruction ins) => ins.Mnemonic is Mnemonic.Cvtss2si or Mnemonic.Cvttss2si or Mnemonic.Cvtsd2si or Mnemonic.Cvttsd2si;

    private static bool UsesXmm(in Instruction ins)
    {
        for (int i = 0; i < ins.OpCount; i++)
        {
            if (ins.GetOpKind(i) == OpKind.Register && ins.GetOpRegister(i).IsXMM())
            {
                return true;
            }
        }

        return false;
    }

    private static void Alu(ref Op op, byte sub)
    {
        op.Sub = sub;
        op.H = (op.K0, op.K1) switch
        {
            (OpKindX.Reg, OpKindX.Reg) => op.Size == 8 ? H.AluRR64 : H.AluRR,
            (OpKindX.Reg, OpKindX.Imm) => op.Size == 8 ? H.AluRI64 : H.AluRI,
            _ => H.Alu,
        };
    }

    private static void Shift(ref Op op, in Instruction ins, byte sub)
    {
        op.H = H.Shift;
        op.Sub = sub;
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

    private static void String(ref Op op, in Instruction ins, H h, int size)
    {
        op.H = h;
        op.Size = (byte)size;
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
