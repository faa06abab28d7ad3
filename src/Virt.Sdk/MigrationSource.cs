using System.Diagnostics;
using Virt.Snapshots;
using Virt.Cpu;

namespace Virt;

/// <summary>The sending side of a migration: rounds of copying while the guest runs, then the pause, the last pages and the state.</summary>
internal static class MigrationSource
{
    public static async Task<MigrationReport> RunAsync(VirtualMachine vm, AssembledMachine machine, VirtualMachineConfiguration config, Stream destination, MigrationOptions options, CancellationToken cancellationToken)
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
            var log = config.TrackDirtyPages ? machine.Partition as IDirtyPageLog : null;
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
                // The receiver builds the machine first, while this side fills the stream with the first round, so it
                // has only the state to load once the guest is paused.
                await sender.SendMachineAsync(DescribeMachine(vm, machine, config), cancellationToken).ConfigureAwait(false);
                await sender.SendNonZeroPagesAsync(cancellationToken).ConfigureAwait(false);
                rounds++;
                while (vm.State == VirtualMachineState.Running)
                {
                    // At least one round of written pages goes while the guest runs, even a small one: what the guest
                    // wrote during the long first round is sent then, and the paused copy runs code that has run before.
                    var dirty = tracker.Collect(deviceWritten);
                    if ((DirtyPageTracker.CountPages(dirty) <= options.StopAndCopyPages && rounds >= 2) || rounds >= options.MaxPreCopyRounds)
                    {
                        left = dirty;
                        break;
                    }

                    await sender.SendPagesAsync(dirty, cancellationToken).ConfigureAwait(false);
                    rounds++;
                }
            }

            PrepareStateSave(machine);
            var pausedAt = clock.Elapsed;
            if (vm.State == VirtualMachineState.Running)
            {
                await vm.PauseAsync(cancellationToken).ConfigureAwait(false);
                pausedHere = vm.State == VirtualMachineState.Paused;
            }

            var parked = clock.Elapsed;

            // Requests the devices already took complete (writing guest memory) before the last copy and the state.
            await machine.QuiesceDevicesAsync(cancellationToken).ConfigureAwait(false);
            quiesced = true;
            var atRest = clock.Elapsed;
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
                await sender.SendMachineAsync(DescribeMachine(vm, machine, config), cancellationToken).ConfigureAwait(false);
            }

            rounds++;
            var pagesSent = clock.Elapsed;
            var state = await SaveMachineStateAsync(vm, cancellationToken).ConfigureAwait(false);
            var saved = clock.Elapsed;
            await sender.SendStateAsync(state, cancellationToken).ConfigureAwait(false);
            var end = clock.Elapsed;
            return new MigrationReport
            {
                Rounds = rounds,
                PreCopy = preCopy,
                PagesSent = sender.PagesSent,
                ZeroPagesSent = sender.ZeroPagesSent,
                PagesSentPaused = sender.PagesSent - pagesBefore,
                BytesSent = sender.BytesSent,
                Duration = end,
                Downtime = end - pausedAt,
                DowntimeSteps = new MigrationDowntime
                {
                    Pause = parked - pausedAt,
                    Quiesce = atRest - parked,
                    LastPages = pagesSent - atRest,
                    SaveState = saved - pagesSent,
                    SendState = end - saved,
                },
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

    /// <summary>
    /// Compiles the code that saves this machine's state (each component's <c>SaveState</c>, the vCPUs' <c>GetState</c>,
    /// the vCPU codec) before the guest is paused, so the pause does not wait for the JIT in a process that never saved
    /// a state. Nothing is run: the methods are only prepared, which is safe while the guest runs.
    /// </summary>
    private static void PrepareStateSave(AssembledMachine machine)
    {
        foreach (var component in machine.Partition.PersistentState.Concat(machine.PersistentDevices))
        {
            Prepare(component.GetType(), typeof(IPersistentState), nameof(IPersistentState.SaveState));
        }

        foreach (var type in machine.Vcpus.Select(v => v.GetType()).Distinct())
        {
            Prepare(type, typeof(IVirtualCpu), nameof(IVirtualCpu.GetState));
        }

        PrepareStatic(typeof(VcpuStateCodec), nameof(VcpuStateCodec.Write));
        PrepareStatic(typeof(MachineSnapshot), nameof(MachineSnapshot.Write));

        static void Prepare(Type type, Type contract, string name)
        {
            var map = type.GetInterfaceMap(contract);
            for (int i = 0; i < map.InterfaceMethods.Length; i++)
            {
                if (map.InterfaceMethods[i].Name == name)
                {
                    PrepareMethod(map.TargetMethods[i]);
                }
            }
        }

        static void PrepareStatic(Type type, string name)
        {
            foreach (var method in type.GetMethods(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static).Where(m => m.Name == name))
            {
                PrepareMethod(method);
            }
        }

        static void PrepareMethod(System.Reflection.MethodInfo method)
        {
            try
            {
                System.Runtime.CompilerServices.RuntimeHelpers.PrepareMethod(method.MethodHandle);
            }
            catch (Exception e) when (e is ArgumentException or NotSupportedException)
            {
                // A method that cannot be prepared on its own (generic, abstract) is compiled at its first call as usual.
            }
        }
    }

    /// <summary>A snapshot holding only the machine's description, which does not change while the guest runs.</summary>
    private static ReadOnlyMemory<byte> DescribeMachine(VirtualMachine vm, AssembledMachine machine, VirtualMachineConfiguration config)
    {
        var buffer = new MemoryStream();
        using (var writer = new SnapshotWriter(buffer, leaveOpen: true))
        {
            MachineSnapshot.WriteDescription(writer, config, machine, vm.BackendSelection);
            writer.Complete();
        }

        return buffer.GetBuffer().AsMemory(0, (int)buffer.Length);
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
