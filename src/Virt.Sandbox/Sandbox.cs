using System.Collections.Concurrent;
using Virt.Cpu;
using Virt.Sandbox.Loader;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox;

/// <summary>
/// Runs one untrusted static Linux executable in a micro-VM. Calls are served one at a time on the
/// sandbox's own vCPU thread; use <see cref="SandboxPool"/> for concurrency. With snapshot reset (the
/// default) the first run stops at the program's ready point, snapshots, and every run starts from there.
/// </summary>
public sealed class Sandbox : IAsyncDisposable, IDisposable
{
    private readonly SandboxConfiguration _config;
    private readonly ElfImage _image;
    private readonly BlockingCollection<Action> _work = [];
    private readonly Thread _thread;
    private SandboxMachine? _machine;
    private int _disposed;

    internal Sandbox(SandboxConfiguration config, ElfImage image)
    {
        _config = config;
        _image = image;
        _thread = new Thread(Worker) { IsBackground = true, Name = "sandbox vCPU" };
        _thread.Start();
    }

    /// <summary>Starts a builder.</summary>
    public static SandboxBuilder CreateBuilder() => new();

    /// <summary>Whether the sandbox holds a snapshot of the program at its ready point (warm).</summary>
    public bool IsWarm => _machine?.HasSnapshot == true;

    /// <summary>The backend that runs the sandbox (<c>kvm</c>, <c>whp</c> or <c>interpreter</c>), once it has run.</summary>
    public string? BackendName => _machine?.BackendName;

    /// <summary>Which backend runs the sandbox and why it was chosen, once it has run.</summary>
    public BackendSelection? BackendSelection { get; private set; }

    /// <summary>What the backend enforces on this host (CPUID policy, state a program can reach), once the sandbox has run.</summary>
    public SandboxIsolation? Isolation => _machine?.Isolation;

    /// <summary>Runs the program with <paramref name="stdin"/> as its standard input.</summary>
    /// <returns>The result; a misbehaving program never throws here, it ends its own run with a status.</returns>
    /// <exception cref="HypervisorException">The backend could not create the VM.</exception>
    /// <exception cref="ObjectDisposedException">The sandbox was disposed.</exception>
    public Task<SandboxResult> RunAsync(ReadOnlyMemory<byte> stdin = default, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (Volatile.Read(ref _stuck))
        {
            return Task.FromResult(StuckResult());
        }

        var tcs = new TaskCompletionSource<SandboxResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        var activity = SandboxTelemetry.StartRun(BackendName);
        _work.Add(() =>
        {
            try
            {
                tcs.SetResult(RunOnThread(stdin, cancellationToken));
            }
#pragma warning disable CA1031 // The exception is handed to the caller's task.
            catch (Exception e)
#pragma warning restore CA1031
            {
                tcs.SetException(e);
                return;
            }

            // Ready the machine for the next call now that the caller has its result.
            _machine?.Park();
        }, CancellationToken.None);
        return Watch(tcs.Task, activity);
    }

    /// <summary>
    /// How long past the time limit a run may take to come back before the sandbox gives up on its backend. The time
    /// limit kicks the vCPU out of the guest; a backend that does not return after that is stuck in the kernel.
    /// </summary>
    private static readonly TimeSpan StuckGrace = TimeSpan.FromSeconds(30);

    private bool _stuck;

    /// <summary>The run's result, or a <see cref="SandboxStatus.BackendFailure"/> when the vCPU thread does not come back.</summary>
    private async Task<SandboxResult> Watch(Task<SandboxResult> run, System.Diagnostics.Activity? activity)
    {
        SandboxResult result;
        try
        {
            result = await run.WaitAsync(_config.TimeLimit + StuckGrace).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            Volatile.Write(ref _stuck, true);
            result = StuckResult();
        }
        catch (Exception e)
        {
            SandboxTelemetry.Failed(activity, e);
            throw;
        }

        SandboxTelemetry.Finished(activity, result);
        return result;
    }

    private SandboxResult StuckResult() => new()
    {
        Status = SandboxStatus.BackendFailure,
        Message = $"The backend did not return from the guest within {StuckGrace.TotalSeconds} s after the {_config.TimeLimit.TotalMilliseconds} ms time limit; its vCPU thread is abandoned and this sandbox refuses further calls. Build a new one.",
        Stdout = ReadOnlyMemory<byte>.Empty,
        Stderr = ReadOnlyMemory<byte>.Empty,
        Usage = new SandboxResourceUsage(_config.TimeLimit + StuckGrace, null, 0, 0, 0),
    };

    /// <summary>Runs the program until its ready point and snapshots it, so the next call is warm. Returns that first run's result.</summary>
    public Task<SandboxResult> WarmUpAsync(CancellationToken cancellationToken = default) => RunAsync(default, cancellationToken);

    private SandboxResult RunOnThread(ReadOnlyMemory<byte> stdin, CancellationToken cancellationToken)
    {
        if (_machine is { CanRunAgain: false })
        {
            _machine.Dispose();
            _machine = null;
        }

        if (_machine is null)
        {
            var selection = ResolveBackend(_config);
            _machine = SandboxMachine.Create(_config, _image, selection.Backend);
            BackendSelection = selection;
        }
        return _machine.Run(stdin, cancellationToken);
    }

    /// <summary>
    /// The backend through Virt.Sdk's selection (<see cref="BackendSelector"/>): the given instance, the requested kind
    /// (which must be available; the exception says why not), or for <see cref="BackendKind.Auto"/> KVM, then WHP, then
    /// the interpreter. A sandbox runs its program at CPL 3, which every KVM runs at native speed.
    /// </summary>
    internal static BackendSelection ResolveBackend(SandboxConfiguration config) => BackendSelector.Select(config.Backend, config.Hypervisor);

    private void Worker()
    {
        foreach (var item in _work.GetConsumingEnumerable())
        {
            item();
        }

        _machine?.Dispose();
        _machine = null;
    }

    /// <summary>Stops the vCPU thread after the current call and releases the VM.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _work.CompleteAdding();
        if (Thread.CurrentThread != _thread)
        {
            // A vCPU thread stuck in the backend (see Watch) is left behind rather than hanging the caller.
            if (!_thread.Join(Volatile.Read(ref _stuck) ? TimeSpan.FromSeconds(1) : Timeout.InfiniteTimeSpan))
            {
                return;
            }
        }

        _work.Dispose();
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}
