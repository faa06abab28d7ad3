using System.Buffers.Binary;
using System.Text;
using Virt.Memory;

namespace Virt.Boot;

/// <summary>A virtio-mmio device to announce in the DSDT (ACPI ID <c>LNRO0005</c>, which Linux's virtio_mmio driver binds).</summary>
/// <param name="Address">The device's MMIO base.</param>
/// <param name="Size">The size of its register window (normally 0x1000 or 0x200).</param>
/// <param name="Gsi">Its interrupt (a GSI: ISA IRQ numbers below 16, IOAPIC pins up to 23).</param>
/// <param name="LevelTriggered">Whether the interrupt is level-triggered (virtio-mmio's interrupt status is acknowledged by the driver, so level is the natural fit).</param>
public readonly record struct AcpiVirtioMmioDevice(GuestAddress Address, ulong Size, int Gsi, bool LevelTriggered = true);

/// <summary>What <see cref="AcpiTables.Write"/> describes.</summary>
public sealed record AcpiTablesOptions
{
    /// <summary>Where the RSDP goes, the other tables after it. Default 0xE0000: inside the BIOS area Linux scans for the RSDP, reserved in the e820 map.</summary>
    public GuestAddress Address { get; init; } = new(0xE0000);

    /// <summary>Number of processors (APIC IDs 0 to n-1).</summary>
    public int ProcessorCount { get; init; } = 1;

    /// <summary>Address of the IOAPIC (GSI base 0, 24 pins); its APIC ID is <see cref="ProcessorCount"/>.</summary>
    public GuestAddress IoApicAddress { get; init; } = new(0xFEC00000);

    /// <summary>Whether to announce the 8259 pair (MADT PCAT_COMPAT).</summary>
    public bool HasLegacyPic { get; init; } = true;

    /// <summary>Whether to announce an i8042 keyboard controller (FADT IAPC_BOOT_ARCH 8042).</summary>
    public bool HasI8042 { get; init; } = true;

    /// <summary>
    /// Whether to describe COM1 (I/O 0x3F8, IRQ 4) as a DSDT device (<c>PNP0501</c>). Under hardware-reduced
    /// ACPI Linux maps no legacy ISA interrupts, so the 8250 driver gets IRQ 4 only through this entry.
    /// </summary>
    public bool Com1 { get; init; } = true;

    /// <summary>The virtio-mmio devices, as DSDT devices <c>\_SB.VRnn</c>.</summary>
    public IReadOnlyList<AcpiVirtioMmioDevice> VirtioMmioDevices { get; init; } = [];

    /// <summary>Other devices, each under its own hardware ID, as DSDT devices <c>\_SB.UDnn</c>.</summary>
    public IReadOnlyList<AcpiDevice> Devices { get; init; } = [];

    /// <summary>I/O port of the hardware-reduced sleep control register (8 bits); the platform's ACPI sleep device.</summary>
    public ushort SleepControlPort { get; init; } = 0x600;

    /// <summary>I/O port of the sleep status register.</summary>
    public ushort SleepStatusPort { get; init; } = 0x601;

    /// <summary>I/O port of the reset register, or 0 for none.</summary>
    public ushort ResetPort { get; init; } = 0x602;

    /// <summary>The value the guest writes to <see cref="ResetPort"/> to reset.</summary>
    public byte ResetValue { get; init; } = 0x01;

    /// <summary>SLP_TYP for S5 (soft off) in the DSDT's <c>\_S5</c>.</summary>
    public byte S5SleepType { get; init; } = 5;

    /// <summary>
    /// I/O port of the ACPI power-management timer (FADT <c>PM_TMR_BLK</c> and <c>X_PM_TMR_BLK</c>, 4 ports), or 0 for
    /// none. Default 0x608, where QEMU's PIIX4 power-management block puts it.
    /// </summary>
    public ushort PmTimerPort { get; init; } = 0x608;

    /// <summary>
    /// Whether the PM timer counts in 32 bits (FADT flag <c>TMR_VAL_EXT</c>) rather than 24. It must match what the
    /// timer device at <see cref="PmTimerPort"/> does.
    /// </summary>
    public bool PmTimer32Bit { get; init; } = true;
}

/// <summary>The ACPI tables as placed in guest memory.</summary>
/// <param name="Rsdp">The RSDP's address: give it to Linux in the zero page (<see cref="LinuxBootOptions.AcpiRsdpAddress"/>) or the PVH start info.</param>
/// <param name="Placement">The whole block of tables.</param>
public readonly record struct AcpiTablesResult(GuestAddress Rsdp, BootPlacement Placement);

/// <summary>
/// Writes the ACPI tables a Linux guest needs to find its processors, interrupt controllers,
/// virtio-mmio devices, timer and power-off without firmware: RSDP, XSDT, a hardware-reduced FADT
/// (revision 6, sleep control/status and reset registers and the PM timer in I/O space), the FACS
/// it points to, MADT and a DSDT with <c>\_S5</c> and the virtio-mmio devices.
/// </summary>
/// <remarks>
/// <para>Layout from <see cref="AcpiTablesOptions.Address"/>: the RSDP, the FACS at the next 64-byte
/// boundary (ACPI 6.x, 5.2.10: the FACS must be 64-byte aligned; it has no checksum and is not listed in
/// the XSDT, only in the FADT's <c>FIRMWARE_CTRL</c>), then XSDT, FADT, MADT and DSDT on 16-byte boundaries.</para>
/// <para>In hardware-reduced mode Linux uses neither the PIT nor the 8259 PIC: it runs the local APIC timer
/// (TSC-deadline, or calibrated against a known TSC frequency) and routes interrupts through the IOAPIC.
/// The PM timer is still read (x86 Linux takes its port from the FADT whatever the mode) as the
/// <c>acpi_pm</c> clocksource and to check the TSC.</para>
/// </remarks>
public static class AcpiTables
{
    private const int HeaderSize = 36, RsdpSize = 36, FadtSize = 276;

    /// <summary>Size of the FACS (ACPI 6.x, table 5.13); its <c>Length</c> field says the same.</summary>
    public const int FacsSize = 64;

    /// <summary>The FACS's required alignment (ACPI 6.x, 5.2.10).</summary>
    public const int FacsAlignment = 64;

    /// <summary>FACS version written: 2 (ACPI 4.0 and later, with the 64-bit waking vector).</summary>
    private const byte FacsVersion = 2;

    private const uint FadtTimerValueExtended = 1u << 8;
    private const uint FadtHwReduced = 1u << 20, FadtResetRegSupported = 1u << 10, FadtPowerButton = 1u << 4, FadtSleepButton = 1u << 5;
    private const ushort BootArchLegacyDevices = 1, BootArch8042 = 2, BootArchNoVga = 4, BootArchNoMsi = 8;
    private const byte GasSystemIo = 1, GasByteAccess = 1, GasDwordAccess = 3;
    private const uint MadtPcatCompat = 1;

    /// <summary>OEM ID in every table.</summary>
    public const string OemId = "VIRTSD";

    /// <summary>Writes the tables; returns where the RSDP is.</summary>
    /// <exception cref="BootImageException">An option is out of range or the tables do not fit in guest RAM.</exception>
    public static AcpiTablesResult Write(IGuestMemory memory, AcpiTablesOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(memory);
        options ??= new AcpiTablesOptions();
        if (options.ProcessorCount is < 1 or > 254)
        {
            throw new BootImageException("processor_count", $"is {options.ProcessorCount}; announce 1 to 254 processors.");
        }

        if (options.PmTimerPort > 0x10000 - 4)
        {
            throw new BootImageException("pm_timer_port", $"the PM timer at port 0x{options.PmTimerPort:x} would run past port 0xffff; its block is 4 ports.");
        }

        if (options.VirtioMmioDevices.Count > 256)
        {
            throw new BootImageException("virtio_mmio_devices", "more than 256 devices; the DSDT names them VR00-VRFF.");
        }

        foreach (var d in options.VirtioMmioDevices)
        {
            if (d.Gsi is < 0 or > 23 || d.Size == 0 || d.Size > uint.MaxValue || d.Address.Value > uint.MaxValue - d.Size)
            {
                throw new BootImageException("virtio_mmio_devices", $"the device at {d.Address} (size 0x{d.Size:x}, GSI {d.Gsi}) must lie below 4 GiB with a GSI of 0-23.");
            }
        }

        ValidateDevices(options.Devices);
        ulong baseAddress = options.Address.Value;
        if ((baseAddress & 15) != 0)
        {
            throw new BootImageException("acpi_tables", $"the address {options.Address} is not 16-byte aligned; the RSDP must be (Linux scans on 16-byte boundaries).");
        }

        ulong rsdp = baseAddress;
        ulong facs = (rsdp + RsdpSize + FacsAlignment - 1) & ~(ulong)(FacsAlignment - 1);
        ulong xsdt = Align(facs + FacsSize);
        ulong fadt = Align(xsdt + HeaderSize + 16);
        ulong madt = Align(fadt + FadtSize);
        byte[] madtBytes = BuildMadt(options);
        ulong dsdt = Align(madt + (ulong)madtBytes.Length);
        byte[] dsdtBytes = BuildDsdt(options);
        ulong end = dsdt + (ulong)dsdtBytes.Length;
        if (end > uint.MaxValue || !memory.Contains(options.Address, end - baseAddress))
        {
            throw new BootImageException("acpi_tables", $"the ACPI tables at {options.Address} (0x{end - baseAddress:x} bytes) are not in guest memory below 4 GiB; move them or give the VM RAM there.");
        }

        var block = new byte[end - baseAddress];
        Span<byte> At(ulong address, int length) => block.AsSpan((int)(address - baseAddress), length);

        // RSDP (ACPI 6.x 5.2.5.3).
        var r = At(rsdp, RsdpSize);
        Encoding.ASCII.GetBytes("RSD PTR ", r);
        Encoding.ASCII.GetBytes(OemId, r[9..15]);
        r[15] = 2; // revision: ACPI 2.0+ with XSDT
        BinaryPrimitives.WriteUInt32LittleEndian(r[20..], RsdpSize);
        BinaryPrimitives.WriteUInt64LittleEndian(r[24..], xsdt);
        r[8] = MpTable.Checksum(r[..20]);
        r[32] = MpTable.Checksum(r);

        // XSDT: FADT and MADT (the DSDT hangs off the FADT).
        var x = At(xsdt, HeaderSize + 16);
        WriteHeader(x, "XSDT", 1);
        BinaryPrimitives.WriteUInt64LittleEndian(x[HeaderSize..], fadt);
        BinaryPrimitives.WriteUInt64LittleEndian(x[(HeaderSize + 8)..], madt);
        x[9] = MpTable.Checksum(x);

        BuildFacs(At(facs, FacsSize));
        BuildFadt(At(fadt, FadtSize), options, dsdt, facs);
        madtBytes.CopyTo(At(madt, madtBytes.Length));
        dsdtBytes.CopyTo(At(dsdt, dsdtBytes.Length));

        memory.Write(options.Address, block);
        return new AcpiTablesResult(new GuestAddress(rsdp), new BootPlacement("acpi tables", options.Address, (ulong)block.Length));
    }

    private static ulong Align(ulong value) => (value + 15) & ~15UL;

    private static void ValidateDevices(IReadOnlyList<AcpiDevice> devices)
    {
        if (devices.Count > 256)
        {
            throw new BootImageException("devices", "more than 256 devices; the DSDT names them UD00-UDFF.");
        }

        foreach (var d in devices)
        {
            if (!AcpiDevice.IsValidHardwareId(d.HardwareId))
            {
                throw new BootImageException("devices", $"'{d.HardwareId}' is not an ACPI ID (NNNN####, e.g. VIRT0001) or PNP ID (AAA####, e.g. PNP0C0F).");
            }

            if ((d.Port is null) != (d.PortCount == 0) || (d.Port is ushort port && port + d.PortCount > 0x10000))
            {
                throw new BootImageException("devices", $"{d.HardwareId}: ports {d.Port}+{d.PortCount} must be both given, within 0-0xffff, or both absent.");
            }

            if ((d.MmioAddress is null) != (d.MmioSize == 0) || (d.MmioAddress is { } a && a.Value > ulong.MaxValue - d.MmioSize))
            {
                throw new BootImageException("devices", $"{d.HardwareId}: the MMIO window {d.MmioAddress} of 0x{d.MmioSize:x} bytes must be both given and not wrap, or both absent.");
            }

            if (d.Gsi is < 0 or > 23)
            {
                throw new BootImageException("devices", $"{d.HardwareId}: GSI {d.Gsi} is not an IOAPIC pin (0-23).");
            }
        }
    }

    /// <summary>The <c>_CRS</c> resource template of a device: its ports, window and interrupt, then the end tag.</summary>
    private static byte[] Resources(AcpiDevice d)
    {
        var crs = new List<byte>();
        if (d.Port is ushort port)
        {
            // IO (Decode16, min, max, 1, length): the length is one byte, so a longer range is several descriptors.
            for (int done = 0; done < d.PortCount;)
            {
                int n = Math.Min(d.PortCount - done, 255);
                ushort at = (ushort)(port + done);
                crs.AddRange([0x47, 1, (byte)at, (byte)(at >> 8), (byte)at, (byte)(at >> 8), 1, (byte)n]);
                done += n;
            }
        }

        if (d.MmioAddress is { } address)
        {
            if (address.Value + d.MmioSize <= 1UL << 32)
            {
                crs.AddRange([0x86, 9, 0, 1]); // Memory32Fixed (ReadWrite, base, length)
                crs.AddRange(Le32((uint)address.Value));
                crs.AddRange(Le32((uint)d.MmioSize));
            }
            else
            {
                // QWordMemory (ResourceConsumer, MinFixed, MaxFixed, NonCacheable, ReadWrite, granularity 0, min, max, translation 0, length).
                crs.AddRange([0x8A, 0x2B, 0, 0, 0x0D, 0x01]);
                foreach (ulong v in new[] { 0UL, address.Value, address.Value + d.MmioSize - 1, 0UL, d.MmioSize })
                {
                    var b = new byte[8];
                    BinaryPrimitives.WriteUInt64LittleEndian(b, v);
                    crs.AddRange(b);
                }
            }
        }

        if (d.Gsi is int gsi)
        {
            crs.AddRange([0x89, 6, 0, 0x01, 1]); // Extended Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) { gsi }
            crs.AddRange(Le32((uint)gsi));
        }

        crs.AddRange([0x79, 0]);
        return [.. crs];
    }

    private static void WriteHeader(Span<byte> table, string signature, byte revision)
    {
        Encoding.ASCII.GetBytes(signature, table[..4]);
        BinaryPrimitives.WriteUInt32LittleEndian(table[4..], (uint)table.Length);
        table[8] = revision;
        Encoding.ASCII.GetBytes(OemId, table[10..16]);
        Encoding.ASCII.GetBytes("VIRTSDK" + signature[0], table[16..24]);
        BinaryPrimitives.WriteUInt32LittleEndian(table[24..], 1); // OEM revision
        Encoding.ASCII.GetBytes("VSDK", table[28..32]);           // creator ID
        BinaryPrimitives.WriteUInt32LittleEndian(table[32..], 1); // creator revision
    }

    private static void WriteGas(Span<byte> gas, ushort port, byte bitWidth = 8, byte accessSize = GasByteAccess)
    {
        gas[0] = GasSystemIo;
        gas[1] = bitWidth; // register bit width
        gas[2] = 0; // bit offset
        gas[3] = accessSize;
        BinaryPrimitives.WriteUInt64LittleEndian(gas[4..], port);
    }

    // FACS (ACPI 6.x, 5.2.10, table 5.13). No checksum: the OS writes to it (global lock, waking vector).
    private static void BuildFacs(Span<byte> f)
    {
        f.Clear();
        Encoding.ASCII.GetBytes("FACS", f[..4]);
        BinaryPrimitives.WriteUInt32LittleEndian(f[4..], FacsSize);   // Length
        BinaryPrimitives.WriteUInt32LittleEndian(f[8..], 0);          // hardware signature: the platform never changes under a sleeping OS
        // +12 firmware waking vector, +16 global lock, +20 flags (no S4BIOS, no 64-bit wake): all 0.
        f[32] = FacsVersion;                                           // Version
        // +24 X firmware waking vector, +36 OSPM flags: 0.
    }

    private static void BuildFadt(Span<byte> f, AcpiTablesOptions o, ulong dsdt, ulong facs)
    {
        WriteHeader(f, "FACP", 6);
        // FIRMWARE_CTRL; X_FIRMWARE_CTRL (+132) stays 0, as the spec asks when FIRMWARE_CTRL is set.
        BinaryPrimitives.WriteUInt32LittleEndian(f[36..], (uint)facs);
        BinaryPrimitives.WriteUInt32LittleEndian(f[40..], (uint)dsdt);              // DSDT
        if (o.PmTimerPort != 0)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(f[76..], o.PmTimerPort);      // PM_TMR_BLK
            f[91] = 4;                                                              // PM_TMR_LEN
            WriteGas(f[208..220], o.PmTimerPort, 32, GasDwordAccess);              // X_PM_TMR_BLK
        }

        ushort bootArch = (ushort)(BootArchNoVga | BootArchNoMsi | (o.HasI8042 ? BootArch8042 : 0) | BootArchLegacyDevices);
        BinaryPrimitives.WriteUInt16LittleEndian(f[109..], bootArch);              // IAPC_BOOT_ARCH
        uint flags = FadtHwReduced | FadtPowerButton | FadtSleepButton | (o.ResetPort != 0 ? FadtResetRegSupported : 0)
            | (o.PmTimerPort != 0 && o.PmTimer32Bit ? FadtTimerValueExtended : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(f[112..], flags);                 // Flags
        if (o.ResetPort != 0)
        {
            WriteGas(f[116..128], o.ResetPort);                                     // RESET_REG
            f[128] = o.ResetValue;                                                  // RESET_VALUE
        }

        f[131] = 5;                                                                 // FADT minor version (6.5)
        BinaryPrimitives.WriteUInt64LittleEndian(f[140..], dsdt);                  // X_DSDT
        WriteGas(f[244..256], o.SleepControlPort);                                  // SLEEP_CONTROL_REG
        WriteGas(f[256..268], o.SleepStatusPort);                                   // SLEEP_STATUS_REG
        Encoding.ASCII.GetBytes("VIRTSDK\0", f[268..276]);                          // hypervisor vendor identity
        f[9] = MpTable.Checksum(f);
    }

    private static byte[] BuildMadt(AcpiTablesOptions o)
    {
        var body = new List<byte>();
        for (int cpu = 0; cpu < o.ProcessorCount; cpu++)
        {
            body.AddRange([0, 8, (byte)cpu, (byte)cpu, 1, 0, 0, 0]); // processor local APIC: UID, APIC ID, enabled
        }

        var io = new byte[12];
        io[0] = 1;
        io[1] = 12;
        io[2] = (byte)o.ProcessorCount; // IOAPIC ID
        BinaryPrimitives.WriteUInt32LittleEndian(io.AsSpan(4), (uint)o.IoApicAddress.Value);
        BinaryPrimitives.WriteUInt32LittleEndian(io.AsSpan(8), 0); // GSI base
        body.AddRange(io);

        body.AddRange([2, 10, 0, 0, 2, 0, 0, 0, 0, 0]); // interrupt source override: ISA IRQ 0 -> GSI 2, conforming
        body.AddRange([4, 6, 0xFF, 0, 0, 1]);           // local APIC NMI: all processors, LINT1

        var table = new byte[HeaderSize + 8 + body.Count];
        WriteHeader(table, "APIC", 5);
        BinaryPrimitives.WriteUInt32LittleEndian(table.AsSpan(HeaderSize), 0xFEE00000);
        BinaryPrimitives.WriteUInt32LittleEndian(table.AsSpan(HeaderSize + 4), o.HasLegacyPic ? MadtPcatCompat : 0);
        body.CopyTo(table, HeaderSize + 8);
        table[9] = MpTable.Checksum(table);
        return table;
    }

    // EisaId ("PNP0501"): the compressed vendor "PNP" (0x41D0, big-endian) and product 0x0501.
    private const uint EisaIdPnp0501 = 0x0105D041;

    private static byte[] BuildDsdt(AcpiTablesOptions o)
    {
        var aml = new List<byte>();

        // Name (_S5, Package (2) { S5, S5 })
        aml.AddRange(Aml.Name("_S5_", Aml.Package([Aml.Integer(o.S5SleepType), Aml.Integer(o.S5SleepType)])));

        if (o.VirtioMmioDevices.Count > 0 || o.Com1 || o.Devices.Count > 0)
        {
            var devices = new List<byte>();
            if (o.Com1)
            {
                var crs = new List<byte>();
                crs.AddRange([0x47, 1, 0xF8, 0x03, 0xF8, 0x03, 1, 8]); // IO (Decode16, 0x3F8, 0x3F8, 1, 8)
                crs.AddRange([0x89, 6, 0, 0x03, 1]);                  // Extended Interrupt (Consumer, Edge, ActiveHigh) { 4 }
                crs.AddRange(Le32(4));
                crs.AddRange([0x79, 0]);
                var body = new List<byte>();
                body.AddRange(Aml.Name("_HID", Aml.Integer(EisaIdPnp0501)));
                body.AddRange(Aml.Name("_UID", Aml.Integer(1)));
                body.AddRange(Aml.Name("_CRS", Aml.Buffer([.. crs])));
                devices.AddRange(Aml.Device("COM1", [.. body]));
            }

            for (int i = 0; i < o.VirtioMmioDevices.Count; i++)
            {
                var d = o.VirtioMmioDevices[i];
                var crs = new List<byte>();
                // Memory32Fixed (ReadWrite, base, size)
                crs.AddRange([0x86, 9, 0, 1]);
                crs.AddRange(Le32((uint)d.Address.Value));
                crs.AddRange(Le32((uint)d.Size));
                // Extended Interrupt (ResourceConsumer, Level|Edge, ActiveHigh, Exclusive) { gsi }
                byte intFlags = (byte)(0x01 | (d.LevelTriggered ? 0 : 0x02));
                crs.AddRange([0x89, 6, 0, intFlags, 1]);
                crs.AddRange(Le32((uint)d.Gsi));
                crs.AddRange([0x79, 0]); // end tag, checksum 0 (ignored)

                var body = new List<byte>();
                body.AddRange(Aml.Name("_HID", Aml.String("LNRO0005")));
                body.AddRange(Aml.Name("_UID", Aml.Integer((ulong)i)));
                body.AddRange(Aml.Name("_CRS", Aml.Buffer([.. crs])));
                devices.AddRange(Aml.Device($"VR{i:X2}", [.. body]));
            }

            for (int i = 0; i < o.Devices.Count; i++)
            {
                var d = o.Devices[i];
                int uid = 0;
                for (int j = 0; j < i; j++)
                {
                    uid += o.Devices[j].HardwareId == d.HardwareId ? 1 : 0;
                }

                var body = new List<byte>();
                body.AddRange(Aml.Name("_HID", Aml.String(d.HardwareId)));
                body.AddRange(Aml.Name("_UID", Aml.Integer((ulong)uid)));
                body.AddRange(Aml.Name("_CRS", Aml.Buffer(Resources(d))));
                devices.AddRange(Aml.Device($"UD{i:X2}", [.. body]));
            }

            aml.AddRange(Aml.Scope("\\_SB_", [.. devices]));
        }

        var table = new byte[HeaderSize + aml.Count];
        WriteHeader(table, "DSDT", 2);
        aml.CopyTo(table, HeaderSize);
        table[9] = MpTable.Checksum(table);
        return table;
    }

    private static byte[] Le32(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        return b;
    }

    /// <summary>The few AML encodings the DSDT needs (ACPI 6.x, chapter 20).</summary>
    internal static class Aml
    {
        private const byte NameOp = 0x08, ScopeOp = 0x10, BufferOp = 0x11, PackageOp = 0x12, StringPrefix = 0x0D,
            BytePrefix = 0x0A, WordPrefix = 0x0B, DWordPrefix = 0x0C, QWordPrefix = 0x0E, ZeroOp = 0x00, OneOp = 0x01,
            ExtOpPrefix = 0x5B, DeviceOp = 0x82;

        /// <summary>A PkgLength (which counts its own bytes) followed by <paramref name="content"/>.</summary>
        public static byte[] WithPkgLength(ReadOnlySpan<byte> content)
        {
            int n = content.Length;
            byte[] prefix;
            if (n + 1 < 0x40)
            {
                prefix = [(byte)(n + 1)];
            }
            else if (n + 2 < 0x1000)
            {
                int len = n + 2;
                prefix = [(byte)(0x40 | (len & 0xF)), (byte)(len >> 4)];
            }
            else if (n + 3 < 0x100000)
            {
                int len = n + 3;
                prefix = [(byte)(0x80 | (len & 0xF)), (byte)(len >> 4), (byte)(len >> 12)];
            }
            else
            {
                int len = n + 4;
                prefix = [(byte)(0xC0 | (len & 0xF)), (byte)(len >> 4), (byte)(len >> 12), (byte)(len >> 20)];
            }

            return [.. prefix, .. content];
        }

        /// <summary>A NameString: an optional root prefix and one 4-character segment.</summary>
        public static byte[] NameString(string name) => Encoding.ASCII.GetBytes(name);

        public static byte[] Name(string name, byte[] value) => [NameOp, .. NameString(name), .. value];

        public static byte[] Integer(ulong v) => v switch
        {
            0 => [ZeroOp],
            1 => [OneOp],
            <= 0xFF => [BytePrefix, (byte)v],
            <= 0xFFFF => [WordPrefix, (byte)v, (byte)(v >> 8)],
            <= 0xFFFFFFFF => [DWordPrefix, .. BitConverter.GetBytes((uint)v)],
            _ => [QWordPrefix, .. BitConverter.GetBytes(v)],
        };

        public static byte[] String(string s) => [StringPrefix, .. Encoding.ASCII.GetBytes(s), 0];

        public static byte[] Package(byte[][] elements)
        {
            var content = new List<byte> { (byte)elements.Length };
            foreach (var e in elements)
            {
                content.AddRange(e);
            }

            return [PackageOp, .. WithPkgLength([.. content])];
        }

        public static byte[] Buffer(byte[] data) => [BufferOp, .. WithPkgLength([.. Integer((ulong)data.Length), .. data])];

        public static byte[] Device(string name, byte[] body) => [ExtOpPrefix, DeviceOp, .. WithPkgLength([.. NameString(name), .. body])];

        public static byte[] Scope(string name, byte[] body) => [ScopeOp, .. WithPkgLength([.. NameString(name), .. body])];
    }
}
