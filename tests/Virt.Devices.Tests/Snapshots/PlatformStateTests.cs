using Virt.Devices.Tests.Support;
using Virt.Snapshots;
using Xunit;
using static Virt.Devices.Tests.Snapshots.StateTestSupport;
using R = Virt.Devices.Serial16550Registers;

namespace Virt.Devices.Tests.Snapshots;

/// <summary>The UART, keyboard controller and RTC saved in a busy state come back reading the same in a fresh instance.</summary>
public sealed class PlatformStateTests
{
    private static Serial16550 BusyUart(IInterruptLine? line = null)
    {
        var uart = new Serial16550(line, Stream.Null);
        uart.Out(R.LineControl, 0x80 | 0x1B);
        uart.Out(R.DivisorLatchLow, 0x34);
        uart.Out(R.DivisorLatchHigh, 0x12);
        uart.Out(R.LineControl, 0x1B);
        uart.Out(R.InterruptIdFifoControl, R.FcrEnableFifos | 0x80); // trigger level 8
        uart.Out(R.InterruptEnable, R.IerReceivedDataAvailable | R.IerTransmitterEmpty | R.IerLineStatus);
        uart.Out(R.ModemControl, R.McrDataTerminalReady | R.McrOut2);
        uart.Out(R.Scratch, 0xA5);
        uart.EnqueueInput("hello, world!"u8);
        return uart;
    }

    private static byte[] ReadUartRegisters(Serial16550 uart)
    {
        var regs = new List<byte>();
        uart.Out(R.LineControl, 0x9B);
        regs.Add(uart.In(R.DivisorLatchLow));
        regs.Add(uart.In(R.DivisorLatchHigh));
        uart.Out(R.LineControl, 0x1B);
        foreach (int r in (int[])[R.InterruptEnable, R.LineControl, R.ModemControl, R.ModemStatus, R.Scratch, R.InterruptIdFifoControl, R.LineStatus])
        {
            regs.Add(uart.In((ushort)r));
        }

        return [.. regs];
    }

    [Fact]
    public void Uart_registers_fifo_and_interrupt_come_back_in_a_fresh_uart()
    {
        var original = BusyUart();
        var line = new RecordingInterruptLine();
        var restored = new Serial16550(line, Stream.Null);
        Copy(original, restored);
        Assert.True(line.IsHigh);

        Assert.Equal(ReadUartRegisters(original), ReadUartRegisters(restored));
        var a = new List<byte>();
        var b = new List<byte>();
        while ((original.In(R.LineStatus) & R.LsrDataReady) != 0)
        {
            a.Add(original.In(R.Data));
            b.Add(restored.In(R.Data));
        }

        Assert.Equal("hello, world!"u8.ToArray(), a.ToArray());
        Assert.Equal(a, b);
        Assert.Equal(R.IirTransmitterEmpty | R.IirFifosEnabled, restored.In(R.InterruptIdFifoControl));
        Assert.Equal(R.IirNoInterruptPending | R.IirFifosEnabled, restored.In(R.InterruptIdFifoControl));
        Assert.False(line.IsHigh);
    }

    [Fact]
    public void Uart_overrun_and_pending_thr_empty_are_restored()
    {
        var original = new Serial16550(null, Stream.Null);
        original.Out(R.InterruptEnable, R.IerLineStatus | R.IerTransmitterEmpty | R.IerReceivedDataAvailable);
        original.EnqueueInput([1, 2]); // FIFOs off: one byte held, the second overruns
        var restored = new Serial16550(null, Stream.Null);
        Copy(original, restored);
        Assert.Equal(R.IirLineStatus, restored.In(R.InterruptIdFifoControl));
        Assert.Equal(R.LsrOverrunError | R.LsrDataReady | R.LsrTransmitterEmpty | R.LsrTransmitterHoldingEmpty, restored.In(R.LineStatus));
        Assert.Equal(R.IirReceivedDataAvailable, restored.In(R.InterruptIdFifoControl));
        Assert.Equal(1, restored.In(R.Data));
        Assert.Equal(R.IirTransmitterEmpty, restored.In(R.InterruptIdFifoControl));
        Assert.Equal(R.IirNoInterruptPending, restored.In(R.InterruptIdFifoControl));
    }

    [Fact]
    public void Uart_restore_replaces_a_different_state_and_lowers_its_line()
    {
        var line = new RecordingInterruptLine();
        var target = BusyUart(line);
        Assert.True(line.IsHigh);
        var quiet = new Serial16550(null, Stream.Null);
        quiet.Out(R.Scratch, 0x11);
        Copy(quiet, target);
        Assert.False(line.IsHigh);
        Assert.Equal(Save(quiet), Save(target));
        Assert.Equal(0x11, target.In(R.Scratch));
        Assert.Equal(0, target.In(R.LineStatus) & R.LsrDataReady);
        Assert.Equal(1, target.AvailableInputSpace); // FIFOs off again: room for one byte
    }

    [Fact]
    public void Uart_refuses_another_version_and_a_fifo_over_its_capacity()
    {
        AssertVersionRefused(new Serial16550(null, Stream.Null));
        byte[] data = Save(new Serial16550(null, Stream.Null)); // FIFOs off: capacity 1
        byte[] bad = [.. data[..^4], 2, 0, 0, 0, 7, 8];
        var ex = Assert.Throws<SnapshotFormatException>(() => Restore(new Serial16550(null, Stream.Null), bad));
        Assert.Equal("rx-fifo", ex.Field);
    }

    [Fact]
    public void Uart_state_name_defaults_to_com1_and_can_be_set()
    {
        Assert.Equal("uart@0x3f8", new Serial16550(null, Stream.Null).StateName);
        Assert.Equal("uart@0x2f8", new Serial16550(null, Stream.Null) { StateName = "uart@0x2f8" }.StateName);
    }

    private static I8042Controller BusyI8042(IInterruptLine? keyboard = null)
    {
        var kbc = new I8042Controller(null, keyboard);
        kbc.Out(I8042Controller.CommandOffset, I8042Controller.CmdWriteCommandByte);
        kbc.Out(I8042Controller.DataOffset, 0x47);
        kbc.Out(I8042Controller.CommandOffset, 0x65); // write internal RAM byte 5
        kbc.Out(I8042Controller.DataOffset, 0x99);
        kbc.Out(I8042Controller.CommandOffset, I8042Controller.CmdSelfTest);
        kbc.Out(I8042Controller.CommandOffset, I8042Controller.CmdWriteKeyboardOutput);
        kbc.Out(I8042Controller.DataOffset, 0x12);
        kbc.Out(I8042Controller.CommandOffset, I8042Controller.CmdWriteAuxDevice);
        kbc.Out(I8042Controller.DataOffset, 0xF4);
        kbc.Out(I8042Controller.CommandOffset, I8042Controller.CmdWriteOutputPort); // waits for its data byte
        return kbc;
    }

    [Fact]
    public void I8042_queue_command_byte_and_pending_command_come_back()
    {
        var original = BusyI8042();
        var line = new RecordingInterruptLine();
        var restored = new I8042Controller(null, line);
        Copy(original, restored);
        Assert.True(line.IsHigh);
        Assert.Equal(0x47, restored.CommandByte);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(original.In(I8042Controller.CommandOffset), restored.In(I8042Controller.CommandOffset));
            Assert.Equal(original.In(I8042Controller.DataOffset), restored.In(I8042Controller.DataOffset));
        }

        Assert.False(line.IsHigh);
        Assert.Equal(original.In(I8042Controller.DataOffset), restored.In(I8042Controller.DataOffset)); // the last byte again

        // The pending 0xD1 takes this byte as the output port (A20 off).
        restored.Out(I8042Controller.DataOffset, 0x01);
        restored.Out(I8042Controller.CommandOffset, I8042Controller.CmdReadOutputPort);
        Assert.Equal(0x01, restored.In(I8042Controller.DataOffset));
        restored.Out(I8042Controller.CommandOffset, 0x25);
        Assert.Equal(0x99, restored.In(I8042Controller.DataOffset));
    }

    [Fact]
    public void I8042_restore_replaces_a_different_state_and_refuses_another_version()
    {
        var line = new RecordingInterruptLine();
        var target = BusyI8042(line);
        Assert.True(line.IsHigh);
        var fresh = new I8042Controller();
        Copy(fresh, target);
        Assert.False(line.IsHigh);
        Assert.Equal(Save(fresh), Save(target));
        Assert.Equal(0, target.In(I8042Controller.CommandOffset) & I8042Controller.StatusOutputFull);
        AssertVersionRefused(target);
    }

    private static readonly DateTimeOffset Noon = new(2024, 2, 29, 12, 0, 0, TimeSpan.Zero);

    private static void WriteCmos(CmosRtc rtc, byte index, byte value)
    {
        rtc.Out(0, index);
        rtc.Out(1, value);
    }

    private static byte ReadCmos(CmosRtc rtc, byte index)
    {
        rtc.Out(0, index);
        return rtc.In(1);
    }

    [Fact]
    public void Rtc_keeps_the_guests_offset_from_the_host_clock_and_its_ram()
    {
        var host = new ManualTimeProvider(Noon);
        var original = new CmosRtc(host);
        WriteCmos(original, CmosRtc.RegB, CmosRtc.RegB24Hour | CmosRtc.RegBBinary);
        WriteCmos(original, CmosRtc.RegHours, 15); // the guest runs its clock three hours ahead
        WriteCmos(original, 0x10, 0x5A);
        WriteCmos(original, CmosRtc.RegA, 0x2A);
        original.Out(0, CmosRtc.IndexNmiDisable | 0x10);
        byte[] data = Save(original);

        // Restored a day later on the host: the RTC kept running, three hours ahead of the host.
        var later = new ManualTimeProvider(Noon.AddDays(1));
        var restored = new CmosRtc(later);
        Restore(restored, data);
        Assert.Equal(Noon.AddDays(1).AddHours(3), restored.GuestTime);
        Assert.True(restored.NmiDisabled);
        Assert.Equal(0x5A, restored.In(1)); // the index register came back too
        Assert.Equal(15, ReadCmos(restored, CmosRtc.RegHours));
        Assert.Equal(1, ReadCmos(restored, CmosRtc.RegDayOfMonth)); // 1 March
        Assert.Equal(0x2A, ReadCmos(restored, CmosRtc.RegA));
        Assert.Equal(CmosRtc.RegB24Hour | CmosRtc.RegBBinary, ReadCmos(restored, CmosRtc.RegB));
    }

    [Fact]
    public void Rtc_frozen_by_set_stays_frozen_at_the_written_fields()
    {
        var host = new ManualTimeProvider(Noon);
        var original = new CmosRtc(host);
        WriteCmos(original, CmosRtc.RegB, CmosRtc.RegBSet | CmosRtc.RegB24Hour);
        WriteCmos(original, CmosRtc.RegYear, 0x30);
        WriteCmos(original, CmosRtc.RegMonth, 0x07);
        WriteCmos(original, CmosRtc.RegDayOfMonth, 0x31); // 31 July 2030, written field by field

        var later = new ManualTimeProvider(Noon.AddHours(5));
        var restored = new CmosRtc(later);
        Copy(original, restored);
        Assert.Equal(0x30, ReadCmos(restored, CmosRtc.RegYear));
        Assert.Equal(0x31, ReadCmos(restored, CmosRtc.RegDayOfMonth));
        WriteCmos(restored, CmosRtc.RegB, CmosRtc.RegB24Hour); // clear SET: the clock starts from the written time
        later.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(new DateTimeOffset(2030, 7, 31, 12, 0, 10, TimeSpan.Zero), restored.GuestTime);
    }

    [Fact]
    public void Rtc_restore_replaces_a_different_state_and_refuses_bad_fields()
    {
        var host = new ManualTimeProvider(Noon);
        var target = new CmosRtc(host);
        WriteCmos(target, 0x20, 0x77);
        WriteCmos(target, CmosRtc.RegYear, 0x99);
        var fresh = new CmosRtc(host);
        Copy(fresh, target);
        Assert.Equal(Save(fresh), Save(target));
        Assert.Equal(0, ReadCmos(target, 0x20));
        Assert.Equal(Noon, target.GuestTime);
        AssertVersionRefused(target);

        byte[] data = Save(fresh);
        data[4 + CmosRtc.RegSeconds] = 0x12; // a computed register stored in RAM
        Assert.Equal("ram", Assert.Throws<SnapshotFormatException>(() => Restore(new CmosRtc(host), data)).Field);
        data = Save(fresh);
        BitConverter.GetBytes(long.MaxValue / 2).CopyTo(data, 4 + 128 + 2); // the offset: past year 9999
        Assert.Equal("offset", Assert.Throws<SnapshotFormatException>(() => Restore(new CmosRtc(host), data)).Field);
    }
}
