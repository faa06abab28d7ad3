using Virt.Memory;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The interpreter backend: runs x86-64 guests in software on any host. Always available; counts
/// instructions exactly and can trace every instruction.
/// </summary>
public sealed class InterpreterHypervisor : IHypervisor
{
    /// <summary>Creates the backend with default options.</summary>
    public InterpreterHypervisor()
        : this(new InterpreterOptions())
    {
    }

    /// <summary>Creates the backend with <paramref name="options"/>.</summary>
    public InterpreterHypervisor(InterpreterOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        Options = options;
    }

    /// <summary>The options every partition of this backend uses.</summary>
    public InterpreterOptions Options { get; }

    /// <inheritdoc />
    public string Name => "interpreter";

    /// <inheritdoc />
    public HypervisorAvailability GetAvailability() =>
        HypervisorAvailability.Available("x86-64 interpreter (software, runs on every host)");

    /// <inheritdoc />
    public IPartition CreatePartition(IGuestMemoryBacking memory, PartitionOptions options)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(options);
        if (options.VcpuCount < 1)
        {
            throw new ArgumentException("A partition needs at least one vCPU; set VcpuCount to 1 or more.", nameof(options));
        }

        return new InterpreterPartition(this, memory, options);
    }
}

/// <summary>Options of the interpreter backend.</summary>
public sealed record InterpreterOptions
{
    /// <summary>
    /// The time-stamp counter frequency the guest sees, in Hz. Without emulated interrupt controllers RDTSC
    /// advances at this rate of host time; with them (<see cref="PartitionOptions.InterruptController"/>) the
    /// guest's time source is chosen by <see cref="Clock"/>.
    /// </summary>
    public long TscFrequency
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1_000_000);
            field = value;
        }
    } = 2_000_000_000;

    /// <summary>
    /// How guest time (TSC, timers) advances when the partition emulates interrupt controllers. The default,
    /// <see cref="InterpreterClock.Host"/>, follows the host's clock, so guest timeouts and sleeps last as
    /// long as they say and guests can talk to the outside world and to each other.
    /// </summary>
    public InterpreterClock Clock { get; init; } = InterpreterClock.Host;

    /// <summary>
    /// How many instructions make one second of virtual time under <see cref="InterpreterClock.Virtual"/>.
    /// Under <see cref="InterpreterClock.Host"/> it only paces how often the vCPU looks at the host clock for
    /// due timers. The default, 100 million, is close to the interpreter's own speed. At most
    /// <see cref="TscFrequency"/>.
    /// </summary>
    public long InstructionsPerSecond
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(value);
            field = value;
        }
    } = 100_000_000;

    /// <summary>
    /// Called before every instruction with the vCPU index and the guest RIP, when set. Off by default;
    /// when off it costs nothing. With a hook, the vCPU executes one instruction per step.
    /// </summary>
    public Action<int, ulong>? TraceHook { get; init; }
}

/// <summary>Where the guest's time comes from on an interpreter partition with emulated interrupt controllers.</summary>
public enum InterpreterClock
{
    /// <summary>
    /// Guest time follows the host's monotonic clock from the vCPU's first run. A halted vCPU sleeps on the host
    /// until its next timer is due or a device raises an interrupt. Guest timeouts match wall-clock time, which
    /// is what guests that use the network, disks or a console need.
    /// </summary>
    Host,

    /// <summary>
    /// Deterministic time: it advances by <see cref="InterpreterOptions.InstructionsPerSecond"/> per retired
    /// instruction and jumps straight to the next timer deadline while the guest halts. The same guest and
    /// inputs see the same times on every run; an idle guest's time runs ahead of the host's, so its
    /// timeouts expire early in wall-clock terms.
    /// </summary>
    Virtual,
}
