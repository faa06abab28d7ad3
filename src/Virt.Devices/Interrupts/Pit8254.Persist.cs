using Virt.Snapshots;

namespace Virt.Devices.Interrupts;

/// <summary>The PIT's snapshot record, <c>pit</c>.</summary>
/// <remarks>
/// <para>Layout 1: port B's gate and speaker bits, then per channel: the reload count (1-65536), mode (0-5), access
/// mode (1 LSB, 2 MSB, 3 both), BCD flag, how many PIT cycles ago counting (re)started, gate, whether a count is
/// loaded and counting, the cycles counted before the gate fell, null count, the write and read byte-order flip-flops
/// with a pending LSB, the latched count and whether its MSB is next, the latched status byte, and (channel 0) whether
/// the output holds IRQ 0 high.</para>
/// <para>The counting state is relative to the virtual clock: restored after its <see cref="VirtualClock"/> (as
/// <see cref="PcInterruptPlatform"/> does), the counters read the same and the next interrupt edge falls at the same
/// guest time. A restore drives IRQ 0 to the restored output level; the interrupt controllers, restored first, hold
/// that level already, so no edge is seen twice.</para>
/// </remarks>
public sealed partial class Pit8254 : IPersistentState
{
    /// <inheritdoc />
    public string StateName => "pit";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <summary>One channel as saved; <see cref="StartAgo"/> in PIT cycles before the clock's present.</summary>
    internal readonly record struct SavedChannel(
        int Count, int Mode, int Access, bool Bcd, long StartAgo, bool Gate, bool Counting, long FrozenElapsed, bool NullCount,
        bool WriteHigh, byte WriteLow, bool ReadHigh, int? Latched, bool LatchedHigh, byte? Status, bool IrqLevel);

    /// <summary>Everything the PIT remembers.</summary>
    internal sealed record Saved(byte PortB, SavedChannel[] Channels);

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        lock (_lock)
        {
            long now = PitNow();
            writer.WriteByte(_portB);
            foreach (var c in _channels)
            {
                writer.WriteInt32(c.Count);
                writer.WriteByte((byte)c.Mode);
                writer.WriteByte((byte)c.Access);
                writer.WriteBoolean(c.Bcd);
                writer.WriteInt64(now - c.Start);
                writer.WriteBoolean(c.Gate);
                writer.WriteBoolean(c.Counting);
                writer.WriteInt64(c.FrozenElapsed);
                writer.WriteBoolean(c.NullCount);
                writer.WriteBoolean(c.WriteHigh);
                writer.WriteByte(c.WriteLow);
                writer.WriteBoolean(c.ReadHigh);
                writer.WriteBoolean(c.Latched.HasValue);
                writer.WriteInt32(c.Latched ?? 0);
                writer.WriteBoolean(c.LatchedHigh);
                writer.WriteBoolean(c.Status.HasValue);
                writer.WriteByte(c.Status ?? 0);
                writer.WriteBoolean(c.IrqLevel);
            }
        }
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        var staged = ReadStaged(ref reader, version);
        reader.EnsureEnd();
        Apply(staged);
    }

    internal Saved ReadStaged(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        byte portB = StateFields.ReadMaskedByte(ref reader, "port-b", PortBGate2 | PortBSpeaker);
        var channels = new SavedChannel[3];
        for (int i = 0; i < channels.Length; i++)
        {
            channels[i] = ReadChannel(ref reader, i);
            bool gate = i != 2 || (portB & PortBGate2) != 0;
            StateFields.Require(ref reader, channels[i].Gate == gate, $"channel{i}.gate", $"is {channels[i].Gate}, but the gate of channel {i} is wired to {gate}.");
        }

        return new Saved(portB, channels);
    }

    private static SavedChannel ReadChannel(ref StateReader r, int index)
    {
        string p = $"channel{index}.";
        int count = r.ReadInt32InRange(p + "count", 1, 0x10000);
        int mode = StateFields.ReadByteInRange(ref r, p + "mode", 0, 5);
        int access = StateFields.ReadByteInRange(ref r, p + "access", 1, 3);
        bool bcd = r.ReadBoolean(p + "bcd");
        long startAgo = StateFields.ReadDuration(ref r, p + "start-ago");
        bool gate = r.ReadBoolean(p + "gate");
        bool counting = r.ReadBoolean(p + "counting");
        long frozen = StateFields.ReadDuration(ref r, p + "frozen-elapsed");
        bool nullCount = r.ReadBoolean(p + "null-count");
        bool writeHigh = r.ReadBoolean(p + "write-high");
        byte writeLow = r.ReadByte(p + "write-low");
        bool readHigh = r.ReadBoolean(p + "read-high");
        StateFields.Require(ref r, access == 3 || (!writeHigh && !readHigh), p + "access", "is a one-byte access mode with a byte-order flip-flop set.");
        bool hasLatch = r.ReadBoolean(p + "latched.present");
        int latched = r.ReadInt32InRange(p + "latched", 0, 0x10000);
        bool latchedHigh = r.ReadBoolean(p + "latched.high");
        StateFields.Require(ref r, !latchedHigh || (hasLatch && access == 3), p + "latched.high", "is set without a latched two-byte count.");
        bool hasStatus = r.ReadBoolean(p + "status.present");
        byte status = r.ReadByte(p + "status");
        bool irqLevel = r.ReadBoolean(p + "irq-level");
        StateFields.Require(ref r, index == 0 || !irqLevel, p + "irq-level", "is set on a channel that drives no interrupt.");
        return new SavedChannel(count, mode, access, bcd, startAgo, gate, counting, frozen, nullCount, writeHigh, writeLow, readHigh,
            hasLatch ? latched : null, latchedHigh, hasStatus ? status : null, irqLevel);
    }

    internal void Apply(Saved staged)
    {
        bool irq;
        lock (_lock)
        {
            long now = PitNow();
            _portB = staged.PortB;
            for (int i = 0; i < _channels.Length; i++)
            {
                var s = staged.Channels[i];
                var c = _channels[i];
                (c.Count, c.Mode, c.Access, c.Bcd, c.Start, c.Gate, c.Counting, c.FrozenElapsed) = (s.Count, s.Mode, s.Access, s.Bcd, now - s.StartAgo, s.Gate, s.Counting, s.FrozenElapsed);
                (c.NullCount, c.WriteHigh, c.WriteLow, c.ReadHigh, c.Latched, c.LatchedHigh, c.Status, c.IrqLevel) = (s.NullCount, s.WriteHigh, s.WriteLow, s.ReadHigh, s.Latched, s.LatchedHigh, s.Status, s.IrqLevel);
            }

            irq = _channels[0].IrqLevel;
            Reschedule(now);
        }

        if (irq)
        {
            _irq0.Raise();
        }
        else
        {
            _irq0.Lower();
        }
    }
}
