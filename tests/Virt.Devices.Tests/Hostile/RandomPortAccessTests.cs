using Virt.Devices.Tests.Support;
using Xunit;

namespace Virt.Devices.Tests.Hostile;

/// <summary>A hostile guest pokes every platform device with random ports, sizes and values.</summary>
public sealed class RandomPortAccessTests
{
    private const int Accesses = 100_000;
    private static readonly int[] Sizes = [1, 2, 4];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Random_accesses_through_the_bus_never_fault_a_device(int seed)
    {
        var rng = new Random(seed);
        var com1Irq = new RecordingInterruptLine();
        var com2Irq = new RecordingInterruptLine();
        var kbdIrq = new RecordingInterruptLine();
        var com1 = new Serial16550(com1Irq, Stream.Null);
        var com2 = Serial16550.ForTextWriter(com2Irq, TextWriter.Null);
        var bus = new PortIoBus();
        bus.Register(Serial16550.Com1Port, Serial16550.PortCount, com1, "com1");
        bus.Register(Serial16550.Com2Port, Serial16550.PortCount, com2, "com2");
        new I8042Controller(keyboardInterrupt: kbdIrq).AttachTo(bus);
        new CmosRtc().AttachTo(bus);
        bus.Register(DebugExitDevice.DefaultPort, DebugExitDevice.PortCount, new DebugExitDevice(), "debug-exit");
        bus.Register(AcpiSleepDevice.DefaultPort, AcpiSleepDevice.PortCount, new AcpiSleepDevice(), "acpi-sleep");
        var faults = new List<DeviceFaultedEventArgs>();
        bus.DeviceFaulted += (_, e) => faults.Add(e);
        BusRegistration[] ranges = [.. bus.Registrations];

        var buffer = new byte[4];
        for (int i = 0; i < Accesses; i++)
        {
            BusRegistration r = ranges[rng.Next(ranges.Length)];
            // Include a few ports either side so straddling and unclaimed accesses are exercised too.
            int port = Math.Clamp((int)r.Start + rng.Next(-3, (int)r.Length + 3), 0, 0xFFFF);
            Span<byte> data = buffer.AsSpan(0, Sizes[rng.Next(Sizes.Length)]);
            if (rng.Next(2) == 0)
            {
                rng.NextBytes(data);
                bus.Write((ushort)port, data);
            }
            else
            {
                bus.Read((ushort)port, data);
            }

            if (rng.Next(64) == 0)
            {
                rng.NextBytes(buffer);
                (rng.Next(2) == 0 ? com1 : com2).EnqueueInput(buffer.AsSpan(0, rng.Next(5)));
            }
        }

        Assert.Empty(faults);
        Assert.Equal(0, bus.DeviceFaultCount);
        AssertAlternates(com1Irq);
        AssertAlternates(com2Irq);
        AssertAlternates(kbdIrq);
    }

    [Theory]
    [InlineData(4)]
    public void Random_accesses_at_any_offset_straight_to_each_device_never_throw(int seed)
    {
        var rng = new Random(seed);
        IPortIoDevice[] devices =
        [
            new Serial16550(new RecordingInterruptLine(), Stream.Null),
            new I8042Controller(),
            new CmosRtc(),
            new DebugExitDevice(),
            new AcpiSleepDevice(),
        ];

        var buffer = new byte[4];
        foreach (IPortIoDevice device in devices)
        {
            for (int i = 0; i < Accesses / devices.Length; i++)
            {
                // Mostly small offsets (the device's own registers), sometimes anything at all.
                ushort offset = (ushort)(rng.Next(4) == 0 ? rng.Next(0x10000) : rng.Next(16));
                Span<byte> data = buffer.AsSpan(0, Sizes[rng.Next(Sizes.Length)]);
                if (rng.Next(2) == 0)
                {
                    rng.NextBytes(data);
                    device.Write(offset, data);
                }
                else
                {
                    device.Read(offset, data);
                }
            }
        }
    }

    /// <summary>A device must never raise an already-high line or lower a low one: edge-triggered controllers would miss or invent interrupts.</summary>
    private static void AssertAlternates(RecordingInterruptLine line)
    {
        for (int i = 0; i < line.Transitions.Count; i++)
        {
            Assert.Equal(i % 2 == 0, line.Transitions[i]);
        }
    }
}
