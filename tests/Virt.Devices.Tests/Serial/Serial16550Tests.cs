using System.Text;
using Virt.Devices.Tests.Support;
using Xunit;
using R = Virt.Devices.Serial16550Registers;

namespace Virt.Devices.Tests.Serial;

public sealed class Serial16550Tests
{
    private readonly MemoryStream _output = new();
    private readonly RecordingInterruptLine _irq = new();
    private readonly Serial16550 _uart;

    public Serial16550Tests() => _uart = new Serial16550(_irq, _output);

    private byte In(int offset)
    {
        Span<byte> b = stackalloc byte[1];
        _uart.Read((ushort)offset, b);
        return b[0];
    }

    private void Out(int offset, byte value) => _uart.Write((ushort)offset, [value]);

    [Fact]
    public void Power_on_state_has_transmitter_empty_and_no_interrupt_pending()
    {
        Assert.Equal(R.LsrTransmitterHoldingEmpty | R.LsrTransmitterEmpty, In(R.LineStatus));
        Assert.Equal(R.IirNoInterruptPending, In(R.InterruptIdFifoControl));
        Assert.Equal(0, In(R.InterruptEnable));
        Assert.False(_irq.IsHigh);
    }

    [Fact]
    public void Byte_written_to_THR_reaches_the_output_stream()
    {
        foreach (byte b in "hi\n"u8)
        {
            Out(R.Data, b);
        }

        Assert.Equal("hi\n"u8.ToArray(), _output.ToArray());
    }

    [Fact]
    public void LSR_reports_THRE_and_TEMT_after_a_write()
    {
        Out(R.Data, (byte)'x');

        byte lsr = In(R.LineStatus);

        Assert.Equal(R.LsrTransmitterHoldingEmpty, lsr & R.LsrTransmitterHoldingEmpty);
        Assert.Equal(R.LsrTransmitterEmpty, lsr & R.LsrTransmitterEmpty);
        Assert.Equal(0, lsr & R.LsrDataReady);
    }

    [Fact]
    public void With_DLAB_set_offsets_0_and_1_are_the_divisor_latch_and_THR_IER_are_untouched()
    {
        Out(R.InterruptEnable, R.IerReceivedDataAvailable);
        Out(R.LineControl, (byte)(R.LcrDivisorLatchAccess | 0x03));
        Out(R.DivisorLatchLow, 0x01);
        Out(R.DivisorLatchHigh, 0x02);

        Assert.Equal(0x01, In(R.DivisorLatchLow));
        Assert.Equal(0x02, In(R.DivisorLatchHigh));
        Assert.Empty(_output.ToArray());

        Out(R.LineControl, 0x03);
        Assert.Equal(R.IerReceivedDataAvailable, In(R.InterruptEnable));
        Assert.Equal(0x03, In(R.LineControl));

        var state = _uart.GetState();
        Assert.Equal(0x01, state.DivisorLow);
        Assert.Equal(0x02, state.DivisorHigh);
    }

    [Fact]
    public void Received_byte_sets_DR_and_reading_RBR_clears_it()
    {
        Assert.Equal(1, _uart.EnqueueInput("A"u8));

        Assert.Equal(R.LsrDataReady, In(R.LineStatus) & R.LsrDataReady);
        Assert.Equal((byte)'A', In(R.Data));
        Assert.Equal(0, In(R.LineStatus) & R.LsrDataReady);
    }

    [Fact]
    public void Without_FIFOs_a_second_byte_before_the_first_is_read_is_an_overrun()
    {
        Assert.Equal(1, _uart.EnqueueInput("AB"u8));

        byte lsr = In(R.LineStatus);
        Assert.Equal(R.LsrOverrunError, lsr & R.LsrOverrunError);
        Assert.Equal(0, In(R.LineStatus) & R.LsrOverrunError);
        Assert.Equal((byte)'A', In(R.Data));
        Assert.Equal(1, _uart.OverrunCount);
    }

    [Fact]
    public void FIFO_holds_16_bytes_in_order_and_the_17th_sets_overrun()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos);
        byte[] input = [.. Enumerable.Range(0, 17).Select(i => (byte)(0x40 + i))];

        Assert.Equal(16, _uart.EnqueueInput(input));

        Assert.Equal(R.LsrOverrunError, In(R.LineStatus) & R.LsrOverrunError);
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(R.LsrDataReady, In(R.LineStatus) & R.LsrDataReady);
            Assert.Equal(0x40 + i, In(R.Data));
        }

        Assert.Equal(0, In(R.LineStatus) & R.LsrDataReady);
        Assert.Equal(16, _uart.AvailableInputSpace);
    }

    [Fact]
    public async Task Waiting_for_input_space_completes_when_the_guest_reads_or_clears_the_full_FIFO()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos);
        Assert.True(_uart.WaitForInputSpaceAsync(TestContext.Current.CancellationToken).IsCompleted);
        Assert.Equal(16, _uart.EnqueueInput(new byte[16]));

        var wait = _uart.WaitForInputSpaceAsync(TestContext.Current.CancellationToken);
        Assert.False(wait.IsCompleted);
        In(R.Data);
        await wait.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Equal(1, _uart.AvailableInputSpace);

        Assert.Equal(1, _uart.EnqueueInput("x"u8));
        wait = _uart.WaitForInputSpaceAsync(TestContext.Current.CancellationToken);
        Assert.False(wait.IsCompleted);
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos | R.FcrClearReceiveFifo);
        await wait.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Equal(16, _uart.AvailableInputSpace);
        Assert.Equal(0, _uart.OverrunCount);
    }

    [Fact]
    public async Task Input_sent_with_flow_control_arrives_whole_and_in_order_as_the_guest_reads()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos);
        byte[] input = [.. Enumerable.Range(0, 40).Select(i => (byte)i)];

        var send = _uart.EnqueueInputAsync(input, TestContext.Current.CancellationToken);
        Assert.False(send.IsCompleted);
        var received = new List<byte>();
        while (received.Count < input.Length)
        {
            if ((In(R.LineStatus) & R.LsrDataReady) != 0)
            {
                received.Add(In(R.Data));
            }
            else
            {
                await Task.Yield();
            }
        }

        await send.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Equal(input, received);
        Assert.Equal(0, _uart.OverrunCount);
    }

    [Fact]
    public void IIR_reports_FIFOs_enabled_in_bits_7_and_6()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos);
        Assert.Equal(R.IirFifosEnabled | R.IirNoInterruptPending, In(R.InterruptIdFifoControl));

        Out(R.InterruptIdFifoControl, 0);
        Assert.Equal(R.IirNoInterruptPending, In(R.InterruptIdFifoControl));
    }

    [Fact]
    public void FCR_clear_receive_FIFO_discards_pending_input()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos);
        _uart.EnqueueInput("abc"u8);

        Out(R.InterruptIdFifoControl, R.FcrEnableFifos | R.FcrClearReceiveFifo);

        Assert.Equal(0, In(R.LineStatus) & R.LsrDataReady);
    }

    [Fact]
    public void Data_below_the_FIFO_trigger_level_reports_character_timeout_and_at_the_level_data_available()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos | 0x40); // trigger level 4
        Out(R.InterruptEnable, R.IerReceivedDataAvailable);

        _uart.EnqueueInput("abc"u8);
        Assert.Equal(R.IirFifosEnabled | R.IirCharacterTimeout, In(R.InterruptIdFifoControl));
        Assert.True(_irq.IsHigh);

        _uart.EnqueueInput("d"u8);
        Assert.Equal(R.IirFifosEnabled | R.IirReceivedDataAvailable, In(R.InterruptIdFifoControl));

        for (int i = 0; i < 4; i++)
        {
            In(R.Data);
        }

        Assert.False(_irq.IsHigh);
    }

    [Fact]
    public void Loopback_receives_transmitted_bytes_instead_of_sending_them()
    {
        Out(R.ModemControl, R.McrLoopback);
        Out(R.Data, 0x5A);

        Assert.Empty(_output.ToArray());
        Assert.Equal(R.LsrDataReady, In(R.LineStatus) & R.LsrDataReady);
        Assert.Equal(0x5A, In(R.Data));
    }

    [Fact]
    public void Loopback_drives_the_modem_inputs_from_the_modem_outputs()
    {
        // Linux's 8250 probe: loopback with RTS and OUT2 must read back CTS and DCD.
        Out(R.ModemControl, R.McrLoopback | R.McrOut2 | R.McrRequestToSend);
        Assert.Equal(R.MsrDataCarrierDetect | R.MsrClearToSend, In(R.ModemStatus) & 0xF0);

        Out(R.ModemControl, R.McrLoopback | R.McrDataTerminalReady | R.McrOut1);
        byte msr = In(R.ModemStatus);
        Assert.Equal(R.MsrDataSetReady | R.MsrRingIndicator, msr & 0xF0);
        Assert.Equal(R.MsrDeltaClearToSend | R.MsrDeltaDataSetReady | R.MsrDeltaDataCarrierDetect, msr & R.MsrDeltaBits);
        Assert.Equal(0, In(R.ModemStatus) & R.MsrDeltaBits);
    }

    [Fact]
    public void Scratch_register_reads_back()
    {
        Out(R.Scratch, 0xA5);
        Assert.Equal(0xA5, In(R.Scratch));
    }

    [Fact]
    public void Received_data_interrupt_is_raised_only_when_enabled_and_lowered_when_the_data_is_read()
    {
        _uart.EnqueueInput("x"u8);
        Assert.False(_irq.IsHigh);

        Out(R.InterruptEnable, R.IerReceivedDataAvailable);
        Assert.True(_irq.IsHigh);
        Assert.Equal(R.IirReceivedDataAvailable, In(R.InterruptIdFifoControl));

        In(R.Data);
        Assert.False(_irq.IsHigh);
        Assert.Equal(R.IirNoInterruptPending, In(R.InterruptIdFifoControl));
    }

    [Fact]
    public void Enabling_the_THRE_interrupt_with_THR_empty_raises_it_and_reading_IIR_acknowledges_it()
    {
        Out(R.InterruptEnable, R.IerTransmitterEmpty);

        Assert.True(_irq.IsHigh);
        Assert.Equal(R.IirTransmitterEmpty, In(R.InterruptIdFifoControl));
        Assert.False(_irq.IsHigh);
        Assert.Equal(R.IirNoInterruptPending, In(R.InterruptIdFifoControl));
    }

    [Fact]
    public void Each_THR_write_produces_a_fresh_THRE_interrupt_edge()
    {
        Out(R.InterruptEnable, R.IerTransmitterEmpty);
        int raisesBefore = _irq.RaiseCount;

        Out(R.Data, (byte)'a');
        Out(R.Data, (byte)'b');

        Assert.Equal(raisesBefore + 2, _irq.RaiseCount);
        Assert.True(_irq.IsHigh);
    }

    [Fact]
    public void Disabling_interrupts_in_IER_lowers_the_line()
    {
        Out(R.InterruptEnable, R.IerTransmitterEmpty);
        Assert.True(_irq.IsHigh);

        Out(R.InterruptEnable, 0);

        Assert.False(_irq.IsHigh);
    }

    [Fact]
    public void Line_status_interrupt_on_overrun_is_cleared_by_reading_LSR()
    {
        Out(R.InterruptEnable, R.IerLineStatus);
        _uart.EnqueueInput("ab"u8);

        Assert.True(_irq.IsHigh);
        Assert.Equal(R.IirLineStatus, In(R.InterruptIdFifoControl));
        In(R.LineStatus);
        Assert.False(_irq.IsHigh);
    }

    [Fact]
    public void Modem_status_interrupt_is_raised_on_a_delta_and_cleared_by_reading_MSR()
    {
        Out(R.InterruptEnable, R.IerModemStatus);
        Out(R.ModemControl, R.McrLoopback | R.McrRequestToSend);

        Assert.True(_irq.IsHigh);
        Assert.Equal(R.IirModemStatus, In(R.InterruptIdFifoControl));
        In(R.ModemStatus);
        Assert.False(_irq.IsHigh);
    }

    [Fact]
    public void IIR_reports_the_highest_priority_interrupt_first()
    {
        Out(R.InterruptEnable, R.IerReceivedDataAvailable | R.IerTransmitterEmpty | R.IerLineStatus | R.IerModemStatus);
        Out(R.ModemControl, R.McrLoopback | R.McrRequestToSend); // modem status delta
        _uart.EnqueueInput("ab"u8); // data + overrun

        Assert.Equal(R.IirLineStatus, In(R.InterruptIdFifoControl));
        In(R.LineStatus);
        Assert.Equal(R.IirReceivedDataAvailable, In(R.InterruptIdFifoControl));
        In(R.Data);
        Assert.Equal(R.IirTransmitterEmpty, In(R.InterruptIdFifoControl));
        Assert.Equal(R.IirModemStatus, In(R.InterruptIdFifoControl));
        In(R.ModemStatus);
        Assert.Equal(R.IirNoInterruptPending, In(R.InterruptIdFifoControl));
        Assert.False(_irq.IsHigh);
    }

    [Fact]
    public void Word_access_is_handled_as_consecutive_byte_registers()
    {
        _uart.Write(R.LineControl, [0x03, 0x0B]); // LCR, MCR

        Assert.Equal(0x03, In(R.LineControl));
        Assert.Equal(0x0B, In(R.ModemControl));
    }

    [Fact]
    public void Snapshot_restores_registers_FIFO_and_interrupt_level()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos | 0xC0);
        Out(R.InterruptEnable, R.IerReceivedDataAvailable);
        Out(R.Scratch, 0x77);
        _uart.EnqueueInput("xyz"u8);
        Serial16550State state = _uart.GetState();

        var irq = new RecordingInterruptLine();
        var copy = Serial16550.FromState(state, irq, Stream.Null);

        Assert.True(irq.IsHigh);
        Assert.Equal(0x77, copy.GetState().Scratch);
        Span<byte> b = stackalloc byte[1];
        var received = new List<byte>();
        for (int i = 0; i < 3; i++)
        {
            copy.Read(R.Data, b);
            received.Add(b[0]);
        }

        Assert.Equal("xyz"u8.ToArray(), received);
        Assert.False(irq.IsHigh);
    }

    [Fact]
    public void Snapshot_with_more_bytes_than_the_FIFO_holds_is_rejected()
    {
        var state = Serial16550State.PowerOn;
        state.ReceiveFifo = new byte[2];

        Assert.Throws<ArgumentException>(() => Serial16550.FromState(state, null, Stream.Null));
    }

    [Fact]
    public void TextWriter_output_decodes_UTF8_split_across_writes()
    {
        var writer = new StringWriter();
        var uart = Serial16550.ForTextWriter(null, writer);

        foreach (byte b in Encoding.UTF8.GetBytes("é✓\n"))
        {
            uart.Write(R.Data, [b]);
        }

        Assert.Equal("é✓\n", writer.ToString());
    }

    [Fact]
    public void Failing_output_stream_drops_bytes_without_throwing()
    {
        var closed = new MemoryStream();
        closed.Dispose();
        var uart = new Serial16550(null, closed);

        uart.Write(R.Data, [(byte)'x']);

        Assert.Equal(1, uart.OutputErrorCount);
    }

    [Fact]
    public async Task Input_from_another_thread_is_received_in_order()
    {
        Out(R.InterruptIdFifoControl, R.FcrEnableFifos);
        byte[] payload = [.. Enumerable.Range(0, 1000).Select(i => (byte)i)];
        var producer = Task.Run(() =>
        {
            int sent = 0;
            while (sent < payload.Length)
            {
                int space = _uart.AvailableInputSpace;
                if (space > 0)
                {
                    sent += _uart.EnqueueInput(payload.AsSpan(sent, Math.Min(space, payload.Length - sent)));
                }
                else
                {
                    Thread.Yield();
                }
            }
        }, TestContext.Current.CancellationToken);

        var received = new List<byte>();
        while (received.Count < payload.Length)
        {
            if ((In(R.LineStatus) & R.LsrDataReady) != 0)
            {
                received.Add(In(R.Data));
            }
        }

        await producer;
        Assert.Equal(payload, received);
        Assert.Equal(0, _uart.OverrunCount);
    }
}
