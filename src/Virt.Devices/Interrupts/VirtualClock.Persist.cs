using Virt.Snapshots;

namespace Virt.Devices.Interrupts;

/// <summary>The clock's snapshot record, <c>virtual-clock</c>.</summary>
/// <remarks>
/// <para>Layout 1: the frequency (ticks per second) and the current tick. A restore sets the clock to the saved tick,
/// forwards or backwards, so guest time continues from where it was saved and does not jump by the time the
/// snapshot spent on disk. The frequency must match: ticks of another frequency would be another length of time.</para>
/// <para>Timers are their owners' state: restore the clock first, then the devices whose timers run on it (as
/// <see cref="PcInterruptPlatform"/> does), which re-arm their timers relative to the restored tick. A timer whose
/// owner is not restored keeps its deadline.</para>
/// </remarks>
public sealed partial class VirtualClock : IPersistentState
{
    /// <inheritdoc />
    public string StateName => "virtual-clock";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteInt64(Frequency);
        writer.WriteInt64(Now);
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        long now = ReadStaged(ref reader, version);
        reader.EnsureEnd();
        Apply(now);
    }

    /// <summary>Reads and checks layout <paramref name="version"/>, returning the tick to set.</summary>
    internal long ReadStaged(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        long frequency = reader.ReadInt64("frequency");
        StateFields.Require(ref reader, frequency == Frequency, "frequency", $"is {frequency} Hz; this clock runs at {Frequency} Hz. Restore with the same TSC frequency.");
        return StateFields.ReadDuration(ref reader, "now");
    }

    /// <summary>Sets the clock to <paramref name="now"/> (a staged value from <see cref="ReadStaged"/>).</summary>
    internal void Apply(long now)
    {
        lock (_lock)
        {
            _now = now;
            _target = now;
        }
    }
}
