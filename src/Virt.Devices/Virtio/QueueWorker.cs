namespace Virt.Devices.Virtio;

/// <summary>
/// Runs a device's queue-draining function on the thread pool, at most one instance at a time, and again if
/// it was kicked while running. Queue notifications arrive on vCPU threads, which must never wait for I/O.
/// </summary>
internal sealed class QueueWorker
{
    private const int Idle = 0;
    private const int Running = 1;
    private const int RunningAndKicked = 2;

    private readonly Func<Task> _drain;
    private readonly Action<Exception> _onError;
    private int _state;

    public QueueWorker(Func<Task> drain, Action<Exception> onError)
    {
        _drain = drain;
        _onError = onError;
    }

    /// <summary>Whether a drain is running or scheduled.</summary>
    public bool IsBusy => Volatile.Read(ref _state) != Idle;

    /// <summary>Makes sure the drain function runs after this call.</summary>
    public void Kick()
    {
        while (true)
        {
            int state = Volatile.Read(ref _state);
            if (state == RunningAndKicked)
            {
                return;
            }

            if (Interlocked.CompareExchange(ref _state, state + 1, state) == state)
            {
                if (state == Idle)
                {
                    _ = Task.Run(RunAsync);
                }

                return;
            }
        }
    }

    private async Task RunAsync()
    {
        while (true)
        {
            try
            {
                await _drain().ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // The device was reset; the next activation starts a fresh drain.
            }
#pragma warning disable CA1031 // A device bug must not take down the process from a thread-pool thread; it is reported instead.
            catch (Exception e)
#pragma warning restore CA1031
            {
                _onError(e);
            }

            if (Interlocked.CompareExchange(ref _state, Idle, Running) == Running)
            {
                return;
            }

            Volatile.Write(ref _state, Running);
        }
    }
}
