using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.DependencyInjection;
using Orleans;
using Orleans.Concurrency;
using Orleans.Runtime;
using Virt.Sandbox;

namespace Virt.Orleans;

/// <summary>
/// The sandbox service: runs a program from the silos' sandbox pools (see
/// <see cref="global::Orleans.Hosting.VirtualMachineGrainSiloBuilderExtensions.AddSandboxService"/>) on any silo. A stateless
/// worker: each silo serves calls itself, from its own pool; when its pool and queue are full it passes the call to
/// another silo with room, and when every silo is full the call is refused with a <see cref="ClusterCapacityException"/>
/// (back-pressure: the caller retries later or sheds the work). Any key works; calls through different keys spread
/// over a client's gateways.
/// </summary>
public interface ISandboxGrain : IGrainWithIntegerKey
{
    /// <summary>Runs <see cref="SandboxRequest.Program"/> once with the request's input and limits.</summary>
    /// <exception cref="ArgumentException">No silo pool has the program, or a limit is out of range; the message says which.</exception>
    /// <exception cref="ClusterCapacityException">Every silo's pool for the program is busy and its queue full.</exception>
    Task<SandboxResponse> RunAsync(SandboxRequest request, CancellationToken cancellationToken = default);
}

/// <summary>One call to the sandbox service.</summary>
[GenerateSerializer, Immutable]
public sealed record SandboxRequest
{
    /// <summary>The program's name, as the silos registered it (<see cref="SandboxServiceOptions.AddProgram"/>).</summary>
    [Id(0)]
    public required string Program { get; init; }

    /// <summary>The program's standard input (at most <see cref="SandboxServiceOptions.MaxInputBytes"/>).</summary>
    [Id(1)]
    public byte[] Stdin { get; init; } = [];

    /// <summary>Wall time for this call's run (not counting time waiting for a sandbox); null: the pool's limit. At most <see cref="SandboxServiceOptions.MaxTimeLimit"/>.</summary>
    [Id(2)]
    public TimeSpan? TimeLimit { get; init; }

    /// <summary>The most bytes of standard output and of standard error returned to the caller (each); null: all of it. The program's own output limit still applies.</summary>
    [Id(3)]
    public int? MaxOutputBytes { get; init; }
}

/// <summary>How a sandbox call ended (the counterpart of <see cref="SandboxStatus"/>, one for one).</summary>
[GenerateSerializer]
public enum SandboxCallStatus
{
    /// <summary>The program exited; see <see cref="SandboxResponse.ExitCode"/>.</summary>
    Exited = (int)SandboxStatus.Exited,

    /// <summary>The program ended by a signal.</summary>
    Signaled = (int)SandboxStatus.Signaled,

    /// <summary>The pool's or the call's time limit ran out.</summary>
    TimeLimitExceeded = (int)SandboxStatus.TimeLimitExceeded,

    /// <summary>Guest RAM was used up.</summary>
    MemoryLimitExceeded = (int)SandboxStatus.MemoryLimitExceeded,

    /// <summary>The program's output limit was reached.</summary>
    OutputLimitExceeded = (int)SandboxStatus.OutputLimitExceeded,

    /// <summary>Too many system calls.</summary>
    SyscallLimitExceeded = (int)SandboxStatus.SyscallLimitExceeded,

    /// <summary>The program tried something the policy forbids.</summary>
    ForbiddenOperation = (int)SandboxStatus.ForbiddenOperation,

    /// <summary>The program raised a CPU exception.</summary>
    GuestFault = (int)SandboxStatus.GuestFault,

    /// <summary>The backend could not continue the guest.</summary>
    BackendFailure = (int)SandboxStatus.BackendFailure,

    /// <summary>The caller cancelled the call.</summary>
    Cancelled = (int)SandboxStatus.Cancelled,
}

/// <summary>The result of a sandbox call, and where it ran.</summary>
[GenerateSerializer, Immutable]
public sealed record SandboxResponse
{
    /// <summary>How the run ended.</summary>
    [Id(0)]
    public required SandboxCallStatus Status { get; init; }

    /// <summary>The exit code (for <see cref="SandboxCallStatus.Exited"/>), otherwise -1.</summary>
    [Id(1)]
    public int ExitCode { get; init; } = -1;

    /// <summary>Standard output (cut at <see cref="SandboxRequest.MaxOutputBytes"/>).</summary>
    [Id(2)]
    public byte[] Stdout { get; init; } = [];

    /// <summary>Standard error (cut at <see cref="SandboxRequest.MaxOutputBytes"/>).</summary>
    [Id(3)]
    public byte[] Stderr { get; init; } = [];

    /// <summary>Whether output was cut to the call's limit.</summary>
    [Id(4)]
    public bool OutputTruncated { get; init; }

    /// <summary>What went wrong, for statuses other than <see cref="SandboxCallStatus.Exited"/>.</summary>
    [Id(5)]
    public string? Message { get; init; }

    /// <summary>The silo whose pool ran the call.</summary>
    [Id(6)]
    public required SiloAddress Silo { get; init; }

    /// <summary>How long the call waited for a free sandbox.</summary>
    [Id(7)]
    public TimeSpan QueueTime { get; init; }

    /// <summary>How long the program ran.</summary>
    [Id(8)]
    public TimeSpan RunTime { get; init; }

    /// <summary><see cref="Stdout"/> as UTF-8 text.</summary>
    public string StdoutText => System.Text.Encoding.UTF8.GetString(Stdout);
}

/// <summary>The silo's sandbox pools (<see cref="global::Orleans.Hosting.VirtualMachineGrainSiloBuilderExtensions.AddSandboxService"/>).</summary>
public sealed class SandboxServiceOptions
{
    private readonly Dictionary<string, (SandboxBuilder Builder, int PoolSize)> _programs = new(StringComparer.Ordinal);

    /// <summary>Calls a silo admits beyond its pool's size, per program, to wait for a sandbox; further calls go to other silos or are refused. Default 16.</summary>
    public int MaxWaitingCalls { get; set; } = 16;

    /// <summary>The longest <see cref="SandboxRequest.TimeLimit"/> a call may ask for. Default 30 s.</summary>
    public TimeSpan MaxTimeLimit { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>The most standard input a call may carry. Default 1 MiB.</summary>
    public int MaxInputBytes { get; set; } = 1 << 20;

    /// <summary>The programs registered so far, with their pool sizes.</summary>
    public IReadOnlyDictionary<string, int> Programs => _programs.ToDictionary(p => p.Key, p => p.Value.PoolSize, StringComparer.Ordinal);

    /// <summary>
    /// Registers a program under <paramref name="name"/>: the silo keeps <paramref name="poolSize"/> sandboxes built from
    /// <paramref name="builder"/> (created and warmed up at the first call), each reset to its snapshot between calls.
    /// </summary>
    public SandboxServiceOptions AddProgram(string name, SandboxBuilder builder, int poolSize)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentOutOfRangeException.ThrowIfLessThan(poolSize, 1);
        _programs[name] = (builder, poolSize);
        return this;
    }

    internal IReadOnlyDictionary<string, (SandboxBuilder Builder, int PoolSize)> Registered => _programs;
}

/// <summary>
/// The silo's pools, one per program: admission (pool size plus waiting calls), then a free sandbox, then the run
/// under the call's limits.
/// </summary>
internal sealed class LocalSandboxPools : IDisposable
{
    private readonly Dictionary<string, ProgramPool> _pools;
    private readonly SandboxServiceOptions _options;
    private readonly ILocalSiloDetails _silo;

    public LocalSandboxPools(Microsoft.Extensions.Options.IOptions<SandboxServiceOptions> options, ILocalSiloDetails silo)
    {
        _options = options.Value;
        _silo = silo;
        _pools = _options.Registered.ToDictionary(p => p.Key, p => new ProgramPool(p.Value.Builder, p.Value.PoolSize), StringComparer.Ordinal);
    }

    public (int Slots, int Busy, int Waiting) Usage()
    {
        int slots = 0, busy = 0, waiting = 0;
        foreach (var pool in _pools.Values)
        {
            slots += pool.Size;
            int admitted = Volatile.Read(ref pool.Admitted);
            busy += Math.Min(admitted, pool.Size);
            waiting += Math.Max(0, admitted - pool.Size);
        }

        return (slots, busy, waiting);
    }

    /// <summary>Starts the call if the program's pool admits it; false when the pool and its queue are full.</summary>
    /// <exception cref="ArgumentException">The program is unknown here or a limit is out of range.</exception>
    public bool TryRun(SandboxRequest request, CancellationToken cancellationToken, out Task<SandboxResponse> run)
    {
        var pool = Validate(request);
        if (Interlocked.Increment(ref pool.Admitted) > pool.Size + _options.MaxWaitingCalls)
        {
            Interlocked.Decrement(ref pool.Admitted);
            run = Task.FromResult<SandboxResponse>(null!);
            return false;
        }

        run = RunAdmittedAsync(pool, request, cancellationToken);
        return true;
    }

    public bool HasProgram(string program) => _pools.ContainsKey(program);

    private ProgramPool Validate(SandboxRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (!_pools.TryGetValue(request.Program ?? "", out var pool))
        {
            throw new ArgumentException($"The silo {_silo.SiloAddress} has no sandbox program '{request.Program}'; it has: {string.Join(", ", _pools.Keys.Order(StringComparer.Ordinal))}.");
        }

        if (request.TimeLimit is { } limit && (limit <= TimeSpan.Zero || limit > _options.MaxTimeLimit))
        {
            throw new ArgumentException($"TimeLimit must be positive and at most {_options.MaxTimeLimit}; it is {limit}.");
        }

        if (request.MaxOutputBytes is < 0)
        {
            throw new ArgumentException($"MaxOutputBytes must not be negative; it is {request.MaxOutputBytes}.");
        }

        if ((request.Stdin?.Length ?? 0) > _options.MaxInputBytes)
        {
            throw new ArgumentException($"The call's input is {request.Stdin!.Length} bytes; the service takes at most {_options.MaxInputBytes}.");
        }

        return pool;
    }

    private async Task<SandboxResponse> RunAdmittedAsync(ProgramPool pool, SandboxRequest request, CancellationToken cancellationToken)
    {
        long queued = Stopwatch.GetTimestamp();
        try
        {
            var sandboxes = await pool.GetAsync(cancellationToken).ConfigureAwait(false);
            await pool.Free.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                var queueTime = Stopwatch.GetElapsedTime(queued);
                using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                if (request.TimeLimit is { } timeLimit)
                {
                    limit.CancelAfter(timeLimit);
                }

                long started = Stopwatch.GetTimestamp();
                var result = await sandboxes.RunAsync(request.Stdin ?? [], limit.Token).ConfigureAwait(false);
                var status = result.Status == SandboxStatus.Cancelled && !cancellationToken.IsCancellationRequested
                    ? SandboxCallStatus.TimeLimitExceeded
                    : (SandboxCallStatus)result.Status;
                int max = request.MaxOutputBytes ?? int.MaxValue;
                bool truncated = result.Stdout.Length > max || result.Stderr.Length > max;
                return new SandboxResponse
                {
                    Status = status,
                    ExitCode = result.ExitCode,
                    Stdout = result.Stdout[..Math.Min(max, result.Stdout.Length)].ToArray(),
                    Stderr = result.Stderr[..Math.Min(max, result.Stderr.Length)].ToArray(),
                    OutputTruncated = truncated,
                    Message = status == SandboxCallStatus.TimeLimitExceeded && result.Status == SandboxStatus.Cancelled
                        ? $"The call's time limit of {request.TimeLimit} ran out."
                        : result.Message,
                    Silo = _silo.SiloAddress,
                    QueueTime = queueTime,
                    RunTime = Stopwatch.GetElapsedTime(started),
                };
            }
            finally
            {
                pool.Free.Release();
            }
        }
        finally
        {
            Interlocked.Decrement(ref pool.Admitted);
        }
    }

    public void Dispose()
    {
        foreach (var pool in _pools.Values)
        {
            pool.Dispose();
        }
    }

    [SuppressMessage("Design", "CA1051:Do not declare visible instance fields", Justification = "A counter updated with Interlocked, private to the pools.")]
    private sealed class ProgramPool(SandboxBuilder builder, int size) : IDisposable
    {
        private readonly SemaphoreSlim _create = new(1);
        private SandboxPool? _pool;
        public int Admitted;

        public int Size { get; } = size;

        public SemaphoreSlim Free { get; } = new(size);

        public async Task<SandboxPool> GetAsync(CancellationToken cancellationToken)
        {
            if (Volatile.Read(ref _pool) is { } ready)
            {
                return ready;
            }

            await _create.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                return _pool ??= await SandboxPool.CreateAsync(builder, Size, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _create.Release();
            }
        }

        public void Dispose()
        {
            // Disposing a sandbox stops its vCPU thread after the current call; it completes synchronously.
            _pool?.DisposeAsync().AsTask().GetAwaiter().GetResult();
            _create.Dispose();
            Free.Dispose();
        }
    }
}

/// <summary>The sandbox service's grain: one reentrant activation per silo serves every call that reaches the silo.</summary>
[StatelessWorker(1)]
[Reentrant]
[SuppressMessage("Reliability", "CA2007:Consider calling ConfigureAwait on the awaited task", Justification = "Grain code must continue on the grain's scheduler.")]
internal sealed class SandboxGrain(IServiceProvider services, ClusterCapacityView view, ILocalSiloDetails silo) : Grain, ISandboxGrain
{
    public async Task<SandboxResponse> RunAsync(SandboxRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var here = silo.SiloAddress;
        var pools = services.GetService<LocalSandboxPools>();
        if (pools is not null && pools.HasProgram(request.Program) && pools.TryRun(request, cancellationToken, out var run))
        {
            return await run;
        }

        // Full here (or no pool): the other silos, the least busy first. Each admits or refuses at once.
        var others = view.Silos
            .Where(s => !s.Silo.Equals(here) && s.SandboxSlots > 0)
            .OrderBy(s => s.SandboxesBusy + s.SandboxCallsWaiting - s.SandboxSlots)
            .ToList();
        int full = pools is not null && pools.HasProgram(request.Program) ? 1 : 0;
        foreach (var other in others)
        {
            try
            {
                return await GrainFactory.GetGrain<IVirtualMachineHostInternalGrain>(other.Silo.ToParsableString()).RunSandboxAsync(request, cancellationToken);
            }
            catch (ClusterCapacityException)
            {
                full++;
            }
            catch (ArgumentException) when (!string.IsNullOrEmpty(request.Program))
            {
                // That silo has no pool for the program; another may.
            }
        }

        if (full == 0)
        {
            throw new ArgumentException($"No silo runs a sandbox pool for '{request.Program}' ({others.Count + 1} silos asked).");
        }

        throw new ClusterCapacityException(
            $"Every sandbox pool for '{request.Program}' is busy and its queue full ({full} silos asked); retry later.");
    }
}
