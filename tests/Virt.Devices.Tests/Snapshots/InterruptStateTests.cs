using Virt.Devices.Interrupts;
using Virt.Devices.Tests.Support;
using Virt.Platform;
using Virt.Snapshots;
using Xunit;
using static Virt.Devices.Tests.Snapshots.StateTestSupport;

namespace Virt.Devices.Tests.Snapshots;

/// <summary>The interrupt controllers, the PIT and the clock saved mid-flight resume identically in fresh instances.</summary>
public sealed class InterruptStateTests
{
    // ---- PIC pair ----------------------------------------------------------------------------

    private static PicPair BusyPic()
    {
        var pic = new PicPair();
        InitialisePic(pic);
        pic.ElcrPorts.Out(1, 0x08);      // IRQ 11 level-triggered
        pic.MasterPorts.Out(1, 0x08);    // IRQ 3 masked
        pic.SetIrq(3, true);
        pic.SetIrq(1, true);
        pic.SetIrq(10, true);
        Assert.Equal(0x21, pic.AcknowledgeInterrupt()); // IRQ 1 in service
        pic.MasterPorts.Out(0, 0x0B);    // OCW3: reads return ISR
        return pic;
    }

    private static List<int> DrainPic(PicPair pic)
    {
        var vectors = new List<int>();
        for (int i = 0; i < 4; i++)
        {
            while (pic.HasPendingInterrupt)
            {
                vectors.Add(pic.AcknowledgeInterrupt());
            }

            pic.SlavePorts.Out(0, 0x20);
            pic.MasterPorts.Out(0, 0x20);
            pic.MasterPorts.Out(1, 0x00);
        }

        return vectors;
    }

    [Fact]
    public void Pic_registers_and_next_interrupts_match_after_restore()
    {
        var original = BusyPic();
        var restored = new PicPair();
        Copy(original, restored);
        Assert.Equal(original.MasterPorts.In(0), restored.MasterPorts.In(0));
        Assert.Equal(0x02, restored.MasterPorts.In(0)); // ISR: IRQ 1
        Assert.Equal(0x08, restored.MasterPorts.In(1));
        Assert.Equal(original.SlavePorts.In(0), restored.SlavePorts.In(0)); // IRR: IRQ 10
        Assert.Equal(0x08, restored.ElcrPorts.In(1));
        Assert.False(restored.HasPendingInterrupt); // IRQ 1 in service blocks the cascade
        Assert.Equal([0x2A, 0x23], DrainPic(original));
        Assert.Equal([0x2A, 0x23], DrainPic(restored));
    }

    [Fact]
    public void Pic_in_the_middle_of_its_icw_sequence_finishes_it_after_restore()
    {
        var original = new PicPair();
        InitialisePic(original);
        original.SlavePorts.Out(0, 0x11);
        original.SlavePorts.Out(1, 0x70); // ICW2; ICW3 and ICW4 still to come
        var restored = BusyPic();
        Copy(original, restored);
        restored.SlavePorts.Out(1, 0x02);
        restored.SlavePorts.Out(1, 0x01);
        restored.SetIrq(9, true);
        Assert.Equal(0x71, restored.AcknowledgeInterrupt());
        AssertVersionRefused(restored);
    }

    // ---- IOAPIC ------------------------------------------------------------------------------

    [Fact]
    public void Ioapic_table_remote_irr_and_masked_edges_come_back()
    {
        var original = new IoApic(new Sink());
        ProgramPin(original, 20, 0x50 | (1UL << 15) | (0xFFUL << 56));
        ProgramPin(original, 4, 0x34 | (1UL << 16));
        original.Write32(0x00, 0x00);
        original.Write32(0x10, 0x0A000000);
        original.SetIrq(20, true);
        original.SetIrq(4, true);
        original.Write32(0x00, 0x13);

        var sink = new Sink();
        var restored = new IoApic(sink);
        Copy(original, restored);
        Assert.Empty(sink.Messages);
        Assert.Equal(0x13u, restored.Read32(0x00));
        for (int pin = 0; pin < IoApic.PinCount; pin++)
        {
            Assert.Equal(ReadEntry(original, pin), ReadEntry(restored, pin));
        }

        Assert.NotEqual(0UL, ReadEntry(restored, 20) & (1UL << 14)); // remote IRR
        Assert.Equal(0x0A, restored.Id);
        restored.EndOfInterrupt(0x50); // still asserted: delivered again
        Assert.Equal(0x50, Assert.Single(sink.Messages).Vector);
        ProgramPin(restored, 4, 0x34); // unmasking delivers the edge that arrived while masked
        Assert.Equal(0x34, sink.Messages[^1].Vector);
        AssertVersionRefused(restored);
    }

    [Fact]
    public void Ioapic_refuses_remote_irr_on_an_edge_pin()
    {
        var io = new IoApic(new Sink());
        byte[] data = Save(io);
        data[6] |= 0x40; // pin 0, bit 14: remote IRR, while the entry is edge-triggered
        var ex = Assert.Throws<SnapshotFormatException>(() => Restore(new IoApic(new Sink()), data));
        Assert.Equal("redirection", ex.Field);
    }

    // ---- Local APIC --------------------------------------------------------------------------

    private static readonly int[] ApicRegisters = [0x20, 0x30, 0x80, 0xA0, 0xD0, 0xE0, 0xF0, 0x280, 0x300, 0x310, 0x320, 0x350, 0x360, 0x370, 0x380, 0x390, 0x3E0,
        .. Enumerable.Range(0, 8).SelectMany(i => new[] { 0x100 + (i * 16), 0x180 + (i * 16), 0x200 + (i * 16) })];

    private static uint[] ReadApic(LocalApic apic) => [.. ApicRegisters.Select(r => apic.Read32((ulong)r))];

    private static (VirtualClock Clock, LocalApic Apic) Pair()
    {
        var clock = new VirtualClock();
        return (clock, new LocalApic(clock));
    }

    private static (VirtualClock Clock, LocalApic Apic) RestorePair(VirtualClock clock, LocalApic apic, bool runAhead = false)
    {
        var (c, a) = Pair();
        if (runAhead)
        {
            // A target that has lived its own life: its clock is far ahead and its timer armed elsewhere.
            a.Write32(0xF0, 0x1FF);
            a.Write32(0x320, 0x30);
            a.Write32(0x380, 5);
            c.Advance(1_000_000_000);
        }

        Copy(clock, c);
        Copy(apic, a);
        return (c, a);
    }

    [Fact]
    public void Lapic_one_shot_timer_in_progress_fires_at_the_same_guest_time()
    {
        var (clock, apic) = Pair();
        apic.Write32(0xF0, 0x1FF);
        apic.Write32(0x3E0, 0xB);     // divide by 1
        apic.Write32(0x320, 0x40);    // one-shot, vector 0x40
        apic.Write32(0x380, 100_000);
        clock.Advance(30_000);

        var (c, a) = RestorePair(clock, apic, runAhead: true);
        Assert.Equal(30_000, c.Now);
        Assert.Equal(70_000u, a.Read32(0x390));
        Assert.Equal(ReadApic(apic), ReadApic(a));
        Assert.Equal(100_000, c.NextDeadline);
        c.AdvanceTo(99_999);
        Assert.False(a.HasPendingInterrupt);
        c.AdvanceTo(100_000);
        Assert.Equal(0x40, a.AcknowledgeInterrupt());
    }

    [Fact]
    public void Lapic_vectors_priorities_nmi_and_periodic_timer_match_after_restore()
    {
        var (clock, apic) = Pair();
        int broadcasts = 0;
        apic.Write32(0xF0, 0x1FF);
        apic.Write32(0x80, 0x20);                  // TPR
        apic.Write32(0x3E0, 0x3);                  // divide by 16
        apic.Write32(0x320, (1u << 17) | 0x40);    // periodic
        apic.Write32(0x380, 1000);                 // 16,000 ticks a period
        apic.Write32(0xD0, 0x01000000);
        clock.Advance(5_000);
        apic.Deliver(new ApicMessage(0x61, ApicDeliveryMode.Fixed, false, 0, false));
        apic.Deliver(new ApicMessage(0x62, ApicDeliveryMode.Fixed, true, 0, false));
        apic.Deliver(new ApicMessage(0, ApicDeliveryMode.Nmi, false, 0, false));
        Assert.Equal(0x62, apic.AcknowledgeInterrupt());

        var (c, a) = RestorePair(clock, apic);
        a.EndOfInterruptBroadcast = _ => broadcasts++;
        Assert.Equal(ReadApic(apic), ReadApic(a));
        Assert.True(a.HasPendingNmi && a.AcknowledgeNmi() && !a.AcknowledgeNmi());
        Assert.Equal(Run(clock, apic), Run(c, a));
        Assert.Equal(1, broadcasts); // the level-triggered 0x62's EOI
    }

    private static List<(long Tick, int Vector)> Run(VirtualClock clock, LocalApic apic)
    {
        var log = new List<(long, int)>();
        apic.Write32(0xB0, 0);
        for (int i = 0; i < 10; i++)
        {
            clock.Advance(7_000);
            while (apic.HasPendingInterrupt)
            {
                log.Add((clock.Now, apic.AcknowledgeInterrupt()));
                apic.Write32(0xB0, 0);
            }
        }

        return log;
    }

    [Fact]
    public void Lapic_tsc_deadline_comes_back_relative_to_the_clock()
    {
        var (clock, apic) = Pair();
        apic.Write32(0xF0, 0x1FF);
        apic.Write32(0x320, (2u << 17) | 0x45);
        apic.TscDeadline = 50_000;
        clock.Advance(20_000);
        var (c, a) = RestorePair(clock, apic, runAhead: true);
        Assert.Equal(50_000UL, a.TscDeadline);
        c.AdvanceTo(49_999);
        Assert.False(a.HasPendingInterrupt);
        c.AdvanceTo(50_000);
        Assert.Equal(0x45, a.AcknowledgeInterrupt());
        Assert.Equal(0UL, a.TscDeadline);
        AssertVersionRefused(a);
    }

    // ---- PIT ---------------------------------------------------------------------------------

    private static (VirtualClock Clock, Pit8254 Pit, PortHelpersLine Line) BusyPit()
    {
        var clock = new VirtualClock();
        var line = new PortHelpersLine();
        var pit = new Pit8254(clock, line);
        pit.Out(3, 0x34);                 // channel 0: rate generator
        pit.Out(0, 0xE8);
        pit.Out(0, 0x03);                 // 1000 cycles
        pit.ControlPortB.Out(0, 0x03);    // gate 2 and speaker on
        pit.Out(3, 0xB0);                 // channel 2: mode 0
        pit.Out(2, 0x88);
        pit.Out(2, 0x13);                 // 5000 cycles
        pit.Out(3, 0x74);                 // channel 1: rate generator, LSB then MSB
        pit.Out(1, 0x10);                 // LSB only so far
        clock.AdvanceTo(clock.FromCycles(2500, Pit8254.Frequency));
        pit.Out(3, 0x00);                 // latch channel 0
        return (clock, pit, line);
    }

    private static byte[] ReadPit(Pit8254 pit) => [pit.In(0), pit.In(0), pit.In(2), pit.In(2), pit.ControlPortB.In(0)];

    [Fact]
    public void Pit_counters_latches_and_next_edge_match_after_restore()
    {
        var (clock, pit, line) = BusyPit();
        var c = new VirtualClock();
        c.Advance(123_456_789);
        var l = new PortHelpersLine();
        var p = new Pit8254(c, l);
        Copy(clock, c);
        Copy(pit, p);
        Assert.Equal(clock.NextDeadline, c.NextDeadline);
        Assert.Equal(ReadPit(pit), ReadPit(p));
        pit.Out(1, 0x00);
        p.Out(1, 0x00);                   // the MSB completes channel 1's count
        c.Advance(1000);
        clock.Advance(1000);
        Assert.Equal(pit.In(1), p.In(1));

        int before = line.Raises;
        for (int i = 0; i < 20; i++)
        {
            clock.Advance(333_333);
            c.Advance(333_333);
            Assert.Equal(line.Raises - before, l.Raises);
            Assert.Equal(ReadPit(pit), ReadPit(p));
        }

        Assert.True(l.Raises > 0);
    }

    [Fact]
    public void Pit_output_held_high_by_mode_0_is_driven_again_on_restore()
    {
        var clock = new VirtualClock();
        var pit = new Pit8254(clock, new PortHelpersLine());
        pit.Out(3, 0x30);
        pit.Out(0, 100);
        pit.Out(0, 0);
        clock.Advance(clock.FromCycles(200, Pit8254.Frequency));
        var line = new PortHelpersLine();
        var restored = new Pit8254(new VirtualClock(), line);
        Copy(pit, restored);
        Assert.True(line.Level);
        AssertVersionRefused(restored);
    }

    // ---- Clock -------------------------------------------------------------------------------

    [Fact]
    public void Clock_continues_from_the_saved_tick_and_refuses_another_frequency()
    {
        var clock = new VirtualClock();
        clock.Advance(42_000);
        var later = new VirtualClock();
        later.Advance(99_000_000);
        Copy(clock, later);
        Assert.Equal(42_000, later.Now);
        var ex = Assert.Throws<SnapshotFormatException>(() => Restore(new VirtualClock(3_000_000_000), Save(clock)));
        Assert.Equal("frequency", ex.Field);
        AssertVersionRefused(clock);
    }

    // ---- The whole platform ------------------------------------------------------------------

    internal static PcInterruptPlatform NewPlatform() => new(new InterruptPlatformParameters(1, 1_000_000_000, 1_000_000_000));

    private static void PortOut(PcInterruptPlatform p, ushort port, byte value) => p.TryAccessPort(port, (byte[])[value], isWrite: true);

    private static void ApicWrite(PcInterruptPlatform p, uint offset, uint value) => p.TryAccessMmio(LocalApic.DefaultAddress + offset, BitConverter.GetBytes(value), isWrite: true);

    /// <summary>A guest's setup: the PIC at 0x20/0x28 with the PIT at 1 kHz on IRQ 0, and the local APIC timer periodic on vector 0x40.</summary>
    internal static PcInterruptPlatform BusyPlatform()
    {
        var p = NewPlatform();
        foreach (var (port, value) in (ReadOnlySpan<(ushort, byte)>)[(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0x21, 0xFA), (0xA1, 0xFF)])
        {
            PortOut(p, port, value);
        }

        PortOut(p, 0x43, 0x34);
        PortOut(p, 0x40, 0xA9);
        PortOut(p, 0x40, 0x04); // 1193 cycles: about 1 ms
        ApicWrite(p, 0xF0, 0x1FF);
        ApicWrite(p, 0x3E0, 0xB);
        ApicWrite(p, 0x320, (1u << 17) | 0x40);
        ApicWrite(p, 0x380, 2_500_000); // 2.5 ms
        RunPlatform(p, 5_000_000, acknowledgeLast: false);
        return p;
    }

    /// <summary>Runs the clock to <paramref name="until"/> in 100 µs steps, taking and ending every interrupt; returns (tick, vector) per interrupt.</summary>
    internal static List<(long Tick, int Vector)> RunPlatform(PcInterruptPlatform p, long until, bool acknowledgeLast = true)
    {
        var log = new List<(long, int)>();
        var lapic = p.GetLocalController(0);
        while (p.Clock.Now < until)
        {
            p.Clock.AdvanceTo(Math.Min(p.Clock.Now + 100_000, until));
            while (lapic.HasPendingInterrupt && (acknowledgeLast || p.Clock.Now < until))
            {
                int vector = lapic.AcknowledgeInterrupt();
                log.Add((p.Clock.Now, vector));
                if (vector is >= 0x20 and < 0x30)
                {
                    PortOut(p, 0x20, 0x20);
                }
                else
                {
                    ApicWrite(p, 0xB0, 0);
                }
            }
        }

        return log;
    }

    [Fact]
    public void Platform_restored_into_a_fresh_one_delivers_the_same_interrupts_at_the_same_ticks()
    {
        var original = BusyPlatform();
        var restored = NewPlatform();
        Copy(original, restored);
        Assert.Equal(original.Clock.Now, restored.Clock.Now);
        Assert.Equal(original.Clock.NextDeadline, restored.Clock.NextDeadline);
        Assert.True(restored.GetLocalController(0).HasPendingInterrupt); // the interrupt the save left waiting
        var expected = RunPlatform(original, 20_000_000);
        var actual = RunPlatform(restored, 20_000_000);
        Assert.Equal(expected, actual);
        Assert.Contains(expected, e => e.Vector == 0x20);
        Assert.Contains(expected, e => e.Vector == 0x40);
    }

    [Fact]
    public void Platform_restore_replaces_one_that_ran_on_and_refuses_another_version()
    {
        var original = BusyPlatform();
        byte[] data = Save(original);
        var target = BusyPlatform();
        RunPlatform(target, 50_000_000);
        PortOut(target, 0x21, 0xFF);
        Restore(target, data);
        Assert.Equal(data, Save(target));
        Assert.Equal(RunPlatform(original, 20_000_000), RunPlatform(target, 20_000_000));
        AssertVersionRefused(target);
    }

    [Fact]
    public void Platform_with_a_corrupt_record_is_left_as_it_was_and_the_error_names_the_record()
    {
        byte[] data = Save(BusyPlatform());
        data[^1] = 7; // the PIT's last field, a Boolean
        var target = NewPlatform();
        RunPlatform(target, 1_000_000);
        byte[] before = Save(target);
        var ex = Assert.Throws<SnapshotFormatException>(() => Restore(target, data));
        Assert.Equal("pc-interrupts/pit", ex.Section);
        Assert.Equal("channel2.irq-level", ex.Field);
        Assert.Equal(before, Save(target));
    }

    /// <summary>An interrupt line that counts edges and remembers its level.</summary>
    internal sealed class PortHelpersLine : IInterruptLine
    {
        public int Raises { get; private set; }

        public bool Level { get; private set; }

        public void Raise()
        {
            if (!Level)
            {
                Raises++;
            }

            Level = true;
        }

        public void Lower() => Level = false;
    }
}
