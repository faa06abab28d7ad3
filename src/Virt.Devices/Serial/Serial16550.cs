using R = Virt.Devices.Serial16550Registers;

namespace Virt.Devices;

/// <summary>
/// A 16550A UART on the port-I/O bus: register-compatible with what Linux's 8250 driver and
/// firmware consoles expect, transmitting instantly to a host <see cref="Stream"/> and receiving
/// from <see cref="EnqueueInput"/>.
/// </summary>
/// <remarks>
/// <para>Register at <see cref="Serial16550Registers.Com1Port"/> (IRQ 4) or
/// <see cref="Serial16550Registers.Com2Port"/> (IRQ 3) with length
/// <see cref="Serial16550Registers.PortCount"/>. Wider accesses are handled as consecutive byte
/// accesses, as an 8-bit ISA device sees them.</para>
/// <para>Transmission takes no time: THRE and TEMT are always set and a transmitter-empty interrupt
/// follows every THR write (the line drops and rises again, so edge-triggered controllers see it).</para>
/// <para>The character-timeout interrupt fires as soon as the receive FIFO holds data below its
/// trigger level (a timeout of zero), so no timer is needed.</para>
/// <para>A byte that arrives while the receive FIFO is full is lost and sets the overrun bit in LSR.</para>
/// <para>The interrupt line is driven by the IIR state alone; MCR.OUT2 is stored but does not gate it.</para>
/// <para>Thread-safe: the vCPU thread and host input may call in concurrently.</para>
/// </remarks>
public sealed partial class Serial16550 : IPortIoDevice
{
    private static readonly byte[] TriggerLevels = [1, 4, 8, 14];

    /// <summary>MSR lines outside loopback: a peer that is present (DCD), ready (DSR) and clear to send (CTS).</summary>
    private const byte DefaultModemLines = R.MsrDataCarrierDetect | R.MsrDataSetReady | R.MsrClearToSend;

    private readonly Lock _lock = new();
    private readonly Stream _output;
    private readonly IInterruptLine _interrupt;
    private readonly byte[] _fifo = new byte[R.FifoSize];
    private int _fifoHead;
    private int _fifoCount;

    /// <summary>Completed (off the vCPU thread) when the receive FIFO gets room again; see <see cref="WaitForInputSpaceAsync"/>.</summary>
    private TaskCompletionSource? _spaceWaiter;

    private byte _dll;
    private byte _dlm;
    private byte _ier;
    private byte _lcr;
    private byte _mcr;
    private byte _lsrErrors;
    private byte _msr;
    private byte _scr;
    private byte _fcr;
    private bool _thrPending;
    private bool _lineHigh;
    private long _overruns;
    private long _outputErrors;

    /// <summary>Standard I/O base of COM1.</summary>
    public const ushort Com1Port = R.Com1Port;

    /// <summary>Standard ISA interrupt (IRQ) of COM1.</summary>
    public const int Com1Irq = R.Com1Irq;

    /// <summary>Standard I/O base of COM2.</summary>
    public const ushort Com2Port = R.Com2Port;

    /// <summary>Standard ISA interrupt (IRQ) of COM2.</summary>
    public const int Com2Irq = R.Com2Irq;

    /// <summary>Number of ports to register the UART with.</summary>
    public const ushort PortCount = R.PortCount;

    /// <summary>Creates a UART in its power-on state.</summary>
    /// <param name="interrupt">The UART's interrupt line, or <see langword="null"/> when interrupts are not wired.</param>
    /// <param name="output">Where transmitted bytes go (use <see cref="Stream.Null"/> to discard them). Flushed after each line feed.</param>
    public Serial16550(IInterruptLine? interrupt, Stream output)
        : this(interrupt, output, Serial16550State.PowerOn)
    {
    }

    private Serial16550(IInterruptLine? interrupt, Stream output, in Serial16550State state)
    {
        ArgumentNullException.ThrowIfNull(output);
        _output = output;
        _interrupt = interrupt ?? NullInterruptLine.Instance;
        Restore(state);
    }

    /// <summary>Creates a UART whose output is decoded as UTF-8 and written to <paramref name="writer"/>.</summary>
    public static Serial16550 ForTextWriter(IInterruptLine? interrupt, TextWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        return new Serial16550(interrupt, new TextWriterOutputStream(writer));
    }

    /// <summary>Creates a UART from a snapshot taken with <see cref="GetState"/>, and drives its interrupt line to match.</summary>
    /// <exception cref="ArgumentException">The state is inconsistent (e.g. more bytes in the FIFO than it holds).</exception>
    public static Serial16550 FromState(in Serial16550State state, IInterruptLine? interrupt, Stream output)
    {
        var uart = new Serial16550(interrupt, output, state);
        lock (uart._lock)
        {
            uart._lineHigh = !uart.PendingInterruptIsNone();
            if (uart._lineHigh)
            {
                uart._interrupt.Raise();
            }
        }

        return uart;
    }

    /// <summary>How many received bytes were lost because the receive FIFO was full.</summary>
    public long OverrunCount => Interlocked.Read(ref _overruns);

    /// <summary>How many transmitted bytes were lost because the output stream failed.</summary>
    public long OutputErrorCount => Interlocked.Read(ref _outputErrors);

    /// <summary>How many more bytes the receive FIFO accepts now (16 minus its fill with FIFOs on, 1 or 0 with them off).</summary>
    public int AvailableInputSpace
    {
        get
        {
            lock (_lock)
            {
                return Capacity - _fifoCount;
            }
        }
    }

    private int Capacity => (_fcr & R.FcrEnableFifos) != 0 ? R.FifoSize : 1;

    private bool FifosEnabled => (_fcr & R.FcrEnableFifos) != 0;

    /// <summary>
    /// Completes when the receive FIFO can take at least one byte: at once if it can now, else when the guest
    /// reads a byte or clears the FIFO. Hosts that feed a stream (a terminal, a pipe) wait on it before
    /// <see cref="EnqueueInput"/> so that nothing is lost, as a serial line with flow control behaves.
    /// </summary>
    public Task WaitForInputSpaceAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            if (Capacity - _fifoCount > 0)
            {
                return Task.CompletedTask;
            }

            _spaceWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _spaceWaiter.Task.WaitAsync(cancellationToken);
        }
    }

    /// <summary>
    /// Delivers all of <paramref name="bytes"/> to the guest's receiver with flow control: what the receive FIFO
    /// takes now, then more each time the guest makes room, so nothing is lost. Completes when every byte is in
    /// the FIFO.
    /// </summary>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled (some bytes may have been delivered).</exception>
    public async Task EnqueueInputAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken = default)
    {
        int sent = 0;
        while (sent < bytes.Length)
        {
            await WaitForInputSpaceAsync(cancellationToken).ConfigureAwait(false);
            lock (_lock)
            {
                int take = Math.Min(bytes.Length - sent, Capacity - _fifoCount);
                sent += EnqueueInput(bytes.Span.Slice(sent, take));
            }
        }
    }

    /// <summary>Delivers bytes from the host to the guest's receiver.</summary>
    /// <returns>How many bytes the receive FIFO took. The rest were lost, and set the overrun bit
    /// (callers that must not lose input send at most <see cref="AvailableInputSpace"/> bytes).</returns>
    public int EnqueueInput(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty)
        {
            return 0;
        }

        lock (_lock)
        {
            int accepted = 0;
            foreach (byte b in bytes)
            {
                if (!TryReceive(b))
                {
                    break;
                }

                accepted++;
            }

            if (accepted < bytes.Length)
            {
                Interlocked.Add(ref _overruns, bytes.Length - accepted - 1);
            }

            UpdateInterrupt();
            return accepted;
        }
    }

    /// <summary>Takes a snapshot of the registers and the receive FIFO.</summary>
    public Serial16550State GetState()
    {
        lock (_lock)
        {
            var fifo = new byte[_fifoCount];
            for (int i = 0; i < _fifoCount; i++)
            {
                fifo[i] = _fifo[(_fifoHead + i) % R.FifoSize];
            }

            return new Serial16550State
            {
                DivisorLow = _dll,
                DivisorHigh = _dlm,
                InterruptEnable = _ier,
                LineControl = _lcr,
                ModemControl = _mcr,
                LineStatusErrors = _lsrErrors,
                ModemStatus = _msr,
                Scratch = _scr,
                FifoControl = _fcr,
                TransmitterEmptyInterruptPending = _thrPending,
                ReceiveFifo = fifo,
            };
        }
    }

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data)
    {
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                data[i] = ReadRegister(offset + i);
            }

            UpdateInterrupt();
        }
    }

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                WriteRegister(offset + i, data[i]);
            }

            UpdateInterrupt();
        }
    }

    private void Restore(in Serial16550State state)
    {
        byte[] fifo = state.ReceiveFifo ?? [];
        int capacity = (state.FifoControl & R.FcrEnableFifos) != 0 ? R.FifoSize : 1;
        if (fifo.Length > capacity)
        {
            throw new ArgumentException($"The receive FIFO holds {fifo.Length} bytes but can hold at most {capacity} with FifoControl 0x{state.FifoControl:x2}.", nameof(state));
        }

        _dll = state.DivisorLow;
        _dlm = state.DivisorHigh;
        _ier = (byte)(state.InterruptEnable & 0x0F);
        _lcr = state.LineControl;
        _mcr = (byte)(state.ModemControl & R.McrWritableMask);
        _lsrErrors = (byte)(state.LineStatusErrors & R.LsrErrorBits);
        _msr = state.ModemStatus;
        _scr = state.Scratch;
        _fcr = (byte)(state.FifoControl & (R.FcrEnableFifos | R.FcrTriggerLevelMask));
        _thrPending = state.TransmitterEmptyInterruptPending;
        fifo.CopyTo(_fifo, 0);
        _fifoHead = 0;
        _fifoCount = fifo.Length;
    }

    private bool DivisorLatchAccess => (_lcr & R.LcrDivisorLatchAccess) != 0;

    private byte ReadRegister(int offset)
    {
        switch (offset)
        {
            case R.Data when DivisorLatchAccess:
                return _dll;
            case R.Data:
                return ReadReceiveBuffer();
            case R.InterruptEnable when DivisorLatchAccess:
                return _dlm;
            case R.InterruptEnable:
                return _ier;
            case R.InterruptIdFifoControl:
                return ReadInterruptId();
            case R.LineControl:
                return _lcr;
            case R.ModemControl:
                return _mcr;
            case R.LineStatus:
                byte lsr = (byte)(_lsrErrors | R.LsrTransmitterHoldingEmpty | R.LsrTransmitterEmpty | (_fifoCount > 0 ? R.LsrDataReady : 0));
                _lsrErrors = 0;
                return lsr;
            case R.ModemStatus:
                byte msr = _msr;
                _msr &= unchecked((byte)~R.MsrDeltaBits);
                return msr;
            case R.Scratch:
                return _scr;
            default:
                return BusDispatch.FloatingBusByte;
        }
    }

    private void WriteRegister(int offset, byte value)
    {
        switch (offset)
        {
            case R.Data when DivisorLatchAccess:
                _dll = value;
                break;
            case R.Data:
                Transmit(value);
                break;
            case R.InterruptEnable when DivisorLatchAccess:
                _dlm = value;
                break;
            case R.InterruptEnable:
                byte ier = (byte)(value & 0x0F);
                if (((ier ^ _ier) & R.IerTransmitterEmpty) != 0)
                {
                    // Enabling the THRE interrupt while THR is empty raises it at once (the 8250 driver tests for this).
                    _thrPending = (ier & R.IerTransmitterEmpty) != 0;
                }

                _ier = ier;
                break;
            case R.InterruptIdFifoControl:
                WriteFifoControl(value);
                break;
            case R.LineControl:
                _lcr = value;
                break;
            case R.ModemControl:
                WriteModemControl(value);
                break;
            case R.Scratch:
                _scr = value;
                break;
            default:
                // LSR and MSR are read-only on a 16550A; offsets past 7 do not exist.
                break;
        }
    }

    private byte ReadReceiveBuffer()
    {
        if (_fifoCount == 0)
        {
            return 0;
        }

        byte b = _fifo[_fifoHead];
        _fifoHead = (_fifoHead + 1) % R.FifoSize;
        _fifoCount--;
        ReleaseSpaceWaiter();
        return b;
    }

    private byte ReadInterruptId()
    {
        byte id = PendingInterruptId();
        if (id == R.IirTransmitterEmpty)
        {
            // Reading IIR while it reports THRE acknowledges that interrupt.
            _thrPending = false;
        }

        return (byte)(id | (FifosEnabled ? R.IirFifosEnabled : 0));
    }

    private void WriteFifoControl(byte value)
    {
        bool enable = (value & R.FcrEnableFifos) != 0;
        if (enable != FifosEnabled)
        {
            ClearReceiveFifo();
        }

        if (!enable)
        {
            _fcr = 0;
            ReleaseSpaceWaiter();
            return;
        }

        if ((value & R.FcrClearReceiveFifo) != 0)
        {
            ClearReceiveFifo();
        }

        _fcr = (byte)(value & (R.FcrEnableFifos | R.FcrTriggerLevelMask));
    }

    private void ClearReceiveFifo()
    {
        _fifoHead = 0;
        _fifoCount = 0;
        ReleaseSpaceWaiter();
    }

    /// <summary>Called under the lock when the FIFO may have room: wakes a host waiting to send (its continuation runs elsewhere).</summary>
    private void ReleaseSpaceWaiter()
    {
        if (_spaceWaiter is { } waiter && Capacity - _fifoCount > 0)
        {
            _spaceWaiter = null;
            waiter.TrySetResult();
        }
    }

    private void WriteModemControl(byte value)
    {
        byte oldLines = (byte)(_msr & 0xF0);
        _mcr = (byte)(value & R.McrWritableMask);
        byte newLines = ModemInputLines();
        byte changed = (byte)(oldLines ^ newLines);
        byte deltas = 0;
        if ((changed & R.MsrClearToSend) != 0)
        {
            deltas |= R.MsrDeltaClearToSend;
        }

        if ((changed & R.MsrDataSetReady) != 0)
        {
            deltas |= R.MsrDeltaDataSetReady;
        }

        if ((oldLines & R.MsrRingIndicator) != 0 && (newLines & R.MsrRingIndicator) == 0)
        {
            deltas |= R.MsrTrailingEdgeRingIndicator;
        }

        if ((changed & R.MsrDataCarrierDetect) != 0)
        {
            deltas |= R.MsrDeltaDataCarrierDetect;
        }

        _msr = (byte)(newLines | (_msr & R.MsrDeltaBits) | deltas);
    }

    /// <summary>The modem input lines: in loopback the modem outputs drive them, otherwise a connected, ready peer.</summary>
    private byte ModemInputLines() => ModemInputLines(_mcr);

    private static byte ModemInputLines(byte mcr)
    {
        if ((mcr & R.McrLoopback) == 0)
        {
            return DefaultModemLines;
        }

        byte lines = 0;
        if ((mcr & R.McrRequestToSend) != 0)
        {
            lines |= R.MsrClearToSend;
        }

        if ((mcr & R.McrDataTerminalReady) != 0)
        {
            lines |= R.MsrDataSetReady;
        }

        if ((mcr & R.McrOut1) != 0)
        {
            lines |= R.MsrRingIndicator;
        }

        if ((mcr & R.McrOut2) != 0)
        {
            lines |= R.MsrDataCarrierDetect;
        }

        return lines;
    }

    private void Transmit(byte value)
    {
        // Writing THR acknowledges a pending THRE interrupt; let the line fall before the byte
        // "finishes" so the next THRE interrupt is a fresh edge.
        _thrPending = false;
        UpdateInterrupt();

        if ((_mcr & R.McrLoopback) != 0)
        {
            TryReceive(value);
        }
        else
        {
            try
            {
                _output.WriteByte(value);
                if (value == (byte)'\n')
                {
                    _output.Flush();
                }
            }
            catch (Exception ex) when (ex is IOException or ObjectDisposedException or NotSupportedException)
            {
                Interlocked.Increment(ref _outputErrors);
            }
        }

        _thrPending = (_ier & R.IerTransmitterEmpty) != 0;
    }

    private bool TryReceive(byte value)
    {
        if (_fifoCount >= Capacity)
        {
            _lsrErrors |= R.LsrOverrunError;
            Interlocked.Increment(ref _overruns);
            return false;
        }

        _fifo[(_fifoHead + _fifoCount) % R.FifoSize] = value;
        _fifoCount++;
        return true;
    }

    /// <summary>The IIR identification of the highest-priority pending, enabled interrupt (16550A priority order).</summary>
    private byte PendingInterruptId()
    {
        if ((_ier & R.IerLineStatus) != 0 && (_lsrErrors & (R.LsrOverrunError | R.LsrParityError | R.LsrFramingError | R.LsrBreakInterrupt)) != 0)
        {
            return R.IirLineStatus;
        }

        if ((_ier & R.IerReceivedDataAvailable) != 0 && _fifoCount > 0)
        {
            bool belowTrigger = FifosEnabled && _fifoCount < TriggerLevels[_fcr >> 6];
            return belowTrigger ? R.IirCharacterTimeout : R.IirReceivedDataAvailable;
        }

        if ((_ier & R.IerTransmitterEmpty) != 0 && _thrPending)
        {
            return R.IirTransmitterEmpty;
        }

        if ((_ier & R.IerModemStatus) != 0 && (_msr & R.MsrDeltaBits) != 0)
        {
            return R.IirModemStatus;
        }

        return R.IirNoInterruptPending;
    }

    private bool PendingInterruptIsNone() => PendingInterruptId() == R.IirNoInterruptPending;

    private void UpdateInterrupt()
    {
        bool high = !PendingInterruptIsNone();
        if (high == _lineHigh)
        {
            return;
        }

        _lineHigh = high;
        if (high)
        {
            _interrupt.Raise();
        }
        else
        {
            _interrupt.Lower();
        }
    }
}
