using Virt.Snapshots;

namespace Virt.Devices.Interrupts;

/// <summary>The IOAPIC's snapshot record, <c>ioapic</c>.</summary>
/// <remarks>
/// Layout 1: the ID register, IOREGSEL, the 24 redirection entries (with their remote IRR bits), the input levels
/// and the edges received while their pin was masked (one bit per pin each). A restore sends no message: what was
/// pending is in the local APIC's restored IRR.
/// </remarks>
public sealed partial class IoApic : IPersistentState
{
    private const uint PinMask = (1u << PinCount) - 1;

    /// <inheritdoc />
    public string StateName => "ioapic";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <summary>Everything the IOAPIC remembers.</summary>
    internal sealed record Saved(uint Id, uint Select, ulong[] Redirection, uint Levels, uint EdgesPending);

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        lock (_lock)
        {
            writer.WriteUInt32(_id);
            writer.WriteByte((byte)_select);
            foreach (ulong e in _redirection)
            {
                writer.WriteUInt64(e);
            }

            writer.WriteUInt32(Bits(_lineLevel));
            writer.WriteUInt32(Bits(_edgePending));
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
        uint id = StateFields.ReadMaskedUInt32(ref reader, "id", 0x0F000000);
        uint select = reader.ReadByte("select");
        var redirection = new ulong[PinCount];
        for (int pin = 0; pin < PinCount; pin++)
        {
            ulong e = reader.ReadUInt64("redirection");
            StateFields.Require(ref reader, (e & DeliveryStatus) == 0, "redirection", $"entry {pin} (0x{e:x16}) has the delivery status bit, which this IOAPIC never sets.");
            StateFields.Require(ref reader, (e & RemoteIrr) == 0 || (e & LevelTrigger) != 0, "redirection", $"entry {pin} (0x{e:x16}) has remote IRR on an edge-triggered pin.");
            redirection[pin] = e;
        }

        uint levels = StateFields.ReadMaskedUInt32(ref reader, "levels", PinMask);
        uint edges = StateFields.ReadMaskedUInt32(ref reader, "edges-pending", PinMask);
        return new Saved(id, select, redirection, levels, edges);
    }

    internal void Apply(Saved staged)
    {
        lock (_lock)
        {
            _id = staged.Id;
            _select = staged.Select;
            staged.Redirection.CopyTo(_redirection, 0);
            for (int pin = 0; pin < PinCount; pin++)
            {
                _lineLevel[pin] = (staged.Levels & (1u << pin)) != 0;
                _edgePending[pin] = (staged.EdgesPending & (1u << pin)) != 0;
            }
        }
    }

    private static uint Bits(bool[] pins)
    {
        uint bits = 0;
        for (int pin = 0; pin < pins.Length; pin++)
        {
            bits |= pins[pin] ? 1u << pin : 0;
        }

        return bits;
    }
}
