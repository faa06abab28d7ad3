using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

internal sealed unsafe partial class KvmVcpu
{
    /// <summary>Most MSRs transferred in one call.</summary>
    private const int MaxMsrsPerCall = 4096;

    /// <inheritdoc />
    public GeneralRegisters GetGeneralRegisters()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return ReadGeneralRegisters();
    }

    /// <inheritdoc />
    public void SetGeneralRegisters(in GeneralRegisters registers)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (_syncRegsValid)
        {
            // Loaded by KVM at the next KVM_RUN; until then reads see these values too.
            _run->SyncRegs = registers;
            _run->DirtyRegs |= KVM_SYNC_X86_REGS;
            return;
        }

        KvmIoctls.SetRegs(_handle, registers);
    }

    /// <summary>The general registers: from <c>kvm_run</c> once KVM keeps them there, else by KVM_GET_REGS.</summary>
    private GeneralRegisters ReadGeneralRegisters() =>
        _syncRegsValid ? _run->SyncRegs : KvmIoctls.GetRegs(_handle);

    /// <inheritdoc />
    public SpecialRegisters GetSpecialRegisters()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return FromKvm(KvmIoctls.GetSregs(_handle));
    }

    /// <inheritdoc />
    public void SetSpecialRegisters(in SpecialRegisters registers)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        // Read first so that KVM's pending-interrupt bitmap, which SpecialRegisters does not carry, is kept.
        var k = KvmIoctls.GetSregs(_handle);
        ToKvm(registers, ref k);
        KvmIoctls.SetSregs(_handle, k);

        // With the in-kernel local APICs, an application processor waits for INIT and a start-up IPI. The host giving it
        // its processor state starts it instead, as on the interpreter (flat guests start every vCPU at the entry point).
        if (Index > 0 && _partition.HasInterruptController && _partition.Host.HasMpState
            && KvmIoctls.GetMpState(_handle) == KVM_MP_STATE_UNINITIALIZED)
        {
            KvmIoctls.SetMpState(_handle, KVM_MP_STATE_RUNNABLE);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Read through KVM_GET_XSAVE where the host has it: some KVMs (the paravirtual PVM among them) do not
    /// reflect the guest's state in KVM_GET_FPU/KVM_SET_FPU, while the XSAVE image is what KVM itself
    /// loads into the processor.
    /// </remarks>
    public FpuState GetFpuState()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return _partition.Host.HasXsave ? GetXsaveState().Fpu : ReadLegacyFpu();
    }

    /// <inheritdoc />
    /// <remarks>Written through KVM_SET_XSAVE where the host has it (see <see cref="GetFpuState"/>); other components keep their state.</remarks>
    public void SetFpuState(in FpuState state)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (_partition.Host.HasXsave)
        {
            SetXsaveState(GetXsaveState().WithFpu(state));
            return;
        }

        WriteLegacyFpu(state);
    }

    /// <inheritdoc />
    public XsaveState GetXsaveState()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        var host = _partition.Host;
        if (!host.HasXsave)
        {
            return XsaveState.FromFpu(ReadLegacyFpu());
        }

        var buffer = new byte[host.XsaveSize];
        KvmIoctls.GetXsave(_handle, buffer, useXsave2: host.HasXsave2 && host.XsaveSize > KvmXsaveSize);
        ulong xcr0 = host.HasXcrs ? KvmIoctls.GetXcr0(_handle) : (ulong)(XsaveComponents.X87 | XsaveComponents.Sse);
        return new XsaveState(xcr0 | (ulong)XsaveComponents.X87, buffer);
    }

    /// <inheritdoc />
    public void SetXsaveState(XsaveState state)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        ArgumentNullException.ThrowIfNull(state);
        var host = _partition.Host;
        const XsaveComponents legacy = XsaveComponents.X87 | XsaveComponents.Sse;
        if (!host.HasXsave)
        {
            var beyond = state.StateComponents & ~legacy;
            if (beyond != 0)
            {
                throw new ArgumentException($"This KVM has no KVM_SET_XSAVE, so only x87 and SSE state can be written; the image also holds {beyond}.", nameof(state));
            }

            WriteLegacyFpu(state.Fpu);
            return;
        }

        var buffer = new byte[host.XsaveSize];
        if (state.Size > buffer.Length)
        {
            if (state.Area[buffer.Length..].IndexOfAnyExcept((byte)0) >= 0)
            {
                throw new ArgumentException($"The XSAVE image has {state.Size} bytes with state past the {buffer.Length} bytes this KVM holds (components {state.StateComponents}).", nameof(state));
            }

            state.Area[..buffer.Length].CopyTo(buffer);
        }
        else
        {
            state.CopyTo(buffer);
        }

        try
        {
            if (host.HasXcrs)
            {
                KvmIoctls.SetXcr0(_handle, state.Xcr0);
            }

            KvmIoctls.SetXsave(_handle, buffer);
        }
        catch (HypervisorException e) when (e.ErrorCode == Interop.Libc.EINVAL)
        {
            throw new ArgumentException(
                $"KVM refused the XSAVE image (XCR0 0x{state.Xcr0:x}, components {state.StateComponents}): this vCPU's CPUID does not offer every component it holds. {e.Message}",
                nameof(state), e);
        }
    }

    /// <inheritdoc />
    public DebugRegisters GetDebugRegisters()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        RequireDebugRegisters();
        return KvmIoctls.GetDebugRegs(_handle);
    }

    /// <inheritdoc />
    public void SetDebugRegisters(in DebugRegisters registers)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        RequireDebugRegisters();
        KvmIoctls.SetDebugRegs(_handle, registers);
    }

    /// <inheritdoc />
    /// <remarks>
    /// A paravirtual KVM (PVM) honours KVM_SET_GUEST_DEBUG only for the kernel-mode code it emulates, and there only
    /// single steps and execute breakpoints: INT3 at CPL 0 ends in an emulation failure, data breakpoints never
    /// fire, and user-mode code, which runs natively on the host processor, is not stopped at all.
    /// </remarks>
    public GuestDebugFeatures DebugFeatures => !_partition.Host.HasGuestDebug
        ? GuestDebugFeatures.None
        : KvmHardwareAssist.SlowKernelModeReason is not null
            ? GuestDebugFeatures.SingleStep | GuestDebugFeatures.HardwareBreakpoints
            : GuestDebugFeatures.SingleStep | GuestDebugFeatures.SoftwareBreakpoints | GuestDebugFeatures.HardwareBreakpoints | GuestDebugFeatures.Watchpoints;

    /// <inheritdoc />
    public void SetGuestDebug(in GuestDebugSettings settings)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        var features = DebugFeatures;
        if (!settings.IsEnabled)
        {
            if (features != GuestDebugFeatures.None)
            {
                KvmIoctls.SetGuestDebug(_handle, 0, default);
            }

            return;
        }

        RequireDebugFeature(features, GuestDebugFeatures.SingleStep, settings.SingleStep, "single-step");
        RequireDebugFeature(features, GuestDebugFeatures.SoftwareBreakpoints, settings.InterceptBreakpointInstructions, "INT3 interception");
        ulong dr7 = settings.HardwareBreakpoints.Dr7;
        bool data = false;
        for (int i = 0; i < 4; i++)
        {
            data |= ((dr7 >> (i * 2)) & 3) != 0 && ((dr7 >> (16 + (i * 4))) & 3) != 0;
        }

        RequireDebugFeature(features, GuestDebugFeatures.HardwareBreakpoints, (dr7 & 0xFF) != 0, "host hardware breakpoints");
        RequireDebugFeature(features, GuestDebugFeatures.Watchpoints, data, "host watchpoints");
        uint control = KVM_GUESTDBG_ENABLE;
        if (settings.SingleStep)
        {
            control |= KVM_GUESTDBG_SINGLESTEP;
        }

        if (settings.InterceptBreakpointInstructions)
        {
            control |= KVM_GUESTDBG_USE_SW_BP;
        }

        if ((dr7 & 0xFF) != 0)
        {
            control |= KVM_GUESTDBG_USE_HW_BP;
        }

        KvmIoctls.SetGuestDebug(_handle, control, settings.HardwareBreakpoints);
    }

    private static void RequireDebugFeature(GuestDebugFeatures features, GuestDebugFeatures needed, bool asked, string what)
    {
        if (asked && (features & needed) == 0)
        {
            throw new NotSupportedException($"This KVM cannot give the host {what} (DebugFeatures is {features}): "
                + (KvmHardwareAssist.SlowKernelModeReason ?? "it lacks KVM_CAP_SET_GUEST_DEBUG") + ".");
        }
    }

    private void RequireDebugRegisters()
    {
        if (!_partition.Host.HasDebugRegisters)
        {
            throw new InvalidOperationException("This KVM lacks KVM_CAP_DEBUGREGS (Linux 2.6.35 and later have it); debug registers cannot be read or written.");
        }
    }

    private FpuState ReadLegacyFpu()
    {
        var k = KvmIoctls.GetFpu(_handle);
        var s = new FpuState
        {
            ControlWord = k.Fcw,
            StatusWord = k.Fsw,
            AbridgedTagWord = k.Ftwx,
            LastOpcode = k.LastOpcode,
            LastInstructionPointer = k.LastIp,
            LastDataPointer = k.LastDp,
            Mxcsr = k.Mxcsr,
        };
        // SAFETY: both fixed buffers are exactly as long as the inline arrays they are copied into.
        new ReadOnlySpan<byte>(k.Fpr, 128).CopyTo(s.Registers);
        new ReadOnlySpan<byte>(k.Xmm, 256).CopyTo(s.Xmm);
        return s;
    }

    private void WriteLegacyFpu(in FpuState state)
    {
        var k = new KvmFpu
        {
            Fcw = state.ControlWord,
            Fsw = state.StatusWord,
            Ftwx = state.AbridgedTagWord,
            LastOpcode = state.LastOpcode,
            LastIp = state.LastInstructionPointer,
            LastDp = state.LastDataPointer,
            Mxcsr = state.Mxcsr,
        };
        // SAFETY: both fixed buffers are exactly as long as the inline arrays copied from them.
        ((ReadOnlySpan<byte>)state.Registers).CopyTo(new Span<byte>(k.Fpr, 128));
        ((ReadOnlySpan<byte>)state.Xmm).CopyTo(new Span<byte>(k.Xmm, 256));
        KvmIoctls.SetFpu(_handle, k);
    }

    /// <inheritdoc />
    public void GetMsrs(Span<MsrEntry> entries)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        var k = ToKvmMsrs(entries);
        int n = KvmIoctls.TransferMsrs(_handle, k, set: false);
        if (n < k.Length)
        {
            throw new HypervisorException(nameof(KVM_GET_MSRS), 0, $"KVM could not read MSR 0x{k[n].Index:x}");
        }

        for (int i = 0; i < entries.Length; i++)
        {
            ulong value = k[i].Data;
            if (k[i].Index == MsrIndex.PlatformInfo && (value & PlatformInfoCpuidFaulting) != 0
                && CpuidFaultingProbe.Result == CpuidFaultingProbe.Outcome.Ignored)
            {
                // KVM offers CPUID faulting, but guest user code on this host reads CPUID without faulting.
                value &= ~PlatformInfoCpuidFaulting;
            }

            entries[i] = new MsrEntry(k[i].Index, value);
        }
    }

    /// <summary>MSR_PLATFORM_INFO bit 31: CPUID faulting is available.</summary>
    private const ulong PlatformInfoCpuidFaulting = 1UL << 31;

    /// <inheritdoc />
    public void SetMsrs(ReadOnlySpan<MsrEntry> entries)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        var k = ToKvmMsrs(entries);
        int n = KvmIoctls.TransferMsrs(_handle, k, set: true);
        if (n < k.Length)
        {
            throw new HypervisorException(nameof(KVM_SET_MSRS), 0, $"KVM refused value 0x{k[n].Data:x} for MSR 0x{k[n].Index:x}");
        }
    }

    /// <inheritdoc />
    public void SetCpuid(IReadOnlyList<CpuidEntry> entries)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        ArgumentNullException.ThrowIfNull(entries);
        KvmIoctls.SetCpuid2(_handle, entries);
    }

    private KvmMsrEntry[] ToKvmMsrs(ReadOnlySpan<MsrEntry> entries)
    {
        if (entries.Length > MaxMsrsPerCall)
        {
            throw new ArgumentException($"At most {MaxMsrsPerCall} MSRs per call; {entries.Length} were given.", nameof(entries));
        }

        var supported = _partition.Host.MsrSet;
        var k = new KvmMsrEntry[entries.Length];
        for (int i = 0; i < entries.Length; i++)
        {
            if (!supported.Contains(entries[i].Index))
            {
                throw new ArgumentException($"MSR 0x{entries[i].Index:x} is not in KVM's MSR list for this host (IPartition.SupportedMsrs); it cannot be read or written.", nameof(entries));
            }

            k[i] = new KvmMsrEntry { Index = entries[i].Index, Data = entries[i].Value };
        }

        return k;
    }

    internal static SpecialRegisters FromKvm(in KvmSregs k) => new()
    {
        Cs = FromKvm(k.Cs),
        Ds = FromKvm(k.Ds),
        Es = FromKvm(k.Es),
        Fs = FromKvm(k.Fs),
        Gs = FromKvm(k.Gs),
        Ss = FromKvm(k.Ss),
        Tr = FromKvm(k.Tr),
        Ldt = FromKvm(k.Ldt),
        Gdt = new DescriptorTable { Base = k.Gdt.Base, Limit = k.Gdt.Limit },
        Idt = new DescriptorTable { Base = k.Idt.Base, Limit = k.Idt.Limit },
        Cr0 = k.Cr0,
        Cr2 = k.Cr2,
        Cr3 = k.Cr3,
        Cr4 = k.Cr4,
        Cr8 = k.Cr8,
        Efer = k.Efer,
        ApicBase = k.ApicBase,
    };

    internal static void ToKvm(in SpecialRegisters s, ref KvmSregs k)
    {
        k.Cs = ToKvm(s.Cs);
        k.Ds = ToKvm(s.Ds);
        k.Es = ToKvm(s.Es);
        k.Fs = ToKvm(s.Fs);
        k.Gs = ToKvm(s.Gs);
        k.Ss = ToKvm(s.Ss);
        k.Tr = ToKvm(s.Tr);
        k.Ldt = ToKvm(s.Ldt);
        k.Gdt = new KvmDtable { Base = s.Gdt.Base, Limit = s.Gdt.Limit };
        k.Idt = new KvmDtable { Base = s.Idt.Base, Limit = s.Idt.Limit };
        k.Cr0 = s.Cr0;
        k.Cr2 = s.Cr2;
        k.Cr3 = s.Cr3;
        k.Cr4 = s.Cr4;
        k.Cr8 = s.Cr8;
        k.Efer = s.Efer;
        k.ApicBase = s.ApicBase;
    }

    private static SegmentRegister FromKvm(in KvmSegment k) => new()
    {
        Base = k.Base,
        Limit = k.Limit,
        Selector = k.Selector,
        Type = k.Type,
        Present = k.Present != 0,
        Dpl = k.Dpl,
        DefaultBig = k.Db != 0,
        IsCodeOrData = k.S != 0,
        Long = k.L != 0,
        Granularity = k.G != 0,
        Available = k.Avl != 0,
        Unusable = k.Unusable != 0,
    };

    private static KvmSegment ToKvm(in SegmentRegister s) => new()
    {
        Base = s.Base,
        Limit = s.Limit,
        Selector = s.Selector,
        Type = s.Type,
        Present = s.Present ? (byte)1 : (byte)0,
        Dpl = s.Dpl,
        Db = s.DefaultBig ? (byte)1 : (byte)0,
        S = s.IsCodeOrData ? (byte)1 : (byte)0,
        L = s.Long ? (byte)1 : (byte)0,
        G = s.Granularity ? (byte)1 : (byte)0,
        Avl = s.Available ? (byte)1 : (byte)0,
        Unusable = s.Unusable ? (byte)1 : (byte)0,
    };
}
