using Microsoft.Extensions.Logging;
using Virt.Memory;

namespace Virt.Devices.Virtio;

/// <summary>
/// What an activated virtio device works with: its queues, guest memory, the negotiated features, and the
/// ways back to the driver (used-buffer and configuration interrupts, the needs-reset state).
/// </summary>
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

    /// <summary>The device's queues, by index. Queues the driver did not enable have <see cref="Virtqueue.IsReady"/> false.</summary>
    public IReadOnlyList<Virtqueue> Queues { get; }

    /// <summary>Guest memory.</summary>
    public IGuestMemory Memory { get; }

    /// <summary>The features both sides agreed on.</summary>
    public ulong NegotiatedFeatures { get; }

    /// <summary>Where the device logs.</summary>
    public ILogger Logger { get; }

    /// <summary>Cancelled when the driver resets the device; in-flight work should stop.</summary>
    public CancellationToken Stopping => _stopping.Token;

    /// <summary>Whether the driver accepted feature <paramref name="bit"/> (a mask).</summary>
    public bool HasFeature(ulong bit) => (NegotiatedFeatures & bit) == bit;

    /// <summary>Raises the used-buffer interrupt for <paramref name="queue"/> if the driver asked for one.</summary>
    public void SignalUsed(Virtqueue queue)
    {
        ArgumentNullException.ThrowIfNull(queue);
        if (!_stopping.IsCancellationRequested && queue.NeedsInterrupt())
        {
            _transport.RaiseInterrupt(VirtioMmioRegister.InterruptUsedBuffer);
        }
    }

    /// <summary>Tells the driver the configuration space changed (bumps the generation, raises the interrupt).</summary>
    public void SignalConfigChanged()
    {
        if (!_stopping.IsCancellationRequested)
        {
            _transport.ConfigChanged();
        }
    }

    /// <summary>Puts the device into DEVICE_NEEDS_RESET because of something the driver did wrong, and logs why.</summary>
    public void Fail(string reason)
    {
        if (!_stopping.IsCancellationRequested)
        {
            _transport.NeedsReset(reason);
        }
    }

    internal void StopAfterError() => _stopping.Cancel();

    internal void Stop()
    {
        _stopping.Cancel();
        foreach (var q in Queues)
        {
            q.Deactivate();
        }
    }
}
