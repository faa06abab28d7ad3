using Orleans;

namespace Virt.Orleans;

/// <summary>
/// A VM grain's persisted state: small (the spec, the snapshot's reference, the console's tail and counters), written
/// to the grain storage provider on every lifecycle change and save. The snapshot's bytes live in the <see cref="ISnapshotStore"/>.
/// </summary>
[GenerateSerializer]
internal sealed class VirtualMachineGrainRecord
{
    /// <summary>The spec the VM was created from; null while no VM exists.</summary>
    [Id(0)]
    public VirtualMachineSpec? Spec { get; set; }

    /// <summary>The state the VM was last put in (by the caller or by the guest stopping); a restore returns to it.</summary>
    [Id(1)]
    public VirtualMachineGrainState State { get; set; }

    [Id(2)]
    public string? SnapshotReference { get; set; }

    [Id(3)]
    public DateTimeOffset? SnapshotSavedAt { get; set; }

    [Id(4)]
    public string? ExitDescription { get; set; }

    [Id(5)]
    public int? ExitCode { get; set; }

    [Id(6)]
    public byte[] ConsoleTail { get; set; } = [];

    [Id(7)]
    public long ConsoleEnd { get; set; }

    [Id(8)]
    public long Activations { get; set; }

    [Id(9)]
    public long SnapshotsSaved { get; set; }

    [Id(10)]
    public long Restores { get; set; }

    [Id(11)]
    public long LastSnapshotBytes { get; set; }

    [Id(12)]
    public TimeSpan LastSaveDuration { get; set; }

    /// <summary>When the source paused the VM for a move (a Stopwatch timestamp on <see cref="MoveHost"/>); 0 when no move is under way.</summary>
    [Id(13)]
    public long MovePausedAt { get; set; }

    [Id(14)]
    public string? MoveHost { get; set; }

    [Id(15)]
    public long Moves { get; set; }

    [Id(16)]
    public bool LastMoveLive { get; set; }

    [Id(17)]
    public TimeSpan? LastMoveDowntime { get; set; }

    [Id(18)]
    public int LastMigrationRounds { get; set; }

    [Id(19)]
    public long LastMigrationBytes { get; set; }

    [Id(20)]
    public TimeSpan LastMigrationSourcePause { get; set; }

    /// <summary>
    /// The disk layer generation of the last snapshot (or stop): its layer files hold the writes the snapshot's disks
    /// have beyond their base images, committed into the bases (again, if a silo died half-way) when the VM is next
    /// built or restored. The running machine writes into the layers of the next generation.
    /// </summary>
    [Id(21)]
    public long DiskGeneration { get; set; }
}
