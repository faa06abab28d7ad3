using System.Runtime.CompilerServices;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// Control-flow handlers: far JMP/CALL/RET, software interrupts, IRET, SYSCALL/SYSRET, SYSENTER/SYSEXIT
/// (near branches, CALL, RET, LOOP and JCXZ run inline).
/// </summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong JmpFar(ref Op op, in Instruction _)
    {
        ExecFarTransfer(ref op, op.Next, call: false);
        _taskSwitched = false;
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong CallFar(ref Op op, in Instruction _)
    {
        ExecFarTransfer(ref op, op.Next, call: true);
        _taskSwitched = false;
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong RetFar(ref Op op, in Instruction _)
    {
        ExecRetFar(ref op);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Int(ref Op op, in Instruction _)
    {
        if ((_cpu.Flags & VM) != 0 && (_cpu.Flags & IoplMask) != IoplMask)
        {
            throw Fault(Vectors.GP, 0);
        }

        _cpu.Rip = op.Next;
        Deliver((int)op.Imm, false, 0, software: true);
        return _cpu.Rip;
    }

    internal ulong Int3(ref Op op, in Instruction _)
    {
        if (InterceptInt3())
        {
            // The exit signal restarts the instruction: RIP stays at the INT3, as a debugger expects.
            throw _exitSignal;
        }

        _cpu.Rip = op.Next;
        Deliver(Vectors.BP, false, 0, software: true);
        return _cpu.Rip;
    }

    internal ulong Into(ref Op op, in Instruction _)
    {
        if (_cpu.Bitness == 64)
        {
            throw Fault(Vectors.UD, 0);
        }

        if (Cond(0))
        {
            _cpu.Rip = op.Next;
            Deliver(Vectors.OF, false, 0, software: true);
            return _cpu.Rip;
        }

        return op.Next;
    }

    internal ulong Int1(ref Op op, in Instruction _)
    {
        _cpu.Rip = op.Next;
        Deliver(Vectors.DB, false, 0, software: false);
        return _cpu.Rip;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal ulong Iret(ref Op op, in Instruction _)
    {
        ExecIret(op.Size, op.Next);
        _taskSwitched = false;
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Syscall(ref Op op, in Instruction _)
    {
        ExecSyscall(op.Next);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Sysret(ref Op op, in Instruction _)
    {
        ExecSysret(op.Size);
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Sysenter(ref Op op, in Instruction _)
    {
        ExecSysenter();
        _stop = true;
        return _cpu.Rip;
    }

    internal ulong Sysexit(ref Op op, in Instruction _)
    {
        ExecSysexit(op.Size);
        _stop = true;
        return _cpu.Rip;
    }

    private void ExecFarTransfer(ref Op op, ulong next, bool call)
    {
        ulong target;
        ushort sel;
        if (op.Sub == 0)
        {
            if (_cpu.Bitness == 64)
            {
                throw Fault(Vectors.UD, 0);
            }

            target = op.Target;
            sel = (ushort)op.Imm;
        }
        else
        {
            ulong ea = Ea(ref op);
            target = Read(ea, op.Size);
            sel = (ushort)Read(ea + (ulong)op.Size, 2);
        }

        int size = op.Size;
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || (_cpu.Flags & VM) != 0)
        {
            if (call)
            {
                Push(_cpu.Seg[SegCs].Selector, size);
                Push(next, size);
            }

            var cs = _cpu.Seg[SegCs];
            cs.Selector = sel;
            cs.Base = (ulong)sel << 4;
            SetCs(cs);
            _cpu.Rip = target & Mask(size);
            return;
        }

        if ((sel & 0xFFFC) != 0)
        {
            ulong raw = ReadDescriptor(sel);
            var d = ParseDescriptor(raw, sel);
            if (!d.IsCodeOrData)
            {
                FarTransferToSystemDescriptor(sel, d, raw, next, call);
                return;
            }
        }

        int rpl = sel & 3;
        var ncs = CheckCodeSegment(sel, _cpu.Cpl);
        if ((ncs.Type & 4) == 0 && rpl > _cpu.Cpl)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        if (call)
        {
            int psize = _cpu.Bitness == 64 && size == 8 ? 8 : size;
            ulong oldSp = Gpr(4);
            try
            {
                Push(_cpu.Seg[SegCs].Selector, psize);
                Push(next, psize);
            }
            catch
            {
                Gpr(4) = oldSp;
                throw;
            }
        }

        SetCs(ncs);
        _cpu.Rip = _cpu.Bitness == 64 ? target : target & Mask(size);
    }

    private void ExecRetFar(ref Op op)
    {
        int size = op.Size2;
        ulong rip = Peek(0, size);
        ushort sel = (ushort)Peek((ulong)size, size);
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || (_cpu.Flags & VM) != 0)
        {
            AdjustSp((2 * size) + (long)op.Imm);
            var cs = _cpu.Seg[SegCs];
            cs.Selector = sel;
            cs.Base = (ulong)sel << 4;
            SetCs(cs);
            _cpu.Rip = rip;
            return;
        }

        int rpl = sel & 3;
        if (rpl < _cpu.Cpl)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        if (rpl == _cpu.Cpl)
        {
            var ncs = CheckCodeSegment(sel, rpl);
            AdjustSp((2 * size) + (long)op.Imm);
            SetCs(ncs);
            _cpu.Rip = rip;
            return;
        }

        // Return to an outer privilege level: also pops SS:RSP.
        ulong off = (ulong)(2 * size) + op.Imm;
        ulong sp = Peek(off, size);
        ushort ss = (ushort)Peek(off + (ulong)size, size);
        var ocs = CheckCodeSegment(sel, rpl);
        SetCs(ocs);
        LoadDataSegment(SegSs, ss);
        Gpr(4) = _cpu.Bitness == 64 || _cpu.Seg[SegSs].DefaultBig ? (size == 8 ? sp : (uint)sp) : (Gpr(4) & ~0xFFFFUL) | (ushort)sp;
        if (op.Imm != 0)
        {
            AdjustSp((long)op.Imm);
        }

        _cpu.Rip = rip;
        NullifyDataSegmentsForOuterLevel();
    }

    /// <summary>
    /// SYSCALL (SDM Vol. 2; AMD APM Vol. 3). Intel processors have it in 64-bit mode only (#UD in compatibility and
    /// legacy modes); AMD ones also in compatibility mode, entering 64-bit mode at CSTAR, and in legacy mode, entering
    /// 32-bit CPL 0 code at STAR[31:0]. Which one applies follows the vendor string CPUID reports.
    /// </summary>
    private void ExecSyscall(ulong next)
    {
        bool ia32e = (_cpu.Efer & Efer.LongModeActive) != 0;
        if ((_cpu.Efer & Efer.SyscallEnable) == 0 || (_cpu.Cr0 & Cr0.ProtectionEnable) == 0
            || (_cpu.Bitness != 64 && !IsAmdVendor()))
        {
            throw Fault(Vectors.UD, 0);
        }

        ushort sel = (ushort)((_cpu.Star >> 32) & 0xFFFC);
        var ss = SegmentRegister.Flat((ushort)(sel + 8), code: false, longMode: false, dpl: 0);
        ss.Type = 3;
        if (!ia32e)
        {
            // Legacy-mode SYSCALL: ECX gets the return EIP; VM, IF and RF are cleared; nothing goes to R11.
            Gpr(1) = (uint)next;
            _cpu.Seg[SegSs] = ss;
            _cpu.SegBase[SegSs] = 0;
            SetRflags(GetRflags() & ~(VM | IF | RF));
            SetCs(SegmentRegister.Flat(sel, code: true, longMode: false, dpl: 0));
            _cpu.Rip = (uint)_cpu.Star;
            return;
        }

        ulong flags = GetRflags() & ~RF;
        Gpr(1) = next;
        Gpr(11) = flags;
        var cs = SegmentRegister.Flat(sel, code: true, longMode: true, dpl: 0);
        cs.Type = 0xB;
        _cpu.Seg[SegSs] = ss;
        _cpu.Flags = (flags & ~_cpu.Fmask & ~RF) | Fixed1;
        bool fromCompatibility = _cpu.Bitness != 64;
        SetCs(cs);
        _cpu.Rip = fromCompatibility ? _cpu.Cstar : _cpu.Lstar;
    }

    /// <summary>Whether CPUID leaf 0 names an AMD-compatible vendor (AuthenticAMD, HygonGenuine), whose SYSCALL and SYSENTER rules differ from Intel's.</summary>
    private bool IsAmdVendor()
    {
        foreach (var e in _cpuid)
        {
            if (e.Function == 0)
            {
                // "Auth" / "Hygo" in EBX.
                return e.Ebx is 0x68747541 or 0x6F677948;
            }
        }

        return false;
    }

    /// <summary>The IA32_SYSENTER_CS selector, or #GP(0) when its bits 15:2 are zero (SDM Vol. 2, SYSENTER and SYSEXIT).</summary>
    private ushort SysenterSelector()
    {
        ushort sel = (ushort)_cpu.SysenterCs;
        if ((sel & 0xFFFC) == 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        return sel;
    }

    /// <summary>
    /// SYSENTER (SDM Vol. 2): flat CPL 0 code at IA32_SYSENTER_CS (64-bit in IA-32e mode, 32-bit otherwise) with
    /// SS = CS + 8, RSP and RIP from IA32_SYSENTER_ESP and IA32_SYSENTER_EIP (their low halves outside IA-32e mode);
    /// VM, IF and RF are cleared. #GP(0) in real mode or with a null IA32_SYSENTER_CS; #UD in IA-32e mode on AMD.
    /// </summary>
    private void ExecSysenter()
    {
        bool ia32e = (_cpu.Efer & Efer.LongModeActive) != 0;
        if (ia32e && IsAmdVendor())
        {
            throw Fault(Vectors.UD, 0);
        }

        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        ushort sel = (ushort)(SysenterSelector() & 0xFFFC);
        var ss = SegmentRegister.Flat((ushort)(sel + 8), code: false, longMode: false, dpl: 0);
        _cpu.Seg[SegSs] = ss;
        _cpu.SegBase[SegSs] = 0;
        SetRflags(GetRflags() & ~(VM | IF | RF));
        SetCs(SegmentRegister.Flat(sel, code: true, longMode: ia32e, dpl: 0));
        Gpr(4) = ia32e ? _cpu.SysenterEsp : (uint)_cpu.SysenterEsp;
        _cpu.Rip = ia32e ? _cpu.SysenterEip : (uint)_cpu.SysenterEip;
    }

    /// <summary>
    /// SYSEXIT (SDM Vol. 2): back to flat CPL 3 code, RSP from RCX and RIP from RDX. With REX.W (<paramref name="size"/>
    /// 8) to 64-bit code at IA32_SYSENTER_CS + 32 (SS + 40); otherwise to 32-bit code at + 16 (SS + 24). #GP(0) at
    /// CPL &gt; 0, in real mode, with a null IA32_SYSENTER_CS, or for a non-canonical 64-bit RIP or RSP; #UD in IA-32e
    /// mode on AMD.
    /// </summary>
    private void ExecSysexit(int size)
    {
        bool ia32e = (_cpu.Efer & Efer.LongModeActive) != 0;
        if (ia32e && IsAmdVendor())
        {
            throw Fault(Vectors.UD, 0);
        }

        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || _cpu.Cpl != 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        ushort sel = SysenterSelector();
        bool to64 = size == 8;
        ulong rip = Gpr(2), rsp = Gpr(1);
        if (to64 && (!IsCanonical(rip) || !IsCanonical(rsp)))
        {
            throw Fault(Vectors.GP, 0);
        }

        var ss = SegmentRegister.Flat((ushort)((sel + (to64 ? 40 : 24)) | 3), code: false, longMode: false, dpl: 3);
        _cpu.Seg[SegSs] = ss;
        _cpu.SegBase[SegSs] = 0;
        SetCs(SegmentRegister.Flat((ushort)((sel + (to64 ? 32 : 16)) | 3), code: true, longMode: to64, dpl: 3));
        Gpr(4) = to64 ? rsp : (uint)rsp;
        _cpu.Rip = to64 ? rip : (uint)rip;
    }

    private void ExecSysret(int size)
    {
        if ((_cpu.Efer & Efer.SyscallEnable) == 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        if (_cpu.Cpl != 0 || (_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || (_cpu.Efer & Efer.LongModeActive) == 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong rip = Gpr(1);
        if (size == 8 && !IsCanonical(rip))
        {
            throw Fault(Vectors.GP, 0);
        }

        ushort baseSel = (ushort)(_cpu.Star >> 48);
        SegmentRegister cs;
        if (size == 8)
        {
            cs = SegmentRegister.Flat((ushort)((baseSel + 16) | 3), code: true, longMode: true, dpl: 3);
        }
        else
        {
            cs = SegmentRegister.Flat((ushort)(baseSel | 3), code: true, longMode: false, dpl: 3);
            rip = (uint)rip;
        }

        cs.Type = 0xB;
        var ss = SegmentRegister.Flat((ushort)((baseSel + 8) | 3), code: false, longMode: false, dpl: 3);
        ss.Type = 3;
        _cpu.Seg[SegSs] = ss;
        SetRflags((Gpr(11) & 0x3C7FD7) | Fixed1);
        SetCs(cs);
        _cpu.Rip = rip;
    }

    /// <summary>
    /// IRETD at CPL 0 to an EFLAGS image with VM set (SDM Vol. 2, IRET, RETURN-TO-VIRTUAL-8086-MODE): pops ESP, SS, ES,
    /// DS, FS and GS after EIP, CS and EFLAGS, loads every segment register virtual-8086 style and enters at CPL 3.
    /// </summary>
    private void ReturnToVirtual8086(ulong rip, ushort cs, ulong flags)
    {
        ulong esp = Peek(12, 4);
        // The frame: EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS (4 bytes each); segs in segment-register order.
        Span<ushort> segs = [(ushort)Peek(20, 4), cs, (ushort)Peek(16, 4), (ushort)Peek(24, 4), (ushort)Peek(28, 4), (ushort)Peek(32, 4)];
        for (int s = 0; s < 6; s++)
        {
            _cpu.Seg[s] = VirtualModeSegment(segs[s], s == SegCs);
        }

        Gpr(4) = (uint)esp;
        SetRflags((flags & 0x3F7FD5) | Fixed1);
        UpdateMode();
        _cpu.Rip = rip & 0xFFFF;
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "IRET's checks follow the SDM pseudocode (real, virtual-8086, same-level, outer-level and 64-bit returns) in the order that decides which fault is raised; split up, that order would be hidden.")]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecIret(int size, ulong next)
    {
        // IRET ends NMI blocking, even when it faults later (SDM Vol. 3, 6.7.1).
        _nmiBlocked = false;
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || (_cpu.Flags & VM) != 0)
        {
            if ((_cpu.Flags & VM) != 0 && (_cpu.Flags & IoplMask) != IoplMask)
            {
                throw Fault(Vectors.GP, 0);
            }

            ulong ip = Peek(0, size);
            ushort csSel = (ushort)Peek((ulong)size, size);
            ulong fl = Peek((ulong)(2 * size), size);
            AdjustSp(3 * size);
            var cs = _cpu.Seg[SegCs];
            cs.Selector = csSel;
            cs.Base = (ulong)csSel << 4;
            _cpu.Seg[SegCs] = cs;
            ulong keep = size == 2 ? ~0xFFFFUL : (VM | VIP | VIF);
            ulong nf = (_cpu.Flags & keep) | (fl & ~keep & 0x3F7FD5);
            if ((_cpu.Flags & VM) != 0)
            {
                nf = (nf & ~IoplMask) | (_cpu.Flags & IoplMask);
            }

            SetRflags(nf);
            UpdateMode();
            _cpu.Rip = ip & Mask(size);
            return;
        }

        if ((_cpu.Flags & NT) != 0)
        {
            // A task return; IA-32e mode has no task switches (SDM Vol. 2, IRET: #GP(0) when NT is set).
            if ((_cpu.Efer & Efer.LongModeActive) != 0)
            {
                throw Fault(Vectors.GP, 0);
            }

            IretToPreviousTask(next);
            return;
        }

        ulong rip = Peek(0, size);
        ushort sel = (ushort)Peek((ulong)size, size);
        ulong flags = Peek((ulong)(2 * size), size);
        if (size == 4 && _cpu.Cpl == 0 && (flags & VM) != 0)
        {
            ReturnToVirtual8086(rip, sel, flags);
            return;
        }

        int rpl = sel & 3;
        if (rpl < _cpu.Cpl)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        bool popStack = _cpu.Bitness == 64 || rpl > _cpu.Cpl;
        ulong newSp = 0;
        ushort newSs = 0;
        if (popStack)
        {
            newSp = Peek((ulong)(3 * size), size);
            newSs = (ushort)Peek((ulong)(4 * size), size);
        }

        var ncs = CheckCodeSegment(sel, rpl);
        if (ncs.Long && size != 8 && (_cpu.Efer & Efer.LongModeActive) != 0)
        {
            // IRETD to 64-bit code is allowed; the RIP is zero-extended.
        }

        int oldCpl = _cpu.Cpl;
        ulong oldIopl = _cpu.Flags & IoplMask;
        // RF from the image (set in fault frames) suppresses instruction breakpoints for the one instruction IRET
        // returns to; the run loop clears it once that instruction completes.
        ulong changeable = CF | PF | AF | ZF | SF | TF | DF | OF | NT | RF | AC | ID | VIF | VIP;
        if (oldCpl == 0)
        {
            changeable |= IoplMask | IF;
        }
        else if (oldCpl <= (int)(oldIopl >> 12))
        {
            changeable |= IF;
        }

        if (size == 2)
        {
            changeable &= 0xFFFF;
        }

        Materialize();
        ulong nflags = (_cpu.Flags & ~changeable) | (flags & changeable) | Fixed1;
        var savedSs = _cpu.Seg[SegSs];
        SetCs(ncs);
        try
        {
            if (popStack)
            {
                if ((newSs & 0xFFFC) == 0 && (_cpu.Efer & Efer.LongModeActive) != 0 && rpl != 3 && ncs.Long)
                {
                    _cpu.Seg[SegSs] = new SegmentRegister { Selector = newSs, Unusable = true, Dpl = (byte)rpl, DefaultBig = true };
                    _cpu.SegBase[SegSs] = 0;
                }
                else
                {
                    LoadDataSegment(SegSs, newSs);
                }

                Gpr(4) = size == 8 ? newSp : (size == 4 ? (uint)newSp : (Gpr(4) & ~0xFFFFUL) | (ushort)newSp);
            }
            else
            {
                AdjustSp(3 * size);
            }
        }
        catch
        {
            _cpu.Seg[SegSs] = savedSs;
            SetCs(_cpu.Seg[SegCs] with { });
            throw;
        }

        _cpu.Flags = nflags;
        _rfLoaded = (nflags & RF) != 0;
        _cpu.LzOp = LzNone;
        _cpu.Rip = ncs.Long ? rip : rip & Mask(size == 8 ? 4 : size);
        if (rpl > oldCpl)
        {
            NullifyDataSegmentsForOuterLevel();
        }

        UpdateMode();
    }
}
