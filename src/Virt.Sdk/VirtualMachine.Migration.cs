using Virt.Cpu;
using Virt.Snapshots;

namespace Virt;

/// <summary>Live migration: move a running VM through a stream (a socket to another process or host) with a short pause.</summary>
public sealed partial class VirtualMachine
{
    private int _migrating;

    /// <summary>
    /// Sends this VM to <paramref name="destination"/>, where <see cref="ReceiveMigrationAsync"/> rebuilds it. While
    /// the guest runs, memory is copied in rounds (all of it, then what the guest wrote meanwhile) until little is
    /// left; then the guest is paused, its virtio devices are quiesced (requests they took complete), the last pages
    /// and the machine state are sent, and this VM stays <see cref="VirtualMachineState.Paused"/> with its devices
    /// quiesced: dispose it once the destination runs, or resume it (devices included) if the destination failed. Copying while the guest runs needs <see cref="VirtualMachineBuilder.WithDirtyPageTracking"/>; without it
    /// the guest is paused for the whole copy. See docs/snapshots.md.
    /// </summary>
    /// <param name="destination">A writable stream; nothing else may write to it meanwhile.</param>
    /// <param name="options">Rounds and the size of the last copy; defaults if null.</param>
    /// <param name="cancellationToken">Abandons the migration: the destination is told, and a guest this call paused runs on here.</param>
    /// <returns>What was sent, in how many rounds, and how long the guest was paused.</returns>
    /// <exception cref="InvalidOperationException">The VM is stopped or disposed, or another migration of it is under way.</exception>
    public async Task<MigrationReport> MigrateAsync(Stream destination, MigrationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (!destination.CanWrite)
        {
            throw new ArgumentException("The migration stream must be writable.", nameof(destination));
        }

        ThrowIfDisposed();
        if (State is VirtualMachineState.Stopped)
        {
            throw new InvalidOperationException($"The VM '{Name}' has stopped; there is nothing to migrate. Save a snapshot instead if its state is wanted.");
        }

        if (Interlocked.Exchange(ref _migrating, 1) != 0)
        {
            throw new InvalidOperationException($"The VM '{Name}' is already being migrated.");
        }

        try
        {
            return await MigrationSource.RunAsync(this, _machine, _config, destination, options ?? new MigrationOptions(), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Volatile.Write(ref _migrating, 0);
        }
    }

    /// <summary>
    /// Receives a VM that <see cref="MigrateAsync"/> sends through <paramref name="source"/> and returns it
    /// <see cref="VirtualMachineState.Paused"/> where the sender paused it; <see cref="ResumeAsync"/> runs it on here.
    /// Memory arrives into a temporary file that guest RAM is then mapped from (copy-on-write), so nothing is copied
    /// twice; the file has no name once the VM is built.
    /// </summary>
    /// <param name="source">The stream the sender writes to.</param>
    /// <param name="configure">Adds the host's parts, as for <see cref="RestoreAsync"/>: the same disks, networks and devices in the same order, the serial console's output, the backend.</param>
    /// <param name="cancellationToken">Abandons the receive.</param>
    /// <exception cref="SnapshotFormatException">The stream is not a migration this build reads, is corrupt, or ended early; the message says where.</exception>
    /// <exception cref="InvalidOperationException">The sender abandoned the migration, or the machine does not fit what was configured.</exception>
    public static async Task<VirtualMachine> ReceiveMigrationAsync(Stream source, Func<VirtualMachineBuilder, VirtualMachineBuilder>? configure = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (!source.CanRead)
        {
            throw new ArgumentException("The migration stream must be readable.", nameof(source));
        }

        return await MigrationReceiver.ReceiveAsync(source, configure, cancellationToken).ConfigureAwait(false);
    }
}
