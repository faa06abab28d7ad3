using Virt.Snapshots;
using R = Virt.Devices.Serial16550Registers;

namespace Virt.Devices;

/// <summary>The UART's snapshot section: <see cref="Serial16550State"/> as a versioned layout.</summary>
/// <remarks>
/// Layout 1: DLL, DLM, IER, LCR, MCR, the LSR error bits, MSR (lines and unread deltas), SCR, FCR (one byte each), the
/// transmitter-empty interrupt condition (Boolean) and the receive FIFO, oldest byte first (length-prefixed). The
/// output stream and the host's counters are not guest state. A restore drives the interrupt line to the level the
/// restored registers give: the interrupt controllers, restored first, already hold that level, so no edge is seen twice.
/// </remarks>
public sealed partial class Serial16550 : IPersistentState
{
    private readonly string _stateName = "uart@0x3f8";

    /// <inheritdoc />
    /// <remarks>
    /// <c>uart@0x3f8</c> (COM1) unless set: give each UART of a machine its own name, e.g. <c>uart@0x2f8</c>.
    /// </remarks>
    /// <exception cref="ArgumentException">The name is empty.</exception>
    public string StateName
    {
        get => _stateName;
        init
        {
            ArgumentException.ThrowIfNullOrEmpty(value);
            _stateName = value;
        }
    }

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        var s = GetState();
        writer.WriteByte(s.DivisorLow);
        writer.WriteByte(s.DivisorHigh);
        writer.WriteByte(s.InterruptEnable);
        writer.WriteByte(s.LineControl);
        writer.WriteByte(s.ModemControl);
        writer.WriteByte(s.LineStatusErrors);
        writer.WriteByte(s.ModemStatus);
        writer.WriteByte(s.Scratch);
        writer.WriteByte(s.FifoControl);
        writer.WriteBoolean(s.TransmitterEmptyInterruptPending);
        writer.WriteBytes(s.ReceiveFifo);
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        var s = new Serial16550State
        {
            DivisorLow = reader.ReadByte("dll"),
            DivisorHigh = reader.ReadByte("dlm"),
            InterruptEnable = StateFields.ReadMaskedByte(ref reader, "ier", 0x0F),
            LineControl = reader.ReadByte("lcr"),
            ModemControl = StateFields.ReadMaskedByte(ref reader, "mcr", R.McrWritableMask),
            LineStatusErrors = StateFields.ReadMaskedByte(ref reader, "lsr", R.LsrErrorBits),
            ModemStatus = reader.ReadByte("msr"),
            Scratch = reader.ReadByte("scr"),
            FifoControl = StateFields.ReadMaskedByte(ref reader, "fcr", R.FcrEnableFifos | R.FcrTriggerLevelMask),
            TransmitterEmptyInterruptPending = reader.ReadBoolean("thr-empty-pending"),
        };

        // With the FIFOs off the trigger bits are not kept (an FCR write without bit 0 clears FCR).
        StateFields.Require(ref reader, (s.FifoControl & R.FcrEnableFifos) != 0 || s.FifoControl == 0, "fcr", $"is 0x{s.FifoControl:x2}: trigger bits with the FIFOs disabled.");
        byte lines = ModemInputLines(s.ModemControl);
        StateFields.Require(ref reader, (s.ModemStatus & 0xF0) == lines, "msr", $"is 0x{s.ModemStatus:x2}, but MCR 0x{s.ModemControl:x2} drives the modem lines to 0x{lines:x2}.");
        int capacity = (s.FifoControl & R.FcrEnableFifos) != 0 ? R.FifoSize : 1;
        s.ReceiveFifo = reader.ReadBytes("rx-fifo", capacity).ToArray();
        reader.EnsureEnd();

        lock (_lock)
        {
            Restore(s);
            ReleaseSpaceWaiter();
            _lineHigh = !PendingInterruptIsNone();
            if (_lineHigh)
            {
                _interrupt.Raise();
            }
            else
            {
                _interrupt.Lower();
            }
        }
    }
}
