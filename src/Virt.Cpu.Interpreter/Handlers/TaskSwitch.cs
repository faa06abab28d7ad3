using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// Hardware task switching in legacy protected mode (SDM Vol. 3, chapter 8 "Task Management"): JMP and CALL to a TSS
/// descriptor or a task gate, interrupts and exceptions through a task gate in the IDT, and IRET with NT set. The
/// current task's dynamic state is saved in its TSS, the new task's loaded from its TSS (CR3, LDT, EFLAGS, EIP,
/// general and segment registers), busy bits, NT and the back-link follow the kind of switch, CR0.TS is set and
/// the local breakpoint enables in DR7 are cleared. 32-bit and 16-bit TSSs are both handled. In IA-32e mode there are
/// no task switches: TSS descriptors and task gates as targets raise #GP.
/// </summary>
internal sealed partial class InterpreterVcpu
{
    private enum TaskSwitchKind
    {
        Jmp,
        Call,
        Iret,
        Interrupt,
    }

    private const byte TssAvailable16 = 1, TssBusy16 = 3, TssAvailable32 = 9, TssBusy32 = 0xB, TaskGate = 5;

    /// <summary>
    /// A task switch committed the new task's state: an exception raised now (while its segments are loaded) belongs to
    /// the new task, so the instruction that switched is complete and not restarted.
    /// </summary>
    private bool _taskSwitched;

    /// <summary>
    /// JMP or CALL far to a system descriptor in protected mode: a TSS descriptor or a task gate starts a task switch;
    /// anything else (including busy TSSs) raises #GP(selector).
    /// </summary>
    private void FarTransferToSystemDescriptor(ushort sel, in SegmentRegister d, ulong raw, ulong next, bool call)
    {
        if ((_cpu.Efer & Efer.LongModeActive) != 0)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        int rpl = sel & 3;
        ushort tssSel = sel;
        ulong tssRaw = raw;
        var tss = d;
        if (d.Type == TaskGate)
        {
            if (d.Dpl < _cpu.Cpl || d.Dpl < rpl)
            {
                throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
            }

            if (!d.Present)
            {
                throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
            }

            tssSel = (ushort)(raw >> 16);
            (tss, tssRaw) = ReadTaskGateTss(tssSel);
        }
        else if (d.Type is TssAvailable16 or TssAvailable32)
        {
            if (d.Dpl < _cpu.Cpl || d.Dpl < rpl)
            {
                throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
            }

            if (!d.Present)
            {
                throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
            }
        }
        else
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        _cpu.Rip = next;
        SwitchTask(tssSel, tss, tssRaw, call ? TaskSwitchKind.Call : TaskSwitchKind.Jmp);
    }

    /// <summary>The TSS a task gate names: a GDT selector of an available TSS (else #GP with the TSS selector; #NP when not present).</summary>
    private (SegmentRegister Tss, ulong Raw) ReadTaskGateTss(ushort tssSel)
    {
        if ((tssSel & 4) != 0 || (tssSel & 0xFFFC) == 0)
        {
            throw Fault(Vectors.GP, (uint)(tssSel & 0xFFFC));
        }

        ulong raw = ReadDescriptor(tssSel);
        var tss = ParseDescriptor(raw, tssSel);
        if (tss.IsCodeOrData || tss.Type is not (TssAvailable16 or TssAvailable32))
        {
            throw Fault(Vectors.GP, (uint)(tssSel & 0xFFFC));
        }

        if (!tss.Present)
        {
            throw Fault(Vectors.NP, (uint)(tssSel & 0xFFFC));
        }

        return (tss, raw);
    }

    /// <summary>An interrupt or exception through a task gate of the IDT (legacy protected mode).</summary>
    private void DeliverThroughTaskGate(ulong gateRaw, bool hasError, uint error)
    {
        ushort tssSel = (ushort)(gateRaw >> 16);
        var (tss, raw) = ReadTaskGateTss(tssSel);
        SwitchTask(tssSel, tss, raw, TaskSwitchKind.Interrupt);
        if (hasError)
        {
            Push(error, (tss.Type & 8) != 0 ? 4 : 2);
        }

        _taskSwitched = false;
    }

    /// <summary>IRET with NT set outside IA-32e mode: returns to the task in the current TSS's back-link.</summary>
    private void IretToPreviousTask(ulong next)
    {
        ushort link = (ushort)ReadSystem(_cpu.Tr.Base, 2);
        if ((link & 4) != 0 || (link & 0xFFFC) == 0)
        {
            throw Fault(Vectors.TS, (uint)(link & 0xFFFC));
        }

        ulong raw = ReadDescriptor(link, Vectors.TS);
        var tss = ParseDescriptor(raw, link);
        if (tss.IsCodeOrData || tss.Type is not (TssBusy16 or TssBusy32))
        {
            throw Fault(Vectors.TS, (uint)(link & 0xFFFC));
        }

        if (!tss.Present)
        {
            throw Fault(Vectors.NP, (uint)(link & 0xFFFC));
        }

        _cpu.Rip = next;
        SwitchTask(link, tss, raw, TaskSwitchKind.Iret);
    }

    /// <summary>Sets or clears the busy bit of the TSS descriptor <paramref name="sel"/> in the GDT.</summary>
    private void SetTssBusy(ushort sel, bool busy)
    {
        ulong at = _cpu.Gdt.Base + (ulong)(sel & 0xFFF8) + 5;
        ulong access = ReadSystem(at, 1);
        WriteSystem(at, 1, busy ? access | 2 : access & ~2UL);
    }

    /// <summary>
    /// The task switch proper (SDM Vol. 3, 8.3): <see cref="CpuState.Rip"/> already holds the EIP to save for the
    /// current task. Checks the new TSS's limit, saves the current task, updates busy bits, NT and the back-link,
    /// loads TR and the new task's state, then qualifies its LDT and segments (faults from here on belong to the
    /// new task).
    /// </summary>
    private void SwitchTask(ushort sel, SegmentRegister tss, ulong raw, TaskSwitchKind kind)
    {
        _ = raw;
        bool big = (tss.Type & 8) != 0;
        if (tss.Limit < (big ? 0x67u : 0x2Bu))
        {
            throw Fault(Vectors.TS, (uint)(sel & 0xFFFC));
        }

        ulong newBase = tss.Base & 0xFFFFFFFF;

        // Read the whole new state first: a page fault here leaves the current task untouched.
        ulong cr3, eip, eflags, ldtSel;
        Span<ulong> gpr = stackalloc ulong[8];
        Span<ushort> segs = stackalloc ushort[6];
        if (big)
        {
            cr3 = ReadSystem(newBase + 0x1C, 4);
            eip = ReadSystem(newBase + 0x20, 4);
            eflags = ReadSystem(newBase + 0x24, 4);
            for (int r = 0; r < 8; r++)
            {
                gpr[r] = ReadSystem(newBase + 0x28 + (ulong)(r * 4), 4);
            }

            for (int s = 0; s < 6; s++)
            {
                segs[s] = (ushort)ReadSystem(newBase + 0x48 + (ulong)(s * 4), 2);
            }

            ldtSel = ReadSystem(newBase + 0x60, 2);
        }
        else
        {
            cr3 = _cpu.Cr3;
            eip = ReadSystem(newBase + 0x0E, 2);
            eflags = ReadSystem(newBase + 0x10, 2) | (GetRflags() & 0xFFFF0000UL & ~(VM | RF));
            for (int r = 0; r < 8; r++)
            {
                gpr[r] = (Gpr(r) & 0xFFFF0000UL) | ReadSystem(newBase + 0x12 + (ulong)(r * 2), 2);
            }

            for (int s = 0; s < 4; s++)
            {
                segs[s] = (ushort)ReadSystem(newBase + 0x22 + (ulong)(s * 2), 2);
            }

            // A 16-bit TSS has no FS and GS: they keep their selectors.
            segs[SegFs] = _cpu.Seg[SegFs].Selector;
            segs[SegGs] = _cpu.Seg[SegGs].Selector;

            ldtSel = ReadSystem(newBase + 0x2A, 2);
        }

        ushort oldSel = _cpu.Tr.Selector;
        SaveCurrentTask(kind);
        if (kind is TaskSwitchKind.Jmp or TaskSwitchKind.Iret)
        {
            SetTssBusy(oldSel, busy: false);
        }

        if (kind is TaskSwitchKind.Call or TaskSwitchKind.Interrupt)
        {
            eflags |= NT;
            WriteSystem(newBase, 2, oldSel);
        }

        if (kind != TaskSwitchKind.Iret)
        {
            SetTssBusy(sel, busy: true);
        }

        // Commit: TR, CR0.TS, DR7's local enables, CR3, then the registers.
        tss.Type |= 2;
        tss.Selector = sel;
        _cpu.Tr = tss;
        _cpu.Cr0 |= Cr0.TaskSwitched;
        if ((_cpu.Dr[7] & 0x155) != 0)
        {
            _cpu.Dr[7] &= ~0x155UL;
            UpdateGuestBreakpoints();
        }

        _taskSwitched = true;
        if (big && (_cpu.Cr0 & Cr0.Paging) != 0 && cr3 != _cpu.Cr3)
        {
            _cpu.Cr3 = cr3;
            FlushTlb();
        }

        for (int r = 0; r < 8; r++)
        {
            Gpr(r) = gpr[r];
        }

        _cpu.Rip = eip;
        _cpu.LzOp = LzNone;
        _cpu.Flags = (eflags & 0x3F7FD5) | Fixed1;
        _interruptShadow = false;

        // Selectors first, descriptors unusable until qualified (a fault below leaves them so, as on hardware).
        for (int s = 0; s < 6; s++)
        {
            _cpu.Seg[s] = new SegmentRegister { Selector = segs[s], Unusable = true, DefaultBig = _cpu.Seg[s].DefaultBig };
        }

        _cpu.Ldt = new SegmentRegister { Selector = (ushort)ldtSel, Unusable = true };
        if ((_cpu.Flags & VM) != 0)
        {
            for (int s = 0; s < 6; s++)
            {
                _cpu.Seg[s] = VirtualModeSegment(segs[s], s == SegCs);
            }
        }

        UpdateMode();
        LoadTaskLdt((ushort)ldtSel);
        if ((_cpu.Flags & VM) == 0)
        {
            LoadTaskSegments(segs);
        }

        if (_cpu.Rip > _cpu.Seg[SegCs].Limit)
        {
            throw Fault(Vectors.GP, 0);
        }
    }

    /// <summary>Saves the current task's dynamic state (EIP, EFLAGS, general and segment registers) in its TSS; NT is cleared in the image on IRET.</summary>
    private void SaveCurrentTask(TaskSwitchKind kind)
    {
        ulong oldBase = _cpu.Tr.Base & 0xFFFFFFFF;
        ulong flags = GetRflags();
        if (kind == TaskSwitchKind.Iret)
        {
            flags &= ~NT;
        }

        if ((_cpu.Tr.Type & 8) != 0)
        {
            WriteSystem(oldBase + 0x20, 4, _cpu.Rip & 0xFFFFFFFF);
            WriteSystem(oldBase + 0x24, 4, flags & 0xFFFFFFFF);
            for (int r = 0; r < 8; r++)
            {
                WriteSystem(oldBase + 0x28 + (ulong)(r * 4), 4, Gpr(r) & 0xFFFFFFFF);
            }

            for (int s = 0; s < 6; s++)
            {
                WriteSystem(oldBase + 0x48 + (ulong)(s * 4), 2, _cpu.Seg[s].Selector);
            }
        }
        else
        {
            WriteSystem(oldBase + 0x0E, 2, _cpu.Rip & 0xFFFF);
            WriteSystem(oldBase + 0x10, 2, flags & 0xFFFF);
            for (int r = 0; r < 8; r++)
            {
                WriteSystem(oldBase + 0x12 + (ulong)(r * 2), 2, Gpr(r) & 0xFFFF);
            }

            for (int s = 0; s < 4; s++)
            {
                WriteSystem(oldBase + 0x22 + (ulong)(s * 2), 2, _cpu.Seg[s].Selector);
            }
        }
    }

    /// <summary>A virtual-8086-mode segment register: base selector * 16, 64 KiB limit, read/write, DPL 3.</summary>
    private static SegmentRegister VirtualModeSegment(ushort sel, bool code) => new()
    {
        Selector = sel, Base = (ulong)sel << 4, Limit = 0xFFFF, Type = code ? (byte)0xB : (byte)0x3, Present = true, Dpl = 3, IsCodeOrData = true,
    };

    private void LoadTaskLdt(ushort sel)
    {
        if ((sel & 0xFFFC) == 0)
        {
            return;
        }

        if ((sel & 4) != 0)
        {
            throw Fault(Vectors.TS, (uint)(sel & 0xFFFC));
        }

        var d = ParseDescriptor(ReadDescriptor(sel, Vectors.TS), sel);
        if (d.IsCodeOrData || d.Type != 2 || !d.Present)
        {
            throw Fault(Vectors.TS, (uint)(sel & 0xFFFC));
        }

        _cpu.Ldt = d;
    }

    /// <summary>Qualifies the new task's CS, SS, DS, ES, FS and GS (#TS, #NP or #SS with the selector, SDM Vol. 3, table 8-2).</summary>
    private void LoadTaskSegments(ReadOnlySpan<ushort> segs)
    {
        ushort csSel = segs[SegCs];
        int cpl = csSel & 3;
        if ((csSel & 0xFFFC) == 0)
        {
            throw Fault(Vectors.TS, 0);
        }

        var cs = ParseDescriptor(ReadDescriptor(csSel, Vectors.TS), csSel);
        bool conforming = (cs.Type & 4) != 0;
        if (!cs.IsCodeOrData || (cs.Type & 8) == 0 || (conforming ? cs.Dpl > cpl : cs.Dpl != cpl) || cs.Long)
        {
            throw Fault(Vectors.TS, (uint)(csSel & 0xFFFC));
        }

        if (!cs.Present)
        {
            throw Fault(Vectors.NP, (uint)(csSel & 0xFFFC));
        }

        cs.Type |= 1;
        SetCs(cs);

        ushort ssSel = segs[SegSs];
        if ((ssSel & 0xFFFC) == 0)
        {
            throw Fault(Vectors.TS, 0);
        }

        var ss = ParseDescriptor(ReadDescriptor(ssSel, Vectors.TS), ssSel);
        if (!ss.IsCodeOrData || (ss.Type & 0xA) != 2 || (ssSel & 3) != cpl || ss.Dpl != cpl)
        {
            throw Fault(Vectors.TS, (uint)(ssSel & 0xFFFC));
        }

        if (!ss.Present)
        {
            throw Fault(Vectors.SS, (uint)(ssSel & 0xFFFC));
        }

        ss.Type |= 1;
        _cpu.Seg[SegSs] = ss;
        _cpu.SegBase[SegSs] = ss.Base;

        foreach (int s in (ReadOnlySpan<int>)[SegDs, SegEs, SegFs, SegGs])
        {
            ushort sel = segs[s];
            if ((sel & 0xFFFC) == 0)
            {
                _cpu.Seg[s] = new SegmentRegister { Selector = sel, Unusable = true };
                _cpu.SegBase[s] = 0;
                continue;
            }

            var d = ParseDescriptor(ReadDescriptor(sel, Vectors.TS), sel);
            bool code = (d.Type & 8) != 0;
            bool readable = !code || (d.Type & 2) != 0;
            bool conf = code && (d.Type & 4) != 0;
            if (!d.IsCodeOrData || !readable || (!conf && (d.Dpl < cpl || d.Dpl < (sel & 3))))
            {
                throw Fault(Vectors.TS, (uint)(sel & 0xFFFC));
            }

            if (!d.Present)
            {
                throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
            }

            d.Type |= 1;
            _cpu.Seg[s] = d;
            _cpu.SegBase[s] = d.Base;
        }

        UpdateSegmentCheck();
    }
}
