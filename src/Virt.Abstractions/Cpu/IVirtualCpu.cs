namespace Virt.Cpu;

/// <summary>
/// A virtual processor. <see cref="Run"/> and the register methods are called from the vCPU's own
/// thread; <see cref="RequestExit"/> may be called from any thread.
/// </summary>
public interface IVirtualCpu : IDisposable
{
    /// <summary>The vCPU's index in its partition (0 is the boot processor).</summary>
    int Index { get; }

    /// <summary>
    /// Runs the guest until it exits. For a port-I/O or MMIO read exit, fill <see cref="ExitData"/>
    /// before calling <see cref="Run"/> again: the backend completes the guest's instruction with it.
    /// </summary>
    VcpuExit Run();

    /// <summary>
    /// The data bytes of the last port-I/O or MMIO exit (<see cref="VcpuExit.DataLength"/> bytes).
    /// Valid until the next <see cref="Run"/>; empty after other exits.
    /// </summary>
    Span<byte> ExitData { get; }

    /// <summary>
    /// Makes the current or next <see cref="Run"/> return <see cref="VcpuExitReason.Interrupted"/> soon.
    /// Thread-safe; a request made while the vCPU is not running is kept until the next <see cref="Run"/>.
    /// </summary>
    void RequestExit();

    /// <summary>Reads the general registers.</summary>
    GeneralRegisters GetGeneralRegisters();

    /// <summary>Writes the general registers.</summary>
    void SetGeneralRegisters(in GeneralRegisters registers);

    /// <summary>Reads the segment, descriptor-table and control registers.</summary>
    SpecialRegisters GetSpecialRegisters();

    /// <summary>Writes the segment, descriptor-table and control registers.</summary>
    void SetSpecialRegisters(in SpecialRegisters registers);

    /// <summary>Reads the x87/SSE state.</summary>
    FpuState GetFpuState();

    /// <summary>Writes the x87/SSE state.</summary>
    void SetFpuState(in FpuState state);

    /// <summary>
    /// Reads everything XSAVE covers (x87, SSE, AVX, AVX-512, PKRU and any other component the vCPU's XCR0
    /// enables) and XCR0 itself, in the standard XSAVE format. With <see cref="SetXsaveState"/> this is the
    /// one way to save and restore the whole vector and protection-key state.
    /// </summary>
    XsaveState GetXsaveState();

    /// <summary>
    /// Writes XCR0 and the whole XSAVE-covered state: every component XCR0 enables is loaded from the image,
    /// or put in its initial state where the image's XSTATE_BV bit is clear.
    /// </summary>
    /// <exception cref="ArgumentException">The image holds state for a component this vCPU cannot have (the message names it), or XCR0 enables one.</exception>
    void SetXsaveState(XsaveState state);

    /// <summary>
    /// Reads the vCPU's whole architectural state as portable data (for snapshots). Call it on the vCPU's thread while the
    /// vCPU is not running, after completing any pending port-I/O or MMIO read (run until the next exit first).
    /// </summary>
    VcpuState GetState();

    /// <summary>
    /// Writes a whole state from <see cref="GetState"/> (on this backend or another). Call it while the vCPU is not running.
    /// </summary>
    /// <exception cref="ArgumentException">The state holds something this backend cannot take (the message says what, e.g. a component or an MSR).</exception>
    void SetState(VcpuState state);

    /// <summary>Reads DR0-DR3, DR6 and DR7.</summary>
    DebugRegisters GetDebugRegisters();

    /// <summary>Writes DR0-DR3, DR6 and DR7.</summary>
    void SetDebugRegisters(in DebugRegisters registers);

    /// <summary>Reads the MSRs named in <paramref name="entries"/> (their <c>Index</c>) and fills in the values.</summary>
    /// <exception cref="ArgumentException">An index is not in <see cref="IPartition.SupportedMsrs"/>.</exception>
    void GetMsrs(Span<MsrEntry> entries);

    /// <summary>Writes MSRs.</summary>
    /// <exception cref="ArgumentException">An index is not in <see cref="IPartition.SupportedMsrs"/>.</exception>
    void SetMsrs(ReadOnlySpan<MsrEntry> entries);

    /// <summary>Sets the CPUID leaves the guest sees.</summary>
    void SetCpuid(IReadOnlyList<CpuidEntry> entries);

    /// <summary>
    /// Queues an external interrupt with <paramref name="vector"/> for delivery when the guest can take it
    /// (IF set, no interrupt shadow). For partitions without an interrupt controller.
    /// </summary>
    /// <returns><see langword="false"/> when the backend cannot queue one now (one is already pending).</returns>
    bool TryInjectInterrupt(byte vector);

    /// <summary>What <see cref="SetGuestDebug"/> can do on this backend (<see cref="GuestDebugFeatures.None"/> where it cannot).</summary>
    GuestDebugFeatures DebugFeatures => GuestDebugFeatures.None;

    /// <summary>
    /// Sets the host debugger's control of this vCPU (single-step, <c>INT3</c> interception, host hardware breakpoints);
    /// the default value turns it off. Call it while the vCPU is not running. Events end <see cref="Run"/> with
    /// <see cref="VcpuExitReason.Debug"/>.
    /// </summary>
    /// <exception cref="NotSupportedException">The settings ask for something <see cref="DebugFeatures"/> does not list (the message says what).</exception>
    void SetGuestDebug(in GuestDebugSettings settings)
    {
        if (settings.IsEnabled)
        {
            throw new NotSupportedException($"This backend ({GetType().Name}) has no host debugging support; check IVirtualCpu.DebugFeatures first.");
        }
    }
}
