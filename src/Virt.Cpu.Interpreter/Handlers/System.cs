using System.Runtime.CompilerServices;
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

    /// <summary>
    /// VMCALL and VMMCALL, either one whatever the CPUID vendor (KVM accepts both and patches the other): at CPL 0 a
    /// <see cref="VcpuExitReason.Hypercall"/> exit with the call number from RAX (EAX outside 64-bit mode), after the
    /// instruction, so the host's result in RAX is what the guest sees; at CPL &gt; 0, as KVM does, no exit and
    /// RAX = -KVM_EPERM (-1).
    /// </summary>
    internal ulong Hypercall(ref Op op, in Instruction _)
    {
        if ((_cpu.Flags & VM) != 0)
        {
            throw Fault(Vectors.UD, 0);
        }

        if ((_cpu.Cr0 & Cr0.ProtectionEnable) != 0 && _cpu.Cpl != 0)
        {
            Gpr(0) = _cpu.Bitness == 64 ? ulong.MaxValue : uint.MaxValue;
            return op.Next;
        }

        SetExit(VcpuExit.Hypercall(_cpu.Bitness == 64 ? Gpr(0) : (uint)Gpr(0)));
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

    /// <summary>
    /// RDRAND and RDSEED: a random value from the host's cryptographic generator in the destination register, CF set
    /// (a value is always available, so a guest's retry loop never spins) and OF, SF, ZF, AF and PF cleared; #UD when the
    /// CPUID table the guest sees does not advertise the instruction. The values are not reproducible, also under
    /// <see cref="InterpreterClock.Virtual"/>: a machine that must run the same way every time masks both features
    /// (<c>CpuidFeature.Rdrand</c>, <c>CpuidFeature.Rdseed</c>).
    /// </summary>
    internal ulong Rdrand(ref Op op, in Instruction ins)
    {
        CheckIsa(ins.Code);
        if (_randomUsed + 8 > _random.Length)
        {
            System.Security.Cryptography.RandomNumberGenerator.Fill(_random);
            _randomUsed = 0;
        }

        ulong v = BitConverter.ToUInt64(_random, _randomUsed);
        _randomUsed += 8;
        SetReg(op.R0, op.Size, v);
        Materialize();
        _cpu.Flags = (_cpu.Flags & ~ArithFlags) | CF;
        return op.Next;
    }

    /// <summary>Random bytes for RDRAND and RDSEED, drawn from the host's generator a buffer at a time.</summary>
    private readonly byte[] _random = new byte[256];

    /// <summary>Bytes of <see cref="_random"/> already handed out (all of them at first, so the first use fills it).</summary>
    private int _randomUsed = 256;

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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
        int dr = CheckDebugRegisterAccess(op.Sub & 7);
        ulong v = GetReg(op.R1, op.Size);
        if (dr >= 6 && (v >> 32) != 0)
        {
            // The upper halves of DR6 and DR7 are reserved and must be written as zero.
            throw Fault(Vectors.GP, 0);
        }

        _cpu.Dr[dr] = v;
        UpdateGuestBreakpoints();
        _stop = true;
        return op.Next;
    }

    internal ulong MovFromDr(ref Op op, in Instruction _)
    {
        RequireCpl0();
        int dr = CheckDebugRegisterAccess(op.Sub & 7);
        SetReg(op.R0, _cpu.Bitness == 64 ? 8 : 4, dr switch { 6 => _cpu.Dr[6] | 0xFFFF0FF0, 7 => _cpu.Dr[7] | 0x400, _ => _cpu.Dr[dr] });
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
        if (!IsCanonical(bas))
        {
            // A 64-bit table base must be canonical (SDM Vol. 2, LGDT/LIDT: #GP(0) in 64-bit mode).
            throw Fault(Vectors.GP, 0);
        }

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

    private void SetExit(VcpuExit exit)
    {
        _exit = exit;
        _hasExit = true;
        _stop = true;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    /// <summary>IA32_SPEC_CTRL bit 0: indirect branch restricted speculation.</summary>
    private const ulong SpecCtrlIbrs = 1;

    /// <summary>IA32_SPEC_CTRL bits a host restore may set: IBRS, STIBP, SSBD.</summary>
    private const ulong SpecCtrlHostBits = 7;

    /// <summary>IA32_PRED_CMD bit 0: indirect branch prediction barrier.</summary>
    private const ulong PredCmdIbpb = 1;

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
        uint ebx = r.Ebx, ecx = r.Ecx, edx = r.Edx;
        if (leaf == 1)
        {
            ebx = (ebx & 0x00FFFFFF) | ((uint)Index << 24);
            // OSXSAVE mirrors CR4.OSXSAVE.
            ecx = (ecx & ~(1u << 27)) | ((_cpu.Cr4 & Cr4.OsXsave) != 0 ? 1u << 27 : 0);
        }
        else if (leaf == 0xD && sub == 0 && found is not null)
        {
            ebx = XsaveSizeFor(_cpu.Xcr0); // the image size for the components XCR0 enables
        }
        else if (leaf == 0xB && _plat is not null)
        {
            // Extended topology: every sub-leaf reports this processor's x2APIC ID and echoes its own number; those
            // past the core level are invalid levels (type 0).
            ecx = (ecx & ~0xFFu) | (sub & 0xFF);
            edx = (uint)Index;
        }

        SetReg(0, 4, r.Eax);
        SetReg(3, 4, ebx);
        SetReg(1, 4, ecx);
        SetReg(2, 4, edx);
    }

    // ---- Control registers and MSRs ---------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
                FlushTlbForCr3();
                break;
            case 4:
            {
                const ulong allowed = Cr4.Pse | Cr4.Pae | Cr4.PageGlobalEnable | Cr4.OsFxsr | Cr4.OsXmmExcpt | Cr4.TimeStampDisable | (1UL << 3) | (1UL << 8);
                if ((v & ~(allowed | (_hasXsave ? Cr4.OsXsave : 0))) != 0 || ((_cpu.Efer & Efer.LongModeActive) != 0 && (v & Cr4.Pae) == 0))
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
        if (TryReadPlatformMsr(index, out v, out bool exists) || TryReadMachineCheckMsr(index, out v, out exists))
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
            MsrIndex.ArchCapabilities => Cpuid.ArchCapabilities,
            MsrIndex.MiscFeaturesEnables => _cpu.MiscFeatures,
            MsrIndex.SpecCtrl => _cpu.SpecCtrl,
            _ => ulong.MaxValue,
        };
        return v != ulong.MaxValue || index is MsrIndex.Star or MsrIndex.Lstar or MsrIndex.Cstar or MsrIndex.Fmask
            or MsrIndex.FsBase or MsrIndex.GsBase or MsrIndex.KernelGsBase or MsrIndex.Pat or MsrIndex.MiscEnable
            or MsrIndex.MiscFeaturesEnables or MsrIndex.SpecCtrl;
    }

    private static bool IsCanonical(ulong v) => (ulong)(((long)v << 16) >> 16) == v;

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per MSR the interpreter has, each with the validity check its SDM Vol. 4 entry gives.")]
    private bool TryWriteMsr(uint index, ulong v, bool fromGuest)
    {
        if (TryWritePlatformMsr(index, v, out bool accepted) || TryWriteMachineCheckMsr(index, v, fromGuest, out accepted))
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
            case MsrIndex.SysenterEsp:
            case MsrIndex.SysenterEip:
                // Both hold linear addresses: a processor with Intel 64 refuses non-canonical values (SDM Vol. 4, 2.1).
                if (!IsCanonical(v))
                {
                    return false;
                }

                if (index == MsrIndex.SysenterEsp)
                {
                    _cpu.SysenterEsp = v;
                }
                else
                {
                    _cpu.SysenterEip = v;
                }

                return true;
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
            case MsrIndex.ArchCapabilities:
                // Read-only as well; a host write of the value it read is accepted.
                return !fromGuest && v == Cpuid.ArchCapabilities;
            case MsrIndex.SpecCtrl:
                // IBRS (bit 0) is the only control CPUID enumerates (no STIBP, SSBD or the later bits): a guest that
                // sets any other bit gets #GP, as on a processor without those features. The host may also restore
                // STIBP and SSBD (bits 1 and 2), which a state saved on a processor that has them can hold; none of
                // the bits changes anything here.
                if ((v & ~(fromGuest ? SpecCtrlIbrs : SpecCtrlHostBits)) != 0)
                {
                    return false;
                }

                _cpu.SpecCtrl = v;
                return true;
            case MsrIndex.PredCmd:
                // IBPB (bit 0): a barrier against predictions made before it; there are none to discard. Write-only:
                // RDMSR of it raises #GP like any MSR without a read case.
                return (v & ~PredCmdIbpb) == 0;
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
}
