using Iced.Intel;
using Virt.X86;

namespace Virt.Cpu.Interpreter;

/// <summary>Privileged instructions, segment loads, control transfers between privilege levels, and port I/O.</summary>
internal sealed partial class InterpreterVcpu
{
    private void SetExit(VcpuExit exit)
    {
        _exit = exit;
        _hasExit = true;
        _stop = true;
    }

    private ulong ReadTsc()
    {
        if (_plat != null)
        {
            return VirtualTsc();
        }

        long ticks = System.Diagnostics.Stopwatch.GetTimestamp() - _tscStart;
        UInt128 scaled = (UInt128)(ulong)ticks * (ulong)_tscFrequency / (ulong)System.Diagnostics.Stopwatch.Frequency;
        return (ulong)scaled + (ulong)_cpu.TscOffset;
    }

    /// <summary>MSR_PLATFORM_INFO bit 31: CPUID faulting is available.</summary>
    private const ulong PlatformInfoCpuidFaulting = 1UL << 31;

    /// <summary>MSR_MISC_FEATURES_ENABLES bit 0: CPUID faults (#GP) outside CPL 0.</summary>
    private const ulong MiscFeaturesCpuidFaulting = 1;

    private void ExecCpuid()
    {
        if ((_cpu.MiscFeatures & MiscFeaturesCpuidFaulting) != 0 && _cpu.Cpl > 0)
        {
            throw Fault(Vectors.GP, 0);
        }

        uint leaf = (uint)Gpr(0), sub = (uint)Gpr(1);
        CpuidEntry? found = null;
        foreach (var e in _cpuid)
        {
            if (e.Function == leaf && ((e.Flags & CpuidEntry.SignificantIndex) == 0 || e.Index == sub))
            {
                found = e;
                break;
            }
        }

        var r = found ?? default;
        uint ebx = r.Ebx;
        if (leaf == 1)
        {
            ebx = (ebx & 0x00FFFFFF) | ((uint)Index << 24);
        }

        SetReg(0, 4, r.Eax);
        SetReg(3, 4, ebx);
        SetReg(1, 4, r.Ecx);
        SetReg(2, 4, r.Edx);
    }

    // ---- Control registers and MSRs ---------------------------------------------------------------

    private void WriteCr(int cr, ulong v)
    {
        switch (cr)
        {
            case 0:
            {
                if (_cpu.Bitness == 64 && (v >> 32) != 0)
                {
                    throw Fault(Vectors.GP, 0);
                }

                v = (v & 0xFFFFFFFF) | Cr0.ExtensionType;
                if ((v & Cr0.Paging) != 0 && (v & Cr0.ProtectionEnable) == 0)
                {
                    throw Fault(Vectors.GP, 0);
                }

                ulong old = _cpu.Cr0;
                if ((v & Cr0.Paging) != 0 && (old & Cr0.Paging) == 0 && (_cpu.Efer & Efer.LongModeEnable) != 0)
                {
                    if ((_cpu.Cr4 & Cr4.Pae) == 0)
                    {
                        throw Fault(Vectors.GP, 0);
                    }

                    _cpu.Efer |= Efer.LongModeActive;
                }
                else if ((v & Cr0.Paging) == 0 && (old & Cr0.Paging) != 0)
                {
                    if (_cpu.Bitness == 64)
                    {
                        throw Fault(Vectors.GP, 0);
                    }

                    _cpu.Efer &= ~Efer.LongModeActive;
                }

                _cpu.Cr0 = v;
                if (((old ^ v) & (Cr0.Paging | Cr0.ProtectionEnable | Cr0.WriteProtect)) != 0)
                {
                    FlushTlb();
                }

                UpdateMode();
                break;
            }

            case 2:
                _cpu.Cr2 = v;
                break;
            case 3:
                _cpu.Cr3 = v;
                FlushTlb();
                break;
            case 4:
            {
                const ulong allowed = Cr4.Pse | Cr4.Pae | Cr4.PageGlobalEnable | Cr4.OsFxsr | Cr4.OsXmmExcpt | Cr4.TimeStampDisable | (1UL << 3) | (1UL << 8);
                if ((v & ~allowed) != 0 || ((_cpu.Efer & Efer.LongModeActive) != 0 && (v & Cr4.Pae) == 0))
                {
                    throw Fault(Vectors.GP, 0);
                }

                _cpu.Cr4 = v;
                FlushTlb();
                break;
            }

            case 8:
                if (v > 15)
                {
                    throw Fault(Vectors.GP, 0);
                }

                _cpu.Cr8 = v;
                if (_plat != null)
                {
                    // CR8 is the local APIC's task priority class.
                    _plat.LocalController.TaskPriority = (uint)(v << 4);
                    AfterPlatformAccess();
                }
                break;
            default:
                throw Fault(Vectors.UD, 0);
        }
    }

    private bool TryReadMsr(uint index, out ulong v)
    {
        if (TryReadPlatformMsr(index, out v, out bool exists))
        {
            return exists;
        }

        v = index switch
        {
            MsrIndex.Tsc => ReadTsc(),
            MsrIndex.ApicBase => _cpu.ApicBase,
            MsrIndex.SysenterCs => _cpu.SysenterCs,
            MsrIndex.SysenterEsp => _cpu.SysenterEsp,
            MsrIndex.SysenterEip => _cpu.SysenterEip,
            MsrIndex.MiscEnable => _cpu.MiscEnable,
            MsrIndex.Pat => _cpu.Pat,
            MsrIndex.Efer => _cpu.Efer,
            MsrIndex.Star => _cpu.Star,
            MsrIndex.Lstar => _cpu.Lstar,
            MsrIndex.Cstar => _cpu.Cstar,
            MsrIndex.Fmask => _cpu.Fmask,
            MsrIndex.FsBase => _cpu.Seg[SegFs].Base,
            MsrIndex.GsBase => _cpu.Seg[SegGs].Base,
            MsrIndex.KernelGsBase => _cpu.KernelGsBase,
            MsrIndex.TscAux => _cpu.TscAux,
            MsrIndex.PlatformInfo => PlatformInfoCpuidFaulting,
            MsrIndex.MiscFeaturesEnables => _cpu.MiscFeatures,
            _ => ulong.MaxValue,
        };
        return v != ulong.MaxValue || index is MsrIndex.Star or MsrIndex.Lstar or MsrIndex.Cstar or MsrIndex.Fmask
            or MsrIndex.FsBase or MsrIndex.GsBase or MsrIndex.KernelGsBase or MsrIndex.Pat or MsrIndex.MiscEnable
            or MsrIndex.MiscFeaturesEnables;
    }

    private static bool IsCanonical(ulong v) => (ulong)(((long)v << 16) >> 16) == v;

    private bool TryWriteMsr(uint index, ulong v, bool fromGuest)
    {
        if (TryWritePlatformMsr(index, v, out bool accepted))
        {
            return accepted;
        }

        switch (index)
        {
            case MsrIndex.Tsc:
                _cpu.TscOffset = (long)(v - (ReadTsc() - (ulong)_cpu.TscOffset));
                return true;
            case MsrIndex.ApicBase: _cpu.ApicBase = v; return true;
            case MsrIndex.SysenterCs: _cpu.SysenterCs = v; return true;
            case MsrIndex.SysenterEsp: _cpu.SysenterEsp = v; return true;
            case MsrIndex.SysenterEip: _cpu.SysenterEip = v; return true;
            case MsrIndex.MiscEnable: _cpu.MiscEnable = v; return true;
            case MsrIndex.Pat: _cpu.Pat = v; return true;
            case MsrIndex.Efer:
            {
                const ulong allowed = Efer.SyscallEnable | Efer.LongModeEnable | Efer.LongModeActive | Efer.NoExecuteEnable;
                if ((v & ~allowed) != 0)
                {
                    return false;
                }

                if (fromGuest)
                {
                    // LMA is read-only for the guest; LME cannot change while paging is on.
                    v = (v & ~Efer.LongModeActive) | (_cpu.Efer & Efer.LongModeActive);
                    if ((_cpu.Cr0 & Cr0.Paging) != 0 && ((v ^ _cpu.Efer) & Efer.LongModeEnable) != 0)
                    {
                        return false;
                    }
                }

                _cpu.Efer = v;
                UpdateMode();
                FlushTlb();
                return true;
            }

            case MsrIndex.Star: _cpu.Star = v; return true;
            case MsrIndex.Lstar:
            case MsrIndex.Cstar:
                if (!IsCanonical(v))
                {
                    return false;
                }

                if (index == MsrIndex.Lstar)
                {
                    _cpu.Lstar = v;
                }
                else
                {
                    _cpu.Cstar = v;
                }

                return true;
            case MsrIndex.Fmask: _cpu.Fmask = v & 0xFFFFFFFF; return true;
            case MsrIndex.FsBase:
            case MsrIndex.GsBase:
            case MsrIndex.KernelGsBase:
                if (!IsCanonical(v))
                {
                    return false;
                }

                if (index == MsrIndex.FsBase)
                {
                    _cpu.Seg[SegFs].Base = v;
                    _cpu.SegBase[SegFs] = v;
                }
                else if (index == MsrIndex.GsBase)
                {
                    _cpu.Seg[SegGs].Base = v;
                    _cpu.SegBase[SegGs] = v;
                }
                else
                {
                    _cpu.KernelGsBase = v;
                }

                return true;
            case MsrIndex.TscAux: _cpu.TscAux = v & 0xFFFFFFFF; return true;
            case MsrIndex.PlatformInfo:
                // Read-only for the guest; the host may write back the value it read (snapshots).
                return !fromGuest && v == PlatformInfoCpuidFaulting;
            case MsrIndex.MiscFeaturesEnables:
                if ((v & ~MiscFeaturesCpuidFaulting) != 0)
                {
                    return false;
                }

                _cpu.MiscFeatures = v;
                return true;
            default:
                return false;
        }
    }

    // ---- Descriptors and segments -----------------------------------------------------------------

    /// <summary>Reads guest memory as a supervisor (descriptor tables, TSS): no U/S check.</summary>
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
            s.Base |= ReadSystem(_cpu.Gdt.Base + (ulong)(sel & 0xFFF8) + 8, 4) << 32;
        }

        // Mark busy in the descriptor and in the register.
        WriteSystem(_cpu.Gdt.Base + (ulong)(sel & 0xFFF8) + 5, 1, (d >> 40 & 0xFF) | 2);
        s.Type |= 2;
        _cpu.Tr = s;
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
            s.Base |= ReadSystem(_cpu.Gdt.Base + (ulong)(sel & 0xFFF8) + 8, 4) << 32;
        }

        _cpu.Ldt = s;
    }

    /// <summary>Loads CS for a far transfer to a code segment (no gates), checking privilege.</summary>
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

    private void SetCs(in SegmentRegister cs)
    {
        _cpu.Seg[SegCs] = cs;
        UpdateMode();
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

    private void NullifyDataSegmentsForOuterLevel()
    {
        foreach (int s in new[] { SegEs, SegDs, SegFs, SegGs })
        {
            var d = _cpu.Seg[s];
            bool conformingCode = (d.Type & 0xC) == 0xC;
            if (!d.Unusable && d.IsCodeOrData && !conformingCode && d.Dpl < _cpu.Cpl)
            {
                _cpu.Seg[s] = new SegmentRegister { Unusable = true, Selector = 0 };
                if (_cpu.Bitness != 64 || s < SegFs)
                {
                    _cpu.SegBase[s] = 0;
                }
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
                bool code = (s.Type & 8) != 0;
                bool conforming = code && (s.Type & 4) != 0;
                bool privOk = conforming || (s.Dpl >= _cpu.Cpl && s.Dpl >= (sel & 3));
                ok = ins.Mnemonic switch
                {
                    Mnemonic.Verr => s.IsCodeOrData && privOk && (!code || (s.Type & 2) != 0),
                    Mnemonic.Verw => s.IsCodeOrData && privOk && !code && (s.Type & 2) != 0,
                    _ => privOk && (s.IsCodeOrData || s.Type is 1 or 2 or 3 or 9 or 11 || (ins.Mnemonic == Mnemonic.Lar && s.Type is 4 or 12)),
                };
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

    // ---- SYSCALL / SYSRET / IRET -------------------------------------------------------------------

    private void ExecSyscall(ulong next)
    {
        if ((_cpu.Efer & Efer.SyscallEnable) == 0 || (_cpu.Efer & Efer.LongModeActive) == 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        ulong flags = GetRflags() & ~RF;
        Gpr(1) = next;
        Gpr(11) = flags;
        ushort sel = (ushort)((_cpu.Star >> 32) & 0xFFFC);
        var cs = SegmentRegister.Flat(sel, code: true, longMode: true, dpl: 0);
        cs.Type = 0xB;
        var ss = SegmentRegister.Flat((ushort)(sel + 8), code: false, longMode: false, dpl: 0);
        ss.Type = 3;
        _cpu.Seg[SegSs] = ss;
        _cpu.Flags = (flags & ~_cpu.Fmask & ~RF) | Fixed1;
        SetCs(cs);
        _cpu.Rip = _cpu.Bitness == 64 ? _cpu.Lstar : _cpu.Cstar;
        if (_cpu.Bitness != 64)
        {
            // SYSCALL from compatibility mode enters 64-bit mode at CSTAR.
            _cpu.Rip = _cpu.Cstar;
        }
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

    private void ExecIret(int size)
    {
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

        if ((_cpu.Flags & NT) != 0 && (_cpu.Efer & Efer.LongModeActive) == 0)
        {
            throw Fault(Vectors.GP, 0); // task return: not implemented
        }

        ulong rip = Peek(0, size);
        ushort sel = (ushort)Peek((ulong)size, size);
        ulong flags = Peek((ulong)(2 * size), size);
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
        _cpu.LzOp = LzNone;
        _cpu.Rip = ncs.Long ? rip : rip & Mask(size == 8 ? 4 : size);
        if (rpl > oldCpl)
        {
            NullifyDataSegmentsForOuterLevel();
        }

        UpdateMode();
    }

    // ---- Port I/O ---------------------------------------------------------------------------------

    private void CheckIoPermission(ushort port, int size)
    {
        if ((_cpu.Cr0 & Cr0.ProtectionEnable) == 0)
        {
            return;
        }

        if ((_cpu.Flags & VM) == 0 && _cpu.Cpl <= (int)((_cpu.Flags & IoplMask) >> 12))
        {
            return;
        }

        // Consult the I/O permission bitmap of the TSS.
        if (_cpu.Tr.Limit < 0x67)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong mapBase = ReadSystem(_cpu.Tr.Base + 0x66, 2);
        ulong byteOff = mapBase + (ulong)(port >> 3);
        if (byteOff + 1 > _cpu.Tr.Limit)
        {
            throw Fault(Vectors.GP, 0);
        }

        ulong bitsWord = ReadSystem(_cpu.Tr.Base + byteOff, 2);
        ulong need = ((1UL << size) - 1) << (port & 7);
        if ((bitsWord & need) != 0)
        {
            throw Fault(Vectors.GP, 0);
        }
    }

    private ulong ExecPortIo(ref Op op, bool isOut)
    {
        ushort port = op.Sub == 1 ? (ushort)Gpr(2) : (ushort)op.Imm;
        int size = op.Size;
        CheckIoPermission(port, size);
        _exitDataLength = size;
        if (_plat != null)
        {
            ulong value = isOut ? GetReg(0, size) : 0;
            if (TryPlatformPort(port, size, isOut, ref value))
            {
                if (!isOut)
                {
                    SetReg(0, size, value);
                }

                _exitDataLength = 0;
                return op.Next;
            }
        }

        if (isOut)
        {
            ulong v = GetReg(0, size);
            for (int b = 0; b < size; b++)
            {
                _exitBuffer[b] = (byte)(v >> (b * 8));
            }

            SetExit(VcpuExit.PortIo(port, size, 1, isWrite: true));
            _pendingIo = default;
        }
        else
        {
            Array.Clear(_exitBuffer, 0, size);
            SetExit(VcpuExit.PortIo(port, size, 1, isWrite: false));
            _pendingIo = new PendingIo { Kind = PendingIoKind.In, Size = size, Count = 1 };
        }

        return op.Next;
    }

    private ulong ExecStringIo(ref Op op, bool isOuts)
    {
        ushort port = (ushort)Gpr(2);
        int size = op.Size;
        int asz = op.AddrSize;
        CheckIoPermission(port, size);
        bool rep = (op.Pfx & (Pfx.Rep | Pfx.Repne)) != 0;
        ulong remaining = rep ? StrReg(1, asz) : 1;
        if (remaining == 0)
        {
            return op.Next;
        }

        bool down = (_cpu.Flags & DF) != 0;
        int reg = isOuts ? 6 : 7;
        int seg = isOuts ? op.Seg : SegEs;
        ulong off = StrReg(reg, asz);
        ulong lin = StrLin(seg, off);

        // As many elements as fit in the page (and the exit buffer), in the direction of travel.
        ulong inPage = down ? ((lin & 0xFFF) / (ulong)size) + 1 : (4096 - (lin & 0xFFF)) / (ulong)size;
        int count = (int)Math.Max(1, Math.Min(Math.Min(remaining, inPage), (ulong)(_exitBuffer.Length / size)));
        long delta = down ? -size : size;
        _exitDataLength = size * count;
        if (isOuts)
        {
            for (int k = 0; k < count; k++)
            {
                ulong v = Read(StrLin(seg, (off + (ulong)(k * delta)) & Mask(asz)), size);
                for (int b = 0; b < size; b++)
                {
                    _exitBuffer[(k * size) + b] = (byte)(v >> (b * 8));
                }
            }

            StrAdvance(6, asz, delta * count);
            if (rep)
            {
                StrAdvance(1, asz, -count);
            }

            SetExit(VcpuExit.PortIo(port, size, count, isWrite: true));
            _pendingIo = default;
        }
        else
        {
            for (int k = 0; k < count; k++)
            {
                ProbeWrite(StrLin(seg, (off + (ulong)(k * delta)) & Mask(asz)), size);
            }

            Array.Clear(_exitBuffer, 0, size * count);
            SetExit(VcpuExit.PortIo(port, size, count, isWrite: false));
            _pendingIo = new PendingIo { Kind = PendingIoKind.Ins, Size = size, Count = count, Register = rep ? 1 : 0, AddrSize = asz };
        }

        if (rep && StrReg(1, asz) - (!isOuts ? (ulong)count : 0) != 0)
        {
            _notRetired = true;
            return op.Next - op.Len;
        }

        return op.Next;
    }

    /// <summary>Completes an IN/INS with the data the host put in <see cref="ExitData"/>.</summary>
    private void CompletePendingIo()
    {
        var p = _pendingIo;
        _pendingIo = default;
        switch (p.Kind)
        {
            case PendingIoKind.In:
            {
                ulong v = 0;
                for (int b = 0; b < p.Size; b++)
                {
                    v |= (ulong)_exitBuffer[b] << (b * 8);
                }

                SetReg(0, p.Size, v);
                break;
            }

            case PendingIoKind.Ins:
            {
                int asz = p.AddrSize;
                long delta = (_cpu.Flags & DF) != 0 ? -p.Size : p.Size;
                for (int k = 0; k < p.Count; k++)
                {
                    ulong v = 0;
                    for (int b = 0; b < p.Size; b++)
                    {
                        v |= (ulong)_exitBuffer[(k * p.Size) + b] << (b * 8);
                    }

                    Write(StrLin(SegEs, StrReg(7, asz)), p.Size, v);
                    StrAdvance(7, asz, delta);
                    if (p.Register == 1)
                    {
                        StrAdvance(1, asz, -1);
                    }
                }

                break;
            }

            case PendingIoKind.MmioRead:
            {
                ulong v = 0;
                for (int b = 0; b < p.Size; b++)
                {
                    v |= (ulong)_exitBuffer[b] << (b * 8);
                }

                if (_mmioCount > 0)
                {
                    _mmioData[_mmioCount - 1] = v;
                }

                break;
            }

            default:
                break;
        }
    }
}
