using System.Diagnostics;

namespace Virt.Devices.Virtio;

/// <summary>
/// Runs a device's queue-draining function on the thread pool, one run at a time, and runs it again when it was
/// kicked while running. Queue notifications arrive on vCPU threads, which must never wait for I/O: a device kicks
/// its worker there and does the work in the drain function.
/// </summary>
/// <remarks>
/// <para>
/// Threading: <see cref="Kick"/> and <see cref="IsBusy"/> may be called from any thread, concurrently; neither
/// blocks. The drain function never runs concurrently with itself, so it may use the queues it serves without a
/// lock of its own. It should take everything the queue holds before returning: a kick that arrives while it runs
/// makes it run once more, not once per kick.
/// </para>
/// <para>
/// Failures: an <see cref="OperationCanceledException"/> out of the drain function (a reset cancelled the
/// activation) ends the run quietly. Any other exception is a device bug; it goes to the error callback on the
/// thread-pool thread (put the device into DEVICE_NEEDS_RESET there, see <see cref="VirtioDeviceContext.Fail"/>),
/// never to the vCPU thread or the process. An exception thrown by the error callback itself is not caught.
/// </para>
/// <para>
/// Adaptive polling: a kick that arrives soon after the previous drain ended (within 32 µs) tells the worker that
/// requests come in quick succession, and the next drain is followed by a short spin that watches for the next kick
/// instead of handing the work to a fresh thread-pool thread (a wake-up costs several microseconds, more than a small request on a fast file). The spin window starts
/// at 4 µs, doubles with every kick it would have caught, up to the maximum, and drops to nothing after a kick that
/// came later than the maximum, so an idle or slow device never spins.
/// </para>
/// <para>
/// Inline service: a device may serve a queue on the notifying thread instead, holding the worker with
/// <see cref="TryEnterInline"/> and <see cref="ExitInline"/> so that a drain never runs at the same time; requests it
/// cannot serve there it leaves in the queue and lets the worker take.
/// </para>
/// <para><see cref="VirtioDevice"/> creates and kicks workers for its queues; use this class directly only when
/// implementing <see cref="IVirtioDevice"/> by hand.</para>
/// </remarks>
public sealed class VirtqueueWorker
{
    private const int Idle = 0;
    private const int Running = 1;
    private const int RunningAndKicked = 2;

    /// <summary>The longest spin after a drain, in microseconds.</summary>
    internal const int MaxPollMicroseconds = 32;

    private const int FirstPollMicroseconds = 4;
    private static readonly long MaxPollTicks = Stopwatch.Frequency * MaxPollMicroseconds / 1_000_000;
    private static readonly long FirstPollTicks = Stopwatch.Frequency * FirstPollMicroseconds / 1_000_000;

    private readonly Func<Task> _drain;
    private readonly Action<Exception> _onError;
    private int _state;
    private long _pollTicks;
    private long _idleSince;

    /// <summary>Creates an idle worker; nothing runs until the first <see cref="Kick"/>.</summary>
    /// <param name="drain">Serves everything the device's queues hold, then returns. Runs on the thread pool.</param>
    /// <param name="onError">Receives an exception <paramref name="drain"/> threw, other than cancellation.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public VirtqueueWorker(Func<Task> drain, Action<Exception> onError)
    {
        ArgumentNullException.ThrowIfNull(drain);
        ArgumentNullException.ThrowIfNull(onError);
        _drain = drain;
        _onError = onError;
    }

    /// <summary>Whether a drain is running or scheduled (for orderly shutdown and tests).</summary>
    public bool IsBusy => Volatile.Read(ref _state) != Idle;

    /// <summary>
    /// Makes sure the drain function starts after this call: schedules it on the thread pool when idle, or marks
    /// the running drain to run once more. Returns at once; safe on a vCPU thread.
    /// </summary>
    public void Kick()
    {
        // A full fence first: the caller's stores that published the work (a driver's available index, written on this
        // vCPU thread just before its notification) must be visible to every thread before the state is read. Without
        // it the read below may complete while those stores still wait in this CPU's store buffer; when it finds a kick
        // already pending, the drain that consumes that kick can then look at the queue, find it empty, and go idle
        // with the new work left unserved (x86 lets a load pass an earlier store to another location). The drain side
        // is ordered already: it writes the state, then takes the queue's lock (a full fence) before reading the ring.
        Interlocked.MemoryBarrier();
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
                    Adapt(Stopwatch.GetTimestamp() - Volatile.Read(ref _idleSince));
                    _ = Task.Run(RunAsync);
                }

                return;
            }
        }
    }

    /// <summary>
    /// Takes the worker for the calling thread, so it can serve the worker's queues itself (a device that answers
    /// cheap requests on the notifying thread). Succeeds only when no drain is running or scheduled; while taken, no
    /// drain starts, and a <see cref="Kick"/> is remembered until <see cref="ExitInline"/>. Returns false, changing
    /// nothing, when a drain is running or scheduled (kick the worker instead). Never blocks.
    /// </summary>
    /// <returns>Whether the caller now holds the worker and must call <see cref="ExitInline"/>.</returns>
    public bool TryEnterInline() => Interlocked.CompareExchange(ref _state, Running, Idle) == Idle;

    /// <summary>
    /// Gives back the worker taken with <see cref="TryEnterInline"/>. When it was kicked meanwhile, or when
    /// <paramref name="kick"/> is true (the caller left work in the queue), the drain function is scheduled on the
    /// thread pool. Never blocks.
    /// </summary>
    /// <param name="kick">Whether to schedule a drain in any case.</param>
    public void ExitInline(bool kick)
    {
        if (!kick && Interlocked.CompareExchange(ref _state, Idle, Running) == Running)
        {
            return;
        }

        // Kicked while held, or asked to: the hold becomes a scheduled drain.
        Volatile.Write(ref _state, Running);
        _ = Task.Run(RunAsync);
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
            {
                try
                {
                    _onError(e);
                }
                catch (Exception)
                {
                    // Documented: the worker outlives a faulty error callback.
                }
            }
#pragma warning restore CA1031

            if (Poll())
            {
                Volatile.Write(ref _state, Running);
                continue;
            }

            Volatile.Write(ref _idleSince, Stopwatch.GetTimestamp());
            if (Interlocked.CompareExchange(ref _state, Idle, Running) == Running)
            {
                return;
            }

            Volatile.Write(ref _state, Running);
        }
    }

    /// <summary>Grows the spin window after a kick that came within the maximum of the last drain, drops it otherwise.</summary>
    private void Adapt(long gap)
    {
        long window = Volatile.Read(ref _pollTicks);
        Volatile.Write(ref _pollTicks, gap > MaxPollTicks ? 0 : Math.Clamp(window * 2, FirstPollTicks, MaxPollTicks));
    }

    /// <summary>Spins for up to the current window; true when a kick arrived meanwhile (without a window, the caller's compare-and-exchange sees one).</summary>
    private bool Poll()
    {
        long window = Volatile.Read(ref _pollTicks);
        if (window == 0)
        {
            return false;
        }

        long deadline = Stopwatch.GetTimestamp() + window;
        var spin = default(SpinWait);
        do
        {
            if (Volatile.Read(ref _state) == RunningAndKicked)
            {
                return true;
            }

            spin.SpinOnce(sleep1Threshold: -1);
        }
        while (Stopwatch.GetTimestamp() < deadline);

        return Volatile.Read(ref _state) == RunningAndKicked;
    }
}
