using Virt.Cpu;
using Virt.Snapshots;

namespace Virt;

/// <summary>Snapshots: save a paused VM to a file, restore it (in this process or another, on this backend or another).</summary>
public sealed partial class VirtualMachine
{
    private bool _restoredNotStarted;

    /// <summary>
    /// Saves the whole VM to <paramref name="path"/>: every vCPU's state, the interrupt controllers and clock, every
    /// device's state and guest memory (zero pages as holes). The VM must be paused (or created, or stopped); it stays
    /// as it is. Virtio devices are quiesced first (requests they already took complete, disk images are flushed) and
    /// resume when the snapshot is written, or failed. The file is written next to <paramref name="path"/> first and moved into place when complete, so a
    /// crash never leaves half a snapshot under that name. See docs/snapshots.md.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM is running: pause it first.</exception>
    public async Task SaveSnapshotAsync(string path, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string partial = path + ".partial";
        try
        {
            RequireSnapshotState(); // before the file is created; checked again under the lock
            using (var writer = SnapshotWriter.Create(partial))
            {
                await WriteSnapshotAsync(writer, includeMemory: true, quiesceDevices: true, cancellationToken).ConfigureAwait(false);
            }

            File.Move(partial, path, overwrite: true);
        }
        catch
        {
            File.Delete(partial);
            throw;
        }
    }

    /// <summary>Saves the whole VM to <paramref name="destination"/>, a seekable, writable stream (see <see cref="SaveSnapshotAsync(string, CancellationToken)"/>).</summary>
    /// <exception cref="InvalidOperationException">The VM is running: pause it first.</exception>
    /// <exception cref="ArgumentException">The stream cannot seek or write.</exception>
    public async Task SaveSnapshotAsync(Stream destination, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        RequireSnapshotState(); // before the writer empties the stream; checked again under the lock
        using var writer = new SnapshotWriter(destination, leaveOpen: true);
        await WriteSnapshotAsync(writer, includeMemory: true, quiesceDevices: true, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes the machine into <paramref name="writer"/> and completes it, under the lifecycle lock so the VM cannot
    /// start meanwhile; with <paramref name="quiesceDevices"/> the devices finish the requests they took first and
    /// resume afterwards (a migration quiesces them itself, before its last copy of memory).
    /// </summary>
    internal async Task WriteSnapshotAsync(SnapshotWriter writer, bool includeMemory, bool quiesceDevices, CancellationToken cancellationToken)
    {
        await EnterLifecycleAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            RequireSnapshotState();
            if (quiesceDevices)
            {
                await _machine.QuiesceDevicesAsync(cancellationToken).ConfigureAwait(false);
            }

            try
            {
                MachineSnapshot.Write(writer, _config, _machine, BackendSelection, includeMemory);
                writer.Complete();
            }
            finally
            {
                if (quiesceDevices)
                {
                    _machine.ResumeDevices();
                }
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Restores the VM saved in <paramref name="path"/>. It comes back <see cref="VirtualMachineState.Paused"/>, exactly
    /// where it was: <see cref="ResumeAsync"/> (or <see cref="StartAsync"/>, or <see cref="RunAsync"/>) continues it.
    /// Guest memory is mapped copy-on-write from the file and read only as the guest touches it, so a restore costs no
    /// more than the pages the guest uses, and VMs restored from one file share the pages none of them wrote.
    /// </summary>
    /// <param name="path">The snapshot file.</param>
    /// <param name="configure">
    /// Adds what lives on the host and is not in a snapshot, in the order the original VM added it: the serial console's
    /// output, disks (<c>WithVirtioBlock</c>: the same image, or an overlay of the same base), networks
    /// (<c>WithVirtioNet</c>), your own devices; and may choose the backend (by default the kind it was saved on). The machine's shape (memory, vCPUs,
    /// controllers, where each device sits) comes from the snapshot and is checked against what you add.
    /// </param>
    /// <param name="cancellationToken">Cancels the restore.</param>
    /// <exception cref="FileNotFoundException">There is no file at <paramref name="path"/>.</exception>
    /// <exception cref="SnapshotFormatException">
    /// The file is not a snapshot this build reads, a section is corrupt, or a device's saved state does not fit the
    /// device configured for it (a disk of another size, a NIC with another MAC address); the message names the section and field.
    /// </exception>
    /// <exception cref="InvalidOperationException">
    /// The snapshot does not fit what was configured (a missing or different device) or the
    /// backend (a CPUID feature the guest was offered that this backend does not offer); the message says what differs.
    /// </exception>
    public static async Task<VirtualMachine> RestoreAsync(string path, Func<VirtualMachineBuilder, VirtualMachineBuilder>? configure = null, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return await MachineSnapshot.RestoreFileAsync(path, configure, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Builds the machine a snapshot describes around the caller's host parts and loads its state; the VM comes back paused.</summary>
    internal static async Task<VirtualMachine> RestoreCoreAsync(SnapshotSource source, Func<VirtualMachineBuilder, VirtualMachineBuilder>? configure, CancellationToken cancellationToken)
    {
        var vm = await BuildForRestoreAsync(source, configure, cancellationToken).ConfigureAwait(false);
        await vm.FinishRestoreAsync(source.Reader, cancellationToken).ConfigureAwait(false);
        return vm;
    }

    /// <summary>
    /// Builds the machine <paramref name="source"/> describes around the caller's host parts and checks they fit, without
    /// loading any state: <see cref="FinishRestoreAsync"/> does that (a migration builds the machine while pages still arrive).
    /// </summary>
    internal static async Task<VirtualMachine> BuildForRestoreAsync(SnapshotSource source, Func<VirtualMachineBuilder, VirtualMachineBuilder>? configure, CancellationToken cancellationToken)
    {
        var builder = new VirtualMachineBuilder(MachineSnapshot.BaseConfiguration(source.Description));
        builder = configure?.Invoke(builder) ?? builder;
        var config = MachineSnapshot.Reconcile(builder.Configuration, source.Description) with { Restore = source };
        var vm = VirtualMachineBuilder.BuildFrom(config);
        try
        {
            MachineSnapshot.CheckDevices(source.Description, vm._machine);
            MachineSnapshot.CheckCpuid(source.Description, vm._machine, vm.BackendSelection);
            cancellationToken.ThrowIfCancellationRequested();
            return vm;
        }
        catch
        {
            await vm.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>For a machine <see cref="BuildForRestoreAsync"/> built: runs the load of a state once on its own, so the real one is quick (see <see cref="MachineSnapshot.RehearseRestore"/>).</summary>
    internal void RehearseRestore() => MachineSnapshot.RehearseRestore(_config, _machine, BackendSelection);

    /// <summary>Loads the partition, device and vCPU state in <paramref name="reader"/> into a machine <see cref="BuildForRestoreAsync"/> built; it is disposed if that fails, and otherwise comes back paused.</summary>
    internal async Task FinishRestoreAsync(SnapshotReader reader, CancellationToken cancellationToken)
    {
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            MachineSnapshot.Restore(reader, _machine, BackendSelection);
            _restoredNotStarted = true;
            SetState(VirtualMachineState.Paused);
        }
        catch
        {
            await DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private void RequireSnapshotState()
    {
        ThrowIfDisposed();
        if (State == VirtualMachineState.Running)
        {
            throw new InvalidOperationException($"The VM '{Name}' is running; pause it (PauseAsync) or stop it before saving a snapshot.");
        }
    }
}
