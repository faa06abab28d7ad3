using System.Runtime.CompilerServices;
using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>Segmentation handlers: MOV to and from segment registers, PUSH/POP of segment registers, LAR, LSL, VERR, VERW.</summary>
internal sealed partial class InterpreterVcpu
{
    internal ulong MovToSreg(ref Op op, in Instruction _)
    {
        if (op.Sub == SegCs)
        {
            throw Fault(Vectors.UD, 0);
        }

        ushort sel = (ushort)ReadOp1(ref op, 2);
        LoadDataSegment(op.Sub, sel);
        if (op.Sub == SegSs)
        {
            _interruptShadow = true;
            _stackShadow = true;
        }

        _stop = true;
        return op.Next;
    }

    internal ulong MovFromSreg(ref Op op, in Instruction _)
    {
        ushort sel = _cpu.Seg[op.Sub].Selector;
        if (op.K0 == OpKindX.Reg)
        {
            SetReg(op.R0, op.Size, sel);
        }
        else
        {
            Write(Ea(ref op), 2, sel);
        }

        return op.Next;
    }

    internal ulong PushSeg(ref Op op, in Instruction _)
    {
        Push(_cpu.Seg[op.Sub].Selector, op.Size);
        return op.Next;
    }

    internal ulong PopSeg(ref Op op, in Instruction _)
    {
        ushort sel = (ushort)Peek(0, op.Size);
        LoadDataSegment(op.Sub, sel);
        AdjustSp(op.Size);
        if (op.Sub == SegSs)
        {
            _interruptShadow = true;
            _stackShadow = true;
        }

        _stop = true;
        return op.Next;
    }

    internal ulong Lar(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    internal ulong Lsl(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    internal ulong Verr(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    internal ulong Verw(ref Op op, in Instruction ins) => SegmentQuery(ref op, in ins);

    private ulong SegmentQuery(ref Op op, in Instruction ins)
    {
        ExecSegmentQuery(ref op, in ins);
        return op.Next;
    }

    /// <summary>Reads guest memory as a supervisor (descriptor tables, TSS): no U/S check.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong ReadSystem(ulong lin, int size)
    {
        // Descriptor tables and the TSS have 64-bit bases in IA-32e mode, compatibility mode included.
        if ((_cpu.Efer & Efer.LongModeActive) == 0)
        {
            lin &= 0xFFFFFFFF;
        }

        if ((lin & 0xFFF) + (ulong)size > 4096)
        {
            ulong lo = ReadSystem(lin, 1);
            for (int i = 1; i < size; i++)
            {
                lo |= ReadSystem(lin + (ulong)i, 1) << (i * 8);
            }

            return lo;
        }

        return ReadPhys(Translate(lin, AccRead, false), size);
    }

    private void WriteSystem(ulong lin, int size, ulong v)
    {
        // Descriptor tables and the TSS have 64-bit bases in IA-32e mode, compatibility mode included.
        if ((_cpu.Efer & Efer.LongModeActive) == 0)
        {
            lin &= 0xFFFFFFFF;
        }

        WritePhys(Translate(lin, AccWrite, false), size, v);
    }

    /// <summary>Reads the 8-byte descriptor for <paramref name="sel"/> from the GDT or LDT, or #GP(selector).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ulong ReadDescriptor(ushort sel, int vector = Vectors.GP)
    {
        ulong tableBase;
        uint limit;
        if ((sel & 4) != 0)
        {
            if (_cpu.Ldt.Unusable || !_cpu.Ldt.Present)
            {
                throw Fault(vector, (uint)(sel & 0xFFFC));
            }

            tableBase = _cpu.Ldt.Base;
            limit = _cpu.Ldt.Limit;
        }
        else
        {
            tableBase = _cpu.Gdt.Base;
            limit = _cpu.Gdt.Limit;
        }

        ulong off = (ulong)(sel & 0xFFF8);
        if (off + 7 > limit)
        {
            throw Fault(vector, (uint)(sel & 0xFFFC));
        }

        return ReadSystem(tableBase + off, 8);
    }

    private static SegmentRegister ParseDescriptor(ulong d, ushort sel) => SegmentDescriptor.Decode(d, sel);

    private void LoadDataSegment(int seg, ushort sel)
    {
        LoadDataSegmentRegister(seg, sel);
        UpdateSegmentCheck();
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "The SDM's MOV/POP Sreg checks (null selector, table limit, type, privilege, presence) in their architectural order, each with its own fault; one method keeps the order visible.")]
    private void LoadDataSegmentRegister(int seg, ushort sel)
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0 || (_cpu.Flags & VM) != 0)
        {
            _cpu.Seg[seg].Selector = sel;
            _cpu.Seg[seg].Base = (ulong)sel << 4;
            _cpu.SegBase[seg] = _cpu.Bitness == 64 && seg < SegFs ? 0 : (ulong)sel << 4;
            return;
        }

        int rpl = sel & 3;
        if ((sel & 0xFFFC) == 0)
        {
            if (seg == SegSs && !(_cpu.Bitness == 64 && _cpu.Cpl != 3 && rpl == _cpu.Cpl))
            {
                throw Fault(Vectors.GP, 0);
            }

            _cpu.Seg[seg] = new SegmentRegister { Selector = sel, Unusable = true, Dpl = (byte)_cpu.Cpl };
            if (seg == SegSs)
            {
                _cpu.Seg[seg].DefaultBig = true;
            }

            if (seg >= SegFs)
            {
                _cpu.SegBase[seg] = 0;
            }
            else
            {
                _cpu.SegBase[seg] = 0;
            }

            return;
        }

        var s = ParseDescriptor(ReadDescriptor(sel), sel);
        bool code = (s.Type & 8) != 0;
        bool writable = !code && (s.Type & 2) != 0;
        bool readable = !code || (s.Type & 2) != 0;
        bool conforming = code && (s.Type & 4) != 0;
        if (!s.IsCodeOrData)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        if (seg == SegSs)
        {
            if (rpl != _cpu.Cpl || s.Dpl != _cpu.Cpl || !writable)
            {
                throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
            }

            if (!s.Present)
            {
                throw Fault(Vectors.SS, (uint)(sel & 0xFFFC));
            }
        }
        else
        {
            if (!readable || (!conforming && (s.Dpl < _cpu.Cpl || s.Dpl < rpl)))
            {
                throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
            }

            if (!s.Present)
            {
                throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
            }
        }

        s.Type |= 1;
        _cpu.Seg[seg] = s;
        _cpu.SegBase[seg] = _cpu.Bitness == 64 && seg < SegFs ? 0 : s.Base;
    }

    private void LoadTr(ushort sel)
    {
        if ((sel & 0xFFFC) == 0 || (sel & 4) != 0)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        ulong d = ReadDescriptor(sel);
        var s = ParseDescriptor(d, sel);
        if (s.IsCodeOrData || (s.Type != 1 && s.Type != 9))
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        if (!s.Present)
        {
            throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
        }

        if ((_cpu.Efer & Efer.LongModeActive) != 0)
        {
            s.Base = UpperSystemDescriptorBase(sel, s.Base);
        }

        // Mark busy in the descriptor and in the register.
        WriteSystem(_cpu.Gdt.Base + (ulong)(sel & 0xFFF8) + 5, 1, (d >> 40 & 0xFF) | 2);
        s.Type |= 2;
        _cpu.Tr = s;
    }

    /// <summary>
    /// The full base of the 16-byte IA-32e system descriptor <paramref name="sel"/> (LDT or TSS), whose low half gave
    /// <paramref name="low"/>. #GP(selector) when the upper half lies past the GDT limit, its type field is not zero, or
    /// the base is not canonical (SDM Vol. 2, LLDT and LTR; Vol. 3, 8.2.3).
    /// </summary>
    private ulong UpperSystemDescriptorBase(ushort sel, ulong low)
    {
        ulong off = (ulong)(sel & 0xFFF8) + 8;
        if (off + 7 > _cpu.Gdt.Limit)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        ulong upper = ReadSystem(_cpu.Gdt.Base + off, 8);
        ulong full = (low & 0xFFFFFFFF) | ((upper & 0xFFFFFFFF) << 32);
        if (((upper >> 40) & 0x1F) != 0 || !IsCanonical(full))
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        return full;
    }

    private void LoadLdt(ushort sel)
    {
        if ((sel & 0xFFFC) == 0)
        {
            _cpu.Ldt = new SegmentRegister { Selector = sel, Unusable = true };
            return;
        }

        if ((sel & 4) != 0)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        ulong d = ReadDescriptor(sel);
        var s = ParseDescriptor(d, sel);
        if (s.IsCodeOrData || s.Type != 2)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        if (!s.Present)
        {
            throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
        }

        if ((_cpu.Efer & Efer.LongModeActive) != 0)
        {
            s.Base = UpperSystemDescriptorBase(sel, s.Base);
        }

        _cpu.Ldt = s;
    }

    /// <summary>Loads CS for a far transfer to a code segment (no gates), checking privilege.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private SegmentRegister CheckCodeSegment(ushort sel, int newCpl)
    {
        if ((sel & 0xFFFC) == 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        var s = ParseDescriptor(ReadDescriptor(sel), sel);
        if (!s.IsCodeOrData || (s.Type & 8) == 0)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        bool conforming = (s.Type & 4) != 0;
        if (conforming ? s.Dpl > newCpl : s.Dpl != newCpl)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        if (!s.Present)
        {
            throw Fault(Vectors.NP, (uint)(sel & 0xFFFC));
        }

        if (s.Long && s.DefaultBig)
        {
            throw Fault(Vectors.GP, (uint)(sel & 0xFFFC));
        }

        s.Selector = (ushort)((sel & 0xFFFC) | newCpl);
        s.Type |= 1;
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SetCs(in SegmentRegister cs)
    {
        _cpu.Seg[SegCs] = cs;
        UpdateMode();
    }

    /// <summary>
    /// After IRET or far RET to an outer level: ES, DS, FS and GS holding a data or non-conforming code segment more
    /// privileged than the new CPL get a null selector and become unusable (SDM Vol. 2, IRET and RET pseudocode).
    /// Null selectors are left alone. In IA-32e mode the FS and GS bases are not part of what is nulled: 64-bit code
    /// keeps addressing through them (they are MSR state there, SDM Vol. 3, 3.4.4), so a kernel's GS base survives a
    /// trip through user mode; in legacy modes an unusable segment has no base.
    /// </summary>
    private void NullifyDataSegmentsForOuterLevel()
    {
        bool ia32e = (_cpu.Efer & Efer.LongModeActive) != 0;
        ReadOnlySpan<int> segments = [SegEs, SegDs, SegFs, SegGs];
        foreach (int s in segments)
        {
            var d = _cpu.Seg[s];
            bool conformingCode = (d.Type & 0xC) == 0xC;
            if (!d.Unusable && d.IsCodeOrData && !conformingCode && d.Dpl < _cpu.Cpl)
            {
                bool keepBase = ia32e && s >= SegFs;
                _cpu.Seg[s] = new SegmentRegister { Unusable = true, Selector = 0, Base = keepBase ? d.Base : 0 };
                _cpu.SegBase[s] = _cpu.Bitness == 64 && !keepBase ? 0 : _cpu.Seg[s].Base;
            }
        }
    }

    private void ExecSegmentQuery(ref Op op, in Instruction ins)
    {
        RequireProtected();
        ushort sel = (ushort)(ins.Mnemonic is Mnemonic.Lar or Mnemonic.Lsl ? ReadOp1(ref op, 2) : ReadOp0(ref op, out _));
        Materialize();
        bool ok = false;
        ulong d = 0;
        if ((sel & 0xFFFC) != 0)
        {
            ulong tableLimit = (sel & 4) != 0 ? (_cpu.Ldt.Unusable ? 0 : _cpu.Ldt.Limit) : _cpu.Gdt.Limit;
            if ((ulong)(sel & 0xFFF8) + 7 <= tableLimit && !((sel & 4) != 0 && _cpu.Ldt.Unusable))
            {
                d = ReadDescriptor(sel);
                var s = ParseDescriptor(d, sel);
                ok = SegmentQueryAllows(ins.Mnemonic, s, _cpu.Cpl, sel & 3);
                if (ok && ins.Mnemonic == Mnemonic.Lsl)
                {
                    SetReg(op.R0, op.Size, s.Limit);
                }
                else if (ok && ins.Mnemonic == Mnemonic.Lar)
                {
                    SetReg(op.R0, op.Size, (d >> 32) & 0x00F0FF00);
                }
            }
        }

        _cpu.Flags = ok ? _cpu.Flags | ZF : _cpu.Flags & ~ZF;
    }

    /// <summary>Whether LAR, LSL, VERR or VERW accepts descriptor <paramref name="s"/> at <paramref name="cpl"/> with selector RPL <paramref name="rpl"/>.</summary>
    private static bool SegmentQueryAllows(Mnemonic m, in SegmentRegister s, int cpl, int rpl)
    {
        bool code = (s.Type & 8) != 0;
        bool conforming = code && (s.Type & 4) != 0;
        bool privOk = conforming || (s.Dpl >= cpl && s.Dpl >= rpl);
        return m switch
        {
            Mnemonic.Verr => s.IsCodeOrData && privOk && (!code || (s.Type & 2) != 0),
            Mnemonic.Verw => s.IsCodeOrData && privOk && !code && (s.Type & 2) != 0,
            _ => privOk && (s.IsCodeOrData || s.Type is 1 or 2 or 3 or 9 or 11 || (m == Mnemonic.Lar && s.Type is 4 or 12)),
        };
    }
}
