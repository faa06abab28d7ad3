using System.Buffers.Binary;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

internal sealed unsafe partial class KvmVcpu
{
    /// <summary>
    /// MSRs a whole-state save includes, where this host's KVM lists them: what a running guest (a Linux kernel
    /// among them) keeps there. EFER, FS/GS base and the APIC base travel in the special registers.
    /// </summary>
    private static readonly uint[] StateMsrs =
    [
        MsrIndex.SysenterCs, MsrIndex.SysenterEsp, MsrIndex.SysenterEip, MsrIndex.Star, MsrIndex.Lstar, MsrIndex.Cstar,
        MsrIndex.Fmask, MsrIndex.KernelGsBase, MsrIndex.TscAux, MsrIndex.Pat, MsrIndex.MiscEnable, MsrIndex.MiscFeaturesEnables,
        MsrIndex.Tsc, 0x3B, // IA32_TSC_ADJUST
        0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20A, 0x20B, 0x20C, 0x20D, 0x20E, 0x20F, // MTRR bases and masks
        0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C, 0x26D, 0x26E, 0x26F, 0x2FF, // fixed MTRRs, MTRR default type
        0x11, 0x12, // KVM clock (old)
        0x4B56_4D00, 0x4B56_4D01, 0x4B56_4D02, 0x4B56_4D03, 0x4B56_4D04, 0x4B56_4D05, 0x4B56_4D06, 0x4B56_4D07, // KVM paravirtual MSRs
        MsrIndex.TscDeadline, // after the LAPIC: the deadline needs the timer mode
    ];

    /// <summary>
    /// Finishes a port-I/O or MMIO instruction the last exit left pending (KVM_RUN with <c>immediate_exit</c> set completes
    /// it and returns without entering the guest), so that the state read next is between two instructions.
    /// </summary>
    private void CompletePendingExit()
    {
        if (!_completionPending || _run == null)
        {
            return;
        }

        // SAFETY: _run is the mapped kvm_run of this vCPU (checked non-null above); it stays mapped until Dispose.
        Volatile.Write(ref _run->ImmediateExit, 1);
        int errno = KvmIoctls.TryRun(_handle);
        Volatile.Write(ref _run->ImmediateExit, 0);
        _syncRegsValid = _syncRegs;
        _completionPending = false;
        if (errno is not (0 or Interop.Libc.EINTR or Interop.Libc.EAGAIN))
        {
            throw KvmIoctls.Error(nameof(KVM_RUN), errno);
        }
    }

    /// <inheritdoc />
    public VcpuState GetState()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        CompletePendingExit();
        var host = _partition.Host;

        // First: KVM takes a pending INIT or start-up IPI before it reports the multiprocessor state, and an INIT
        // resets the registers, so they are read after it.
        uint mpState = host.HasMpState ? KvmIoctls.GetMpState(_handle) : KVM_MP_STATE_RUNNABLE;
        var msrs = StateMsrs.Where(host.MsrSet.Contains).Select(i => new MsrEntry(i, 0)).ToArray();
        GetMsrs(msrs);
        ReadOnlyMemory<byte>? lapic = null;
        if (_partition.HasInterruptController)
        {
            var page = new byte[KvmLapicSize];
            KvmIoctls.GetLapic(_handle, page);
            lapic = page;
        }

        return new VcpuState
        {
            General = GetGeneralRegisters(),
            Special = GetSpecialRegisters(),
            Xsave = GetXsaveState(),
            Debug = host.HasDebugRegisters ? KvmIoctls.GetDebugRegs(_handle) : DebugRegisters.Initial,
            Msrs = msrs,
            Events = host.HasVcpuEvents ? ReadEvents() : default,
            Halted = mpState == KVM_MP_STATE_HALTED,
            StartupWait = mpState switch
            {
                KVM_MP_STATE_UNINITIALIZED => StartupWait.Init,
                KVM_MP_STATE_INIT_RECEIVED or KVM_MP_STATE_SIPI_RECEIVED => StartupWait.StartupIpi,
                _ => StartupWait.None,
            },
            LocalApic = lapic,
        };
    }

    /// <inheritdoc />
    public void SetState(VcpuState state)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        ArgumentNullException.ThrowIfNull(state);
        CompletePendingExit();
        var host = _partition.Host;
        // An MSR this KVM does not have is harmless at its reset value; any other value cannot be honoured.
        var unknown = state.Msrs.Where(m => !host.MsrSet.Contains(m.Index) && !VcpuState.IsResetValue(m)).Select(m => $"0x{m.Index:x} = 0x{m.Value:x}").ToList();
        if (unknown.Count > 0)
        {
            throw new ArgumentException($"The state holds MSRs this host's KVM does not list ({string.Join(", ", unknown)}); restore it on a host whose KVM has them.", nameof(state));
        }

        if (state.LocalApic is { } apic && (!_partition.HasInterruptController || apic.Length != KvmLapicSize))
        {
            throw new ArgumentException(_partition.HasInterruptController
                ? $"The state's local APIC page has {apic.Length} bytes; KVM's has {KvmLapicSize}."
                : "The state has a local APIC page but this partition has no in-kernel interrupt controller (PartitionOptions.InterruptController).", nameof(state));
        }

        if (state.StartupWait != StartupWait.None && !(_partition.HasInterruptController && host.HasMpState))
        {
            throw new ArgumentException(_partition.HasInterruptController
                ? "The state's processor waits for a start-up IPI, but this host's KVM cannot set a vCPU's multiprocessor state (KVM_CAP_MP_STATE)."
                : "The state's processor waits for a start-up IPI, but this partition has no in-kernel local APICs to send one (PartitionOptions.InterruptController).", nameof(state));
        }

        if (state.StartupWait != StartupWait.None && state.Halted)
        {
            throw new ArgumentException("The state's processor is both halted and waiting for a start-up IPI.", nameof(state));
        }

        SetSpecialRegisters(state.Special);
        SetGeneralRegisters(state.General);
        SetXsaveState(state.Xsave);
        if (host.HasDebugRegisters)
        {
            KvmIoctls.SetDebugRegs(_handle, state.Debug);
        }

        if (state.LocalApic is { } page)
        {
            KvmIoctls.SetLapic(_handle, page.Span);
        }

        // Only MSRs whose value differs are written: KVM refuses some (its paravirtual ones among them) while the guest's
        // CPUID does not offer their feature, even at the value they already have.
        var wanted = state.Msrs.Where(m => host.MsrSet.Contains(m.Index)).ToArray();
        var current = wanted.Select(m => new MsrEntry(m.Index, 0)).ToArray();
        GetMsrs(current);
        var changed = wanted.Where((m, i) => m.Value != current[i].Value).ToArray();
        if (changed.Length > 0)
        {
            SetMsrs(changed);
        }

        if (host.HasVcpuEvents)
        {
            WriteEvents(state.Events);
        }

        if (host.HasMpState)
        {
            // Last: setting the special registers above starts a processor that waited; this puts it back.
            KvmIoctls.SetMpState(_handle, state.StartupWait switch
            {
                StartupWait.Init => KVM_MP_STATE_UNINITIALIZED,
                StartupWait.StartupIpi => KVM_MP_STATE_INIT_RECEIVED,
                _ => state.Halted ? KVM_MP_STATE_HALTED : KVM_MP_STATE_RUNNABLE,
            });
        }
    }

    private VcpuEvents ReadEvents()
    {
        Span<byte> k = stackalloc byte[KvmVcpuEventsSize];
        KvmIoctls.GetVcpuEvents(_handle, k);
        // struct kvm_vcpu_events: exception {injected, nr, has_error_code, pending, error_code}, interrupt {injected, nr,
        // soft, shadow}, nmi {injected, pending, masked, pad}, sipi_vector, flags, ...
        return new VcpuEvents
        {
            ExceptionInjected = k[0] != 0,
            ExceptionVector = k[1],
            ExceptionHasErrorCode = k[2] != 0,
            ExceptionPending = k[3] != 0,
            ExceptionErrorCode = BinaryPrimitives.ReadUInt32LittleEndian(k[4..]),
            InterruptInjected = k[8] != 0,
            InterruptVector = k[9],
            InterruptSoft = k[10] != 0,
            InterruptShadow = k[11],
            NmiInjected = k[12] != 0,
            NmiPending = k[13] != 0,
            NmiMasked = k[14] != 0,
        };
    }

    private void WriteEvents(in VcpuEvents e)
    {
        Span<byte> k = stackalloc byte[KvmVcpuEventsSize];
        k.Clear();
        k[0] = e.ExceptionInjected ? (byte)1 : (byte)0;
        k[1] = e.ExceptionVector;
        k[2] = e.ExceptionHasErrorCode ? (byte)1 : (byte)0;
        k[3] = e.ExceptionPending ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt32LittleEndian(k[4..], e.ExceptionErrorCode);
        k[8] = e.InterruptInjected ? (byte)1 : (byte)0;
        k[9] = e.InterruptVector;
        k[10] = e.InterruptSoft ? (byte)1 : (byte)0;
        k[11] = e.InterruptShadow;
        k[12] = e.NmiInjected ? (byte)1 : (byte)0;
        k[13] = e.NmiPending ? (byte)1 : (byte)0;
        k[14] = e.NmiMasked ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt32LittleEndian(k[20..], KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_NMI_PENDING);
        KvmIoctls.SetVcpuEvents(_handle, k);
    }
}
