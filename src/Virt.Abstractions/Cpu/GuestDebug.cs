namespace Virt.Cpu;

/// <summary>What a backend can do for a host debugger (<see cref="IVirtualCpu.SetGuestDebug"/>).</summary>
[Flags]
public enum GuestDebugFeatures
{
    /// <summary>No host debugging: <see cref="IVirtualCpu.SetGuestDebug"/> throws <see cref="NotSupportedException"/>.</summary>
    None = 0,
    /// <summary>The vCPU can stop after every instruction (<see cref="GuestDebugSettings.SingleStep"/>).</summary>
    SingleStep = 1,
    /// <summary>An <c>INT3</c> (0xCC) the guest executes stops the vCPU instead of raising #BP in the guest (<see cref="GuestDebugSettings.InterceptBreakpointInstructions"/>).</summary>
    SoftwareBreakpoints = 2,
    /// <summary>Four host execute breakpoints in DR0-DR3/DR7 format, apart from the guest's own debug registers (<see cref="GuestDebugSettings.HardwareBreakpoints"/>).</summary>
    HardwareBreakpoints = 4,
    /// <summary>The host breakpoint slots can also watch data writes and accesses (DR7 R/W 01 and 11).</summary>
    Watchpoints = 8,
}

/// <summary>
/// The host debugger's control of one vCPU: single-step, interception of <c>INT3</c>, and hardware breakpoints and
/// watchpoints that belong to the host (the guest's own DR0-DR7 are not changed by them). The default value turns all
/// of it off. Events are reported as <see cref="VcpuExitReason.Debug"/> exits (see <see cref="VcpuExit.DebugStatus"/>).
/// </summary>
/// <param name="SingleStep">Stop after every instruction (DR6.BS in the exit).</param>
/// <param name="InterceptBreakpointInstructions">
/// An <c>INT3</c> stops the vCPU with RIP at the instruction (<see cref="VcpuExit.IsBreakpointInstruction"/>) instead of raising #BP.
/// </param>
/// <param name="HardwareBreakpoints">
/// DR0-DR3 hold linear addresses and DR7 enables them (L0-L3 or G0-G3, R/W 00 execute, 01 write, 11 read or write;
/// LEN 00 1 byte, 01 2, 11 4, 10 8); DR6 is ignored. A hit stops the vCPU with the breakpoint's B0-B3 bit in the exit:
/// before an instruction for execute breakpoints, after the accessing instruction for watchpoints.
/// </param>
public readonly record struct GuestDebugSettings(bool SingleStep, bool InterceptBreakpointInstructions, DebugRegisters HardwareBreakpoints)
{
    /// <summary>DR6/DR7 bit: single step (BS) in <see cref="VcpuExit.DebugStatus"/>.</summary>
    public const ulong SingleStepStatus = 1UL << 14;

    /// <summary>Whether any of the settings is on.</summary>
    public bool IsEnabled => SingleStep || InterceptBreakpointInstructions || (HardwareBreakpoints.Dr7 & 0xFF) != 0;
}
