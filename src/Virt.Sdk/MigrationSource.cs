using System.Diagnostics;
using Virt.Snapshots;
using Virt.Cpu;

namespace Virt;

/// <summary>The sending side of a migration: rounds of copying while the guest runs, then the pause, the last pages and the state.</summary>
internal static class MigrationSource
{
    public static async Task<MigrationReport> RunAsync(VirtualMachine vm, AssembledMachine machine, bool trackDirtyPages, Stream destination, MigrationOptions options, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxPreCopyRounds, nameof(options));
        ArgumentOutOfRangeException.ThrowIfNegative(options.StopAndCopyPages, nameof(options));
        var clock = Stopwatch.StartNew();
        var sender = new MigrationSender(destination, machine.Memory);
        bool pausedHere = false;
        bool quiesced = false;
        try
        {
            await sender.WriteHeaderAsync(cancellationToken).ConfigureAwait(false);
            var log = trackDirtyPages ? machine.Partition as IDirtyPageLog : null;
            var tracker = new DirtyPageTracker(machine.Memory, log);
            bool preCopy = log is not null && vm.State == VirtualMachineState.Running;
            int rounds = 0;
            ulong[][]? left = null;
            ulong[][]? deviceWritten = null;
            if (preCopy)
            {
                // From here on every written page is logged: the first round sends all of memory, each later round
                // what was written during the one before, until little is left.
                _ = tracker.Collect(null);
                deviceWritten = tracker.NewBitmaps();
                await sender.SendNonZeroPagesAsync(cancellationToken).ConfigureAwait(false);
                rounds++;
                while (vm.State == VirtualMachineState.Running)
                {
                    var dirty = tracker.Collect(deviceWritten);
                    if (DirtyPageTracker.CountPages(dirty) <= options.StopAndCopyPages || rounds >= options.MaxPreCopyRounds)
                    {
                        left = dirty;
                        break;
                    }

                    await sender.SendPagesAsync(dirty, cancellationToken).ConfigureAwait(false);
                    rounds++;
                }
            }

            var pausedAt = clock.Elapsed;
            if (vm.State == VirtualMachineState.Running)
            {
                await vm.PauseAsync(cancellationToken).ConfigureAwait(false);
                pausedHere = vm.State == VirtualMachineState.Paused;
                pausedAt = clock.Elapsed;
            }

            // Requests the devices already took complete (writing guest memory) before the last copy and the state.
            await machine.QuiesceDevicesAsync(cancellationToken).ConfigureAwait(false);
            quiesced = true;
            long pagesBefore = sender.PagesSent;
            if (preCopy)
            {
                // The last copy: what the guest wrote since the last round, what remained from it, and every page a
                // device was given to write during the migration (a device marks a page when it takes it, and may
                // write it after a round read it).
                var last = tracker.Collect(deviceWritten);
                DirtyPageTracker.Merge(last, left!);
                DirtyPageTracker.Merge(last, deviceWritten!);
                await sender.SendPagesAsync(last, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await sender.SendNonZeroPagesAsync(cancellationToken).ConfigureAwait(false);
            }

            rounds++;
            await sender.SendStateAsync(await SaveMachineStateAsync(vm, cancellationToken).ConfigureAwait(false), cancellationToken).ConfigureAwait(false);
            return new MigrationReport
            {
                Rounds = rounds,
                PreCopy = preCopy,
                PagesSent = sender.PagesSent,
                PagesSentPaused = sender.PagesSent - pagesBefore,
                BytesSent = sender.BytesSent,
                Duration = clock.Elapsed,
                Downtime = clock.Elapsed - pausedAt,
            };
        }
        catch (Exception e)
        {
            await sender.TryAbortAsync(e is OperationCanceledException ? "the source cancelled the migration" : $"the source failed: {e.Message}").ConfigureAwait(false);
            if (quiesced)
            {
                machine.ResumeDevices();
            }

            if (pausedHere && vm.State == VirtualMachineState.Paused)
            {
                await vm.ResumeAsync(CancellationToken.None).ConfigureAwait(false);
            }

            throw;
        }
    }

    /// <summary>The machine state without memory, as a snapshot in memory (the pause keeps it consistent).</summary>
    private static async Task<ReadOnlyMemory<byte>> SaveMachineStateAsync(VirtualMachine vm, CancellationToken cancellationToken)
    {
        var buffer = new MemoryStream();
        using (var writer = new SnapshotWriter(buffer, leaveOpen: true))
        {
            await vm.WriteSnapshotAsync(writer, includeMemory: false, quiesceDevices: false, cancellationToken).ConfigureAwait(false);
        }

        return buffer.GetBuffer().AsMemory(0, (int)buffer.Length);
    }
}
