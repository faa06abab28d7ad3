using System.Collections.Immutable;
using System.Numerics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Virt.Boot;
using Virt.Cpu;
using Virt.Devices;
using Virt.Devices.Interrupts;
using Virt.Devices.Virtio;
using Virt.Memory;

namespace Virt;

/// <summary>The devices the VM itself provides, each at the fixed PC resources <see cref="DeviceManager"/> reserves for it.</summary>
internal enum PlatformDevice
{
    /// <summary>The 16550A at COM1: ports 0x3F8-0x3FF, IRQ 4.</summary>
    SerialConsole,

    /// <summary>The debug-exit port.</summary>
    DebugExit,

    /// <summary>The i8042 at ports 0x60 and 0x64 (IRQs 1 and 12 kept for it), for Linux guests.</summary>
    KeyboardController,

    /// <summary>The CMOS RTC at ports 0x70-0x71 (IRQ 8 kept for it), for Linux guests.</summary>
    Rtc,

    /// <summary>The ACPI hardware-reduced sleep and reset registers at 0x600-0x602, for Linux guests.</summary>
    AcpiSleep,

    /// <summary>The ACPI PM timer at 0x608-0x60B, for guests that boot a kernel or ask for it.</summary>
    AcpiPmTimer,

    /// <summary>The PCI host bridge's configuration ports at 0xCF8-0xCFF (nothing behind it), for Linux guests.</summary>
    PciHostBridge,
}

/// <summary>
/// Places a VM's devices and wires them to its buses: I/O port ranges, MMIO windows and interrupt lines (GSIs),
/// given out around what the platform uses, so that adding a device is one <see cref="DeviceSpec"/>.
/// </summary>
/// <remarks>
/// <para>The constructor does all the placing, before anything is created, so that <see cref="VirtualMachineBuilder.Build"/>
/// can refuse a layout that does not fit with a message that says what to change. It first reserves the platform:
/// the PIT's IRQ 0 and the PIC cascade's IRQ 2; with interrupt controllers the ports and MMIO pages they claim
/// inside the backend (KVM's in-kernel irqchip and PIT, the interpreter's emulated controllers: guest accesses
/// there never reach a bus); the serial console, debug-exit and the Linux platform devices with their lines.
/// Then the configured devices: every fixed port range, window and line first, then, in the order the devices
/// were added, whatever they left to the manager. Adding a device with a fixed place therefore never moves
/// another device's fixed place, and a VM with only virtio devices gets the windows and lines it always had.</para>
/// <para>Automatic port ranges come from 0x1000-0xFFFF, aligned to their size rounded up to a power of two (at most
/// 256). Automatic MMIO windows are whole 4 KiB pages from <see cref="WindowRegionStart"/> up to the IOAPIC, one
/// page per virtio-mmio transport. Automatic lines come from <see cref="DeviceIrqs"/> in order.</para>
/// </remarks>
internal sealed class DeviceManager
{
    /// <summary>First port of automatically placed port ranges: above the legacy ISA ports guests probe.</summary>
    public const ushort PortRegionStart = 0x1000;

    /// <summary>First address of the region that automatic MMIO windows (virtio-mmio ones first of all) come from.</summary>
    public const ulong WindowRegionStart = VirtualMachineBuilder.VirtioMmioBase;

    /// <summary>End of that region: the IOAPIC, followed by the local APIC.</summary>
    public const ulong WindowRegionEnd = IoApic.DefaultAddress;

    /// <summary>Granularity and alignment of automatic MMIO windows.</summary>
    public const ulong PageSize = 0x1000;

    /// <summary>The highest GSI: ISA IRQs 0-15 on the 8259 pair and the IOAPIC, IOAPIC pins 16-23 above.</summary>
    public const uint MaxIrq = IoApic.PinCount - 1;

    /// <summary>Lines given to devices automatically, in this order: the ISA IRQs no PC device claims, then the IOAPIC-only pins.</summary>
    public static readonly uint[] DeviceIrqs = [5, 6, 7, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

    private const ulong PortSpaceEnd = 0x1_0000;
    private const ulong MaxPortAlignment = 0x100;

    private readonly ulong _memorySize;
    private readonly AddressSpace _ports = new("ports");
    private readonly AddressSpace _mmio = new("MMIO addresses");
    private readonly Dictionary<uint, string> _lines = [];
    /// <summary>
    /// The port ranges reserved for platform devices, in reservation order. (A list of a class rather than a dictionary
    /// keyed by the enum with tuples: those are framework generic code over this library's types, which no ReadyToRun
    /// image holds and every process would compile at first use; a VM has a dozen of these ranges.)
    /// </summary>
    private readonly List<PlatformPorts> _platform = [];

    /// <summary>Ports reserved for platform device <see cref="Which"/>.</summary>
    private sealed record PlatformPorts(PlatformDevice Which, ushort Start, ushort Count, string Name);
    private readonly ImmutableList<DeviceSpec> _specs;
    private readonly DevicePlacement[] _placements;

    /// <summary>Reserves the platform's resources and places every device of <paramref name="config"/>.</summary>
    /// <exception cref="ArgumentException">A device does not fit: the message names it, what is in the way and what to change.</exception>
    public DeviceManager(VirtualMachineConfiguration config)
    {
        _memorySize = config.MemorySize;
        ReservePlatform(config);
        _specs = config.Devices;
        _placements = Place(_specs);
        // Loops rather than LINQ over (spec, placement) pairs: that is framework generic code over value tuples and the
        // ACPI device struct, which no ReadyToRun image holds (compiled in every process at its first machine).
        var virtio = new List<VirtioDeviceInfo>();
        var devices = new List<DevicePlacement>();
        var acpi = new AcpiDevice[_placements.Length];
        int acpiCount = 0;
        for (int i = 0; i < _placements.Length; i++)
        {
            var (spec, p) = (_specs[i], _placements[i]);
            if (spec.IsVirtio)
            {
                virtio.Add(new VirtioDeviceInfo(spec.Name, p.MmioAddress!.Value, p.MmioSize, p.Irq!.Value));
                continue;
            }

            devices.Add(p);
            if (spec.Resources.AcpiHardwareId is { } hid)
            {
                acpi[acpiCount++] = new AcpiDevice(hid, p.Port, p.PortCount, p.MmioAddress, p.MmioSize, (int?)p.Irq);
            }
        }

        VirtioDevices = virtio.AsReadOnly();
        Devices = devices.AsReadOnly();
        var listed = new AcpiDevice[acpiCount];
        Array.Copy(acpi, listed, acpiCount);
        AcpiDevices = listed;
    }

    private readonly List<Snapshots.IPersistentState> _persistent = [];
    private readonly List<VirtioMmioTransport> _transports = [];

    /// <summary>The attached devices (virtio transports and user devices) that save and restore their own state.</summary>
    public IReadOnlyList<Snapshots.IPersistentState> PersistentDevices => _persistent;

    /// <summary>The virtio-mmio transports, in the order their devices were added.</summary>
    public IReadOnlyList<VirtioMmioTransport> Transports => _transports;

    /// <summary>The port-I/O bus the devices are registered on.</summary>
    public PortIoBus Ports { get; } = new();

    /// <summary>The MMIO bus the devices are registered on.</summary>
    public MmioBus Mmio { get; } = new();

    /// <summary>The configured devices other than virtio ones, where they were placed, in the order they were added.</summary>
    public IReadOnlyList<DevicePlacement> Devices { get; }

    /// <summary>The virtio devices (built-in and user-written), in the order they were added.</summary>
    public IReadOnlyList<VirtioDeviceInfo> VirtioDevices { get; }

    /// <summary>The virtio devices as DSDT entries, for <see cref="VirtioDiscovery.Acpi"/>.</summary>
    public IReadOnlyList<AcpiVirtioMmioDevice> AcpiVirtioDevices =>
        [.. VirtioDevices.Select(v => new AcpiVirtioMmioDevice(v.Address, v.Size, (int)v.Irq))];

    /// <summary>The devices added with an ACPI hardware ID, as DSDT entries.</summary>
    public IReadOnlyList<AcpiDevice> AcpiDevices { get; }

    /// <summary>The <c>virtio_mmio.device=</c> parameters, one per virtio device, for <see cref="VirtioDiscovery.CommandLine"/>.</summary>
    public IEnumerable<string> KernelCommandLineEntries => VirtioDevices.Select(v => v.KernelCommandLineFragment);

    /// <summary>Registers a platform device on the ports reserved for it; a device with scattered ports sees each at its distance from the first.</summary>
    public void AttachPlatform(PlatformDevice which, IPortIoDevice device)
    {
        PlatformPorts? first = null;
        foreach (var r in _platform)
        {
            if (r.Which == which)
            {
                first ??= r;
                Ports.Register(r.Start, r.Count, device, r.Name, (ushort)(r.Start - first.Start));
            }
        }

        if (first is null)
        {
            throw new KeyNotFoundException($"No ports were reserved for the platform device {which}.");
        }
    }

    /// <summary>
    /// Creates every configured device through its factory, at its placement, and registers it: a virtio device
    /// behind a virtio-mmio transport, any other on the ports and MMIO window it asked for.
    /// </summary>
    /// <param name="memory">Guest memory, for transports and devices that use it.</param>
    /// <param name="partition">Where interrupt lines go.</param>
    /// <param name="loggerFactory">The VM's logging, if any.</param>
    /// <param name="resources">Receives what the devices ask the VM to release with it.</param>
    /// <param name="vcpuCount">The VM's vCPUs (<see cref="DeviceContext.VcpuCount"/>).</param>
    /// <exception cref="ArgumentException">A factory returned nothing, or a device that cannot serve what it asked for.</exception>
    public void AttachDevices(IGuestMemory memory, IPartition partition, ILoggerFactory? loggerFactory, MachineResources resources, int vcpuCount)
    {
        var factory = loggerFactory ?? NullLoggerFactory.Instance;
        var virtioLogger = loggerFactory?.CreateLogger("Virt.Devices.Virtio");
        int virtioIndex = 0;
        for (int i = 0; i < _specs.Count; i++)
        {
            var spec = _specs[i];
            var placement = _placements[i];
            var line = placement.Irq is { } irq ? new PartitionInterruptLine(partition, irq) : null;
            if (spec.IsVirtio)
            {
                var context = new DeviceContext(placement, null, $"The virtio-mmio transport of '{spec.Name}' drives its interrupt line; signal the driver with VirtioDeviceContext.SignalUsed.", memory, partition.HasInterruptController, factory, resources, vcpuCount);
                var device = spec.Create(context) as IVirtioDevice ?? throw new ArgumentException($"The factory of virtio device '{spec.Name}' returned null; return a new IVirtioDevice.");
                var window = placement.MmioAddress!.Value;
                var transport = new VirtioMmioTransport(device, memory, line!, virtioLogger) { StateName = $"virtio-mmio@0x{window.Value:x}" };
                Mmio.Register(window, placement.MmioSize, transport, $"{spec.Name} #{virtioIndex++}");
                _transports.Add(transport);
                _persistent.Add(transport);

                continue;
            }

            var deviceContext = new DeviceContext(placement, line, $"Device '{spec.Name}' has no interrupt line; ask for one with DeviceResources.Interrupt = true.", memory, partition.HasInterruptController, factory, resources, vcpuCount);
            object created = spec.Create(deviceContext) ?? throw new ArgumentException($"The factory of device '{spec.Name}' returned null; return the device.");
            if (created is Snapshots.IPersistentState userState)
            {
                _persistent.Add(userState);
            }

            if (placement.Port is { } port)
            {
                var portDevice = created as IPortIoDevice ?? throw new ArgumentException($"Device '{spec.Name}' asks for ports, but its factory returned a {created.GetType().Name}, which is not an IPortIoDevice. Implement IPortIoDevice or drop DeviceResources.PortCount.");
                Ports.Register(port, placement.PortCount, portDevice, spec.Name);
            }

            if (placement.MmioAddress is { } address)
            {
                var mmioDevice = created as IMmioDevice ?? throw new ArgumentException($"Device '{spec.Name}' asks for an MMIO window, but its factory returned a {created.GetType().Name}, which is not an IMmioDevice. Implement IMmioDevice or drop DeviceResources.MmioSize.");
                Mmio.Register(address, placement.MmioSize, mmioDevice, spec.Name);
            }
        }
    }

    private void ReservePlatform(VirtualMachineConfiguration c)
    {
        // Lines the PC platform has whatever the configuration: the timer and the cascade from the secondary 8259.
        ReserveLine(0, "the PIT (IRQ 0)");
        ReserveLine(PicPair.CascadeIrq, "the PIC cascade (IRQ 2)");
        if (c.InterruptController)
        {
            // Claimed inside the backend: the guest's accesses never reach a bus, so no device may sit there.
            ReserveBackendPorts(PicPair.MasterBase, 2, "8259 PIC (master)");
            ReserveBackendPorts(PicPair.SlaveBase, 2, "8259 PIC (slave)");
            ReserveBackendPorts(PicPair.ElcrBase, 2, "8259 ELCR");
            ReserveBackendPorts(Pit8254.BasePort, 4, "8254 PIT");
            ReserveBackendPorts(Pit8254.ControlPortBPort, 1, "8254 PIT port B");
            _mmio.Reserve(IoApic.DefaultAddress, IoApic.DefaultAddress + IoApic.Size, "IOAPIC");
            _mmio.Reserve(LocalApic.DefaultAddress, LocalApic.DefaultAddress + LocalApic.Size, "local APIC");
        }

        if (c.HasSerialConsole)
        {
            ReservePlatform(PlatformDevice.SerialConsole, Serial16550.Com1Port, Serial16550.PortCount, "serial console (COM1)");
            ReserveLine(Serial16550.Com1Irq, "the serial console (COM1)");
        }

        if (c.DebugExitPort is { } exitPort)
        {
            ReservePlatform(PlatformDevice.DebugExit, exitPort, (ushort)c.DebugExitWidth, "debug-exit");
        }

        if (c.LinuxPlatform)
        {
            ReservePlatform(PlatformDevice.KeyboardController, I8042Controller.DataPort, 1, "i8042");
            ReservePlatform(PlatformDevice.KeyboardController, I8042Controller.CommandPort, 1, "i8042");
            ReserveLine(I8042Controller.KeyboardIrq, "the i8042 keyboard");
            ReserveLine(I8042Controller.AuxIrq, "the i8042 mouse");
            ReservePlatform(PlatformDevice.Rtc, CmosRtc.IndexPort, CmosRtc.PortCount, "CMOS RTC");
            ReserveLine(CmosRtc.Irq, "the CMOS RTC");
            ReservePlatform(PlatformDevice.AcpiSleep, AcpiSleepDevice.DefaultPort, AcpiSleepDevice.PortCount, "ACPI sleep registers");
            ReservePlatform(PlatformDevice.PciHostBridge, PciHostBridge.BasePort, PciHostBridge.PortCount, "PCI configuration ports");
        }

        if (c.HasAcpiPmTimer)
        {
            ReservePlatform(PlatformDevice.AcpiPmTimer, AcpiPmTimer.DefaultPort, AcpiPmTimer.PortCount, "ACPI PM timer");
        }
    }

    private void ReserveBackendPorts(ushort start, ushort count, string name) => _ports.Reserve(start, (ulong)start + count, name);

    private void ReservePlatform(PlatformDevice which, ushort start, ushort count, string name)
    {
        _ports.Reserve(start, (ulong)start + count, name);
        _platform.Add(new PlatformPorts(which, start, count, name));
    }

    private void ReserveLine(int irq, string owner) => _lines.Add((uint)irq, owner);

    private DevicePlacement[] Place(ImmutableList<DeviceSpec> specs)
    {
        foreach (var spec in specs)
        {
            ReserveFixed(spec);
        }

        var placements = new DevicePlacement[specs.Count];
        for (int i = 0; i < specs.Count; i++)
        {
            placements[i] = PlaceRest(specs[i]);
        }

        return placements;
    }

    private void ReserveFixed(DeviceSpec spec)
    {
        var r = spec.Resources;
        string name = spec.Name;
        if (r.Port is { } port)
        {
            if (r.PortCount == 0 || (ulong)port + r.PortCount > PortSpaceEnd)
            {
                throw new ArgumentException($"Port device '{name}' at 0x{port:x} with length {r.PortCount} is outside the 64 Ki port space or empty.");
            }

            _ports.Reserve(port, (ulong)port + r.PortCount, name);
        }

        if (r.MmioAddress is { } start)
        {
            if (r.MmioSize == 0 || !start.TryAdd(r.MmioSize, out var end) || end.Value == 0)
            {
                throw new ArgumentException($"MMIO device '{name}' at {start} has an empty or wrapping range.");
            }

            if (start.Value < RamLayout.LowSize(_memorySize)
                || (_memorySize > RamLayout.LowRamLimit && end.Value > RamLayout.HighRamStart && start.Value < RamLayout.HighRamStart + (_memorySize - RamLayout.LowRamLimit)))
            {
                throw new ArgumentException($"MMIO device '{name}' at {start} overlaps guest RAM ({RamLayout.Describe(_memorySize)}). Place it between RAM and 4 GiB, e.g. at 0xD0000000.");
            }

            _mmio.Reserve(start.Value, end.Value, name);
        }

        if (r.PortCount == 0 && r.MmioSize == 0)
        {
            throw new ArgumentException($"Device '{name}' asks for neither ports nor an MMIO window. Give it DeviceResources.PortCount or MmioSize.");
        }

        if (r.Irq is { } irq)
        {
            if (irq > MaxIrq)
            {
                throw new ArgumentException($"Interrupt line {irq} for '{name}' does not exist; the interrupt controllers have lines 0-{MaxIrq}.");
            }

            if (!_lines.TryAdd(irq, $"'{name}'"))
            {
                throw new ArgumentException($"Interrupt line {irq} for '{name}' is taken by {_lines[irq]}. Choose another line, or leave DeviceResources.Irq unset so the VM picks a free one.");
            }
        }
    }

    private uint? FreeDeviceLine()
    {
        foreach (uint line in DeviceIrqs)
        {
            if (!_lines.ContainsKey(line))
            {
                return line;
            }
        }

        return null;
    }

    private DevicePlacement PlaceRest(DeviceSpec spec)
    {
        var r = spec.Resources;
        ushort? port = r.Port;
        if (port is null && r.PortCount > 0)
        {
            ulong alignment = Math.Min(BitOperations.RoundUpToPowerOf2((uint)r.PortCount), MaxPortAlignment);
            port = (ushort?)_ports.Allocate(PortRegionStart, PortSpaceEnd, r.PortCount, alignment, spec.Name)
                ?? throw new ArgumentException($"No free range of {r.PortCount} ports for '{spec.Name}' in 0x{PortRegionStart:x}-0xffff. Give it fixed ports (DeviceResources.Port) or fewer of them.");
        }

        var address = r.MmioAddress;
        if (address is null && r.MmioSize > 0)
        {
            ulong window = r.MmioSize > WindowRegionEnd - WindowRegionStart ? 0 : (r.MmioSize + PageSize - 1) & ~(PageSize - 1);
            ulong? found = window == 0 ? null : _mmio.Allocate(WindowRegionStart, WindowRegionEnd, window, PageSize, spec.Name);
            address = found is { } a
                ? new GuestAddress(a)
                : throw new ArgumentException($"No free MMIO window of 0x{r.MmioSize:x} bytes for '{spec.Name}' in 0x{WindowRegionStart:x}-0x{WindowRegionEnd - 1:x}. Give it a fixed address (DeviceResources.MmioAddress) or a smaller window.");
        }

        uint? irq = r.Irq;
        if (irq is null && r.WantsInterrupt)
        {
            irq = FreeDeviceLine() ?? throw new ArgumentException(
                $"No free interrupt line for '{spec.Name}': the {DeviceIrqs.Length} lines the VM gives devices ({string.Join(", ", DeviceIrqs)}) are all taken. Remove a device, or let this one work without an interrupt.");
            _lines.Add(irq.Value, $"'{spec.Name}'");
        }

        return new DevicePlacement(spec.Name, port, port is null ? (ushort)0 : r.PortCount, address, address is null ? 0 : r.MmioSize, irq);
    }

    /// <summary>Ranges of one address space (ports or guest physical addresses), each with the name of its owner.</summary>
    private sealed class AddressSpace(string what)
    {
        private readonly List<Range> _ranges = [];

        /// <exception cref="ArgumentException">[<paramref name="start"/>, <paramref name="end"/>) overlaps a range; the message names both.</exception>
        public void Reserve(ulong start, ulong end, string owner)
        {
            foreach (var r in _ranges)
            {
                if (r.Overlaps(start, end))
                {
                    throw new ArgumentException(
                        $"Devices '{r.Owner}' (0x{r.Start:x}-0x{r.End - 1:x}) and '{owner}' (0x{start:x}-0x{end - 1:x}) overlap in {what}. Move one of them.");
                }
            }

            _ranges.Add(new Range(start, end, owner));
        }

        /// <summary>Reserves the lowest free, aligned range of <paramref name="size"/> in [<paramref name="from"/>, <paramref name="to"/>).</summary>
        /// <returns>Its start, or <see langword="null"/> when none is free.</returns>
        public ulong? Allocate(ulong from, ulong to, ulong size, ulong alignment, string owner)
        {
            ulong candidate = AlignUp(from, alignment);
            while (size <= to && candidate <= to - size)
            {
                ulong end = candidate + size;
                ulong? blocker = null;
                foreach (var r in _ranges)
                {
                    if (r.Overlaps(candidate, end) && (blocker is null || r.End > blocker))
                    {
                        blocker = r.End;
                    }
                }

                if (blocker is null)
                {
                    _ranges.Add(new Range(candidate, end, owner));
                    return candidate;
                }

                candidate = AlignUp(blocker.Value, alignment);
            }

            return null;
        }

        private static ulong AlignUp(ulong value, ulong alignment) => (value + alignment - 1) & ~(alignment - 1);

        /// <summary>[<see cref="Start"/>, <see cref="End"/>) reserved by <see cref="Owner"/>.</summary>
        private sealed record Range(ulong Start, ulong End, string Owner)
        {
            /// <summary>Whether [<paramref name="start"/>, <paramref name="end"/>) shares an address with this range.</summary>
            public bool Overlaps(ulong start, ulong end) => start < End && Start < end;
        }
    }
}
