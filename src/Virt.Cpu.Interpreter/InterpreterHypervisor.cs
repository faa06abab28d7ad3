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
    public IPartition CreatePartition(IGuestMemory memory, PartitionOptions options)
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
    /// advances at this rate of host time; with them (<see cref="PartitionOptions.InterruptController"/>) time
    /// is virtual and deterministic: it advances by <see cref="InstructionsPerSecond"/> per retired
    /// instruction and jumps to the next timer deadline while the guest halts.
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
    /// How many instructions make one second of virtual time when the partition emulates interrupt
    /// controllers. The default, 100 million, is close to the interpreter's own speed, so guest time
    /// and host time roughly agree. At most <see cref="TscFrequency"/>.
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
