namespace Virt.Devices;

/// <summary>
/// Everything a <see cref="Serial16550"/> remembers, as plain data for snapshots
/// (<see cref="Serial16550.GetState"/>, <see cref="Serial16550.FromState"/>). The output stream and
/// interrupt line are not state: the restorer supplies them.
/// </summary>
public struct Serial16550State
{
    /// <summary>Divisor latch low byte (DLL).</summary>
    public byte DivisorLow;

    /// <summary>Divisor latch high byte (DLM).</summary>
    public byte DivisorHigh;

    /// <summary>Interrupt enable register (bits 3:0).</summary>
    public byte InterruptEnable;

    /// <summary>Line control register.</summary>
    public byte LineControl;

    /// <summary>Modem control register (bits 4:0).</summary>
    public byte ModemControl;

    /// <summary>Line status error bits (overrun, parity, framing, break); the data-ready and transmitter bits are derived.</summary>
    public byte LineStatusErrors;

    /// <summary>Modem status register, including the delta bits not yet read.</summary>
    public byte ModemStatus;

    /// <summary>Scratch register.</summary>
    public byte Scratch;

    /// <summary>FIFO control as last programmed: bit 0 (FIFOs enabled) and bits 7:6 (trigger level).</summary>
    public byte FifoControl;

    /// <summary>Whether a transmitter-empty interrupt is pending (it clears when IIR reports it or THR is written).</summary>
    public bool TransmitterEmptyInterruptPending;

    /// <summary>Bytes waiting in the receive FIFO, oldest first (at most 16; at most 1 with FIFOs disabled).</summary>
    public byte[]? ReceiveFifo;

    /// <summary>The state after power-on reset: 9600 baud divisor, 8N1, OUT2 set, FIFOs off, nothing pending.</summary>
    public static Serial16550State PowerOn => new()
    {
        DivisorLow = 0x0C,
        LineControl = 0x03,
        ModemControl = Serial16550Registers.McrOut2,
        ModemStatus = Serial16550Registers.MsrDataCarrierDetect | Serial16550Registers.MsrDataSetReady | Serial16550Registers.MsrClearToSend,
        ReceiveFifo = [],
    };
}
