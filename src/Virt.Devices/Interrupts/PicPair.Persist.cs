using Virt.Snapshots;

namespace Virt.Devices.Interrupts;

/// <summary>The PIC pair's snapshot record, <c>pic</c>.</summary>
/// <remarks>
/// Layout 1, master then slave: IRR, ISR, IMR, the vector base (ICW2), ELCR, the input line levels (for edge
/// detection), the ICW sequence step (0 done, 2-4 waiting for that ICW), whether an ICW sequence ever completed, the
/// ICW1 single and ICW4-needed flags, the ICW4 auto-EOI and special-fully-nested modes, the level-triggered mode of
/// ICW1, the special mask mode, the OCW3 read-register select (ISR or IRR) and poll command, rotate-on-auto-EOI and
/// the lowest-priority IRQ. The master's cascade input is recomputed from the slave on restore.
/// </remarks>
public sealed partial class PicPair : IPersistentState
{
    /// <inheritdoc />
    public string StateName => "pic";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        lock (_lock)
        {
            Pic8259.Write(writer, _master.Capture());
            Pic8259.Write(writer, _slave.Capture());
        }
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        var staged = ReadStaged(ref reader, version);
        reader.EnsureEnd();
        Apply(staged);
    }

    internal (Pic8259.Saved Master, Pic8259.Saved Slave) ReadStaged(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        var master = Pic8259.Read(ref reader, "master", isMaster: true);
        var slave = Pic8259.Read(ref reader, "slave", isMaster: false);
        return (master, slave);
    }

    internal void Apply((Pic8259.Saved Master, Pic8259.Saved Slave) staged)
    {
        bool pending;
        lock (_lock)
        {
            _master.Load(staged.Master);
            _slave.Load(staged.Slave);
            UpdateCascadeLocked();
            pending = PendingLocked();
        }

        if (pending)
        {
            InterruptRequested?.Invoke();
        }
    }
}
