using Virt.Cpu;

namespace Virt;

/// <summary>Why a virtual machine stopped.</summary>
public enum StopReason
{
    /// <summary>A vCPU executed <c>HLT</c> with no way to be woken (no interrupt source).</summary>
    Halted,

    /// <summary>The guest wrote its exit code to the debug-exit port; see <see cref="VirtualMachineExit.ExitCode"/>.</summary>
    DebugExit,

    /// <summary>The guest triple-faulted (the processor shut down).</summary>
    Shutdown,

    /// <summary>The guest reset the machine (e.g. through the i8042 reset line or a system event).</summary>
    Reset,

    /// <summary>The guest powered the machine off.</summary>
    PowerOff,

    /// <summary>The host's <see cref="CancellationToken"/> stopped the VM.</summary>
    Cancelled,

    /// <summary>The host called <see cref="VirtualMachine.StopAsync"/>.</summary>
    StoppedByHost,

    /// <summary>The guest did something the backend could not run; see <see cref="VirtualMachineExit.Fault"/>.</summary>
    GuestFault,

    /// <summary>A vCPU used up its instruction budget (interpreter backend).</summary>
    InstructionLimit,

    /// <summary>The host side failed (a backend call failed); see <see cref="VirtualMachineExit.Exception"/>.</summary>
    HostError,
}

/// <summary>How and why a virtual machine stopped.</summary>
public sealed record VirtualMachineExit
{
    /// <summary>The reason.</summary>
    public required StopReason Reason { get; init; }

    /// <summary>
    /// For <see cref="StopReason.DebugExit"/>: the exit code, from the value the guest wrote by the debug-exit device's
    /// convention (<see cref="VirtualMachineBuilder.WithDebugExit"/>): the value itself, or QEMU's <c>(value &lt;&lt; 1) | 1</c>.
    /// </summary>
    public int? ExitCode { get; init; }

    /// <summary>The vCPU whose exit stopped the VM, where one did.</summary>
    public int? VcpuIndex { get; init; }

    /// <summary>For <see cref="StopReason.GuestFault"/> and <see cref="StopReason.Shutdown"/>: what the backend reported.</summary>
    public VcpuFault? Fault { get; init; }

    /// <summary>For <see cref="StopReason.HostError"/>: the exception.</summary>
    public Exception? Exception { get; init; }

    /// <summary>A one-line description, e.g. <c>debug exit with code 0</c>.</summary>
    public required string Description { get; init; }

    /// <inheritdoc />
    public override string ToString() => Description;
}
