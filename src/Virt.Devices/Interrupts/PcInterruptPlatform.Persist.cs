using Virt.Snapshots;

namespace Virt.Devices.Interrupts;

/// <summary>The interrupt platform's snapshot section, <c>pc-interrupts</c>: the whole of its controllers and clock.</summary>
/// <remarks>
/// <para>Layout 1: the number of local APICs, then one nested record per component in restore order: the
/// <see cref="VirtualClock"/>, the <see cref="PicPair"/>, the <see cref="IoApic"/>, each <see cref="LocalApic"/> and the
/// <see cref="Pit8254"/>. A record is its component's layout version (so each component's layout evolves on its own)
/// followed by its bytes, length-prefixed; errors name the section as <c>pc-interrupts/</c> plus the component.</para>
/// <para>A restore reads and checks every record before it changes anything, then sets the clock first, so the
/// timers re-arm at the same guest time, and the PIT last, whose output level the controllers already hold.</para>
/// </remarks>
public sealed partial class PcInterruptPlatform : IPersistentState
{
    /// <inheritdoc />
    public string StateName => "pc-interrupts";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteInt32(Controllers.LocalApics.Count);
        StateFields.WriteRecord(writer, VirtualClock);
        StateFields.WriteRecord(writer, Controllers.Pic);
        StateFields.WriteRecord(writer, Controllers.IoApic);
        foreach (var apic in Controllers.LocalApics)
        {
            StateFields.WriteRecord(writer, apic);
        }

        StateFields.WriteRecord(writer, Controllers.Pit);
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        int apics = Controllers.LocalApics.Count;
        reader.ReadInt32InRange("local-apics", apics, apics);
        var c = Controllers;

        var r = StateFields.ReadRecord(ref reader, VirtualClock.StateName, out int v);
        long clock = VirtualClock.ReadStaged(ref r, v);
        r.EnsureEnd();

        r = StateFields.ReadRecord(ref reader, c.Pic.StateName, out v);
        var pic = c.Pic.ReadStaged(ref r, v);
        r.EnsureEnd();

        r = StateFields.ReadRecord(ref reader, c.IoApic.StateName, out v);
        var ioApic = c.IoApic.ReadStaged(ref r, v);
        r.EnsureEnd();

        var localApics = new LocalApic.Saved[apics];
        for (int i = 0; i < apics; i++)
        {
            r = StateFields.ReadRecord(ref reader, c.LocalApics[i].StateName, out v);
            localApics[i] = c.LocalApics[i].ReadStaged(ref r, v);
            r.EnsureEnd();
        }

        r = StateFields.ReadRecord(ref reader, c.Pit.StateName, out v);
        var pit = c.Pit.ReadStaged(ref r, v);
        r.EnsureEnd();
        reader.EnsureEnd();

        VirtualClock.Apply(clock);
        c.Pic.Apply(pic);
        c.IoApic.Apply(ioApic);
        for (int i = 0; i < apics; i++)
        {
            c.LocalApics[i].Apply(localApics[i]);
        }

        c.Pit.Apply(pit);
    }
}
