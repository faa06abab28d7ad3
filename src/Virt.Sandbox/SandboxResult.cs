using System.Text;
using Virt.Cpu;

namespace Virt.Sandbox;

/// <summary>How a sandboxed run ended.</summary>
public enum SandboxStatus
{
    /// <summary>The program called <c>exit</c> or <c>exit_group</c>; see <see cref="SandboxResult.ExitCode"/>.</summary>
    Exited,
    /// <summary>The program sent itself a signal (e.g. <c>abort()</c> raises SIGABRT); see <see cref="SandboxResult.Signal"/>.</summary>
    Signaled,
    /// <summary>The wall-time (or instruction) limit ran out.</summary>
    TimeLimitExceeded,
    /// <summary>The program ended abnormally after a memory request was refused because guest RAM was used up.</summary>
    MemoryLimitExceeded,
    /// <summary>stdout plus stderr reached the output limit.</summary>
    OutputLimitExceeded,
    /// <summary>The program made more system calls than allowed.</summary>
    SyscallLimitExceeded,
    /// <summary>The program tried something the policy forbids (see <see cref="SandboxResult.Message"/>).</summary>
    ForbiddenOperation,
    /// <summary>The program raised a CPU exception (page fault, general protection, invalid opcode, ...); see <see cref="SandboxResult.Fault"/>.</summary>
    GuestFault,
    /// <summary>The CPU backend could not continue the guest; see <see cref="SandboxResult.Message"/>.</summary>
    BackendFailure,
    /// <summary>The caller's cancellation token stopped the run.</summary>
    Cancelled,
}

/// <summary>A CPU exception raised by the sandboxed program.</summary>
/// <param name="Vector">Exception vector (0 = #DE, 6 = #UD, 13 = #GP, 14 = #PF, ...).</param>
/// <param name="Name">Mnemonic of the vector, e.g. <c>#PF</c>.</param>
/// <param name="ErrorCode">Error code the CPU pushed (0 for vectors without one).</param>
/// <param name="Rip">Address of the faulting instruction.</param>
/// <param name="FaultAddress">CR2 for a page fault (the address accessed), otherwise 0.</param>
/// <param name="InstructionBytes">Up to 15 bytes at <paramref name="Rip"/> where the program can read them.</param>
public sealed record SandboxFault(int Vector, string Name, ulong ErrorCode, ulong Rip, ulong FaultAddress, ReadOnlyMemory<byte> InstructionBytes)
{
    /// <inheritdoc />
    public override string ToString() =>
        $"{Name} (vector {Vector}, error 0x{ErrorCode:x}) at rip=0x{Rip:x}" + (Vector == 14 ? $" address=0x{FaultAddress:x}" : "") +
        $" bytes=[{Convert.ToHexString(InstructionBytes.Span)}]";
}

/// <summary>What a run used.</summary>
/// <param name="WallTime">Wall-clock time of the run (for a warm call: from restore to the end).</param>
/// <param name="Instructions">Guest instructions retired, where the backend counts them.</param>
/// <param name="PeakMemoryBytes">Most arena memory (heap, mappings, stack) the program held at once.</param>
/// <param name="SystemCalls">System calls made.</param>
/// <param name="RestoredPages">Pages copied back from the snapshot before this call (0 for a cold run).</param>
public sealed record SandboxResourceUsage(TimeSpan WallTime, long? Instructions, long PeakMemoryBytes, long SystemCalls, int RestoredPages);

/// <summary>The outcome of <see cref="Sandbox.RunAsync(ReadOnlyMemory{byte}, CancellationToken)"/>.</summary>
public sealed record SandboxResult
{
    /// <summary>How the run ended.</summary>
    public required SandboxStatus Status { get; init; }

    /// <summary>Exit status (0-255) when <see cref="Status"/> is <see cref="SandboxStatus.Exited"/>; otherwise -1.</summary>
    public int ExitCode { get; init; } = -1;

    /// <summary>The signal number for <see cref="SandboxStatus.Signaled"/> (and the signal Linux would have sent for a fault).</summary>
    public int? Signal { get; init; }

    /// <summary>Bytes the program wrote to stdout (up to the output limit).</summary>
    public required ReadOnlyMemory<byte> Stdout { get; init; }

    /// <summary>Bytes the program wrote to stderr (up to the output limit).</summary>
    public required ReadOnlyMemory<byte> Stderr { get; init; }

    /// <summary>stdout as UTF-8 text.</summary>
    public string StdoutText => Encoding.UTF8.GetString(Stdout.Span);

    /// <summary>stderr as UTF-8 text.</summary>
    public string StderrText => Encoding.UTF8.GetString(Stderr.Span);

    /// <summary>The CPU exception for <see cref="SandboxStatus.GuestFault"/>.</summary>
    public SandboxFault? Fault { get; init; }

    /// <summary>A sentence that explains a status other than <see cref="SandboxStatus.Exited"/>.</summary>
    public string? Message { get; init; }

    /// <summary>Resources used.</summary>
    public required SandboxResourceUsage Usage { get; init; }

    /// <summary>System calls that returned <c>ENOSYS</c> or were denied, by name, with how often.</summary>
    public IReadOnlyDictionary<string, int> UnsupportedSystemCalls { get; init; } = new Dictionary<string, int>();

    /// <summary>Whether a memory request was refused during the run because the memory limit was reached (whatever the status).</summary>
    public bool MemoryLimitReached { get; init; }

    /// <summary>What the backend enforced for this run on this host (see <see cref="SandboxIsolation"/>).</summary>
    public SandboxIsolation? Isolation { get; init; }

    /// <inheritdoc />
    public override string ToString() => Status switch
    {
        SandboxStatus.Exited => $"Exited({ExitCode})",
        SandboxStatus.GuestFault => $"GuestFault: {Fault}",
        _ => $"{Status}: {Message}",
    };
}

/// <summary>
/// What a sandbox's backend enforces on this host beyond the limits, as observed by the sandbox. Every backend
/// restores all architectural state between calls (general, segment, control and debug registers, the whole
/// XSAVE image with XCR0, and the MSRs a program can reach); what differs is what a program can see and use.
/// See docs/sandbox.md, "Isolation".
/// </summary>
public sealed record SandboxIsolation
{
    /// <summary>The backend's name (<c>kvm</c>, <c>interpreter</c>, ...).</summary>
    public required string Backend { get; init; }

    /// <summary>Whether the program's CPUID answers come from the sandbox's policy (which hides XSAVE, AVX, AVX-512 and protection keys).</summary>
    public bool CpuidPolicyEnforced { get; init; }

    /// <summary>Whether CPUID faults to the host, which answers it (needed where user code runs with the host's CPUID).</summary>
    public bool CpuidFaulting { get; init; }

    /// <summary>
    /// Whether the backend runs the program's user-mode code as host user code (a paravirtual KVM such as PVM):
    /// seen when SYSCALL reaches the sandbox's trampoline without leaving CPL 3.
    /// </summary>
    public bool UserModeRunsOnHost { get; init; }

    /// <summary>
    /// XSAVE components the program can use although CPUID hides them: on a backend that runs user code with the
    /// host's XCR0, the host's vector and protection-key state. The reset covers them all the same.
    /// </summary>
    public XsaveComponents HiddenStateReachable { get; init; }
}
