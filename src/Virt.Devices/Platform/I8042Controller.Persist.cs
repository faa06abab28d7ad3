using Virt.Snapshots;

namespace Virt.Devices;

/// <summary>The keyboard controller's snapshot section, <c>i8042</c>.</summary>
/// <remarks>
/// Layout 1: the 32 bytes of internal RAM (byte 0 is the command byte), the output port, the command waiting for its
/// data byte (0 for none), whether the last write went to the command port, the last byte read from the data port,
/// and the output buffer queue (a count, then value and status flags per byte, oldest first). The reset count is the
/// host's statistic, not guest state. A restore drives IRQ 1 and IRQ 12 to the levels the restored queue gives.
/// </remarks>
public sealed partial class I8042Controller : IPersistentState
{
    /// <summary>Status flags a queued byte may carry.</summary>
    private const byte QueuedFlags = StatusAuxData | StatusTimeout;

    /// <inheritdoc />
    public string StateName => "i8042";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        lock (_lock)
        {
            writer.WriteBytes(_ram);
            writer.WriteByte(_outputPort);
            writer.WriteByte(_pendingCommand);
            writer.WriteBoolean(_lastWriteWasCommand);
            writer.WriteByte(_lastData);
            writer.WriteInt32(_outputCount);
            for (int i = 0; i < _outputCount; i++)
            {
                var (value, flags) = _output[(_outputHead + i) % OutputQueueCapacity];
                writer.WriteByte(value);
                writer.WriteByte(flags);
            }
        }
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        var ram = reader.ReadBytes("ram", _ram.Length);
        StateFields.Require(ref reader, ram.Length == _ram.Length, "ram", $"holds {ram.Length} bytes; the controller has {_ram.Length}.");
        byte[] savedRam = ram.ToArray();
        byte outputPort = reader.ReadByte("output-port");
        StateFields.Require(ref reader, (outputPort & OutputPortResetReleased) != 0, "output-port", "holds the CPU in reset (bit 0 clear), which a running controller never keeps.");
        byte pending = reader.ReadByte("pending-command");
        StateFields.Require(ref reader, pending is 0 or (>= CmdWriteCommandByte and <= 0x7F) or CmdWriteOutputPort or CmdWriteKeyboardOutput or CmdWriteAuxOutput or CmdWriteAuxDevice,
            "pending-command", $"is 0x{pending:x2}, not a command that waits for a data byte.");
        bool lastWriteWasCommand = reader.ReadBoolean("last-write-was-command");
        byte lastData = reader.ReadByte("last-data");
        int count = reader.ReadInt32InRange("output-count", 0, OutputQueueCapacity);
        var queue = new (byte Value, byte Flags)[OutputQueueCapacity];
        for (int i = 0; i < count; i++)
        {
            queue[i] = (reader.ReadByte("output.value"), StateFields.ReadMaskedByte(ref reader, "output.flags", QueuedFlags));
        }

        reader.EnsureEnd();
        lock (_lock)
        {
            savedRam.CopyTo(_ram, 0);
            _outputPort = outputPort;
            _pendingCommand = pending;
            _lastWriteWasCommand = lastWriteWasCommand;
            _lastData = lastData;
            queue.CopyTo(_output, 0);
            _outputHead = 0;
            _outputCount = count;

            (_keyboardLineHigh, _auxLineHigh) = InterruptLevels();
            Drive(_keyboardInterrupt, _keyboardLineHigh);
            Drive(_auxInterrupt, _auxLineHigh);
        }
    }

    /// <summary>Drives <paramref name="line"/> to <paramref name="high"/> whatever this instance drove before.</summary>
    private static void Drive(IInterruptLine line, bool high)
    {
        if (high)
        {
            line.Raise();
        }
        else
        {
            line.Lower();
        }
    }
}
