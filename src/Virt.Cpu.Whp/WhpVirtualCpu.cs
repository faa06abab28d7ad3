using System.Runtime.InteropServices;
using System.Runtime.Versioning;

namespace Virt.Cpu.Whp;

/// <summary>
/// A WHP virtual processor. The run loop lives here; instruction emulation for I/O and MMIO exits is in
/// WhpVirtualCpu.Emulation.cs.
/// </summary>
/// <remarks>
/// SAFETY (for every pointer use in this class): <c>_native</c> is one block of <c>NativeSize</c> bytes,
/// 16-byte aligned, allocated in the constructor and freed only in <see cref="Dispose"/> after the emulator
/// and the WHP processor are gone; it is used only from the vCPU's own thread (Run and the register
/// methods). Register calls never pass more than <c>MaxRegisters</c> names/values, the room the block has.
/// </remarks>
[SupportedOSPlatform("windows")]
internal sealed unsafe partial class WhpVirtualCpu : IVirtualCpu
{
    /// <summary>Most registers moved in one WHvGet/SetVirtualProcessorRegisters call.</summary>
    private const int MaxRegisters = 32;

    // Layout of the one native, 16-byte-aligned block each vCPU owns. WHP register values and exit
    // contexts contain WHV_UINT128, which the SDK aligns to 16 bytes; managed memory does not promise that.
    private const int ExitOffset = 0;
    private const int SavedExitOffset = 256;
    private const int ValuesOffset = 512;
    private const int NamesOffset = ValuesOffset + (MaxRegisters * 16);
    private const int CallbacksOffset = NamesOffset + (MaxRegisters * 4);
    private const int NativeSize = CallbacksOffset + 64;

    private readonly WhpPartition _partition;
    private readonly WhpPartitionHandle _handle;
    private readonly uint _vp;
    private readonly byte* _native;
    private readonly object _cancelGate = new();
    private WhpEmulatorHandle _emulator = null!;
    private GCHandle _self;
    private IReadOnlyList<CpuidEntry> _cpuid;
    private int _exitRequested;
    private int _running;
    private int _queuedVector = -1;
    private readonly EmulationSession _session;
    private int _disposed;

    internal WhpVirtualCpu(WhpPartition partition, int index)
    {
        _partition = partition;
        _handle = partition.Handle;
        _vp = (uint)index;
        Index = index;
        _cpuid = partition.SupportedCpuid;
        _session = new EmulationSession(partition.Memory);
        // SAFETY: freed exactly once, in Dispose or below when construction fails.
        _native = (byte*)NativeMemory.AlignedAlloc(NativeSize, 16);
        NativeMemory.Clear(_native, NativeSize);
        try
        {
            HResult.Check(Interop.WinHvPlatform.WHvCreateVirtualProcessor(_handle, _vp, 0), "WHvCreateVirtualProcessor");
            try
            {
                _self = GCHandle.Alloc(this);
                CreateEmulator();
            }
            catch
            {
                _ = Interop.WinHvPlatform.WHvDeleteVirtualProcessor(_handle, _vp);
                throw;
            }
        }
        catch
        {
            if (_self.IsAllocated)
            {
                _self.Free();
            }

            NativeMemory.AlignedFree(_native);
            throw;
        }
    }

    public int Index { get; }

    private WHV_RUN_VP_EXIT_CONTEXT* ExitContext => (WHV_RUN_VP_EXIT_CONTEXT*)(_native + ExitOffset);

    private WHV_RUN_VP_EXIT_CONTEXT* SavedExit => (WHV_RUN_VP_EXIT_CONTEXT*)(_native + SavedExitOffset);

    private WHV_REGISTER_VALUE* Values => (WHV_REGISTER_VALUE*)(_native + ValuesOffset);

    private WhvRegisterName* Names => (WhvRegisterName*)(_native + NamesOffset);

    public VcpuExit Run()
    {
        ThrowIfDisposed();
        if (_session.HasPendingRead)
        {
            // The previous Run returned a read exit: finish that instruction with the host's ExitData.
            if (CompletePendingRead() is VcpuExit another)
            {
                return another;
            }
        }

        _session.ClearExitData();
        Interlocked.Exchange(ref _running, 1);
        try
        {
            if (Interlocked.Exchange(ref _exitRequested, 0) != 0)
            {
                return VcpuExit.Simple(VcpuExitReason.Interrupted);
            }

            while (true)
            {
                DeliverQueuedInterrupt();

                // SAFETY: the exit context lies in the native block (see remarks) and is 224 bytes, the size passed.
                HResult.Check(
                    Interop.WinHvPlatform.WHvRunVirtualProcessor(_handle, _vp, ExitContext, (uint)sizeof(WHV_RUN_VP_EXIT_CONTEXT)),
                    "WHvRunVirtualProcessor");
                var translated = ExitTranslator.Translate(*ExitContext, Volatile.Read(ref _exitRequested) != 0);
                switch (translated.Action)
                {
                    case ExitAction.Return:
                        var exit = translated.Exit;
                        if (exit.Reason == VcpuExitReason.Interrupted)
                        {
                            Interlocked.Exchange(ref _exitRequested, 0);
                        }
                        else if (exit.Reason == VcpuExitReason.Halt && Volatile.Read(ref _queuedVector) >= 0
                            && (ExitContext->VpContext.Rflags & VcpuDecisions.RflagsInterruptEnable) != 0)
                        {
                            continue; // the queued interrupt wakes the processor at once
                        }

                        return WithRegisters(exit);
                    case ExitAction.Resume:
                        continue;
                    case ExitAction.AnswerCpuid:
                        AnswerCpuid();
                        continue;
                    case ExitAction.AnswerMsr:
                        AnswerMsr();
                        continue;
                    case ExitAction.EmulateIo:
                    case ExitAction.EmulateMmio:
                        *SavedExit = *ExitContext;
                        if (Emulate(replay: false) is VcpuExit io)
                        {
                            return io;
                        }

                        continue;
                }
            }
        }
        finally
        {
            Interlocked.Exchange(ref _running, 0);
        }
    }

    public Span<byte> ExitData => _session.ExitData;

    public void RequestExit()
    {
        Volatile.Write(ref _exitRequested, 1);
        Cancel();
    }

    public bool TryInjectInterrupt(byte vector)
    {
        ThrowIfDisposed();
        if (Interlocked.CompareExchange(ref _queuedVector, vector, -1) != -1)
        {
            return false;
        }

        if (Volatile.Read(ref _running) != 0)
        {
            Cancel(); // the run loop injects it on the way back in; the cancel itself is not reported
        }

        return true;
    }

    public GeneralRegisters GetGeneralRegisters()
    {
        ThrowIfDisposed();
        int n = RegisterMap.General.Length;
        RegisterMap.GeneralNames(new Span<WhvRegisterName>(Names, n));
        GetRegisters(n);
        return RegisterMap.FromValues(new ReadOnlySpan<WHV_REGISTER_VALUE>(Values, n));
    }

    public void SetGeneralRegisters(in GeneralRegisters registers)
    {
        ThrowIfDisposed();
        int n = RegisterMap.General.Length;
        RegisterMap.GeneralNames(new Span<WhvRegisterName>(Names, n));
        RegisterMap.ToValues(registers, new Span<WHV_REGISTER_VALUE>(Values, n));
        SetRegisters(n);
    }

    public SpecialRegisters GetSpecialRegisters()
    {
        ThrowIfDisposed();
        int n = RegisterMap.SpecialCount;
        RegisterMap.SpecialNames(new Span<WhvRegisterName>(Names, n));
        GetRegisters(n);
        return RegisterMap.SpecialFromValues(new ReadOnlySpan<WHV_REGISTER_VALUE>(Values, n));
    }

    public void SetSpecialRegisters(in SpecialRegisters registers)
    {
        ThrowIfDisposed();
        int n = RegisterMap.SpecialCount;
        RegisterMap.SpecialNames(new Span<WhvRegisterName>(Names, n));
        RegisterMap.ToValues(registers, new Span<WHV_REGISTER_VALUE>(Values, n));
        SetRegisters(n);
    }

    public FpuState GetFpuState()
    {
        ThrowIfDisposed();
        RegisterMap.FpuNames(new Span<WhvRegisterName>(Names, RegisterMap.FpuCount));
        GetRegisters(RegisterMap.FpuCount);
        return RegisterMap.FpuFromValues(new ReadOnlySpan<WHV_REGISTER_VALUE>(Values, RegisterMap.FpuCount));
    }

    public void SetFpuState(in FpuState state)
    {
        ThrowIfDisposed();
        RegisterMap.FpuNames(new Span<WhvRegisterName>(Names, RegisterMap.FpuCount));
        RegisterMap.ToValues(state, new Span<WHV_REGISTER_VALUE>(Values, RegisterMap.FpuCount));
        SetRegisters(RegisterMap.FpuCount);
    }

    /// <summary>
    /// The x87/SSE registers and XCR0 through WHvGet/SetVirtualProcessorRegisters. The hypervisor's XSAVE
    /// buffer API does not document its layout, so components past SSE are not read here: an image that holds
    /// them is refused by <see cref="SetXsaveState"/> rather than half applied.
    /// </summary>
    public XsaveState GetXsaveState()
    {
        ThrowIfDisposed();
        var fpu = GetFpuState();
        Names[0] = WhvRegisterName.XCr0;
        GetRegisters(1);
        ulong xcr0 = Values[0].Reg64 | (ulong)XsaveComponents.X87;
        return XsaveState.FromFpu(fpu, xcr0);
    }

    public void SetXsaveState(XsaveState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfDisposed();
        const XsaveComponents legacy = XsaveComponents.X87 | XsaveComponents.Sse;
        var beyond = state.StateComponents & ~legacy;
        if (beyond != 0 && state.Area[XsaveState.MinimumSize..].IndexOfAnyExcept((byte)0) >= 0)
        {
            throw new ArgumentException($"The XSAVE image holds {beyond} state; the WHP backend restores x87 and SSE state and XCR0 only.", nameof(state));
        }

        Names[0] = WhvRegisterName.XCr0;
        Values[0] = new WHV_REGISTER_VALUE { Reg64 = state.Xcr0 };
        SetRegisters(1);
        SetFpuState(state.Fpu);
    }

    /// <summary>The MSRs a whole-state save includes (those the WHP register interface names).</summary>
    private static readonly uint[] StateMsrs =
    [
        MsrIndex.SysenterCs, MsrIndex.SysenterEsp, MsrIndex.SysenterEip, MsrIndex.Star, MsrIndex.Lstar, MsrIndex.Cstar,
        MsrIndex.Fmask, MsrIndex.KernelGsBase, MsrIndex.TscAux, MsrIndex.Pat, MsrIndex.Tsc,
    ];

    /// <summary>
    /// The state through the register interface: general, special, x87/SSE with XCR0, debug registers and the MSRs above.
    /// Interrupts in flight are not read (the run loop injects queued ones itself), and a halted vCPU reads as running.
    /// </summary>
    public VcpuState GetState()
    {
        ThrowIfDisposed();
        var msrs = StateMsrs.Select(i => new MsrEntry(i, 0)).ToArray();
        GetMsrs(msrs);
        return new VcpuState
        {
            General = GetGeneralRegisters(),
            Special = GetSpecialRegisters(),
            Xsave = GetXsaveState(),
            Debug = GetDebugRegisters(),
            Msrs = msrs,
            Events = new VcpuEvents { InterruptPending = _queuedVector >= 0, InterruptVector = _queuedVector >= 0 ? (byte)_queuedVector : (byte)0 },
        };
    }

    /// <inheritdoc cref="IVirtualCpu.SetState"/>
    public void SetState(VcpuState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfDisposed();
        if (state.LocalApic is not null)
        {
            throw new ArgumentException("The state carries a per-vCPU local APIC page (KVM's in-kernel irqchip); the WHP backend has no interrupt controller to load it into.", nameof(state));
        }

        if (state.StartupWait != StartupWait.None)
        {
            throw new ArgumentException("The state's processor waits for a start-up IPI; the WHP backend has no local APICs to send one.", nameof(state));
        }

        var e = state.Events;
        if (e.ExceptionInjected || e.ExceptionPending || e.NmiInjected || e.NmiPending || (e.InterruptInjected && e.InterruptSoft))
        {
            throw new ArgumentException("The state has an exception, NMI or software interrupt in mid-delivery, which the WHP backend cannot resume from the register interface.", nameof(state));
        }

        SetSpecialRegisters(state.Special);
        SetGeneralRegisters(state.General);
        SetXsaveState(state.Xsave);
        SetDebugRegisters(state.Debug);
        SetMsrs(state.Msrs.Where(m => StateMsrs.Contains(m.Index)).ToArray());
        Volatile.Write(ref _queuedVector, e.InterruptInjected || e.InterruptPending ? e.InterruptVector : -1);
    }

    public DebugRegisters GetDebugRegisters()
    {
        ThrowIfDisposed();
        ReadOnlySpan<WhvRegisterName> names = [WhvRegisterName.Dr0, WhvRegisterName.Dr1, WhvRegisterName.Dr2, WhvRegisterName.Dr3, WhvRegisterName.Dr6, WhvRegisterName.Dr7];
        names.CopyTo(new Span<WhvRegisterName>(Names, names.Length));
        GetRegisters(names.Length);
        return new DebugRegisters { Dr0 = Values[0].Reg64, Dr1 = Values[1].Reg64, Dr2 = Values[2].Reg64, Dr3 = Values[3].Reg64, Dr6 = Values[4].Reg64, Dr7 = Values[5].Reg64 };
    }

    public void SetDebugRegisters(in DebugRegisters registers)
    {
        ThrowIfDisposed();
        ReadOnlySpan<WhvRegisterName> names = [WhvRegisterName.Dr0, WhvRegisterName.Dr1, WhvRegisterName.Dr2, WhvRegisterName.Dr3, WhvRegisterName.Dr6, WhvRegisterName.Dr7];
        names.CopyTo(new Span<WhvRegisterName>(Names, names.Length));
        ReadOnlySpan<ulong> values = [registers.Dr0, registers.Dr1, registers.Dr2, registers.Dr3, registers.Dr6, registers.Dr7];
        for (int i = 0; i < values.Length; i++)
        {
            Values[i] = new WHV_REGISTER_VALUE { Reg64 = values[i] };
        }

        SetRegisters(names.Length);
    }

    public void GetMsrs(Span<MsrEntry> entries)
    {
        ThrowIfDisposed();
        for (int start = 0; start < entries.Length; start += MaxRegisters)
        {
            var chunk = entries.Slice(start, Math.Min(MaxRegisters, entries.Length - start));
            for (int i = 0; i < chunk.Length; i++)
            {
                Names[i] = MsrRegister(chunk[i].Index);
            }

            GetRegisters(chunk.Length);
            for (int i = 0; i < chunk.Length; i++)
            {
                chunk[i] = chunk[i] with { Value = Values[i].Reg64 };
            }
        }
    }

    public void SetMsrs(ReadOnlySpan<MsrEntry> entries)
    {
        ThrowIfDisposed();
        for (int start = 0; start < entries.Length; start += MaxRegisters)
        {
            var chunk = entries.Slice(start, Math.Min(MaxRegisters, entries.Length - start));
            for (int i = 0; i < chunk.Length; i++)
            {
                Names[i] = MsrRegister(chunk[i].Index);
                Values[i] = new WHV_REGISTER_VALUE { Reg64 = chunk[i].Value };
            }

            SetRegisters(chunk.Length);
        }
    }

    /// <summary>
    /// Replaces the leaves CPUID exits are answered from. Only leaves in the partition's CPUID exit list
    /// (every leaf of <see cref="IPartition.SupportedCpuid"/>) exit; others keep the hypervisor's answer.
    /// </summary>
    public void SetCpuid(IReadOnlyList<CpuidEntry> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ThrowIfDisposed();
        _cpuid = [.. entries];
    }

    public void Dispose()
    {
        lock (_cancelGate)
        {
            // Taken under the gate so that no WHvCancelRunVirtualProcessor is in flight once the vCPU goes.
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
            {
                return;
            }
        }

        _emulator.Dispose();
        if (!_handle.IsClosed)
        {
            _ = Interop.WinHvPlatform.WHvDeleteVirtualProcessor(_handle, _vp);
        }

        _self.Free();
        NativeMemory.AlignedFree(_native);
        _partition.VcpuDisposed(Index);
    }

    private void Cancel()
    {
        lock (_cancelGate)
        {
            if (Volatile.Read(ref _disposed) != 0 || _handle.IsClosed)
            {
                return;
            }

            // A cancel issued while the processor is outside WHvRunVirtualProcessor makes the next run
            // return at once with the Canceled reason; the run loop resumes when nobody asked to stop.
            HResult.Check(Interop.WinHvPlatform.WHvCancelRunVirtualProcessor(_handle, _vp, 0), "WHvCancelRunVirtualProcessor");
        }
    }

    private static WhvRegisterName MsrRegister(uint index) =>
        RegisterMap.Msrs.TryGetValue(index, out var name)
            ? name
            : throw new ArgumentException($"MSR 0x{index:x} is not supported by the WHP backend; see IPartition.SupportedMsrs.", nameof(index));

    private void GetRegisters(int count) =>
        HResult.Check(Interop.WinHvPlatform.WHvGetVirtualProcessorRegisters(_handle, _vp, Names, (uint)count, Values), "WHvGetVirtualProcessorRegisters");

    private void SetRegisters(int count) =>
        HResult.Check(Interop.WinHvPlatform.WHvSetVirtualProcessorRegisters(_handle, _vp, Names, (uint)count, Values), "WHvSetVirtualProcessorRegisters");

    private void SetRegister(WhvRegisterName name, WHV_REGISTER_VALUE value)
    {
        Names[0] = name;
        Values[0] = value;
        SetRegisters(1);
    }

    private void AnswerCpuid()
    {
        var r = ExitTranslator.AnswerCpuid(ExitContext->CpuidAccess, _cpuid);
        Names[0] = WhvRegisterName.Rax;
        Names[1] = WhvRegisterName.Rbx;
        Names[2] = WhvRegisterName.Rcx;
        Names[3] = WhvRegisterName.Rdx;
        Names[4] = WhvRegisterName.Rip;
        Values[0] = new WHV_REGISTER_VALUE { Reg64 = r.Eax };
        Values[1] = new WHV_REGISTER_VALUE { Reg64 = r.Ebx };
        Values[2] = new WHV_REGISTER_VALUE { Reg64 = r.Ecx };
        Values[3] = new WHV_REGISTER_VALUE { Reg64 = r.Edx };
        Values[4] = new WHV_REGISTER_VALUE { Reg64 = NextRip() };
        SetRegisters(5);
    }

    private void AnswerMsr()
    {
        var decision = VcpuDecisions.DecideMsr(ExitContext->MsrAccess);
        if (decision.Action == MsrAction.ReadRegister && TryReadRegister(decision.Register, out ulong value))
        {
            Names[0] = WhvRegisterName.Rax;
            Names[1] = WhvRegisterName.Rdx;
            Names[2] = WhvRegisterName.Rip;
            Values[0] = new WHV_REGISTER_VALUE { Reg64 = value & 0xFFFF_FFFF };
            Values[1] = new WHV_REGISTER_VALUE { Reg64 = value >> 32 };
            Values[2] = new WHV_REGISTER_VALUE { Reg64 = NextRip() };
            SetRegisters(3);
            return;
        }

        if (decision.Action == MsrAction.WriteRegister)
        {
            Names[0] = decision.Register;
            Values[0] = new WHV_REGISTER_VALUE { Reg64 = decision.Value };

            // A value the hypervisor refuses is the guest's mistake: it gets #GP, as from a real WRMSR.
            if (!HResult.Failed(Interop.WinHvPlatform.WHvSetVirtualProcessorRegisters(_handle, _vp, Names, 1, Values)))
            {
                SetRegister(WhvRegisterName.Rip, new WHV_REGISTER_VALUE { Reg64 = NextRip() });
                return;
            }
        }

        SetRegister(WhvRegisterName.PendingInterruption, new WHV_REGISTER_VALUE
        {
            PendingInterruption = WhvPendingInterruption.Create(WhvPendingInterruptionType.Exception, ExitTranslator.GeneralProtectionVector, 0),
        });
    }

    private bool TryReadRegister(WhvRegisterName name, out ulong value)
    {
        Names[0] = name;
        bool ok = !HResult.Failed(Interop.WinHvPlatform.WHvGetVirtualProcessorRegisters(_handle, _vp, Names, 1, Values));
        value = ok ? Values[0].Reg64 : 0;
        return ok;
    }

    private ulong NextRip() => ExitContext->VpContext.Rip + (ulong)ExitContext->VpContext.InstructionLength;

    private void DeliverQueuedInterrupt()
    {
        int vector = Volatile.Read(ref _queuedVector);
        if (vector < 0)
        {
            return;
        }

        Names[0] = WhvRegisterName.Rflags;
        Names[1] = WhvRegisterName.InterruptState;
        Names[2] = WhvRegisterName.PendingInterruption;
        GetRegisters(3);
        switch (VcpuDecisions.DecideInjection(vector, Values[0].Reg64, Values[1].InterruptState, Values[2].PendingInterruption))
        {
            case InjectionDecision.Inject:
                Names[0] = WhvRegisterName.PendingInterruption;
                Names[1] = WhvRegisterName.DeliverabilityNotifications;
                Values[0] = new WHV_REGISTER_VALUE { PendingInterruption = WhvPendingInterruption.Create(WhvPendingInterruptionType.Interrupt, (byte)vector) };
                Values[1] = default;
                SetRegisters(2);
                Interlocked.CompareExchange(ref _queuedVector, -1, vector);
                break;
            case InjectionDecision.WaitForWindow:
                SetRegister(WhvRegisterName.DeliverabilityNotifications, new WHV_REGISTER_VALUE { DeliverabilityNotifications = VcpuDecisions.InterruptNotification });
                break;
        }
    }

    /// <summary>Adds the general registers to a failure exit so that the caller sees the guest state at the fault.</summary>
    private VcpuExit WithRegisters(VcpuExit exit)
    {
        if (exit.Fault is not { } f || f.Registers is not null)
        {
            return exit;
        }

        GeneralRegisters? registers;
        try
        {
            registers = GetGeneralRegisters();
        }
        catch (HypervisorException)
        {
            registers = null;
        }

        var fault = new VcpuFault(f.Description, f.Code, f.Rip, f.InstructionBytes, registers);
        return exit.Reason == VcpuExitReason.Exception ? VcpuExit.Exception((byte)exit.Value, fault) : VcpuExit.Failure(exit.Reason, fault);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
}
