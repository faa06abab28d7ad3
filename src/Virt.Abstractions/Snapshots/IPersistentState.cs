namespace Virt.Snapshots;

/// <summary>
/// A component whose state a snapshot saves and restores: a device, a partition's interrupt controllers, a clock.
/// The state is plain, versioned data that the component writes and reads itself (Firecracker's <c>persist.rs</c> beside
/// each device), never a memory image of objects. A snapshot is the sum of these sections plus vCPU state and memory.
/// </summary>
/// <remarks>
/// Restoring reads data from a file: treat it as hostile. Every value is validated, and anything out of range ends in
/// <see cref="SnapshotFormatException"/> naming the field, never in another exception or a half-restored component.
/// </remarks>
public interface IPersistentState
{
    /// <summary>The section name, unique within a machine (e.g. <c>uart@0x3f8</c>, <c>virtio-blk@0xd0000000</c>).</summary>
    string StateName { get; }

    /// <summary>The version of the layout <see cref="SaveState"/> writes. Bump it whenever the layout changes.</summary>
    int StateVersion { get; }

    /// <summary>Writes the component's state. Called while the machine is paused or stopped.</summary>
    void SaveState(StateWriter writer);

    /// <summary>
    /// Replaces the component's state with one <see cref="SaveState"/> wrote at <paramref name="version"/>. Called while
    /// the machine is paused, before it runs again.
    /// </summary>
    /// <exception cref="SnapshotFormatException">The version is not one this component reads, or a value is invalid.</exception>
    void RestoreState(ref StateReader reader, int version);
}

/// <summary>A snapshot (or one of its sections) is corrupt, truncated or incompatible; the message names the section and field.</summary>
public sealed class SnapshotFormatException : Exception
{
    /// <summary>Creates the exception for <paramref name="section"/> and <paramref name="field"/>.</summary>
    public SnapshotFormatException(string section, string field, string message)
        : base($"Snapshot section '{section}', {field}: {message}")
    {
        Section = section;
        Field = field;
    }

    /// <summary>Creates the exception.</summary>
    public SnapshotFormatException() { }

    /// <summary>Creates the exception with a message.</summary>
    public SnapshotFormatException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and the exception that caused it.</summary>
    public SnapshotFormatException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The section that is wrong (empty for the file header).</summary>
    public string Section { get; } = "";

    /// <summary>The field that is wrong.</summary>
    public string Field { get; } = "";
}
