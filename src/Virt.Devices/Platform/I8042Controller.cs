namespace Virt.Devices;

/// <summary>
/// The PC keyboard controller (Intel 8042) as far as an operating system needs it without a
/// keyboard: the command byte, self-tests, the output port, and the CPU reset line that
/// Linux's <c>reboot=k</c> (its fallback after ACPI) pulses with command 0xFE.
/// </summary>
/// <remarks>
/// <para>Ports: data at 0x60 (offset 0), status/command at 0x64 (offset 4). Use
/// <see cref="AttachTo"/>, which registers exactly those two ports and leaves 0x61-0x63 (the PIT's
/// port B among them) free.</para>
/// <para>No devices are attached: bytes the guest sends to the keyboard or the auxiliary (mouse)
/// port are answered with 0xFF and the timeout status bit, as a controller with nothing plugged in
/// does. The controller has a single channel: command 0xA8 (enable aux) leaves the aux-disable bit
/// set and the aux loopback command 0xD3 answers on the keyboard channel, which is how Linux's
/// i8042 driver concludes that there is no aux port without waiting for timeouts.</para>
/// <para>Commands and data are handled at once, so the input-buffer-full status bit is never set.</para>
/// </remarks>
public sealed partial class I8042Controller : IPortIoDevice
{
    /// <summary>Data port (read: output buffer; write: data for the keyboard or for a pending command).</summary>
    public const ushort DataPort = 0x60;

    /// <summary>Status (read) and command (write) port.</summary>
    public const ushort CommandPort = 0x64;

    /// <summary>ISA interrupt of the keyboard channel.</summary>
    public const int KeyboardIrq = 1;

    /// <summary>ISA interrupt of the aux (mouse) channel.</summary>
    public const int AuxIrq = 12;

    /// <summary>Device offset of the data port (registered at <see cref="DataPort"/>).</summary>
    internal const int DataOffset = 0;

    /// <summary>Device offset of the status/command port (registered at <see cref="CommandPort"/>).</summary>
    internal const int CommandOffset = 4;

    /// <summary>Status: output buffer full (data waiting at port 0x60).</summary>
    public const byte StatusOutputFull = 0x01;

    /// <summary>Status: input buffer full (controller busy with the last write).</summary>
    public const byte StatusInputFull = 0x02;

    /// <summary>Status: system flag (set once the self-test passed; mirrors the command byte's bit 2).</summary>
    public const byte StatusSystemFlag = 0x04;

    /// <summary>Status: the last write was to the command port (A2 line).</summary>
    public const byte StatusLastWriteWasCommand = 0x08;

    /// <summary>Status: keyboard not inhibited (keylock open).</summary>
    public const byte StatusKeyboardNotInhibited = 0x10;

    /// <summary>Status: the byte in the output buffer came from the aux (mouse) channel.</summary>
    public const byte StatusAuxData = 0x20;

    /// <summary>Status: the device did not answer (timeout).</summary>
    public const byte StatusTimeout = 0x40;

    /// <summary>Command byte: interrupt (IRQ 1) when keyboard data arrives.</summary>
    public const byte CtrKeyboardInterrupt = 0x01;

    /// <summary>Command byte: interrupt (IRQ 12) when aux data arrives.</summary>
    public const byte CtrAuxInterrupt = 0x02;

    /// <summary>Command byte: system flag.</summary>
    public const byte CtrSystemFlag = 0x04;

    /// <summary>Command byte: keyboard clock disabled.</summary>
    public const byte CtrKeyboardDisabled = 0x10;

    /// <summary>Command byte: aux clock disabled.</summary>
    public const byte CtrAuxDisabled = 0x20;

    /// <summary>Command byte: translate keyboard scan codes to set 1.</summary>
    public const byte CtrTranslate = 0x40;

    /// <summary>Command: read internal RAM byte 0 (the command byte); 0x21-0x3F read bytes 1-31.</summary>
    public const byte CmdReadCommandByte = 0x20;

    /// <summary>Command: write the next data byte to internal RAM byte 0 (the command byte); 0x61-0x7F write bytes 1-31.</summary>
    public const byte CmdWriteCommandByte = 0x60;

    /// <summary>Command: disable the aux port.</summary>
    public const byte CmdDisableAux = 0xA7;

    /// <summary>Command: enable the aux port (no effect: there is none).</summary>
    public const byte CmdEnableAux = 0xA8;

    /// <summary>Command: test the aux interface; answers 0x01 (clock line stuck), i.e. no working aux port.</summary>
    public const byte CmdTestAux = 0xA9;

    /// <summary>Command: controller self-test; answers <see cref="SelfTestPassed"/>.</summary>
    public const byte CmdSelfTest = 0xAA;

    /// <summary>Command: test the keyboard interface; answers 0x00 (no error).</summary>
    public const byte CmdTestKeyboard = 0xAB;

    /// <summary>Command: disable the keyboard clock.</summary>
    public const byte CmdDisableKeyboard = 0xAD;

    /// <summary>Command: enable the keyboard clock.</summary>
    public const byte CmdEnableKeyboard = 0xAE;

    /// <summary>Command: read the input port.</summary>
    public const byte CmdReadInputPort = 0xC0;

    /// <summary>Command: read the output port (bit 0: reset line released, bit 1: A20 gate).</summary>
    public const byte CmdReadOutputPort = 0xD0;

    /// <summary>Command: write the next data byte to the output port; clearing bit 0 resets the CPU.</summary>
    public const byte CmdWriteOutputPort = 0xD1;

    /// <summary>Command: put the next data byte in the output buffer as if the keyboard sent it.</summary>
    public const byte CmdWriteKeyboardOutput = 0xD2;

    /// <summary>Command: put the next data byte in the output buffer as if the aux device sent it (loopback).</summary>
    public const byte CmdWriteAuxOutput = 0xD3;

    /// <summary>Command: send the next data byte to the aux device.</summary>
    public const byte CmdWriteAuxDevice = 0xD4;

    /// <summary>Commands 0xF0-0xFF pulse the output-port lines whose bit is clear in the low nibble for about 6 µs.</summary>
    public const byte CmdPulseOutputBase = 0xF0;

    /// <summary>Command: pulse output line 0, the CPU reset line.</summary>
    public const byte CmdPulseReset = 0xFE;

    /// <summary>The self-test answer that means "passed".</summary>
    public const byte SelfTestPassed = 0x55;

    /// <summary>What a missing device "answers" (with <see cref="StatusTimeout"/> set).</summary>
    private const byte NoDeviceResponse = 0xFF;

    /// <summary>Output port bit 0: the CPU reset line (active low).</summary>
    private const byte OutputPortResetReleased = 0x01;

    /// <summary>Output port bit 1: the A20 gate.</summary>
    private const byte OutputPortA20 = 0x02;

    private const int OutputQueueCapacity = 16;

    private readonly Lock _lock = new();
    private readonly Action? _onReset;
    private readonly IInterruptLine _keyboardInterrupt;
    private readonly IInterruptLine _auxInterrupt;
    private readonly byte[] _ram = new byte[32];
    private readonly (byte Value, byte Flags)[] _output = new (byte, byte)[OutputQueueCapacity];
    private int _outputHead;
    private int _outputCount;
    private byte _outputPort = OutputPortResetReleased | OutputPortA20;
    private byte _pendingCommand;
    private bool _lastWriteWasCommand;
    private bool _keyboardLineHigh;
    private bool _auxLineHigh;
    private byte _lastData;
    private long _resetCount;

    /// <summary>Creates the controller.</summary>
    /// <param name="onReset">Called on the vCPU thread when the guest asserts the reset line; must not block.</param>
    /// <param name="keyboardInterrupt">IRQ 1, or <see langword="null"/> when not wired.</param>
    /// <param name="auxInterrupt">IRQ 12, or <see langword="null"/> when not wired.</param>
    public I8042Controller(Action? onReset = null, IInterruptLine? keyboardInterrupt = null, IInterruptLine? auxInterrupt = null)
    {
        _onReset = onReset;
        _keyboardInterrupt = keyboardInterrupt ?? NullInterruptLine.Instance;
        _auxInterrupt = auxInterrupt ?? NullInterruptLine.Instance;
        _ram[0] = CtrKeyboardInterrupt | CtrSystemFlag | CtrAuxDisabled | CtrTranslate;
    }

    /// <summary>Raised on the vCPU thread when the guest asserts the CPU reset line (command 0xFE, or bit 0 cleared through command 0xD1).</summary>
    public event EventHandler? ResetRequested;

    /// <summary>The command byte (controller configuration) as the guest last set it.</summary>
    public byte CommandByte
    {
        get
        {
            lock (_lock)
            {
                return _ram[0];
            }
        }
    }

    /// <summary>How many times the guest has asserted the reset line.</summary>
    public long ResetCount => Interlocked.Read(ref _resetCount);

    /// <summary>Registers the controller on <paramref name="bus"/> at ports 0x60 and 0x64 (only those two).</summary>
    /// <exception cref="ArgumentException">Either port is taken.</exception>
    public void AttachTo(PortIoBus bus)
    {
        ArgumentNullException.ThrowIfNull(bus);
        bus.Register(DataPort, 1, this, "i8042 data", DataOffset);
        try
        {
            bus.Register(CommandPort, 1, this, "i8042 status/command", CommandOffset);
        }
        catch
        {
            bus.Unregister(DataPort);
            throw;
        }
    }

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data)
    {
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                data[i] = (offset + i) switch
                {
                    DataOffset => ReadData(),
                    CommandOffset => ReadStatus(),
                    _ => BusDispatch.FloatingBusByte,
                };
            }

            UpdateInterrupts();
        }
    }

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        bool reset = false;
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                switch (offset + i)
                {
                    case DataOffset:
                        reset |= WriteData(data[i]);
                        break;
                    case CommandOffset:
                        reset |= WriteCommand(data[i]);
                        break;
                    default:
                        break;
                }
            }

            UpdateInterrupts();
        }

        // Outside the lock: the handler may stop or reset the VM, which can call back into devices.
        if (reset)
        {
            Interlocked.Increment(ref _resetCount);
            _onReset?.Invoke();
            ResetRequested?.Invoke(this, EventArgs.Empty);
        }
    }

    private byte ReadStatus()
    {
        byte status = StatusKeyboardNotInhibited;
        if ((_ram[0] & CtrSystemFlag) != 0)
        {
            status |= StatusSystemFlag;
        }

        if (_lastWriteWasCommand)
        {
            status |= StatusLastWriteWasCommand;
        }

        if (_outputCount > 0)
        {
            status |= (byte)(StatusOutputFull | _output[_outputHead].Flags);
        }

        return status;
    }

    private byte ReadData()
    {
        if (_outputCount == 0)
        {
            // Reading an empty output buffer returns the last byte again, as the real latch does.
            return _lastData;
        }

        _lastData = _output[_outputHead].Value;
        _outputHead = (_outputHead + 1) % OutputQueueCapacity;
        _outputCount--;
        return _lastData;
    }

    private void Enqueue(byte value, byte flags = 0)
    {
        if (_outputCount == OutputQueueCapacity)
        {
            return;
        }

        _output[(_outputHead + _outputCount) % OutputQueueCapacity] = (value, flags);
        _outputCount++;
    }

    /// <returns>Whether the reset line was asserted.</returns>
    private bool WriteCommand(byte command)
    {
        _lastWriteWasCommand = true;
        _pendingCommand = 0;
        switch (command)
        {
            case >= CmdReadCommandByte and <= 0x3F:
                Enqueue(_ram[command & 0x1F]);
                break;
            case >= CmdWriteCommandByte and <= 0x7F:
            case CmdWriteOutputPort:
            case CmdWriteKeyboardOutput:
            case CmdWriteAuxOutput:
            case CmdWriteAuxDevice:
                _pendingCommand = command;
                break;
            case CmdDisableAux:
                _ram[0] |= CtrAuxDisabled;
                break;
            case CmdEnableAux:
                // Single-channel controller: the aux port stays disabled.
                break;
            case CmdTestAux:
                Enqueue(0x01);
                break;
            case CmdSelfTest:
                _ram[0] |= CtrSystemFlag;
                Enqueue(SelfTestPassed);
                break;
            case CmdTestKeyboard:
                Enqueue(0x00);
                break;
            case CmdDisableKeyboard:
                _ram[0] |= CtrKeyboardDisabled;
                break;
            case CmdEnableKeyboard:
                _ram[0] &= unchecked((byte)~CtrKeyboardDisabled);
                break;
            case CmdReadInputPort:
                Enqueue(0x00);
                break;
            case CmdReadOutputPort:
                Enqueue(_outputPort);
                break;
            case >= CmdPulseOutputBase:
                // A clear bit in the low nibble pulses that output line; line 0 is CPU reset.
                return (command & 0x01) == 0;
            default:
                break;
        }

        return false;
    }

    /// <returns>Whether the reset line was asserted.</returns>
    private bool WriteData(byte value)
    {
        _lastWriteWasCommand = false;
        byte command = _pendingCommand;
        _pendingCommand = 0;
        switch (command)
        {
            case >= CmdWriteCommandByte and <= 0x7F:
                _ram[command & 0x1F] = value;
                break;
            case CmdWriteOutputPort:
                _outputPort = (byte)(value | OutputPortResetReleased);
                return (value & OutputPortResetReleased) == 0;
            case CmdWriteKeyboardOutput:
                Enqueue(value);
                break;
            case CmdWriteAuxOutput:
                // No aux channel: the loopback answers on the keyboard channel, which the guest reads as "no aux port".
                Enqueue(value);
                break;
            case CmdWriteAuxDevice:
                Enqueue(NoDeviceResponse, StatusAuxData | StatusTimeout);
                break;
            default:
                // A byte for the keyboard, and no keyboard is attached.
                Enqueue(NoDeviceResponse, StatusTimeout);
                break;
        }

        return false;
    }

    /// <summary>The levels of IRQ 1 and IRQ 12: the byte at the head of the output buffer interrupts on its channel if enabled.</summary>
    private (bool Keyboard, bool Aux) InterruptLevels()
    {
        if (_outputCount == 0)
        {
            return (false, false);
        }

        bool fromAux = (_output[_outputHead].Flags & StatusAuxData) != 0;
        return (!fromAux && (_ram[0] & CtrKeyboardInterrupt) != 0, fromAux && (_ram[0] & CtrAuxInterrupt) != 0);
    }

    private void UpdateInterrupts()
    {
        var (keyboard, aux) = InterruptLevels();
        SetLine(_keyboardInterrupt, ref _keyboardLineHigh, keyboard);
        SetLine(_auxInterrupt, ref _auxLineHigh, aux);
    }

    private static void SetLine(IInterruptLine line, ref bool current, bool high)
    {
        if (current == high)
        {
            return;
        }

        current = high;
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
