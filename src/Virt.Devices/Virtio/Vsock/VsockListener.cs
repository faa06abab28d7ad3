namespace Virt.Devices.Virtio;

/// <summary>
/// Connections that guest programs open to one host vsock port (<c>connect()</c> to CID 2, that port), from
/// <see cref="VirtioVsockDevice.Listen"/>. Dispose it to stop listening; connections not yet accepted are reset.
/// </summary>
/// <remarks>
/// Up to 128 connections wait to be accepted; the guest's further connection requests are refused (RST) until
/// <see cref="AcceptAsync"/> takes some. Thread-safe.
/// </remarks>
public sealed class VsockListener : IDisposable
{
    private readonly VsockMultiplexer _mux;

    internal VsockListener(VsockMultiplexer mux, uint port)
    {
        _mux = mux;
        Port = port;
    }

    /// <summary>The host port listened on.</summary>
    public uint Port { get; }

    // Guarded by the multiplexer's lock.
    internal Queue<VsockConnection> Backlog { get; } = new();

    internal AsyncGate Arrived { get; } = new();

    internal bool Stopped { get; set; }

    /// <summary>Waits for the next connection from the guest.</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The connection, already established.</returns>
    /// <exception cref="ObjectDisposedException">The listener was disposed.</exception>
    public ValueTask<VsockStream> AcceptAsync(CancellationToken cancellationToken = default) => _mux.AcceptAsync(this, cancellationToken);

    /// <summary>Stops listening: later guest connections to the port are refused, waiting ones reset.</summary>
    public void Dispose() => _mux.StopListening(this);
}
