using Microsoft.Extensions.Logging;
using Virt.Memory;

namespace Virt.Devices.Virtio;

/// <summary>
/// What an activated virtio device works with: its queues, guest memory, the negotiated features, and the
/// ways back to the driver (used-buffer and configuration interrupts, the needs-reset state) and to the host's log.
/// </summary>
/// <remarks>
/// <para>
/// The transport creates one context per activation (the driver setting DRIVER_OK) and hands it to
/// <see cref="IVirtioDevice.Activate"/>. A reset or a device error ends the activation: <see cref="Stopping"/> is
/// cancelled, the queues refuse further work, and the signalling methods do nothing. A later activation brings a
/// new context; never keep using an old one.
/// </para>
/// <para>Threading: every member may be called from any thread, concurrently, and none blocks.</para>
/// <para>Failures: nothing the guest did makes a member throw; only null arguments do.</para>
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001", Justification = "The token source has no timer; devices may still hold its token after a reset, so it is never disposed.")]
public sealed class VirtioDeviceContext
{
    private readonly VirtioMmioTransport _transport;
    private readonly CancellationTokenSource _stopping = new();

    internal VirtioDeviceContext(VirtioMmioTransport transport, IReadOnlyList<Virtqueue> queues, IGuestMemory memory, ulong features, ILogger logger)
    {
        _transport = transport;
        Queues = queues;
        Memory = memory;
        NegotiatedFeatures = features;
        Logger = logger;
    }

    /// <summary>
    /// The device's queues, by index, one per entry of <see cref="IVirtioDevice.QueueMaxSizes"/>. Queues the driver
    /// did not enable have <see cref="Virtqueue.IsReady"/> false and never hand out a chain.
    /// </summary>
    public IReadOnlyList<Virtqueue> Queues { get; }

    /// <summary>
    /// Guest memory. Prefer <see cref="DescriptorChain.Read"/> and <see cref="DescriptorChain.Write"/>, which stay
    /// inside the buffers the driver gave; an address the guest supplied by other means must be checked
    /// (<c>TryRead</c>/<c>TryWrite</c>) before use.
    /// </summary>
    public IGuestMemory Memory { get; }

    /// <summary>The features both sides agreed on (device-specific bits and the transport's).</summary>
    public ulong NegotiatedFeatures { get; }

    /// <summary>Where the device logs (the logger given to the transport).</summary>
    public ILogger Logger { get; }

    /// <summary>Cancelled when the driver resets the device or the device fails (<see cref="Fail"/>); in-flight work should stop.</summary>
    public CancellationToken Stopping => _stopping.Token;

    /// <summary>Whether the driver accepted every feature in <paramref name="bit"/> (a mask).</summary>
    public bool HasFeature(ulong bit) => (NegotiatedFeatures & bit) == bit;

    /// <summary>
    /// Raises the used-buffer interrupt for <paramref name="queue"/> if the driver asked for one (EVENT_IDX or the
    /// NO_INTERRUPT flag decide). Call it after <see cref="Virtqueue.AddUsed"/>, once per batch of completions.
    /// Does nothing once the activation ended.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="queue"/> is null.</exception>
    public void SignalUsed(Virtqueue queue)
    {
        ArgumentNullException.ThrowIfNull(queue);
        if (!_stopping.IsCancellationRequested && queue.NeedsInterrupt())
        {
            _transport.RaiseInterrupt(VirtioMmioRegister.InterruptUsedBuffer);
        }
    }

    /// <summary>
    /// Returns <paramref name="chains"/> to the driver through the used ring, in order, each with its count of bytes
    /// written, and raises the used-buffer interrupt if the driver asked for one: <see cref="Virtqueue.AddUsed"/>
    /// for each and <see cref="SignalUsed"/> in one step, taking the queue's lock once. Completions of an ended activation are dropped.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="queue"/> is null.</exception>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public void CompleteAndSignal(Virtqueue queue, ReadOnlySpan<DescriptorChain> chains, ReadOnlySpan<uint> written)
    {
        ArgumentNullException.ThrowIfNull(queue);
        if (queue.AddUsedAndDecide(chains, written) && !_stopping.IsCancellationRequested)
        {
            _transport.RaiseInterrupt(VirtioMmioRegister.InterruptUsedBuffer);
        }
    }

    /// <summary>
    /// Tells the driver the configuration space changed (bumps the generation, raises the configuration interrupt).
    /// Does nothing once the activation ended.
    /// </summary>
    public void SignalConfigChanged()
    {
        if (!_stopping.IsCancellationRequested)
        {
            _transport.ConfigChanged();
        }
    }

    /// <summary>
    /// Puts the device into DEVICE_NEEDS_RESET and logs <paramref name="reason"/> (a warning, event 4001): for an error
    /// the device cannot recover from without a reset, such as a driver that broke the device's protocol or a bug in
    /// the device. Ends the activation: <see cref="Stopping"/> is cancelled and the driver is told (a configuration
    /// interrupt) that it must reset the device. Only the first failure of an activation is recorded; later calls do
    /// nothing.
    /// </summary>
    /// <remarks>A malformed queue needs no call: the queue fails the device itself.</remarks>
    public void Fail(string reason)
    {
        if (!_stopping.IsCancellationRequested)
        {
            _transport.NeedsReset(reason);
        }
    }

    /// <summary>
    /// Logs a request the device refused because the guest got it wrong while the device keeps running (a debug
    /// message, event 4005), e.g. a sector past the end of the disk answered with an I/O error status, or a
    /// malformed frame dropped. A guest can make many of these; they are logged at debug level only.
    /// </summary>
    public void LogRefusedRequest(string reason) => VirtioLog.RequestRefused(Logger, _transport.Device.DeviceType, reason);

    /// <summary>
    /// Logs a failure of the host resource behind the device (a file, a socket) as a warning, event 4004, with the
    /// exception. The device then reports the failure to the driver the way its protocol says (an I/O error status);
    /// it is no reason to <see cref="Fail"/>.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="exception"/> is null.</exception>
    public void LogHostIoFailure(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        VirtioLog.HostIoFailed(Logger, _transport.Device.DeviceType, exception.Message, exception);
    }

    internal void StopAfterError()
    {
        _stopping.Cancel();

        // The device stops serving; a quiesce must not wait for chains it will never complete.
        foreach (var q in Queues)
        {
            q.Abandon();
        }
    }

    internal void Stop()
    {
        _stopping.Cancel();
        foreach (var q in Queues)
        {
            q.Deactivate();
        }
    }
}
