namespace Virt.Cpu;

/// <summary>
/// The complete architectural state of one vCPU as plain data, in a form that is the same on every backend: what a
/// snapshot saves and a restore (on this backend or another) writes back. See <see cref="IVirtualCpu.GetState"/>.
/// </summary>
public sealed record VcpuState
{
    /// <summary>General registers, RIP and RFLAGS.</summary>
    public required GeneralRegisters General { get; init; }

    /// <summary>Segment, descriptor-table and control registers, EFER and the APIC base.</summary>
    public required SpecialRegisters Special { get; init; }

    /// <summary>Everything XSAVE covers, with XCR0.</summary>
    public required XsaveState Xsave { get; init; }

    /// <summary>DR0-DR3, DR6, DR7.</summary>
    public DebugRegisters Debug { get; init; } = DebugRegisters.Initial;

    /// <summary>The model-specific registers the backend saves (the SYSCALL/SYSENTER MSRs, PAT, TSC, kernel GS base, ...).</summary>
    public IReadOnlyList<MsrEntry> Msrs { get; init; } = [];

    /// <summary>Exceptions, interrupts and NMIs in flight, and the interrupt shadow.</summary>
    public VcpuEvents Events { get; init; }

    /// <summary>Whether the vCPU is halted (HLT) waiting for an interrupt.</summary>
    public bool Halted { get; init; }

    /// <summary>
    /// Whether the processor waits to be started by the local APICs and executes nothing meanwhile: an application
    /// processor after reset or INIT (KVM's multiprocessor states <c>UNINITIALIZED</c> and <c>INIT_RECEIVED</c>).
    /// <see cref="StartupWait.None"/> for a processor that runs or is <see cref="Halted"/>.
    /// </summary>
    public StartupWait StartupWait { get; init; }

    /// <summary>
    /// The local APIC's register page (1 KiB in the xAPIC MMIO layout) where the backend keeps a local APIC per vCPU
    /// (KVM's in-kernel irqchip); <see langword="null"/> where the partition's interrupt platform holds it.
    /// </summary>
    public ReadOnlyMemory<byte>? LocalApic { get; init; }

    /// <summary>
    /// Whether <paramref name="msr"/> holds the value the MSR has after reset: a backend that lacks that MSR can take such
    /// a state without it (0 for most; 1 for KVM's poll-control MSR, whose reset value enables host polling).
    /// </summary>
    public static bool IsResetValue(MsrEntry msr) => msr.Value == (msr.Index == KvmPollControlMsr ? 1UL : 0UL);

    /// <summary>MSR_KVM_POLL_CONTROL.</summary>
    private const uint KvmPollControlMsr = 0x4B56_4D05;
}

/// <summary>What a processor that the local APICs have not started yet waits for (<see cref="VcpuState.StartupWait"/>).</summary>
public enum StartupWait
{
    /// <summary>The processor runs (or is halted): it is not waiting to be started.</summary>
    None = 0,

    /// <summary>It waits for an INIT and then a start-up IPI; a start-up IPI before the INIT is ignored.</summary>
    Init = 1,

    /// <summary>It has taken an INIT (or came out of reset ready) and starts at the vector of the next start-up IPI.</summary>
    StartupIpi = 2,
}

/// <summary>Events in flight on a vCPU (SDM Vol. 3, 6.x; KVM's <c>kvm_vcpu_events</c>).</summary>
public struct VcpuEvents
{
    /// <summary>An exception is being delivered (injected) when the state was taken.</summary>
    public bool ExceptionInjected;
    /// <summary>An exception is pending (raised, not yet delivered).</summary>
    public bool ExceptionPending;
    /// <summary>The exception's vector.</summary>
    public byte ExceptionVector;
    /// <summary>Whether the exception pushes an error code.</summary>
    public bool ExceptionHasErrorCode;
    /// <summary>The error code.</summary>
    public uint ExceptionErrorCode;
    /// <summary>An external or software interrupt is being delivered.</summary>
    public bool InterruptInjected;
    /// <summary>An external interrupt is queued for delivery once the guest can take it (a backend without an interrupt controller).</summary>
    public bool InterruptPending;
    /// <summary>The interrupt's vector.</summary>
    public byte InterruptVector;
    /// <summary>Whether the interrupt is a software interrupt (INT n).</summary>
    public bool InterruptSoft;
    /// <summary>An NMI is being delivered.</summary>
    public bool NmiInjected;
    /// <summary>An NMI is pending.</summary>
    public bool NmiPending;
    /// <summary>NMIs are blocked (an NMI handler is running).</summary>
    public bool NmiMasked;
    /// <summary>Interrupt shadow: 1 after STI, 2 after MOV SS/POP SS, 0 for none.</summary>
    public byte InterruptShadow;
}
