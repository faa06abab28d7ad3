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
    /// <remarks>
    /// The first backend created in a process starts the interpreter's one-time preparation on background threads:
    /// its hot paths are compiled, and, with the JIT tier on, the tier's compiler compiles a first block. Starting it
    /// here, when a machine's backend is chosen, lets it overlap the rest of the machine's set-up (devices, memory,
    /// images) instead of the guest's first instructions.
    /// </remarks>
    public InterpreterHypervisor(InterpreterOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        Options = options;
        HotPaths.Start();
        if (options.EnableJit && Jit.JitTier.Supported && options.JitThreshold > 0)
        {
            Jit.JitCompilerThread.Start();
        }
    }

    /// <summary>The options every partition of this backend uses.</summary>
    public InterpreterOptions Options { get; }

    /// <inheritdoc />
    public string Name => "interpreter";

    /// <inheritdoc />
    public HypervisorAvailability GetAvailability() =>
        HypervisorAvailability.Available(!Options.EnableJit
            ? "x86-64 interpreter (software, runs on every host; JIT tier off by option)"
            : Jit.JitTier.Supported
                ? "x86-64 interpreter (software, runs on every host) with a JIT tier (hot blocks compiled by the .NET JIT)"
                : "x86-64 interpreter (software, runs on every host; JIT tier off: this runtime cannot compile dynamic code)");

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

    /// <summary>
    /// Whether hot guest code is compiled: blocks the interpreter has run <see cref="JitThreshold"/> times are
    /// translated to IL on a background thread and compiled by the .NET JIT, then run in place of the interpreter.
    /// On by default. Where the runtime cannot compile dynamic code (NativeAOT) the interpreter runs alone whatever
    /// this says, and <see cref="InterpreterHypervisor.GetAvailability"/> says so. Instruction counts, the budget,
    /// exceptions and exits are the same either way. The environment variable <c>VIRT_INTERPRETER_JIT=0</c> makes
    /// the default <see langword="false"/>, for programs that do not set the option themselves.
    /// </summary>
    public bool EnableJit { get; init; } = Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT") != "0";

    /// <summary>
    /// How many interpreted executions make a block hot enough to compile; 50 by default (the environment variable
    /// <c>VIRT_INTERPRETER_JIT_THRESHOLD</c> sets another default). 0 compiles every block on its first execution,
    /// on the vCPU's thread (for tests: every block then runs compiled code).
    /// </summary>
    public int JitThreshold
    {
        get;
        init
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            field = value;
        }
    } = int.TryParse(Environment.GetEnvironmentVariable("VIRT_INTERPRETER_JIT_THRESHOLD"), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int threshold)
        ? threshold : 50;
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
