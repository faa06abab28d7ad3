using Orleans;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>Where a grain's VM is in its lifecycle.</summary>
[GenerateSerializer]
public enum VirtualMachineGrainState
{
    /// <summary>No VM has been created under this name (or it was deleted).</summary>
    NotCreated = 0,

    /// <summary>Built, not started.</summary>
    Created,

    /// <summary>The guest runs.</summary>
    Running,

    /// <summary>The guest is paused; <see cref="IVirtualMachineGrain.ResumeAsync"/> continues it.</summary>
    Paused,

    /// <summary>The guest stopped (by the host or by itself); <see cref="VirtualMachineStatus.ExitDescription"/> says how.</summary>
    Stopped,

    /// <summary>The VM could not be built or restored; <see cref="VirtualMachineStatus.ExitDescription"/> says why.</summary>
    Failed,
}

/// <summary>A grain's VM as one call sees it.</summary>
[GenerateSerializer, Immutable]
public sealed record VirtualMachineStatus
{
    /// <summary>The VM's name (the grain's key).</summary>
    [Id(0)]
    public required string Name { get; init; }

    /// <summary>The lifecycle state.</summary>
    [Id(1)]
    public required VirtualMachineGrainState State { get; init; }

    /// <summary>The silo the grain (and its VM) runs on.</summary>
    [Id(2)]
    public required SiloAddress Silo { get; init; }

    /// <summary>The backend running the VM (<c>kvm</c>, <c>interpreter</c>, ...), or null without a VM.</summary>
    [Id(3)]
    public string? Backend { get; init; }

    /// <summary>How the VM stopped or why it failed; null otherwise.</summary>
    [Id(4)]
    public string? ExitDescription { get; init; }

    /// <summary>The guest's exit code when it stopped through the debug-exit port.</summary>
    [Id(5)]
    public int? ExitCode { get; init; }

    /// <summary>The reference of the last snapshot in the store, or null if none was saved.</summary>
    [Id(6)]
    public string? SnapshotReference { get; init; }

    /// <summary>When the last snapshot was saved.</summary>
    [Id(7)]
    public DateTimeOffset? SnapshotSavedAt { get; init; }

    /// <summary>True when this activation restored the VM from a snapshot (after a silo went away or a move).</summary>
    [Id(8)]
    public bool Restored { get; init; }
}

/// <summary>Counters and times of a grain's VM, for dashboards and placement decisions.</summary>
[GenerateSerializer, Immutable]
public sealed record VirtualMachineMetrics
{
    /// <summary>The silo the VM runs on.</summary>
    [Id(0)]
    public required SiloAddress Silo { get; init; }

    /// <summary>Guest RAM in bytes (0 without a VM).</summary>
    [Id(1)]
    public ulong MemoryBytes { get; init; }

    /// <summary>vCPUs (0 without a VM).</summary>
    [Id(2)]
    public int VcpuCount { get; init; }

    /// <summary>How many times the grain was activated with a VM to restore or build, over its life in storage.</summary>
    [Id(3)]
    public long Activations { get; init; }

    /// <summary>Snapshots saved to the store, over the grain's life in storage.</summary>
    [Id(4)]
    public long SnapshotsSaved { get; init; }

    /// <summary>Restores from the store, over the grain's life in storage.</summary>
    [Id(5)]
    public long Restores { get; init; }

    /// <summary>Size of the last snapshot written (the stream's length; zero pages are holes on a file system).</summary>
    [Id(6)]
    public long LastSnapshotBytes { get; init; }

    /// <summary>How long the last save took (pause, write, resume).</summary>
    [Id(7)]
    public TimeSpan LastSaveDuration { get; init; }

    /// <summary>How long the last restore in an activation took (fetch from the store and rebuild, to paused).</summary>
    [Id(8)]
    public TimeSpan LastRestoreDuration { get; init; }

    /// <summary>Bytes the guest wrote to its serial console, over the grain's life in storage.</summary>
    [Id(9)]
    public long ConsoleBytes { get; init; }

    /// <summary>Time the guest spent running in this activation.</summary>
    [Id(10)]
    public TimeSpan RunningTime { get; init; }

    /// <summary>Moves between silos (and restores after a graceful shutdown), over the grain's life in storage.</summary>
    [Id(11)]
    public long Moves { get; init; }

    /// <summary>Whether the last move was a live migration (otherwise a save and restore).</summary>
    [Id(12)]
    public bool LastMoveLive { get; init; }

    /// <summary>
    /// How long the last move kept the guest from running: from its pause on the source to its resume on the target
    /// (for a paused VM, to its restore). Measured with the host's monotonic clock, so only when source and target
    /// silo share a host; null otherwise or before the first move.
    /// </summary>
    [Id(13)]
    public TimeSpan? LastMoveDowntime { get; init; }

    /// <summary>Rounds of the last live migration, counting the last one with the guest paused.</summary>
    [Id(14)]
    public int LastMigrationRounds { get; init; }

    /// <summary>Bytes the last live migration sent.</summary>
    [Id(15)]
    public long LastMigrationBytes { get; init; }

    /// <summary>How long the source kept the guest paused in the last live migration until the target had every byte (the target's resume comes on top).</summary>
    [Id(16)]
    public TimeSpan LastMigrationSourcePause { get; init; }
}

/// <summary>A piece of a VM's serial console output.</summary>
[GenerateSerializer, Immutable]
public sealed record ConsoleOutput
{
    /// <summary>The console offset of the first byte of <see cref="Data"/> (bytes since the VM was created).</summary>
    [Id(0)]
    public required long Offset { get; init; }

    /// <summary>The bytes.</summary>
    [Id(1)]
    public required byte[] Data { get; init; }

    /// <summary>The offset to ask for next (<see cref="Offset"/> + length of <see cref="Data"/>).</summary>
    public long NextOffset => Offset + Data.Length;

    /// <summary>Bytes before <see cref="Offset"/> that were asked for but had left the grain's buffer.</summary>
    [Id(2)]
    public long Dropped { get; init; }

    /// <summary><see cref="Data"/> decoded as UTF-8.</summary>
    public string Text => System.Text.Encoding.UTF8.GetString(Data);
}
