namespace Virt.Devices.Virtio;

/// <summary>
/// A virtio device behind a transport (<see cref="VirtioMmioTransport"/>): what it is, what it offers, its
/// configuration space and what it does with its queues. The transport handles feature negotiation, the
/// status state machine, queue set-up and validation, and interrupts.
/// </summary>
/// <remarks>
/// <para>
/// Most devices derive from <see cref="VirtioDevice"/>, which implements activation, notification and reset with
/// <see cref="VirtqueueWorker"/>s; implement this interface directly only for a device that serves its queues some
/// other way.
/// </para>
/// <para>
/// Threading: the transport calls these methods from vCPU threads, possibly several at once; they must not block
/// (hand I/O to a <see cref="VirtqueueWorker"/>). Offsets and lengths passed to the configuration methods are
/// already inside <see cref="ConfigSize"/>; notified queue indexes already exist.
/// </para>
/// <para>
/// Failures: the guest is hostile. Nothing it does may make a method throw; a device that cannot go on reports it
/// with <see cref="VirtioDeviceContext.Fail"/>. The transport turns an <see cref="InvalidOperationException"/>,
/// <see cref="ArgumentException"/>, <see cref="IOException"/> or <see cref="Virt.Memory.GuestMemoryException"/>
/// out of <see cref="Activate"/> into DEVICE_NEEDS_RESET.
/// </para>
/// <para>
/// Snapshots: the transport saves and restores the virtio state (status, features, queue layouts and how far the
/// device got in each ring). A device with state of its own (configuration the host may change, input held for the
/// guest) also implements <see cref="Virt.Snapshots.IPersistentState"/>; the transport saves it nested in its own
/// section and restores it before re-activating the device. Its <see cref="Virt.Snapshots.IPersistentState.StateName"/>
/// names the device kind (<c>virtio-blk</c>); a restore refuses a snapshot whose device had another name.
/// </para>
/// </remarks>
public interface IVirtioDevice
{
    /// <summary>The virtio device type (the DeviceID register). Ids without a named value can be cast from their number.</summary>
    VirtioDeviceType DeviceType { get; }

    /// <summary>
    /// Device-specific feature bits the device honours. The transport adds <see cref="VirtioFeatures.Version1"/>,
    /// <see cref="VirtioFeatures.RingEventIdx"/> and <see cref="VirtioFeatures.RingIndirectDesc"/>.
    /// </summary>
    ulong DeviceFeatures { get; }

    /// <summary>
    /// The largest size of each queue (powers of two up to <see cref="Virtqueue.MaxQueueSize"/>); the count is the
    /// number of queues. Read once, when the transport is created.
    /// </summary>
    IReadOnlyList<ushort> QueueMaxSizes { get; }

    /// <summary>Size of the device-specific configuration space in bytes (at most 256).</summary>
    int ConfigSize { get; }

    /// <summary>Reads <c>data.Length</c> bytes of configuration space at <paramref name="offset"/>.</summary>
    void ReadConfig(int offset, Span<byte> data);

    /// <summary>The driver writes configuration space (most fields are read-only; ignore those writes).</summary>
    void WriteConfig(int offset, ReadOnlySpan<byte> data);

    /// <summary>
    /// The driver set DRIVER_OK: start serving the queues in <paramref name="context"/>. Buffers may already be
    /// available; serve them without waiting for a notification.
    /// </summary>
    void Activate(VirtioDeviceContext context);

    /// <summary>The driver notified queue <paramref name="queueIndex"/> (already checked to exist) while the device is activated.</summary>
    void QueueNotified(int queueIndex);

    /// <summary>
    /// The driver reset the device: stop using the queues of the last activation (the context's cancellation
    /// token is already cancelled and its queues already refuse work) and return to the initial state.
    /// </summary>
    void Reset();

    /// <summary>
    /// The transport quiesced the device for a snapshot (<see cref="VirtioMmioTransport.QuiesceAsync"/>): its queues
    /// hand out no chain until <see cref="VirtioMmioTransport.Resume"/>, and every chain popped before is completed.
    /// Bring the host side to rest, e.g. flush a disk image to stable storage. Nothing by default.
    /// </summary>
    /// <remarks>
    /// Runs on the thread that saves the snapshot, not on a vCPU thread, and may wait for I/O. An exception fails the
    /// save (the transport stays quiesced until resumed).
    /// </remarks>
    /// <param name="cancellationToken">Cancels the wait.</param>
    ValueTask QuiescedAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
