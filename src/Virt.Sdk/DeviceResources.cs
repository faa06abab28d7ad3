namespace Virt;

/// <summary>
/// What a device added with <see cref="VirtualMachineBuilder.WithDevice{TDevice}"/> needs from the machine: a range of
/// I/O ports, an MMIO window, an interrupt line, or any mix of them. Leave an address or line unset and the VM's
/// device manager picks a free one when the VM is built; set it and the device gets exactly that or
/// <see cref="VirtualMachineBuilder.Build"/> says what is in the way.
/// </summary>
/// <example>
/// <code>
/// new DeviceResources { PortCount = 4, Interrupt = true }                                  // 4 ports and a line, both chosen by the VM
/// new DeviceResources { Port = 0x2F8, PortCount = 8, Irq = 3 }                             // fixed ports and IRQ 3
/// new DeviceResources { MmioAddress = new GuestAddress(0xE000_0000), MmioSize = 0x1000 }   // a fixed MMIO window
/// </code>
/// </example>
public sealed record DeviceResources
{
    /// <summary>How many consecutive I/O ports the device decodes; 0 for none.</summary>
    /// <remarks>
    /// Without <see cref="Port"/> the range is taken from 0x1000-0xFFFF (above the legacy ISA ports a guest probes),
    /// aligned to its size rounded up to a power of two (at most 256).
    /// </remarks>
    public ushort PortCount { get; init; }

    /// <summary>The first port, when the device must sit at a fixed place (e.g. a legacy ISA address); <see langword="null"/> to let the VM choose.</summary>
    public ushort? Port { get; init; }

    /// <summary>The size of the device's MMIO window in bytes; 0 for none.</summary>
    /// <remarks>
    /// Without <see cref="MmioAddress"/> the window is taken from the device region that starts at
    /// <see cref="VirtualMachineBuilder.VirtioMmioBase"/> (shared with the virtio-mmio windows), page-aligned and
    /// rounded up to whole 4 KiB pages, so guest RAM must then end below that address.
    /// </remarks>
    public ulong MmioSize { get; init; }

    /// <summary>The window's guest physical address, when it must be fixed (above guest RAM); <see langword="null"/> to let the VM choose.</summary>
    public GuestAddress? MmioAddress { get; init; }

    /// <summary>
    /// Whether the device gets an interrupt line (<see cref="DeviceContext.InterruptLine"/>). The VM takes the next
    /// free line from 5, 6, 7, 9, 10, 11, 14, 15, 16-23, in the order devices were added; setting <see cref="Irq"/> implies it.
    /// </summary>
    public bool Interrupt { get; init; }

    /// <summary>
    /// A fixed interrupt line (GSI 0-23: ISA IRQs 0-15 reach the 8259 PIC and the IOAPIC, 16-23 only the IOAPIC);
    /// <see langword="null"/> to let the VM choose when <see cref="Interrupt"/> is set. Lines a platform device of the VM uses
    /// (0 for the PIT, 2 for the PIC cascade, 4 with a serial console, 1, 8 and 12 for Linux guests) are refused.
    /// </summary>
    public uint? Irq { get; init; }

    /// <summary>
    /// An ACPI hardware ID (<c>_HID</c>) under which a Linux guest finds the device: the VM's ACPI tables then describe
    /// it in the DSDT with its ports, MMIO window and interrupt line (level-triggered, active high: raise the line
    /// while the device wants attention and lower it when the driver acknowledges), and Linux creates a platform
    /// device <c>HWID:nn</c> with those resources, which a driver with a matching ACPI ID binds. An ACPI ID is four
    /// upper-case letters or digits and four hexadecimal digits (<c>VIRT0001</c>), a PNP ID three letters and four
    /// hexadecimal digits. <see langword="null"/> (the default): the device is not described, and a guest must know
    /// where it is. Used for Linux boots, which get ACPI tables.
    /// </summary>
    public string? AcpiHardwareId { get; init; }

    /// <summary>Whether the device asked for an interrupt line, fixed or chosen by the VM.</summary>
    internal bool WantsInterrupt => Interrupt || Irq is not null;
}
