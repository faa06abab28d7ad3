namespace Virt.Devices.Virtio;

/// <summary>
/// A base for virtio devices that serve their queues off the vCPU thread. It implements the activation,
/// notification and reset half of <see cref="IVirtioDevice"/>: it keeps the current <see cref="VirtioDeviceContext"/>,
/// runs one <see cref="VirtqueueWorker"/> per registered drain function, kicks a worker when the driver notifies one
/// of its queues and kicks every worker on activation. A device says what it is (type, features, queues,
/// configuration space) and how to drain its queues.
/// </summary>
/// <remarks>
/// <para>
/// Register drain functions with <see cref="AddWorker"/> in the constructor. A drain function receives the context
/// of the activation it serves; it should pop every chain its queue holds, complete each with
/// <see cref="Virtqueue.AddUsed"/>, call <see cref="VirtioDeviceContext.SignalUsed"/>, and stop when
/// <see cref="VirtioDeviceContext.Stopping"/> is cancelled.
/// </para>
/// <para>
/// Threading: the transport calls <see cref="Activate"/>, <see cref="QueueNotified"/> and <see cref="Reset"/> on
/// vCPU threads; they only record the context and kick workers, and never block. Drain functions run on the
/// thread pool, each never concurrently with itself. <see cref="OnActivated"/> and <see cref="OnReset"/> run on the
/// vCPU thread and must not block either.
/// </para>
/// <para>
/// Failures: a malformed queue fails the device inside <see cref="Virtqueue.TryPop"/>; a drain function that throws
/// (other than <see cref="OperationCanceledException"/>) is a device bug and puts the device into DEVICE_NEEDS_RESET
/// with the exception's message. Neither reaches the vCPU thread. A device that must react to notifications inline
/// or otherwise differently implements <see cref="IVirtioDevice"/> directly, with a <see cref="VirtqueueWorker"/>
/// of its own.
/// </para>
/// </remarks>
public abstract class VirtioDevice : IVirtioDevice
{
    private readonly Lock _sync = new();
    private VirtqueueWorker[] _workers = [];
    private VirtqueueWorker?[] _workerByQueue = [];
    private VirtioDeviceContext? _context;
    private bool _activated;

    /// <inheritdoc />
    public abstract VirtioDeviceType DeviceType { get; }

    /// <summary>Device-specific feature bits the device honours; none unless overridden.</summary>
    public virtual ulong DeviceFeatures => 0;

    /// <inheritdoc />
    public abstract IReadOnlyList<ushort> QueueMaxSizes { get; }

    /// <summary>Size of the device-specific configuration space in bytes; 0 (none) unless overridden.</summary>
    public virtual int ConfigSize => 0;

    /// <summary>
    /// The driver reads configuration space; <paramref name="offset"/> and <c>data.Length</c> are already inside
    /// <see cref="ConfigSize"/>. Reads zeroes unless overridden. Called on a vCPU thread: must not block or throw.
    /// </summary>
    public virtual void ReadConfig(int offset, Span<byte> data) => data.Clear();

    /// <summary>
    /// The driver writes configuration space; <paramref name="offset"/> and <c>data.Length</c> are already inside
    /// <see cref="ConfigSize"/>. Ignores the write unless overridden (most fields are read-only). Called on a vCPU
    /// thread: must not block or throw.
    /// </summary>
    public virtual void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        // No writable configuration field.
    }

    /// <summary>
    /// The current activation's context, or null while the device is not activated (before DRIVER_OK, after a
    /// reset). Read it once and use that value: it changes under a running drain when the driver resets the device.
    /// </summary>
    protected VirtioDeviceContext? Context => Volatile.Read(ref _context);

    /// <summary>
    /// The driver set DRIVER_OK: records <paramref name="context"/>, calls <see cref="OnActivated"/>, then kicks every
    /// worker so buffers the driver made available before the activation are served.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="context"/> is null.</exception>
    public void Activate(VirtioDeviceContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        VirtqueueWorker[] workers;
        lock (_sync)
        {
            _activated = true;
            workers = _workers;
        }

        Volatile.Write(ref _context, context);
        OnActivated(context);
        foreach (var worker in workers)
        {
            worker.Kick();
        }
    }

    /// <summary>
    /// The driver notified queue <paramref name="queueIndex"/>: kicks the worker registered for it. Notifications of
    /// a queue without a worker are ignored. Never blocks.
    /// </summary>
    public void QueueNotified(int queueIndex)
    {
        var byQueue = Volatile.Read(ref _workerByQueue);
        if ((uint)queueIndex < (uint)byQueue.Length && byQueue[queueIndex] is { } worker)
        {
            OnQueueNotified(queueIndex, worker);
        }
    }

    /// <summary>
    /// The driver notified queue <paramref name="queueIndex"/>, served by <paramref name="worker"/>: kicks the worker
    /// unless overridden. A device may serve cheap requests here, on the notifying (vCPU) thread, when the host
    /// resource behind them cannot make it wait long: take the worker with <see cref="VirtqueueWorker.TryEnterInline"/>
    /// (kick it instead when that fails), serve, and give it back with <see cref="VirtqueueWorker.ExitInline"/>,
    /// asking for a drain when requests are left. Must not throw and must not block for long.
    /// </summary>
    /// <param name="queueIndex">The queue the driver notified.</param>
    /// <param name="worker">The worker registered for the queue.</param>
    protected virtual void OnQueueNotified(int queueIndex, VirtqueueWorker worker)
    {
        ArgumentNullException.ThrowIfNull(worker);
        worker.Kick();
    }

    /// <summary>
    /// The driver reset the device: forgets the context (its token is already cancelled and its queues already
    /// refuse work, so running drains wind down) and calls <see cref="OnReset"/>.
    /// </summary>
    public void Reset()
    {
        Volatile.Write(ref _context, null);
        OnReset();
    }

    /// <summary>
    /// Registers <paramref name="drain"/> to run on its own <see cref="VirtqueueWorker"/>, kicked on every activation
    /// and whenever the driver notifies one of <paramref name="queueIndexes"/>. The drain runs only while the device
    /// is activated and receives that activation's context. Kick the returned worker for work that does not start
    /// with a notification (host input arriving for the guest).
    /// </summary>
    /// <param name="drain">Serves the queues; runs on the thread pool, never concurrently with itself.</param>
    /// <param name="queueIndexes">The queues whose notifications kick this worker; none for a worker only the device kicks.</param>
    /// <returns>The worker.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="drain"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A queue index is negative.</exception>
    /// <exception cref="ArgumentException">A queue already has a worker.</exception>
    /// <exception cref="InvalidOperationException">The device was already activated; register workers in the constructor.</exception>
    protected VirtqueueWorker AddWorker(Func<VirtioDeviceContext, Task> drain, params ReadOnlySpan<int> queueIndexes)
    {
        ArgumentNullException.ThrowIfNull(drain);
        var worker = new VirtqueueWorker(
            () => Context is { } context ? drain(context) : Task.CompletedTask,
            e => Context?.Fail($"internal error: {e.GetType().Name}: {e.Message}"));
        lock (_sync)
        {
            if (_activated)
            {
                throw new InvalidOperationException("Workers must be added before the device is first activated; add them in the constructor.");
            }

            var byQueue = (VirtqueueWorker?[])_workerByQueue.Clone();
            foreach (int index in queueIndexes)
            {
                ArgumentOutOfRangeException.ThrowIfNegative(index, nameof(queueIndexes));
                if (index < byQueue.Length && byQueue[index] is not null)
                {
                    throw new ArgumentException($"Queue {index} already has a worker.", nameof(queueIndexes));
                }

                if (index >= byQueue.Length)
                {
                    Array.Resize(ref byQueue, index + 1);
                }

                byQueue[index] = worker;
            }

            _workers = [.. _workers, worker];
            Volatile.Write(ref _workerByQueue, byQueue);
        }

        return worker;
    }

    /// <summary>
    /// The transport quiesced the device for a snapshot: no worker takes a new chain until it resumes, and every chain
    /// taken before is completed. Override to bring host-side state to rest (flush a disk image); nothing by default.
    /// Runs on the thread saving the snapshot and may wait for I/O.
    /// </summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    public virtual ValueTask QuiescedAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    /// <summary>
    /// Called on activation, after <see cref="Context"/> is set and before the workers are kicked: start what the
    /// device needs besides its workers (a reader of host input). Runs on a vCPU thread and must not block. An
    /// <see cref="InvalidOperationException"/>, <see cref="ArgumentException"/>, <see cref="IOException"/> or
    /// <see cref="Virt.Memory.GuestMemoryException"/> thrown here puts the device into DEVICE_NEEDS_RESET.
    /// </summary>
    protected virtual void OnActivated(VirtioDeviceContext context)
    {
    }

    /// <summary>
    /// Called on reset, after <see cref="Context"/> became null: return device state to what the driver expects of a
    /// reset device. Runs on a vCPU thread and must not block for long.
    /// </summary>
    protected virtual void OnReset()
    {
    }
}
