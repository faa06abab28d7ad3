using Virt.Devices.Interrupts;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

public sealed class LocalApicTests
{
    private const ulong Svr = 0xF0, Eoi = 0xB0, Tpr = 0x80, LvtTimer = 0x320, Initial = 0x380, Current = 0x390, Divide = 0x3E0;

    private static (LocalApic Apic, VirtualClock Clock) Enabled()
    {
        var clock = new VirtualClock();
        var apic = new LocalApic(clock);
        apic.Write32(Svr, 0x1FF); // software enable, spurious vector 0xFF
        return (apic, clock);
    }

    private static void Fixed(LocalApic apic, int vector, bool level = false) =>
        apic.Deliver(new ApicMessage(vector, ApicDeliveryMode.Fixed, level, 0, false));

    [Fact]
    public void Id_and_version_read_as_an_integrated_apic()
    {
        var apic = new LocalApic(new VirtualClock(), id: 3);
        Assert.Equal(3u << 24, apic.Read32(0x20));
        Assert.Equal(0x00050014u, apic.Read32(0x30));
        Assert.Equal(0xFEE00000UL | LocalApic.ApicBaseEnable, apic.ApicBase); // only APIC 0 is the bootstrap processor's
        Assert.Equal(0xFEE00000UL | LocalApic.ApicBaseEnable | LocalApic.ApicBaseBsp, new LocalApic(new VirtualClock(), id: 0).ApicBase);
    }

    [Fact]
    public void Highest_vector_is_delivered_first_and_eoi_clears_it_from_service()
    {
        var (apic, _) = Enabled();
        Fixed(apic, 0x41);
        Fixed(apic, 0x61);
        Assert.True(apic.HasPendingInterrupt);
        Assert.Equal(0x61, apic.AcknowledgeInterrupt());
        Assert.False(apic.HasPendingInterrupt); // 0x41 is a lower class than 0x61 in service
        Assert.Equal(1u << 1, apic.Read32(0x100 + (3 * 0x10))); // ISR bit 0x61
        apic.Write32(Eoi, 0);
        Assert.Equal(0x41, apic.AcknowledgeInterrupt());
        apic.Write32(Eoi, 0);
        Assert.Equal(-1, apic.AcknowledgeInterrupt());
    }

    [Fact]
    public void Task_priority_blocks_lower_classes()
    {
        var (apic, _) = Enabled();
        apic.Write32(Tpr, 0x50);
        Fixed(apic, 0x45);
        Assert.False(apic.HasPendingInterrupt);
        Fixed(apic, 0x61);
        Assert.Equal(0x61, apic.AcknowledgeInterrupt());
        Assert.Equal(0x60u, apic.Read32(0xA0)); // PPR
    }

    [Fact]
    public void Level_eoi_is_broadcast_to_the_ioapic()
    {
        var (apic, _) = Enabled();
        var eois = new List<int>();
        apic.EndOfInterruptBroadcast = eois.Add;
        Fixed(apic, 0x33, level: true);
        Assert.Equal(1u << 0x13, apic.Read32(0x180 + 0x10)); // TMR bit 0x33
        apic.AcknowledgeInterrupt();
        apic.Write32(Eoi, 0);
        Fixed(apic, 0x34);
        apic.AcknowledgeInterrupt();
        apic.Write32(Eoi, 0);
        Assert.Equal([0x33], eois);
    }

    [Fact]
    public void Illegal_vector_sets_the_error_status()
    {
        var (apic, _) = Enabled();
        Fixed(apic, 5);
        Assert.False(apic.HasPendingInterrupt);
        Assert.Equal(0u, apic.Read32(0x280)); // errors show after the next ESR write
        apic.Write32(0x280, 0);
        Assert.Equal(1u << 6, apic.Read32(0x280));
        apic.Write32(0x280, 0);
        Assert.Equal(0u, apic.Read32(0x280));
    }

    [Fact]
    public void One_shot_timer_fires_once_after_initial_count_times_divisor()
    {
        var (apic, clock) = Enabled();
        apic.Write32(Divide, 0x3);       // divide by 16
        apic.Write32(LvtTimer, 0xEC);    // one-shot, vector 0xEC
        apic.Write32(Initial, 1000);     // 16000 ns at 1 GHz
        clock.AdvanceTo(8000);
        Assert.Equal(500u, apic.Read32(Current));
        Assert.False(apic.HasPendingInterrupt);
        clock.AdvanceTo(16000);
        Assert.Equal(0xEC, apic.AcknowledgeInterrupt());
        Assert.Equal(0u, apic.Read32(Current));
        apic.Write32(Eoi, 0);
        clock.AdvanceTo(100000);
        Assert.False(apic.HasPendingInterrupt);
    }

    [Fact]
    public void Periodic_timer_reloads_and_keeps_firing()
    {
        var (apic, clock) = Enabled();
        apic.Write32(Divide, 0xB);              // divide by 1
        apic.Write32(LvtTimer, 0xEC | (1u << 17));
        apic.Write32(Initial, 1000);
        int fired = 0;
        for (long t = 100; t <= 5000; t += 100)
        {
            clock.AdvanceTo(t);
            if (apic.HasPendingInterrupt)
            {
                Assert.Equal(0xEC, apic.AcknowledgeInterrupt());
                apic.Write32(Eoi, 0);
                fired++;
            }
        }

        Assert.Equal(5, fired);
        clock.AdvanceTo(5250);
        Assert.Equal(750u, apic.Read32(Current));
    }

    [Fact]
    public void Masked_timer_counts_but_does_not_interrupt()
    {
        var (apic, clock) = Enabled();
        apic.Write32(Divide, 0xB);
        apic.Write32(LvtTimer, 0xEC | (1u << 16));
        apic.Write32(Initial, 10);
        clock.AdvanceTo(100);
        Assert.False(apic.HasPendingInterrupt);
    }

    [Fact]
    public void Tsc_deadline_timer_fires_at_the_deadline_and_disarms()
    {
        var (apic, clock) = Enabled();
        apic.Write32(LvtTimer, 0xEF | (2u << 17));
        apic.TscDeadline = 5000;
        clock.AdvanceTo(4999);
        Assert.False(apic.HasPendingInterrupt);
        clock.AdvanceTo(5000);
        Assert.Equal(0xEF, apic.AcknowledgeInterrupt());
        Assert.Equal(0UL, apic.TscDeadline);
        apic.Write32(Initial, 10); // ignored in deadline mode
        Assert.Equal(0u, apic.Read32(Initial));
    }

    [Fact]
    public void Deadline_in_the_past_fires_on_the_next_advance()
    {
        var (apic, clock) = Enabled();
        clock.AdvanceTo(10000);
        apic.Write32(LvtTimer, 0xEF | (2u << 17));
        apic.TscDeadline = 10;
        clock.Advance(0);
        Assert.True(apic.HasPendingInterrupt);
    }

    [Fact]
    public void Self_ipi_through_icr_is_delivered()
    {
        var (apic, _) = Enabled();
        apic.Write32(0x300, 0x50 | (1u << 18)); // shorthand self
        Assert.Equal(0x50, apic.AcknowledgeInterrupt());
        Assert.Equal(0u, apic.Read32(0x300) & (1u << 12)); // delivery idle
    }

    [Fact]
    public void Pic_interrupts_arrive_through_lint0_extint_after_reset()
    {
        var clock = new VirtualClock();
        var pic = PicPairTests.InitialisedLikeLinux();
        var apic = new LocalApic(clock) { ExtIntSource = pic };
        int wakeups = 0;
        apic.InterruptRequested = () => wakeups++;
        pic.GetLine(1).Raise();
        Assert.Equal(1, wakeups);
        Assert.True(apic.HasPendingInterrupt);
        Assert.Equal(0x31, apic.AcknowledgeInterrupt());

        apic.Write32(0x350, 1u << 16); // mask LINT0
        pic.MasterPorts.Out(0, 0x20);
        pic.GetLine(3).Raise();
        Assert.False(apic.HasPendingInterrupt);
    }

    [Fact]
    public void X2apic_msrs_work_only_in_x2apic_mode()
    {
        var (apic, _) = Enabled();
        Assert.False(apic.ReadMsr(0x802, out _));
        apic.ApicBase |= LocalApic.ApicBaseX2Apic;
        Assert.True(apic.IsX2ApicMode);
        Assert.True(apic.ReadMsr(0x803, out ulong version));
        Assert.Equal(0x00050014UL, version);
        Assert.True(apic.ReadMsr(0x802, out ulong id));
        Assert.Equal(0UL, id);
        Assert.True(apic.WriteMsr(0x83F, 0x77)); // SELF IPI
        Assert.Equal(0x77, apic.AcknowledgeInterrupt());
        Assert.True(apic.WriteMsr(0x80B, 0)); // EOI
        Assert.False(apic.ReadMsr(0x80B, out _)); // EOI is write-only
        Assert.False(apic.WriteMsr(0x803, 1));    // version is read-only
        Assert.Equal(0u, apic.Read32(0x30));      // MMIO is off in x2APIC mode
        Assert.True(apic.WriteMsr(0x808, 0x20));
        Assert.Equal(0x20u, apic.TaskPriority);
    }

    [Fact]
    public void Software_disabled_apic_keeps_lvt_masked()
    {
        var apic = new LocalApic(new VirtualClock());
        apic.Write32(LvtTimer, 0xEC);
        Assert.NotEqual(0u, apic.Read32(LvtTimer) & (1u << 16));
    }

    [Fact]
    public void Hostile_mmio_accesses_do_not_throw()
    {
        var (apic, _) = Enabled();
        for (ulong off = 0; off < 0x1000; off += 4)
        {
            apic.Write(off, [0xFF, 0xFF, 0xFF, 0xFF]);
            apic.Read(off, new byte[8]);
        }

        apic.Write(0x2000, [1, 2, 3, 4]);
        apic.Read(0x2000, new byte[4]);
        apic.Write(0x20, [1]);
        Assert.False(apic.WriteMsr(0x900, 0));
    }
}
