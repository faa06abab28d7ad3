namespace Virt.Devices;

/// <summary>Register offsets and bit meanings of the 16550A UART (National Semiconductor PC16550D data sheet).</summary>
public static class Serial16550Registers
{
    /// <summary>Receiver buffer (read) / transmitter holding register (write) when DLAB = 0.</summary>
    public const int Data = 0;

    /// <summary>Interrupt enable register when DLAB = 0.</summary>
    public const int InterruptEnable = 1;

    /// <summary>Interrupt identification (read) / FIFO control (write).</summary>
    public const int InterruptIdFifoControl = 2;

    /// <summary>Line control register.</summary>
    public const int LineControl = 3;

    /// <summary>Modem control register.</summary>
    public const int ModemControl = 4;

    /// <summary>Line status register.</summary>
    public const int LineStatus = 5;

    /// <summary>Modem status register.</summary>
    public const int ModemStatus = 6;

    /// <summary>Scratch register: a byte the guest may store and read back.</summary>
    public const int Scratch = 7;

    /// <summary>Divisor latch low byte (offset 0) when DLAB = 1.</summary>
    public const int DivisorLatchLow = 0;

    /// <summary>Divisor latch high byte (offset 1) when DLAB = 1.</summary>
    public const int DivisorLatchHigh = 1;

    /// <summary>Number of ports the UART occupies.</summary>
    public const int PortCount = 8;

    /// <summary>IER: interrupt when received data is available (or a FIFO character timeout).</summary>
    public const byte IerReceivedDataAvailable = 0x01;

    /// <summary>IER: interrupt when the transmitter holding register is empty.</summary>
    public const byte IerTransmitterEmpty = 0x02;

    /// <summary>IER: interrupt on a receiver line status error (overrun, parity, framing, break).</summary>
    public const byte IerLineStatus = 0x04;

    /// <summary>IER: interrupt on a modem status change.</summary>
    public const byte IerModemStatus = 0x08;

    /// <summary>IIR: set when no interrupt is pending.</summary>
    public const byte IirNoInterruptPending = 0x01;

    /// <summary>IIR identification: receiver line status (highest priority).</summary>
    public const byte IirLineStatus = 0x06;

    /// <summary>IIR identification: received data available (RX FIFO at or above its trigger level).</summary>
    public const byte IirReceivedDataAvailable = 0x04;

    /// <summary>IIR identification: character timeout (RX FIFO holds data below its trigger level; FIFO mode only).</summary>
    public const byte IirCharacterTimeout = 0x0C;

    /// <summary>IIR identification: transmitter holding register empty.</summary>
    public const byte IirTransmitterEmpty = 0x02;

    /// <summary>IIR identification: modem status change (lowest priority).</summary>
    public const byte IirModemStatus = 0x00;

    /// <summary>IIR bits 7:6: both set when the FIFOs are enabled (a 16550A, as opposed to a 16550 with broken FIFOs).</summary>
    public const byte IirFifosEnabled = 0xC0;

    /// <summary>FCR: enable both FIFOs (clearing it disables and empties them).</summary>
    public const byte FcrEnableFifos = 0x01;

    /// <summary>FCR: empty the receive FIFO (self-clearing).</summary>
    public const byte FcrClearReceiveFifo = 0x02;

    /// <summary>FCR: empty the transmit FIFO (self-clearing).</summary>
    public const byte FcrClearTransmitFifo = 0x04;

    /// <summary>FCR bits 7:6: receive FIFO trigger level (00 = 1, 01 = 4, 10 = 8, 11 = 14 bytes).</summary>
    public const byte FcrTriggerLevelMask = 0xC0;

    /// <summary>LCR: divisor latch access bit; offsets 0 and 1 address DLL and DLM while set.</summary>
    public const byte LcrDivisorLatchAccess = 0x80;

    /// <summary>MCR: data terminal ready.</summary>
    public const byte McrDataTerminalReady = 0x01;

    /// <summary>MCR: request to send.</summary>
    public const byte McrRequestToSend = 0x02;

    /// <summary>MCR: general-purpose output 1 (drives RI in loopback).</summary>
    public const byte McrOut1 = 0x04;

    /// <summary>MCR: general-purpose output 2 (on PCs, gates the interrupt to the interrupt controller).</summary>
    public const byte McrOut2 = 0x08;

    /// <summary>MCR: local loopback; transmitted bytes are received and the modem outputs drive the modem inputs.</summary>
    public const byte McrLoopback = 0x10;

    /// <summary>MCR bits a 16550A implements.</summary>
    public const byte McrWritableMask = 0x1F;

    /// <summary>LSR: data ready (the receive buffer or FIFO holds a byte).</summary>
    public const byte LsrDataReady = 0x01;

    /// <summary>LSR: overrun error (a byte arrived while the receive FIFO was full and was lost); cleared by reading LSR.</summary>
    public const byte LsrOverrunError = 0x02;

    /// <summary>LSR: parity error.</summary>
    public const byte LsrParityError = 0x04;

    /// <summary>LSR: framing error.</summary>
    public const byte LsrFramingError = 0x08;

    /// <summary>LSR: break interrupt.</summary>
    public const byte LsrBreakInterrupt = 0x10;

    /// <summary>LSR: transmitter holding register (or transmit FIFO) empty.</summary>
    public const byte LsrTransmitterHoldingEmpty = 0x20;

    /// <summary>LSR: transmitter empty (holding register and shift register both idle).</summary>
    public const byte LsrTransmitterEmpty = 0x40;

    /// <summary>LSR: at least one parity/framing/break error is in the receive FIFO.</summary>
    public const byte LsrReceiveFifoError = 0x80;

    /// <summary>LSR bits that reading LSR clears.</summary>
    public const byte LsrErrorBits = LsrOverrunError | LsrParityError | LsrFramingError | LsrBreakInterrupt | LsrReceiveFifoError;

    /// <summary>MSR: CTS changed since MSR was last read.</summary>
    public const byte MsrDeltaClearToSend = 0x01;

    /// <summary>MSR: DSR changed since MSR was last read.</summary>
    public const byte MsrDeltaDataSetReady = 0x02;

    /// <summary>MSR: RI went from on to off since MSR was last read (trailing edge).</summary>
    public const byte MsrTrailingEdgeRingIndicator = 0x04;

    /// <summary>MSR: DCD changed since MSR was last read.</summary>
    public const byte MsrDeltaDataCarrierDetect = 0x08;

    /// <summary>MSR: clear to send.</summary>
    public const byte MsrClearToSend = 0x10;

    /// <summary>MSR: data set ready.</summary>
    public const byte MsrDataSetReady = 0x20;

    /// <summary>MSR: ring indicator.</summary>
    public const byte MsrRingIndicator = 0x40;

    /// <summary>MSR: data carrier detect.</summary>
    public const byte MsrDataCarrierDetect = 0x80;

    /// <summary>MSR delta bits, cleared by reading MSR.</summary>
    public const byte MsrDeltaBits = 0x0F;

    /// <summary>Receive FIFO depth of a 16550A.</summary>
    public const int FifoSize = 16;

    /// <summary>Standard I/O base of COM1.</summary>
    public const ushort Com1Port = 0x3F8;

    /// <summary>Standard ISA interrupt of COM1.</summary>
    public const int Com1Irq = 4;

    /// <summary>Standard I/O base of COM2.</summary>
    public const ushort Com2Port = 0x2F8;

    /// <summary>Standard ISA interrupt of COM2.</summary>
    public const int Com2Irq = 3;

    /// <summary>Standard I/O base of COM3.</summary>
    public const ushort Com3Port = 0x3E8;

    /// <summary>Standard I/O base of COM4.</summary>
    public const ushort Com4Port = 0x2E8;
}
