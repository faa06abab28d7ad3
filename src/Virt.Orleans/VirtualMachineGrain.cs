using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans;
using Orleans.Runtime;
using Orleans.Runtime.Placement;
using Virt.Boot;

namespace Virt.Orleans;

/// <summary>
/// The VM grain: owns one <see cref="VirtualMachine"/> on the silo it is active on; its small state (spec, snapshot
/// reference, console tail) goes to grain storage, the snapshot's bytes to the <see cref="ISnapshotStore"/>.
/// </summary>
/// <remarks>
/// <see cref="VirtualMachineGrainRecord.State"/> is the state the caller last asked for (or the guest's stop): a
/// save pauses a running guest only for the save, and an activation returns the VM to that state.
/// </remarks>
[SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable", Justification = "The console buffer holds only managed memory; it derives from Stream so the VM's serial console can write to it.")]
[SuppressMessage("Reliability", "CA2007:Consider calling ConfigureAwait on the awaited task", Justification = "Grain code must continue on the grain's scheduler: Orleans runs one turn of a grain at a time there.")]
[SuppressMessage("Maintainability", "CA1506:Avoid excessive class coupling", Justification = "The grain ties one VM to Orleans: its machine, snapshot store, grain state, placement and the silo-to-silo migration meet here.")]
[CapacityPlacement]
internal sealed partial class VirtualMachineGrain : Grain, IVirtualMachineGrain
{
    private const int MaxMemoryRead = 1 << 20;

    private readonly IPersistentState<VirtualMachineGrainRecord> _record;
    private readonly IServiceProvider _services;
    private readonly VirtualMachineGrainOptions _options;
    private readonly IClusterMembershipService _membership;
    private readonly ILocalSiloDetails _silo;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly LocalVirtualMachines _local;
    private readonly ClusterCapacityView _view;
    private ConsoleBuffer _console;
    private VirtualMachine? _vm;
    private bool _restored;
    private string? _failure;
    private TimeSpan _lastRestore;
    private TimeSpan _running;
    private long _runningSince = -1;

    public VirtualMachineGrain(
        [PersistentState("vm", VirtualMachineGrainOptions.StorageName)] IPersistentState<VirtualMachineGrainRecord> record,
        IServiceProvider services,
        IOptions<VirtualMachineGrainOptions> options,
        IClusterMembershipService membership,
        ILocalSiloDetails silo,
        ILoggerFactory loggerFactory,
        LocalVirtualMachines local,
        ClusterCapacityView view)
    {
        _local = local;
        _view = view;
        _record = record;
        _services = services;
        _options = options.Value;
        _membership = membership;
        _silo = silo;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<VirtualMachineGrain>();
        _console = new ConsoleBuffer(_options.ConsoleBufferBytes, [], 0);
    }

    private string Name => this.GetPrimaryKeyString();

    private VirtualMachineGrainRecord Record => _record.State;

    private ISnapshotStore Store => _services.GetService<ISnapshotStore>() ?? throw new InvalidOperationException(
        "No ISnapshotStore is registered on this silo: call AddVirtualMachineFileStorage(directory) on the silo builder, or register an ISnapshotStore service.");

    /// <summary>Brings the VM back: from the last snapshot if there is one, otherwise booted afresh from its spec; then into the state it was last put in.</summary>
    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        var record = Record;
        _console = new ConsoleBuffer(_options.ConsoleBufferBytes, record.ConsoleTail, record.ConsoleEnd);
        if (record.Spec is null || record.State is VirtualMachineGrainState.NotCreated or VirtualMachineGrainState.Stopped or VirtualMachineGrainState.Failed)
        {
            return;
        }

        record.Activations++;
        try
        {
            if (_services.GetService<MigrationListener>()?.Claim(Name) is { } incoming)
            {
                // Moved here live: the machine arrived through the migration listener, paused where the source stopped it.
                incoming.Serial.Target = _console;
                _disks = incoming.Disks;
                await _disks.AttachAsync(record.DiskGeneration + 1);
                SetVm(incoming.Machine, record.Spec);
                _resumedOnArrivalAt = incoming.ResumedAt;
            }
            else if (record.SnapshotReference is { } reference)
            {
                await RestoreFromStoreAsync(record.Spec, reference, cancellationToken);
            }
            else
            {
                // Never saved (a hard failure before the first snapshot): all that is left is the spec.
                SetVm(await BuildAsync(record.Spec, cancellationToken), record.Spec);
                if (record.State == VirtualMachineGrainState.Paused)
                {
                    record.State = record.Spec.SnapshotPath is null ? VirtualMachineGrainState.Created : VirtualMachineGrainState.Paused;
                }

                LogRebuiltWithoutSnapshot(_logger, Name);
            }

            if (record.State == VirtualMachineGrainState.Running)
            {
                await RunAsync(cancellationToken);
            }

            await EndMoveAsync(cancellationToken);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            _failure = $"The VM could not be brought back on this silo: {ex.Message}";
            LogActivationFailed(_logger, ex, Name);
            await DisposeVmAsync();
        }
    }

    /// <summary>Saves a running or paused VM to the store (the grain is going away: a silo shutdown, a move, idle collection), then releases it.</summary>
    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        if (_vm is null)
        {
            return;
        }

        try
        {
            if (_handoff is not null)
            {
                // Moved live: the machine runs on at the target; this paused copy is dropped.
                return;
            }

            if (reason.ReasonCode is DeactivationReasonCode.Migrating or DeactivationReasonCode.ShuttingDown)
            {
                Record.MovePausedAt = Stopwatch.GetTimestamp();
                Record.MoveHost = Environment.MachineName;
                Record.LastMoveLive = false;
            }

            await ObserveAsync(cancellationToken);
            if (_options.SaveOnDeactivation && Record.State is VirtualMachineGrainState.Running or VirtualMachineGrainState.Paused && _vm is not null)
            {
                await SaveCoreAsync(resume: false, cancellationToken);
                LogSavedOnDeactivation(_logger, Name, reason.Description);
            }
            else
            {
                await WriteRecordAsync(cancellationToken);
            }
        }
        catch (Exception ex)
        {
            LogSaveOnDeactivationFailed(_logger, ex, Name, Record.SnapshotReference ?? "(none)");
        }
        finally
        {
            if (_handoff is null && Record.State == VirtualMachineGrainState.Stopped)
            {
                await DisposeVmKeepingDisksAsync(cancellationToken);
            }
            else
            {
                await DisposeVmAsync();
            }
        }
    }

    public async Task<VirtualMachineStatus> CreateAsync(VirtualMachineSpec spec, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Validate();
        await ObserveAsync(cancellationToken);
        if (Record.Spec is { } existing && Record.State != VirtualMachineGrainState.NotCreated)
        {
            if (existing.Equals(spec))
            {
                return Status();
            }

            throw new InvalidOperationException($"A VM named '{Name}' already exists with another spec; delete it (DeleteAsync) before creating another under this name.");
        }

        SetVm(await BuildAsync(spec, cancellationToken), spec);
        _failure = null;
        Record.Spec = spec;
        Record.State = spec.SnapshotPath is null ? VirtualMachineGrainState.Created : VirtualMachineGrainState.Paused;
        Record.ExitDescription = null;
        Record.ExitCode = null;
        await WriteRecordAsync(cancellationToken);
        return Status();
    }

    public async Task<VirtualMachineStatus> StartAsync(CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        var spec = RequireSpec();
        if (_vm is null || Record.State == VirtualMachineGrainState.Stopped)
        {
            // Stopped, or lost beyond repair: boot afresh from the spec (over what its disks held at the stop).
            await DisposeVmKeepingDisksAsync(cancellationToken);
            SetVm(await BuildAsync(spec, cancellationToken), spec);
            _failure = null;
            await DropSnapshotAsync(cancellationToken);
        }

        if (_vm!.State != VirtualMachineState.Running)
        {
            await RunAsync(cancellationToken);
        }

        Record.State = VirtualMachineGrainState.Running;
        Record.ExitDescription = null;
        Record.ExitCode = null;
        await WriteRecordAsync(cancellationToken);
        return Status();
    }

    public async Task<VirtualMachineStatus> PauseAsync(CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        var vm = RequireVm();
        if (vm.State == VirtualMachineState.Running)
        {
            await vm.PauseAsync(cancellationToken);
            StopRunningClock();
            DelayDeactivation(TimeSpan.Zero);
        }
        else if (vm.State != VirtualMachineState.Paused)
        {
            throw new InvalidOperationException($"The VM '{Name}' is {Record.State}; only a running VM can be paused.");
        }

        Record.State = VirtualMachineGrainState.Paused;
        await WriteRecordAsync(cancellationToken);
        return Status();
    }

    public async Task<VirtualMachineStatus> ResumeAsync(CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        var vm = RequireVm();
        if (vm.State == VirtualMachineState.Paused)
        {
            await RunAsync(cancellationToken);
        }
        else if (vm.State != VirtualMachineState.Running)
        {
            throw new InvalidOperationException($"The VM '{Name}' is {Record.State}; only a paused VM can be resumed (a created or stopped one is started with StartAsync).");
        }

        Record.State = VirtualMachineGrainState.Running;
        await WriteRecordAsync(cancellationToken);
        return Status();
    }

    public async Task<VirtualMachineStatus> StopAsync(CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        RequireSpec();
        if (_vm is not null)
        {
            var exit = await _vm.StopAsync(cancellationToken);
            StopRunningClock();
            if (Record.State != VirtualMachineGrainState.Stopped)
            {
                Record.ExitDescription = exit.Description;
                Record.ExitCode = exit.ExitCode;
            }

            await DisposeVmKeepingDisksAsync(cancellationToken);
        }

        Record.State = VirtualMachineGrainState.Stopped;
        _failure = null;
        DelayDeactivation(TimeSpan.Zero);
        await DropSnapshotAsync(cancellationToken);
        await WriteRecordAsync(cancellationToken);
        return Status();
    }

    public async Task<VirtualMachineStatus> SaveAsync(CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        var vm = RequireVm();
        if (vm.State == VirtualMachineState.Stopped)
        {
            throw new InvalidOperationException($"The VM '{Name}' has stopped; there is nothing to save. Start it again (StartAsync) first.");
        }

        await SaveCoreAsync(resume: true, cancellationToken);
        return Status();
    }

    public async Task DeleteAsync(CancellationToken cancellationToken = default)
    {
        if (_vm is not null)
        {
            await _vm.StopAsync(cancellationToken);
            await DisposeVmKeepingDisksAsync(cancellationToken);
        }

        await DropSnapshotAsync(cancellationToken);
        await _record.ClearStateAsync(cancellationToken);
        _console = new ConsoleBuffer(_options.ConsoleBufferBytes, [], 0);
        _failure = null;
        _restored = false;
        DeactivateOnIdle();
    }

    public async Task<VirtualMachineStatus> GetStatusAsync(CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        return Status();
    }

    public async Task<VirtualMachineMetrics> GetMetricsAsync(CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        var record = Record;
        return new VirtualMachineMetrics
        {
            Silo = _silo.SiloAddress,
            MemoryBytes = _vm is null ? 0 : _vm.Memory.TotalSize,
            VcpuCount = _vm?.VcpuCount ?? 0,
            Activations = record.Activations,
            SnapshotsSaved = record.SnapshotsSaved,
            Restores = record.Restores,
            LastSnapshotBytes = record.LastSnapshotBytes,
            LastSaveDuration = record.LastSaveDuration,
            Moves = record.Moves,
            LastMoveLive = record.LastMoveLive,
            LastMoveDowntime = record.LastMoveDowntime,
            LastMigrationRounds = record.LastMigrationRounds,
            LastMigrationBytes = record.LastMigrationBytes,
            LastMigrationSourcePause = record.LastMigrationSourcePause,
            LastRestoreDuration = _lastRestore,
            ConsoleBytes = _console.End,
            RunningTime = _running + (_runningSince < 0 ? TimeSpan.Zero : Stopwatch.GetElapsedTime(_runningSince)),
        };
    }

    public async Task<SiloAddress> MoveAsync(SiloAddress? target = null, VirtualMachineMoveMode mode = VirtualMachineMoveMode.Auto, CancellationToken cancellationToken = default)
    {
        await ObserveAsync(cancellationToken);
        var vm = RequireVm();
        if (!Enum.IsDefined(mode))
        {
            throw new ArgumentOutOfRangeException(nameof(mode), mode, "Use Auto, Live or SaveAndRestore.");
        }

        var here = _silo.SiloAddress;
        var active = _membership.CurrentSnapshot.Members.Values
            .Where(m => m.Status == SiloStatus.Active && !m.SiloAddress.Equals(here))
            .Select(m => m.SiloAddress)
            .ToList();
        if (target is null)
        {
            if (active.Count == 0)
            {
                throw new InvalidOperationException($"There is no other active silo to move the VM '{Name}' to.");
            }

            var demand = _local.Demand(Name) ?? VirtualMachineDemand.FromSpec(RequireSpec(), _options.DefaultVmMemoryMiB);
            var reports = _view.Silos.Where(s => active.Contains(s.Silo)).ToList();
            target = reports.Count == 0
                ? active[Random.Shared.Next(active.Count)]
                : CapacityPlacementDirector.Choose(reports, demand, out string refusal) ?? throw new ClusterCapacityException(refusal);
        }
        else if (target.Equals(here))
        {
            throw new InvalidOperationException($"The VM '{Name}' already runs on {here}.");
        }
        else if (!active.Contains(target))
        {
            throw new InvalidOperationException($"The silo {target} is not an active member of the cluster; choose one of: {string.Join(", ", active)}.");
        }

        bool live = mode == VirtualMachineMoveMode.Live
            || (mode == VirtualMachineMoveMode.Auto && _view.Silos.FirstOrDefault(s => s.Silo.Equals(target))?.MigrationEndpoint is not null);
        if (live && vm.State is VirtualMachineState.Running or VirtualMachineState.Paused)
        {
            try
            {
                await SendLiveAsync(vm, target, cancellationToken);
            }
            catch (Exception ex) when (mode == VirtualMachineMoveMode.Auto && ex is not OperationCanceledException && _handoff is null)
            {
                LogLiveMoveFellBack(_logger, ex, Name, target);
            }
        }

        // The placement director reads the hint from the request context that MigrateOnIdle captures.
        RequestContext.Set(IPlacementDirector.PlacementHintKey, target);
        try
        {
            MigrateOnIdle();
        }
        finally
        {
            RequestContext.Remove(IPlacementDirector.PlacementHintKey);
        }

        LogMoving(_logger, Name, here, target, _handoff is not null ? "live" : "save and restore");
        return target;
    }

    public async Task<long> WriteConsoleAsync(byte[] input, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(input);
        await ObserveAsync(cancellationToken);
        return await WriteConsoleCoreAsync(input, cancellationToken);
    }

    public Task<ConsoleOutput> ReadConsoleAsync(long offset, int maxBytes = 65536, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBytes, 1);
        return Task.FromResult(_console.Read(offset, Math.Min(maxBytes, _options.ConsoleBufferBytes)));
    }

    public async Task<ConsoleOutput> WaitForConsoleAsync(string text, long offset, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(text);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        return await WaitForConsoleCoreAsync(text, offset, timeout, cancellationToken);
    }

    public async Task<ConsoleOutput> ExecAsync(string input, string expect, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentException.ThrowIfNullOrEmpty(expect);
        await ObserveAsync(cancellationToken);
        long offset = await WriteConsoleCoreAsync(System.Text.Encoding.UTF8.GetBytes(input), cancellationToken);
        return await WaitForConsoleCoreAsync(expect, offset, timeout, cancellationToken);
    }

    public Task<byte[]> ReadMemoryAsync(ulong address, int length, CancellationToken cancellationToken = default)
    {
        if (length is < 0 or > MaxMemoryRead)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"Read between 0 and {MaxMemoryRead} bytes of guest memory per call.");
        }

        var vm = RequireVm();
        var at = new GuestAddress(address);
        if (!vm.Memory.Contains(at, (ulong)length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"0x{address:x} + {length} bytes is outside the VM's {vm.Memory.TotalSize >> 20} MiB of RAM.");
        }

        var data = new byte[length];
        vm.Memory.Read(at, data);
        return Task.FromResult(data);
    }
}
