using Virt.Devices.Interrupts;
using Virt.Devices.Tests.Support;
using Virt.Snapshots;
using Xunit;
using static Virt.Devices.Tests.Snapshots.StateTestSupport;

namespace Virt.Devices.Tests.Snapshots;

/// <summary>
/// Snapshot sections are hostile input: truncated and randomly corrupted sections of every model end in
/// <see cref="SnapshotFormatException"/> or in a state the model then runs in without any other exception.
/// </summary>
public sealed class StateFuzzTests
{
    private const int CasesPerModel = 500;

    /// <summary>A model to fuzz: a saved busy state, a fresh instance to restore into, and what a guest then does with it.</summary>
    private sealed record Target(IPersistentState State, Action Exercise);

    private static void Fuzz(byte[] valid, Func<Target> create, int seed)
    {
        var random = new Random(seed);
        int refused = 0;
        for (int i = 0; i < CasesPerModel; i++)
        {
            byte[] data = Corrupt(valid, random, i);
            var target = create();
            try
            {
                Restore(target.State, data);
            }
            catch (SnapshotFormatException e)
            {
                Assert.False(string.IsNullOrEmpty(e.Field));
                refused++;
                continue;
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i}: restoring {Convert.ToHexString(data)} threw {e}");
            }

            try
            {
                target.Exercise();
                Save(target.State);
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i}: the model restored from {Convert.ToHexString(data)} then threw {e}");
            }
        }

        Assert.True(refused > CasesPerModel / 4, $"only {refused} of {CasesPerModel} corrupt sections were refused");
    }

    private static byte[] Corrupt(byte[] valid, Random random, int i)
    {
        switch (i % 4)
        {
            case 0:
                return valid[..random.Next(valid.Length)];
            case 1:
            {
                byte[] data = [.. valid];
                int flips = 1 + random.Next(4);
                for (int f = 0; f < flips; f++)
                {
                    data[random.Next(data.Length)] = (byte)random.Next(256);
                }

                return data;
            }

            case 2:
            {
                byte[] data = [.. valid];
                int at = random.Next(data.Length);
                int bit = random.Next(8);
                data[at] ^= (byte)(1 << bit);
                return data;
            }

            default:
            {
                byte[] data = [.. valid, .. new byte[random.Next(3)]];
                int at = random.Next(data.Length);
                int len = Math.Min(8, data.Length - at);
                random.NextBytes(data.AsSpan(at, len));
                return data;
            }
        }
    }

    [Fact]
    public void Corrupt_uart_sections_are_refused_or_valid()
    {
        var uart = new Serial16550(null, Stream.Null);
        uart.Out(3, 0x9B);
        uart.Out(0, 0x01);
        uart.Out(3, 0x1B);
        uart.Out(2, 0xC1);
        uart.Out(1, 0x0F);
        uart.Out(4, 0x1F);
        uart.EnqueueInput("0123456789"u8);
        Fuzz(Save(uart), () =>
        {
            var u = new Serial16550(new RecordingInterruptLine(), Stream.Null);
            return new Target(u, () =>
            {
                for (int n = 0; n < 3; n++)
                {
                    for (ushort r = 0; r < 8; r++)
                    {
                        u.In(r);
                    }
                }

                u.Out(0, 0x41);
                u.EnqueueInput("xyz"u8);
                u.Out(2, 0x07);
            });
        }, 1);
    }

    [Fact]
    public void Corrupt_i8042_sections_are_refused_or_valid()
    {
        var kbc = new I8042Controller();
        kbc.Out(I8042Controller.CommandOffset, I8042Controller.CmdSelfTest);
        kbc.Out(I8042Controller.CommandOffset, I8042Controller.CmdWriteAuxDevice);
        kbc.Out(I8042Controller.DataOffset, 0xF4);
        kbc.Out(I8042Controller.CommandOffset, 0x61);
        Fuzz(Save(kbc), () =>
        {
            var k = new I8042Controller(null, new RecordingInterruptLine(), new RecordingInterruptLine());
            return new Target(k, () =>
            {
                for (int n = 0; n < 20; n++)
                {
                    k.In(I8042Controller.CommandOffset);
                    k.In(I8042Controller.DataOffset);
                }

                k.Out(I8042Controller.DataOffset, 0x55);
                k.Out(I8042Controller.CommandOffset, I8042Controller.CmdReadOutputPort);
            });
        }, 2);
    }

    [Fact]
    public void Corrupt_rtc_sections_are_refused_or_valid()
    {
        var host = new ManualTimeProvider(new DateTimeOffset(2025, 6, 1, 8, 30, 0, TimeSpan.Zero));
        var rtc = new CmosRtc(host);
        rtc.WriteRegister(CmosRtc.RegB, CmosRtc.RegBSet | CmosRtc.RegB24Hour);
        rtc.WriteRegister(CmosRtc.RegYear, 0x45);
        rtc.WriteRegister(0x40, 0x12);
        Fuzz(Save(rtc), () =>
        {
            var r = new CmosRtc(host);
            return new Target(r, () =>
            {
                for (int i = 0; i < 128; i++)
                {
                    r.Out(0, (byte)i);
                    r.In(1);
                }

                _ = r.GuestTime;
                r.WriteRegister(CmosRtc.RegB, CmosRtc.RegB24Hour);
                _ = r.GuestTime;
                r.ReadRegister(CmosRtc.RegSeconds);
            });
        }, 3);
    }

    [Fact]
    public void Corrupt_pic_sections_are_refused_or_valid()
    {
        var pic = new PicPair();
        InitialisePic(pic);
        pic.SetIrq(1, true);
        pic.SetIrq(12, true);
        pic.AcknowledgeInterrupt();
        pic.SlavePorts.Out(0, 0x11);
        Fuzz(Save(pic), () =>
        {
            var p = new PicPair();
            return new Target(p, () =>
            {
                for (int irq = 0; irq < 16; irq++)
                {
                    p.SetIrq(irq, irq % 3 == 0);
                }

                for (int n = 0; n < 20 && p.HasPendingInterrupt; n++)
                {
                    p.AcknowledgeInterrupt();
                    p.MasterPorts.Out(0, 0x20);
                }

                p.MasterPorts.Out(0, 0x0C); // poll
                p.MasterPorts.In(0);
                p.SlavePorts.In(0);
                p.ElcrPorts.In(0);
            });
        }, 4);
    }

    [Fact]
    public void Corrupt_ioapic_sections_are_refused_or_valid()
    {
        var io = new IoApic(new Sink());
        ProgramPin(io, 9, 0x59 | (1UL << 15));
        ProgramPin(io, 3, 0x33 | (1UL << 16));
        io.SetIrq(9, true);
        io.SetIrq(3, true);
        Fuzz(Save(io), () =>
        {
            var target = new IoApic(new Sink());
            return new Target(target, () =>
            {
                for (int pin = 0; pin < IoApic.PinCount; pin++)
                {
                    ReadEntry(target, pin);
                    target.SetIrq(pin, true);
                    target.EndOfInterrupt(0x59);
                    ProgramPin(target, pin, 0x40);
                }

                target.Read32(0);
            });
        }, 5);
    }

    [Fact]
    public void Corrupt_local_apic_sections_are_refused_or_valid()
    {
        var clock = new VirtualClock();
        var apic = new LocalApic(clock);
        apic.Write32(0xF0, 0x1FF);
        apic.Write32(0x3E0, 0x1);
        apic.Write32(0x320, (1u << 17) | 0x40);
        apic.Write32(0x380, 3000);
        apic.Deliver(new ApicMessage(0x70, ApicDeliveryMode.Fixed, true, 0, false));
        apic.AcknowledgeInterrupt();
        clock.Advance(5_000);
        Fuzz(Save(apic), () =>
        {
            var c = new VirtualClock();
            c.Advance(5_000);
            var a = new LocalApic(c);
            return new Target(a, () =>
            {
                for (int reg = 0; reg < 0x400; reg += 0x10)
                {
                    a.Read32((ulong)reg);
                }

                for (int n = 0; n < 5; n++)
                {
                    c.Advance(20_000);
                    for (int k = 0; k < 10 && a.HasPendingInterrupt; k++)
                    {
                        a.AcknowledgeInterrupt();
                        a.Write32(0xB0, 0);
                    }
                }

                a.AcknowledgeNmi();
                _ = a.TscDeadline;
                a.TscDeadline = 1;
            });
        }, 6);
    }

    [Fact]
    public void Corrupt_pit_sections_are_refused_or_valid()
    {
        var clock = new VirtualClock();
        var pit = new Pit8254(clock, new RecordingInterruptLine());
        pit.Out(3, 0x36);
        pit.Out(0, 0x00);
        pit.Out(0, 0x10);
        pit.ControlPortB.Out(0, 0x01);
        pit.Out(3, 0xB2);
        pit.Out(2, 0x20);
        pit.Out(3, 0xC2); // read-back of channel 0's count and status
        clock.Advance(3_000_000);
        Fuzz(Save(pit), () =>
        {
            var c = new VirtualClock();
            var p = new Pit8254(c, new RecordingInterruptLine());
            return new Target(p, () =>
            {
                for (int n = 0; n < 5; n++)
                {
                    c.Advance(700_000);
                    for (ushort ch = 0; ch < 3; ch++)
                    {
                        p.In(ch);
                        p.In(ch);
                    }

                    p.ControlPortB.In(0);
                }

                p.ControlPortB.Out(0, 0x00);
                p.Out(3, 0xEE);
                p.In(0);
            });
        }, 7);
    }

    [Fact]
    public void Corrupt_clock_and_platform_sections_are_refused_or_valid()
    {
        var clock = new VirtualClock();
        clock.Advance(1234);
        Fuzz(Save(clock), () =>
        {
            var c = new VirtualClock();
            return new Target(c, () => c.Advance(10));
        }, 8);

        Fuzz(Save(InterruptStateTests.BusyPlatform()), () =>
        {
            var p = InterruptStateTests.NewPlatform();
            return new Target(p, () => InterruptStateTests.RunPlatform(p, p.Clock.Now + 3_000_000));
        }, 9);
    }
}
