using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Orleans;
using Orleans.Runtime;
using Virt.Boot;

namespace Virt.Orleans;

/// <summary>The grain's machine work: build, restore, run, save, observe the guest, and the console.</summary>
internal sealed partial class VirtualMachineGrain
{
    /// <summary>The machine's disks: brought to the last snapshot's (or stop's) contents, with fresh layers for the guest's writes.</summary>
    private GrainDiskSet _disks = GrainDiskSet.Empty;

    /// <summary>A new machine from the spec (a snapshot spec: restored from its file, paused), over its disks as of the last snapshot or stop.</summary>
    private async Task<VirtualMachine> BuildAsync(VirtualMachineSpec spec, CancellationToken cancellationToken)
    {
        _disks = await GrainDiskSet.OpenAsync(spec, Record.DiskGeneration, cancellationToken);
        try
        {
            return await BuildMachineAsync(spec, cancellationToken);
        }
        catch
        {
            await _disks.DetachAsync();
            _disks = GrainDiskSet.Empty;
            throw;
        }
    }

    private async Task<VirtualMachine> BuildMachineAsync(VirtualMachineSpec spec, CancellationToken cancellationToken)
    {
        if (spec.SnapshotPath is { } snapshot)
        {
            return await VirtualMachine.RestoreAsync(snapshot, b => RestoreParts(spec, b), cancellationToken);
        }

        var builder = VirtualMachine.CreateBuilder()
            .WithName(Name)
            .WithMemoryMiB(spec.MemoryMiB)
            .WithVcpus(spec.VcpuCount)
            .WithBackend(MachineParts.ToKind(spec.Backend))
            .WithLogging(_loggerFactory);
        if (spec.DebugExit)
        {
            builder = builder.WithDebugExit();
        }

        if (spec.DirtyPageTracking)
        {
            builder = builder.WithDirtyPageTracking();
        }

        if (spec.FlatImage is { } image)
        {
            ulong entry = spec.EntryPoint == 0 ? spec.LoadAddress : spec.EntryPoint;
            builder = builder.WithFlatBinary(image, new GuestAddress(spec.LoadAddress)).WithEntryPoint(new GuestAddress(entry), StartMode.Long64);
        }
        else if (spec.KernelPath is { } kernel)
        {
            builder = builder.WithLinuxKernel(kernel);
            if (spec.InitrdPath is { } initrd)
            {
                builder = builder.WithInitrd(initrd);
            }

            if (spec.KernelCommandLine is { } commandLine)
            {
                builder = builder.WithKernelCommandLine(commandLine);
            }
        }

        return HostParts(spec, builder).Build();
    }

    private VirtualMachineBuilder RestoreParts(VirtualMachineSpec spec, VirtualMachineBuilder builder) =>
        MachineParts.Restore(spec, builder, _options, _loggerFactory, _console, _disks);

    private VirtualMachineBuilder HostParts(VirtualMachineSpec spec, VirtualMachineBuilder builder) =>
        MachineParts.Host(spec, builder, _options, _console, _disks);

    private async Task RestoreFromStoreAsync(VirtualMachineSpec spec, string reference, CancellationToken cancellationToken)
    {
        long started = Stopwatch.GetTimestamp();
        string path = await Store.GetLocalPathAsync(reference, cancellationToken);
        _disks = await GrainDiskSet.OpenAsync(spec, Record.DiskGeneration, cancellationToken);
        try
        {
            SetVm(await VirtualMachine.RestoreAsync(path, b => RestoreParts(spec, b), cancellationToken), spec);
        }
        catch
        {
            await _disks.DetachAsync();
            _disks = GrainDiskSet.Empty;
            throw;
        }

        _lastRestore = Stopwatch.GetElapsedTime(started);
        _restored = true;
        Record.Restores++;
        LogRestored(_logger, Name, reference, _lastRestore.TotalMilliseconds);
    }

    /// <summary>Starts a created VM or resumes a paused one, and keeps the grain from being collected while the guest runs.</summary>
    private async Task RunAsync(CancellationToken cancellationToken)
    {
        var vm = _vm ?? throw new InvalidOperationException($"The VM '{Name}' has no machine on this silo.");
        if (vm.State == VirtualMachineState.Created)
        {
            await vm.StartAsync(cancellationToken);
        }
        else if (vm.State != VirtualMachineState.Running)
        {
            await vm.ResumeAsync(cancellationToken);
        }

        if (_runningSince < 0)
        {
            _runningSince = Stopwatch.GetTimestamp();
        }

        // A running guest is work in progress, not an idle grain: idle collection would pause it until the next call.
        DelayDeactivation(Timeout.InfiniteTimeSpan);
    }

    /// <summary>
    /// Saves the VM to the store (pausing a running guest for the save; resuming it afterwards if <paramref name="resume"/>),
    /// records the new reference and the disk layers that belong to it, commits those layers into the disk images
    /// (still paused; with <paramref name="resume"/>, new layers take the writes from here on), then deletes the
    /// previous snapshot.
    /// </summary>
    private async Task SaveCoreAsync(bool resume, CancellationToken cancellationToken)
    {
        var vm = _vm ?? throw new InvalidOperationException($"The VM '{Name}' has no machine on this silo.");
        long started = Stopwatch.GetTimestamp();
        bool paused = false;
        if (vm.State == VirtualMachineState.Running)
        {
            await vm.PauseAsync(cancellationToken);
            paused = true;
        }

        bool disksSettled = true;
        try
        {
            long length = 0;
            string reference = await Store.SaveAsync(
                Name,
                async (stream, ct) =>
                {
                    await vm.SaveSnapshotAsync(stream, ct);
                    length = stream.Length;
                },
                cancellationToken);
            string? previous = Record.SnapshotReference;
            Record.SnapshotReference = reference;
            Record.SnapshotSavedAt = DateTimeOffset.UtcNow;
            Record.SnapshotsSaved++;
            Record.LastSnapshotBytes = length;
            Record.LastSaveDuration = Stopwatch.GetElapsedTime(started);
            long layers = Record.DiskGeneration + 1;
            if (_disks.Disks.Count > 0)
            {
                Record.DiskGeneration = layers;
            }

            await WriteRecordAsync(cancellationToken);
            if (_disks.Disks.Count > 0)
            {
                // The record names the snapshot and its layers: from here a lost silo replays this commit.
                disksSettled = false;
                try
                {
                    await _disks.CommitAsync(resume ? layers + 1 : 0, cancellationToken);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    _failure = $"The disks could not be brought to the snapshot just saved ({ex.Message}); the VM stays paused, and its next activation replays the commit.";
                    throw;
                }

                disksSettled = true;
                Record.LastSaveDuration = Stopwatch.GetElapsedTime(started);
            }

            if (previous is not null)
            {
                await Store.DeleteAsync(previous, cancellationToken);
            }
        }
        finally
        {
            if (paused && resume && disksSettled)
            {
                await vm.ResumeAsync(CancellationToken.None);
            }
        }
    }

    /// <summary>Notices a guest that stopped by itself (an exit port, a fault) and records it.</summary>
    private async Task ObserveAsync(CancellationToken cancellationToken)
    {
        await ReclaimAbandonedHandoffAsync(cancellationToken);
        if (_vm?.Exit is { } exit && Record.State is not VirtualMachineGrainState.Stopped)
        {
            Record.State = VirtualMachineGrainState.Stopped;
            Record.ExitDescription = exit.Description;
            Record.ExitCode = exit.ExitCode;
            StopRunningClock();
            DelayDeactivation(TimeSpan.Zero);
            await DropSnapshotAsync(cancellationToken);
            await WriteRecordAsync(cancellationToken);
        }
    }

    private async Task DropSnapshotAsync(CancellationToken cancellationToken)
    {
        if (Record.SnapshotReference is { } reference)
        {
            Record.SnapshotReference = null;
            Record.SnapshotSavedAt = null;
            await WriteRecordAsync(cancellationToken);
            await Store.DeleteAsync(reference, cancellationToken);
        }
    }

    private Task WriteRecordAsync(CancellationToken cancellationToken)
    {
        (Record.ConsoleTail, Record.ConsoleEnd) = _console.Snapshot();
        return _record.WriteStateAsync(cancellationToken);
    }

    /// <summary>Takes <paramref name="vm"/> as the grain's machine and counts it against the silo's capacity.</summary>
    private void SetVm(VirtualMachine vm, VirtualMachineSpec spec)
    {
        _vm = vm;
        _local.Add(Name, new VirtualMachineDemand((long)vm.Memory.TotalSize, vm.VcpuCount, spec.KernelPath is not null, spec.Backend == VirtualMachineBackend.Kvm));
    }

    /// <summary>
    /// Releases the machine of a VM that is over (stopped, deleted) and commits its disks' layers into the images, as
    /// a powered-off machine's disk keeps its writes; the record first names the layers, so a lost silo replays the commit.
    /// </summary>
    private async Task DisposeVmKeepingDisksAsync(CancellationToken cancellationToken)
    {
        var disks = _disks;
        if (_vm is null || disks.Disks.Count == 0)
        {
            await DisposeVmAsync();
            return;
        }

        long layers = Record.DiskGeneration + 1;
        Record.DiskGeneration = layers;
        await WriteRecordAsync(cancellationToken);
        await DisposeVmAsync();
        foreach (var disk in disks.Disks)
        {
            await disk.RecoverAsync(layers, cancellationToken);
        }
    }

    private async Task DisposeVmAsync()
    {
        StopRunningClock();
        _handoff = null;
        if (_vm is { } vm)
        {
            _vm = null;
            _local.Remove(Name);
            await vm.DisposeAsync();
        }

        // The machine disposed its disks (their layers are closed); a set never handed to a machine is closed here.
        await _disks.DetachAsync();
        _disks = GrainDiskSet.Empty;
    }

    private void StopRunningClock()
    {
        if (_runningSince >= 0)
        {
            _running += Stopwatch.GetElapsedTime(_runningSince);
            _runningSince = -1;
        }
    }

    private VirtualMachineSpec RequireSpec() =>
        Record.Spec is { } spec && Record.State != VirtualMachineGrainState.NotCreated
            ? spec
            : throw new InvalidOperationException($"There is no VM named '{Name}'; create it first (CreateAsync).");

    private VirtualMachine RequireVm()
    {
        RequireSpec();
        if (_failure is not null)
        {
            throw new InvalidOperationException($"{_failure} StartAsync boots it afresh from its spec; DeleteAsync removes it.");
        }

        return _vm ?? throw new InvalidOperationException($"The VM '{Name}' is {Record.State}; start it (StartAsync) first.");
    }

    private VirtualMachineStatus Status() => new()
    {
        Name = Name,
        State = _failure is not null ? VirtualMachineGrainState.Failed : Record.State,
        Silo = _silo.SiloAddress,
        Backend = _vm?.BackendSelection.Name,
        ExitDescription = _failure ?? Record.ExitDescription,
        ExitCode = Record.ExitCode,
        SnapshotReference = Record.SnapshotReference,
        SnapshotSavedAt = Record.SnapshotSavedAt,
        Restored = _restored,
    };

    private async Task<long> WriteConsoleCoreAsync(byte[] input, CancellationToken cancellationToken)
    {
        var vm = RequireVm();
        if (vm.State != VirtualMachineState.Running)
        {
            throw new InvalidOperationException($"The VM '{Name}' is {Record.State}; console input waits for a running guest to read it, so resume or start it first.");
        }

        long offset = _console.End;
        await vm.WriteToSerialConsoleAsync(input, cancellationToken);
        return offset;
    }

    private async Task<ConsoleOutput> WaitForConsoleCoreAsync(string text, long offset, TimeSpan timeout, CancellationToken cancellationToken)
    {
        byte[] needle = System.Text.Encoding.UTF8.GetBytes(text);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        while (true)
        {
            var written = _console.NextWrite;
            long end = _console.Find(needle, offset);
            if (end >= 0)
            {
                return _console.Read(offset, (int)Math.Min(end - Math.Max(offset, _console.End - _options.ConsoleBufferBytes), int.MaxValue));
            }

            var exited = _vm?.WaitForExitAsync(deadline.Token) ?? Task.FromException(new InvalidOperationException($"The VM '{Name}' has no machine on this silo."));
            try
            {
                var first = await Task.WhenAny(written, exited).WaitAsync(deadline.Token);
                if (first == exited && !written.IsCompleted && _console.Find(needle, offset) < 0)
                {
                    await exited; // a failed wait surfaces its exception
                    throw new InvalidOperationException($"The VM '{Name}' stopped ({_vm?.Exit?.Description}) before '{text}' appeared on its console.");
                }
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                var seen = _console.Read(offset, 4096);
                throw new TimeoutException($"'{text}' did not appear on the console of '{Name}' within {timeout}; output since offset {offset}: \"{seen.Text}\"");
            }
        }
    }

    [LoggerMessage(1, LogLevel.Information, "VM {Name} restored from snapshot {Reference} in {Milliseconds:F1} ms")]
    private static partial void LogRestored(ILogger logger, string name, string reference, double milliseconds);

    [LoggerMessage(2, LogLevel.Warning, "VM {Name} had no snapshot; it was built afresh from its spec")]
    private static partial void LogRebuiltWithoutSnapshot(ILogger logger, string name);

    [LoggerMessage(3, LogLevel.Error, "VM {Name} could not be restored or built on activation")]
    private static partial void LogActivationFailed(ILogger logger, Exception exception, string name);

    [LoggerMessage(4, LogLevel.Information, "VM {Name} saved on deactivation ({Reason})")]
    private static partial void LogSavedOnDeactivation(ILogger logger, string name, string reason);

    [LoggerMessage(5, LogLevel.Error, "VM {Name} could not be saved on deactivation; it will come back from {Reference}")]
    private static partial void LogSaveOnDeactivationFailed(ILogger logger, Exception exception, string name, string reference);

    [LoggerMessage(6, LogLevel.Information, "VM {Name} moving from {From} to {To} ({How})")]
    private static partial void LogMoving(ILogger logger, string name, SiloAddress from, SiloAddress to, string how);
}
