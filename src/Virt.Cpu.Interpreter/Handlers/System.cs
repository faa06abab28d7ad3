using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// System handlers: HLT, CPUID, RDTSC(P), RDPMC, SWAPGS, RDMSR/WRMSR, MOV to and from control and debug registers,
/// descriptor-table and task registers, INVLPG, CLTS/WBINVD/INVD, SMSW/LMSW, CLFLUSH, and #UD for invalid forms.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong Invalid(ref Op op, in Instruction _) => throw Fault(Vectors.UD, 0);

    internal ulong Hlt(ref Op op, in Instruction _)
    {
        RequireCpl0();
        if (_plat != null)
        {
            EnterHalt();
            _stop = true;
        }
        else
        {
            SetExit(VcpuExit.Simple(VcpuExitReason.Halt));
        }

        return op.Next;
    }

    internal ulong ExecuteCpuid(ref Op op, in Instruction _)
    {
        ExecCpuid();
        return op.Next;
    }

    internal ulong Rdtsc(ref Op op, in Instruction _)
    {
        ReadTimeStampCounter();
        return op.Next;
    }

    internal ulong Rdtscp(ref Op op, in Instruction _)
    {
        ReadTimeStampCounter();
        SetReg(1, 4, (uint)_cpu.TscAux);
        return op.Next;
    }

    /// <summary>RDPMC: there are no performance counters to read.</summary>
    internal ulong Rdpmc(ref Op op, in Instruction _) => throw Fault(Vectors.GP, 0);

    internal ulong Swapgs(ref Op op, in Instruction _)
    {
        if (_cpu.Bitness != 64)
        {
            throw Fault(Vectors.UD, 0);
        }

        RequireCpl0();
        (_cpu.Seg[SegGs].Base, _cpu.KernelGsBase) = (_cpu.KernelGsBase, _cpu.Seg[SegGs].Base);
        _cpu.SegBase[SegGs] = _cpu.Seg[SegGs].Base;
        return op.Next;
    }

    internal ulong Rdmsr(ref Op op, in Instruction _)
    {
        RequireCpl0();
        if (!TryReadMsr((uint)Gpr(1), out ulong v))
        {
            throw Fault(Vectors.GP, 0);
        }

        SetReg(0, 4, (uint)v);
        SetReg(2, 4, v >> 32);
        return op.Next;
    }

    internal ulong Wrmsr(ref Op op, in Instruction _)
    {
        RequireCpl0();
        if (!TryWriteMsr((uint)Gpr(1), ((ulong)(uint)Gpr(2) << 32) | (uint)Gpr(0), fromGuest: true))
        {
            throw Fault(Vectors.GP, 0);
        }

        _stop = true;
        return op.Next;
    }

    internal ulong MovToCr(ref Op op, in Instruction _)
    {
        RequireCpl0();
        WriteCr(op.Sub, GetReg(op.R1, op.Size));
        _stop = true;
        return op.Next;
    }

    internal ulong MovFromCr(ref Op op, in Instruction _)
    {
        RequireCpl0();
        ulong v = op.Sub switch
        {
            0 => _cpu.Cr0,
            2 => _cpu.Cr2,
            3 => _cpu.Cr3,
            4 => _cpu.Cr4,
            8 => _plat != null ? _plat.LocalController.TaskPriority >> 4 : _cpu.Cr8,
            _ => throw Fault(Vectors.UD, 0),
        };
        SetReg(op.R0, _cpu.Bitness == 64 ? 8 : 4, v);
        return op.Next;
    }

    internal ulong MovToDr(ref Op op, in Instruction _)
    {
        RequireCpl0();
        _cpu.Dr[op.Sub & 7] = GetReg(op.R1, op.Size);
        return op.Next;
    }

    internal ulong MovFromDr(ref Op op, in Instruction _)
    {
        RequireCpl0();
        SetReg(op.R0, _cpu.Bitness == 64 ? 8 : 4, (op.Sub & 7) switch { 6 => _cpu.Dr[6] | 0xFFFF0FF0, 7 => _cpu.Dr[7] | 0x400, var d => _cpu.Dr[d] });
        return op.Next;
    }

    internal ulong Lgdt(ref Op op, in Instruction _)
    {
        _cpu.Gdt = LoadDescriptorTableRegister(ref op);
        return op.Next;
    }

    internal ulong Lidt(ref Op op, in Instruction _)
    {
        _cpu.Idt = LoadDescriptorTableRegister(ref op);
        return op.Next;
    }

    internal ulong Sgdt(ref Op op, in Instruction _)
    {
        StoreDescriptorTableRegister(ref op, _cpu.Gdt);
        return op.Next;
    }

    internal ulong Sidt(ref Op op, in Instruction _)
    {
        StoreDescriptorTableRegister(ref op, _cpu.Idt);
        return op.Next;
    }

    internal ulong Ltr(ref Op op, in Instruction _)
    {
        RequireProtected();
        RequireCpl0();
        LoadTr((ushort)ReadOp0(ref op, out ulong _));
        return op.Next;
    }

    internal ulong Lldt(ref Op op, in Instruction _)
    {
        RequireProtected();
        RequireCpl0();
        LoadLdt((ushort)ReadOp0(ref op, out ulong _));
        return op.Next;
    }

    internal ulong Str(ref Op op, in Instruction _)
    {
        StoreSelector(ref op, _cpu.Tr.Selector);
        return op.Next;
    }

    internal ulong Sldt(ref Op op, in Instruction _)
    {
        StoreSelector(ref op, _cpu.Ldt.Selector);
        return op.Next;
    }

    internal ulong Invlpg(ref Op op, in Instruction _)
    {
        RequireCpl0();
        FlushTlbPage(Ea(ref op));
        _stop = true;
        return op.Next;
    }

    /// <summary>CLTS (<see cref="Op.Sub"/> 0); WBINVD and INVD (1), which have no caches to act on.</summary>
    internal ulong Clts(ref Op op, in Instruction _)
    {
        RequireCpl0();
        if (op.Sub == 0)
        {
            _cpu.Cr0 &= ~Cr0.TaskSwitched;
        }

        return op.Next;
    }

    internal ulong Smsw(ref Op op, in Instruction _)
    {
        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, op.Size, _cpu.Cr0 & Mask(op.Size));
        }
        else
        {
            Write(Ea(ref op), 2, _cpu.Cr0 & 0xFFFF);
        }

        return op.Next;
    }

    internal ulong Lmsw(ref Op op, in Instruction _)
    {
        RequireCpl0();
        ulong v = ReadOp0(ref op, out ulong _) & 0xF;
        WriteCr(0, (_cpu.Cr0 & ~0xEUL) | v | (_cpu.Cr0 & Cr0.ProtectionEnable));
        _stop = true;
        return op.Next;
    }

    /// <summary>CLFLUSH(OPT): nothing to flush, but the access is checked like a one-byte read.</summary>
    internal ulong Clflush(ref Op op, in Instruction _)
    {
        Read(Ea(ref op), 1);
        return op.Next;
    }

    private void RequireCpl0()
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) != 0 && _cpu.Cpl != 0)
        {
            throw Fault(Vectors.GP, 0);
        }
    }

    private void RequireProtected()
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || (_cpu.Flags & VM) != 0)
        {
            throw Fault(Vectors.UD, 0);
        }
    }

    private void ReadTimeStampCounter()
    {
        if ((_cpu.Cr4 & Cr4.TimeStampDisable) != 0 && _cpu.Cpl != 0 && (_cpu.Cr0 & Cr0.ProtectionEnable) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong tsc = ReadTsc();
        SetReg(0, 4, (uint)tsc);
        SetReg(2, 4, tsc >> 32);
    }

    private DescriptorTable LoadDescriptorTableRegister(ref Op op)
    {
        RequireCpl0();
        ulong ea = Ea(ref op);
        ushort limit = (ushort)Read(ea, 2);
        ulong bas = _cpu.Bitness == 64 ? Read(ea + 2, 8) : Read(ea + 2, 4) & (op.Size == 2 ? 0xFFFFFFUL : 0xFFFFFFFFUL);
        return new DescriptorTable { Base = bas, Limit = limit };
    }

    private void StoreDescriptorTableRegister(ref Op op, DescriptorTable t)
    {
        ulong ea = Ea(ref op);
        ProbeWrite(ea, _cpu.Bitness == 64 ? 10 : 6);
        Write(ea, 2, t.Limit);
        if (_cpu.Bitness == 64)
        {
            Write(ea + 2, 8, t.Base);
        }
        else
        {
            Write(ea + 2, 4, t.Base & 0xFFFFFFFF);
        }
    }

    private void StoreSelector(ref Op op, ushort sel)
    {
        RequireProtected();
        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, op.Size, sel);
        }
        else
        {
            Write(Ea(ref op), 2, sel);
        }
    }
}
