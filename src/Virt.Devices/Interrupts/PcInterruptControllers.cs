namespace Virt.Devices.Interrupts;

/// <summary>
/// The interrupt controllers and timers of a PC, wired as on real boards: ISA IRQs go to the PIC pair
/// and to the IOAPIC (IRQ 0 on IOAPIC pin 2, the usual interrupt source override; others on the pin of
/// their number), the PIC reaches the CPU through the local APIC's LINT0 (ExtINT), level-triggered
/// EOIs go back to the IOAPIC, and the PIT ticks IRQ 0. The CPU asks <see cref="LocalApic"/>.
/// </summary>
/// <remarks>Matches the interrupt assignments that <c>Virt.Boot.MpTable</c> announces.</remarks>
public sealed class PcInterruptControllers
{
    /// <summary>The IOAPIC pin ISA IRQ 0 (the PIT) is wired to.</summary>
    public const int TimerPin = 2;

    private readonly IInterruptLine[] _isaLines;

    /// <summary>Creates and wires the controllers on <paramref name="clock"/>, with one local APIC.</summary>
    public PcInterruptControllers(VirtualClock clock, long apicTimerFrequency = LocalApic.DefaultTimerFrequency)
        : this(clock, apicTimerFrequency, 1)
    {
    }

    /// <summary>
    /// Creates and wires the controllers on <paramref name="clock"/> with <paramref name="processors"/> local APICs
    /// (IDs 0 to <paramref name="processors"/> - 1, the bootstrap processor's first) on one APIC bus; the PIC reaches
    /// the bootstrap processor's LINT0.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="processors"/> is not 1 to 255.</exception>
    public PcInterruptControllers(VirtualClock clock, long apicTimerFrequency, int processors)
    {
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentOutOfRangeException.ThrowIfLessThan(processors, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(processors, 255);
        Clock = clock;
        Pic = new PicPair();
        LocalApics = [.. Enumerable.Range(0, processors).Select(i => new LocalApic(clock, (byte)i, apicTimerFrequency))];
        LocalApic = LocalApics[0];
        LocalApic.ExtIntSource = Pic;
        IApicMessageSink target = LocalApic;
        if (processors > 1)
        {
            var bus = new ApicBus(LocalApics);
            target = bus;
        }

        IoApic = new IoApic(target);
        foreach (var apic in LocalApics)
        {
            apic.EndOfInterruptBroadcast = IoApic.EndOfInterrupt;
        }

        _isaLines = [.. Enumerable.Range(0, 16).Select(i => (IInterruptLine)new IsaLine(this, i))];
        Pit = new Pit8254(clock, _isaLines[0]);
    }

    /// <summary>Virtual time.</summary>
    public VirtualClock Clock { get; }

    /// <summary>The 8259 pair.</summary>
    public PicPair Pic { get; }

    /// <summary>The IOAPIC at <see cref="IoApic.DefaultAddress"/>.</summary>
    public IoApic IoApic { get; }

    /// <summary>The boot CPU's local APIC at <see cref="LocalApic.DefaultAddress"/>; the CPU's <see cref="IInterruptController"/>.</summary>
    public LocalApic LocalApic { get; }

    /// <summary>Every processor's local APIC, by vCPU index (the APIC ID is the index).</summary>
    public IReadOnlyList<LocalApic> LocalApics { get; }

    /// <summary>The 8254 timer.</summary>
    public Pit8254 Pit { get; }

    /// <summary>The port-I/O devices to register: (first port, port count, device).</summary>
    public IReadOnlyList<(ushort Port, ushort Count, IPortIoDevice Device)> PortDevices =>
    [
        (PicPair.MasterBase, 2, Pic.MasterPorts),
        (PicPair.SlaveBase, 2, Pic.SlavePorts),
        (PicPair.ElcrBase, 2, Pic.ElcrPorts),
        (Pit8254.BasePort, 4, Pit),
        (Pit8254.ControlPortBPort, 1, Pit.ControlPortB),
    ];

    /// <summary>The MMIO devices to register: (address, size, device).</summary>
    public IReadOnlyList<(GuestAddress Address, ulong Size, IMmioDevice Device)> MmioDevices =>
    [
        (new GuestAddress(IoApic.DefaultAddress), IoApic.Size, IoApic),
        (new GuestAddress(LocalApic.DefaultAddress), LocalApic.Size, LocalApic),
    ];

    /// <summary>The IOAPIC pin for ISA IRQ <paramref name="irq"/>.</summary>
    public static int IoApicPinForIsaIrq(int irq) => irq == 0 ? TimerPin : irq;

    /// <summary>The line for ISA IRQ <paramref name="irq"/> (0-15): drives the PIC input and the IOAPIC pin together.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="irq"/> is not 0-15.</exception>
    public IInterruptLine GetIsaLine(int irq)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(irq);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(irq, 15);
        return _isaLines[irq];
    }

    /// <summary>The line for global system interrupt <paramref name="gsi"/>: ISA IRQs below 16, IOAPIC pins 16-23 above.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gsi"/> is not 0-23.</exception>
    public IInterruptLine GetGsiLine(int gsi) => gsi < 16 ? GetIsaLine(gsi) : IoApic.GetLine(gsi);

    private sealed class IsaLine(PcInterruptControllers owner, int irq) : IInterruptLine
    {
        public void Raise()
        {
            owner.Pic.SetIrq(irq, true);
            owner.IoApic.SetIrq(IoApicPinForIsaIrq(irq), true);
        }

        public void Lower()
        {
            owner.Pic.SetIrq(irq, false);
            owner.IoApic.SetIrq(IoApicPinForIsaIrq(irq), false);
        }
    }
}
