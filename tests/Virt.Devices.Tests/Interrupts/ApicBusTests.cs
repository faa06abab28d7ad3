using Virt.Devices.Interrupts;
using Xunit;

namespace Virt.Devices.Tests.Interrupts;

/// <summary>Several local APICs on one bus: IPIs by destination and shorthand, INIT and start-up IPIs, IOAPIC messages.</summary>
public sealed class ApicBusTests
{
    private const ulong Svr = 0xF0, Eoi = 0xB0, Ldr = 0xD0, IcrLow = 0x300, IcrHigh = 0x310;

    private static PcInterruptControllers Machine(int processors)
    {
        var pc = new PcInterruptControllers(new VirtualClock(), LocalApic.DefaultTimerFrequency, processors);
        foreach (var apic in pc.LocalApics)
        {
            apic.Write32(Svr, 0x1FF); // software-enabled
            apic.Write32(0x350, 1u << 16); // LINT0 masked: only the APIC's own interrupts
        }

        return pc;
    }

    private static void SendIpi(LocalApic from, uint high, uint low)
    {
        from.Write32(IcrHigh, high);
        from.Write32(IcrLow, low);
    }

    [Fact]
    public void A_fixed_ipi_reaches_the_physical_destination_only()
    {
        var pc = Machine(4);
        var wakes = new int[4];
        for (int i = 0; i < 4; i++)
        {
            int k = i;
            pc.LocalApics[i].InterruptRequested = () => Interlocked.Increment(ref wakes[k]);
        }

        SendIpi(pc.LocalApics[0], 2u << 24, 0x41);
        Assert.Equal(0x41, pc.LocalApics[2].AcknowledgeInterrupt());
        Assert.True(wakes[2] > 0);
        Assert.False(pc.LocalApics[0].HasPendingInterrupt);
        Assert.False(pc.LocalApics[1].HasPendingInterrupt);
        Assert.False(pc.LocalApics[3].HasPendingInterrupt);
    }

    [Fact]
    public void Shorthands_address_self_all_and_all_but_self()
    {
        var pc = Machine(3);
        SendIpi(pc.LocalApics[1], 0, 0x50 | (3u << 18)); // all excluding self
        Assert.Equal(0x50, pc.LocalApics[0].AcknowledgeInterrupt());
        Assert.Equal(0x50, pc.LocalApics[2].AcknowledgeInterrupt());
        Assert.False(pc.LocalApics[1].HasPendingInterrupt);

        // Vectors of rising priority classes, so that the ones in service (no EOI) do not hold the next back.
        SendIpi(pc.LocalApics[1], 0, 0x61 | (1u << 18)); // self
        Assert.Equal(0x61, pc.LocalApics[1].AcknowledgeInterrupt());
        Assert.False(pc.LocalApics[0].HasPendingInterrupt);

        SendIpi(pc.LocalApics[2], 0, 0x72 | (2u << 18)); // all including self
        Assert.All(pc.LocalApics, a => Assert.Equal(0x72, a.AcknowledgeInterrupt()));
    }

    [Fact]
    public void In_x2apic_mode_the_icr_msr_carries_32_bit_destinations()
    {
        const uint Icr = LocalApic.X2ApicMsrBase + (uint)(IcrLow >> 4);
        var pc = Machine(4);
        foreach (var apic in pc.LocalApics)
        {
            apic.ApicBase |= LocalApic.ApicBaseX2Apic;
        }

        var from = pc.LocalApics[0];
        Assert.True(from.WriteMsr(Icr, (3UL << 32) | 0x41)); // physical ID 3
        Assert.Equal(0x41, pc.LocalApics[3].AcknowledgeInterrupt());
        Assert.All(pc.LocalApics.Take(3), a => Assert.False(a.HasPendingInterrupt));

        Assert.True(from.WriteMsr(Icr, (0x103UL << 32) | 0x52)); // physical ID 0x103: no such APIC, not ID 3
        Assert.All(pc.LocalApics, a => Assert.False(a.HasPendingInterrupt));

        Assert.True(from.WriteMsr(Icr, (0x0000_0006UL << 32) | 0x63 | (1u << 11))); // logical cluster 0, IDs 1 and 2
        Assert.Equal(0x63, pc.LocalApics[1].AcknowledgeInterrupt());
        Assert.Equal(0x63, pc.LocalApics[2].AcknowledgeInterrupt());
        Assert.False(pc.LocalApics[0].HasPendingInterrupt);
        Assert.False(pc.LocalApics[3].HasPendingInterrupt);

        Assert.True(from.WriteMsr(Icr, (0x0001_0002UL << 32) | 0x74 | (1u << 11))); // logical cluster 1: nobody here
        Assert.All(pc.LocalApics, a => Assert.False(a.HasPendingInterrupt));

        Assert.True(from.WriteMsr(Icr, (0xFFFF_FFFFUL << 32) | 0x85)); // broadcast
        Assert.All(pc.LocalApics, a => Assert.Equal(0x85, a.AcknowledgeInterrupt()));

        Assert.True(from.WriteMsr(Icr, (2UL << 32) | 0x4500)); // INIT
        Assert.True(from.WriteMsr(Icr, (2UL << 32) | 0x4612)); // start-up, vector 0x12
        Assert.True(pc.LocalApics[2].AcknowledgeInit());
        Assert.Equal(0x12, pc.LocalApics[2].AcknowledgeStartup());
        Assert.False(pc.LocalApics[1].AcknowledgeInit());
    }

    [Fact]
    public void Flat_logical_destinations_reach_every_apic_whose_bit_is_set()
    {
        var pc = Machine(4);
        for (int i = 0; i < 4; i++)
        {
            pc.LocalApics[i].Write32(Ldr, (1u << i) << 24);
        }

        SendIpi(pc.LocalApics[0], 0b1010u << 24, 0x60 | (1u << 11));
        Assert.Equal(0x60, pc.LocalApics[1].AcknowledgeInterrupt());
        Assert.Equal(0x60, pc.LocalApics[3].AcknowledgeInterrupt());
        Assert.False(pc.LocalApics[0].HasPendingInterrupt);
        Assert.False(pc.LocalApics[2].HasPendingInterrupt);
    }

    [Fact]
    public void Init_then_startup_ipi_is_taken_once_by_the_addressed_processor()
    {
        var pc = Machine(2);
        var ap = pc.LocalApics[1];
        Assert.False(ap.AcknowledgeInit());
        SendIpi(pc.LocalApics[0], 1u << 24, (5u << 8) | (1u << 14)); // INIT, level assert
        SendIpi(pc.LocalApics[0], 1u << 24, 5u << 8 | (1u << 15));    // INIT level de-assert: no effect
        Assert.True(ap.AcknowledgeInit());
        Assert.False(ap.AcknowledgeInit());
        Assert.Equal(-1, ap.AcknowledgeStartup());
        SendIpi(pc.LocalApics[0], 1u << 24, (6u << 8) | 0x9A); // start-up, vector 0x9A
        Assert.Equal(0x9A, ap.AcknowledgeStartup());
        Assert.Equal(-1, ap.AcknowledgeStartup());
        Assert.False(pc.LocalApics[0].AcknowledgeInit());
        Assert.Equal(-1, pc.LocalApics[0].AcknowledgeStartup());
    }

    [Fact]
    public void The_ioapic_delivers_to_the_processor_its_entry_names_and_eois_come_back()
    {
        var pc = Machine(2);
        // Pin 5: vector 0x35, level-triggered, physical destination APIC 1.
        pc.IoApic.Write32(0x00, 0x10 + (2 * 5));
        pc.IoApic.Write32(0x10, 0x35 | (1u << 15));
        pc.IoApic.Write32(0x00, 0x11 + (2 * 5));
        pc.IoApic.Write32(0x10, 1u << 24);
        pc.GetIsaLine(5).Raise();
        Assert.False(pc.LocalApics[0].HasPendingInterrupt);
        Assert.Equal(0x35, pc.LocalApics[1].AcknowledgeInterrupt());
        pc.GetIsaLine(5).Lower();
        pc.LocalApics[1].Write32(Eoi, 0);
        pc.GetIsaLine(5).Raise();
        Assert.Equal(0x35, pc.LocalApics[1].AcknowledgeInterrupt());
    }
}
