using Microsoft.Extensions.Logging;
using Virt.Devices;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Snapshots;

namespace Virt.Testing.Virtio;

/// <summary>Saving a transport's state and restoring it into a new transport over the same guest memory.</summary>
public static class VirtioSnapshots
{
    /// <summary>
    /// Quiesces <paramref name="transport"/> and returns its saved state. The transport stays quiesced, as the source
    /// of a snapshot whose machine goes on elsewhere: it serves nothing more unless resumed.
    /// </summary>
    public static async Task<byte[]> QuiesceAndSaveAsync(VirtioMmioTransport transport, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(transport);
        await transport.QuiesceAsync(cancellationToken).ConfigureAwait(false);
        return Save(transport);
    }

    /// <summary>Returns the state <paramref name="transport"/> writes now.</summary>
    public static byte[] Save(VirtioMmioTransport transport)
    {
        ArgumentNullException.ThrowIfNull(transport);
        var writer = new StateWriter();
        transport.SaveState(writer);
        return writer.WrittenMemory.ToArray();
    }

    /// <summary>Puts <paramref name="device"/> behind a new transport over <paramref name="memory"/> and restores <paramref name="state"/> into it.</summary>
    /// <exception cref="SnapshotFormatException">The state is refused.</exception>
    public static VirtioMmioTransport Restore(IVirtioDevice device, IGuestMemory memory, byte[] state, IInterruptLine? interrupt = null, ILogger? logger = null)
    {
        var transport = new VirtioMmioTransport(device, memory, interrupt ?? new RecordingInterruptLine(), logger);
        var reader = new StateReader(state, transport.StateName);
        transport.RestoreState(ref reader, transport.StateVersion);
        return transport;
    }
}
