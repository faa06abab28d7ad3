namespace Virt.Devices.Virtio;

/// <summary>
/// A virtio device behind a transport (<see cref="VirtioMmioTransport"/>): what it is, what it offers, its
/// configuration space and what it does with its queues. The transport handles feature negotiation, the
/// status state machine, queue set-up and interrupts.
/// </summary>
/// <remarks>
/// The transport calls these methods from vCPU threads; they must not block. Offsets and lengths passed to
/// the configuration methods are already inside <see cref="ConfigSize"/>.
/// </remarks>
public interface IVirtioDevice
{
    /// <summary>The virtio device type.</summary>
    VirtioDeviceType DeviceType { get; }

    /// <summary>
    /// Device-specific feature bits the device honours. The transport adds <see cref="VirtioFeatures.Version1"/>,
    /// <see cref="VirtioFeatures.RingEventIdx"/> and <see cref="VirtioFeatures.RingIndirectDesc"/>.
    /// </summary>
    ulong DeviceFeatures { get; }

    /// <summary>The largest size of each queue; the count is the number of queues.</summary>
    IReadOnlyList<ushort> QueueMaxSizes { get; }

    /// <summary>Size of the device-specific configuration space in bytes.</summary>
    int ConfigSize { get; }

    /// <summary>Reads <c>data.Length</c> bytes of configuration space at <paramref name="offset"/>.</summary>
    void ReadConfig(int offset, Span<byte> data);

    /// <summary>The driver writes configuration space (most fields are read-only; ignore those writes).</summary>
    void WriteConfig(int offset, ReadOnlySpan<byte> data);

    /// <summary>The driver set DRIVER_OK: start serving the queues in <paramref name="context"/>.</summary>
    void Activate(VirtioDeviceContext context);

    /// <summary>The driver notified queue <paramref name="queueIndex"/> (already checked to exist).</summary>
    void QueueNotified(int queueIndex);

    /// <summary>
    /// The driver reset the device: stop using the queues of the last activation (the context's cancellation
    /// token is already cancelled and its queues already refuse work) and return to the initial state.
    /// </summary>
    void Reset();
}
