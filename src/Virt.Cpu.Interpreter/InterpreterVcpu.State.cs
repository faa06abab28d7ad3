namespace Virt.Cpu.Interpreter;

/// <summary>The vCPU's whole state as portable data (snapshots, and restores from other backends).</summary>
internal sealed partial class InterpreterVcpu
{
    /// <summary>The MSRs a whole-state save includes: every one the interpreter has but those derived from other state and the read-only capability MSRs.</summary>
    private static readonly uint[] StateMsrs = SavedMsrs();

    /// <summary>
    /// <see cref="StateMsrs"/>, with a loop: LINQ over <see langword="uint"/> is framework generic code that no ReadyToRun
    /// image holds, which every process would compile at its first vCPU.
    /// </summary>
    private static uint[] SavedMsrs()
    {
        var all = Msrs.Supported;
        var kept = new uint[all.Count];
        int n = 0;
        for (int k = 0; k < all.Count; k++)
        {
            if (all[k] is not (MsrIndex.Efer or MsrIndex.FsBase or MsrIndex.GsBase or MsrIndex.ApicBase or MsrIndex.PlatformInfo or MsrIndex.ArchCapabilities or MachineCheck.MsrMcgCap))
            {
                kept[n++] = all[k];
            }
        }

        // Array.Copy rather than Array.Resize, which is generic (compiled for uint in every process).
        var saved = new uint[n];
        Array.Copy(kept, saved, n);
        return saved;
    }

    public VcpuState GetState()
    {
        CompletePendingExit();
        AcceptStartupEvents();
        var msrs = StateMsrs.Select(i => new MsrEntry(i, 0)).ToArray();
        GetMsrs(msrs);
        return new VcpuState
        {
            General = GetGeneralRegisters(),
            Special = GetSpecialRegisters(),
            Xsave = GetXsaveState(),
            Debug = GetDebugRegisters(),
            Msrs = msrs,
            Events = new VcpuEvents
            {
                InterruptPending = _pendingIrq >= 0,
                InterruptVector = _pendingIrq >= 0 ? (byte)_pendingIrq : (byte)0,
                InterruptShadow = _interruptShadow ? (byte)1 : (byte)0,
                NmiMasked = _nmiBlocked,
                NmiPending = _nmiLatched,
            },
            Halted = _halted,
            StartupWait = _waitForStartup ? StartupWait.StartupIpi : StartupWait.None,
        };
    }

    public void SetState(VcpuState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        CompletePendingExit();
        if (state.LocalApic is not null)
        {
            throw new ArgumentException("The state carries a per-vCPU local APIC page (from KVM's in-kernel irqchip); the interpreter keeps its local APIC in the partition's interrupt platform, whose own state must be restored instead.", nameof(state));
        }

        if (state.StartupWait != StartupWait.None && _plat is null)
        {
            throw new ArgumentException("The state's processor waits for a start-up IPI, but this partition has no local APICs to send one (PartitionOptions.InterruptController).", nameof(state));
        }

        if (state.StartupWait != StartupWait.None && state.Halted)
        {
            throw new ArgumentException("The state's processor is both halted and waiting for a start-up IPI.", nameof(state));
        }

        var e = state.Events;
        if (e.ExceptionInjected || e.ExceptionPending || e.NmiInjected || (e.InterruptInjected && e.InterruptSoft))
        {
            throw new ArgumentException("The state has an exception, NMI or software interrupt in mid-delivery, which the interpreter cannot resume; take the snapshot between instructions (after an exit).", nameof(state));
        }

        // An MSR the interpreter does not have is harmless at its reset value; any other value cannot be honoured.
        var unknown = state.Msrs.Where(m => !Msrs.Supported.Contains(m.Index) && !VcpuState.IsResetValue(m)).Select(m => $"0x{m.Index:x} = 0x{m.Value:x}").ToList();
        if (unknown.Count > 0)
        {
            throw new ArgumentException($"The state holds MSRs the interpreter does not have ({string.Join(", ", unknown)}).", nameof(state));
        }

        // The partition's interrupt platform, clock included, is restored before its vCPUs: count time from the
        // restored clock, so the TSC and its deadline below are taken against it and guest time runs on from there.
        _nmiBlocked = e.NmiMasked;
        _nmiLatched = e.NmiPending;
        RebaseClock();
        SetSpecialRegisters(state.Special);
        SetGeneralRegisters(state.General);
        SetXsaveState(state.Xsave);
        SetDebugRegisters(state.Debug);
        SetMsrs(state.Msrs.Where(m => m.Index is not (MsrIndex.PlatformInfo or MsrIndex.ArchCapabilities or MachineCheck.MsrMcgCap) && Msrs.Supported.Contains(m.Index)).ToArray());
        _pendingIrq = e.InterruptInjected || e.InterruptPending ? e.InterruptVector : -1;
        _interruptShadow = e.InterruptShadow != 0;
        _halted = state.Halted && _plat is not null;

        // Set after the special registers, whose setter starts a waiting processor. This processor starts from a
        // start-up IPI whether or not an INIT came first (StartupWait.Init is taken as StartupWait.StartupIpi).
        _waitForStartup = state.StartupWait != StartupWait.None;
        RebaseClock();
    }

    /// <summary>
    /// Takes an INIT or start-up IPI the local APIC holds for this processor and the run loop has not taken yet, as the
    /// run loop would, so the state read next is the one the processor is in (as KVM does before it reports a
    /// processor's multiprocessor state): the local APIC's snapshot record does not carry those two latches.
    /// </summary>
    private void AcceptStartupEvents()
    {
        if (_plat is not { } plat || Index == 0)
        {
            return; // the bootstrap processor ignores INIT here, as in the run loop
        }

        var lapic = plat.LocalController;
        if (lapic.AcknowledgeInit())
        {
            EnterWaitForStartup();
        }

        if (_waitForStartup)
        {
            int vector = lapic.AcknowledgeStartup();
            if (vector >= 0)
            {
                StartAt(vector);
            }
        }
    }

    /// <summary>
    /// Finishes an instruction the last exit left pending (a port read or an MMIO access the caller has served), so a
    /// saved state lies between two instructions, as on KVM.
    /// </summary>
    private void CompletePendingExit()
    {
        if (_pendingIo.Kind == PendingIoKind.None)
        {
            return;
        }

        _exitRequested = true;
        var exit = Run();
        _exitRequested = false;
        if (exit.Reason != VcpuExitReason.Interrupted)
        {
            throw new InvalidOperationException($"Finishing the instruction the last exit left pending ended in another exit ({exit.Reason}); serve it and run the vCPU before taking its state.");
        }
    }
}
