using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Virt.Memory;
using Xunit;

namespace Virt.Boot.Tests;

public sealed class AcpiTablesTests
{
    private static readonly AcpiTablesOptions WithDevices = new()
    {
        VirtioMmioDevices =
        [
            new AcpiVirtioMmioDevice(new GuestAddress(0xD0000000), 0x1000, 5),
            new AcpiVirtioMmioDevice(new GuestAddress(0xD0001000), 0x1000, 6, LevelTriggered: false),
        ],
        Devices = [new AcpiDevice("VIRT0001", 0x1000, 8, new GuestAddress(0x1_0000_0000), 0x1000, 10)],
    };

    private static byte Sum(ReadOnlySpan<byte> data)
    {
        byte s = 0;
        foreach (byte b in data)
        {
            s += b;
        }

        return s;
    }

    private static byte[] Table(GuestMemory m, ulong address)
    {
        uint length = m.Read<uint>(new GuestAddress(address + 4));
        Assert.InRange(length, 36u, 0x10000u);
        var t = new byte[length];
        m.Read(new GuestAddress(address), t);
        Assert.Equal(0, Sum(t));
        return t;
    }

    private static string Signature(byte[] t) => Encoding.ASCII.GetString(t, 0, 4);

    [Fact]
    public void Rsdp_leads_to_checksummed_xsdt_fadt_madt_and_dsdt()
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        var result = AcpiTables.Write(m, WithDevices);
        Assert.Equal(0xE0000UL, result.Rsdp.Value);

        var rsdp = new byte[36];
        m.Read(result.Rsdp, rsdp);
        Assert.Equal("RSD PTR ", Encoding.ASCII.GetString(rsdp, 0, 8));
        Assert.Equal(0, Sum(rsdp.AsSpan(0, 20)));
        Assert.Equal(0, Sum(rsdp));
        Assert.Equal(2, rsdp[15]);

        var xsdt = Table(m, BinaryPrimitives.ReadUInt64LittleEndian(rsdp.AsSpan(24)));
        Assert.Equal("XSDT", Signature(xsdt));
        var pointers = Enumerable.Range(0, (xsdt.Length - 36) / 8).Select(i => BinaryPrimitives.ReadUInt64LittleEndian(xsdt.AsSpan(36 + (i * 8)))).ToArray();
        var tables = pointers.Select(p => Table(m, p)).ToDictionary(Signature);
        Assert.Equal(["APIC", "FACP"], tables.Keys.Order());

        var fadt = tables["FACP"];
        Assert.Equal(276, fadt.Length);
        Assert.Equal(6, fadt[8]);
        Assert.NotEqual(0u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(112)) & (1u << 20)); // HW_REDUCED_ACPI
        Assert.Equal(1, fadt[244]);                                                                  // sleep control in I/O space
        Assert.Equal(0x600UL, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(248)));
        Assert.Equal(0x601UL, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(260)));
        Assert.Equal(0x602UL, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(120)));
        Assert.Equal(1, fadt[128]);

        var dsdt = Table(m, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(140)));
        Assert.Equal("DSDT", Signature(dsdt));
        Assert.Equal((uint)BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(140)), BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(40)));
        string text = Encoding.ASCII.GetString(dsdt);
        Assert.Contains("_S5_", text, StringComparison.Ordinal);
        Assert.Equal(2, CountOf(text, "LNRO0005"));
        Assert.Contains("VR00", text, StringComparison.Ordinal);
        Assert.Contains("VR01", text, StringComparison.Ordinal);
        // Memory32Fixed of the first device: base 0xD0000000, size 0x1000.
        Assert.True(IndexOf(dsdt, [0x86, 9, 0, 1, 0, 0, 0, 0xD0, 0, 0x10, 0, 0]) > 0);
        // Its interrupt: consumer, level, active high, GSI 5; the second is edge.
        Assert.True(IndexOf(dsdt, [0x89, 6, 0, 1, 1, 5, 0, 0, 0]) > 0);
        Assert.True(IndexOf(dsdt, [0x89, 6, 0, 3, 1, 6, 0, 0, 0]) > 0);
    }

    private static byte[] Fadt(GuestMemory m, GuestAddress rsdpAddress)
    {
        var rsdp = new byte[36];
        m.Read(rsdpAddress, rsdp);
        var xsdt = Table(m, BinaryPrimitives.ReadUInt64LittleEndian(rsdp.AsSpan(24)));
        return Enumerable.Range(0, (xsdt.Length - 36) / 8)
            .Select(i => Table(m, BinaryPrimitives.ReadUInt64LittleEndian(xsdt.AsSpan(36 + (i * 8)))))
            .Single(t => Signature(t) == "FACP");
    }

    [Fact]
    public void Fadt_points_to_a_64_byte_aligned_facs_outside_the_xsdt_and_every_other_table()
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        var result = AcpiTables.Write(m, WithDevices);
        var fadt = Fadt(m, result.Rsdp);

        uint facs = BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(36));      // FIRMWARE_CTRL
        Assert.NotEqual(0u, facs);
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(132))); // X_FIRMWARE_CTRL: 0 when FIRMWARE_CTRL is set
        Assert.Equal(0u, facs % 64);
        var f = new byte[64];
        m.Read(new GuestAddress(facs), f);
        Assert.Equal("FACS", Encoding.ASCII.GetString(f, 0, 4));
        Assert.Equal(64u, BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(4)));
        Assert.Equal(2, f[32]);                                                       // version
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(16)));      // global lock free
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(12)));      // no waking vector

        // Inside the block the result reports, and overlapping neither the RSDP nor any table the XSDT or FADT lists.
        Assert.InRange(facs, result.Placement.Address.Value, result.Placement.Address.Value + result.Placement.Length - 64);
        var rsdp = new byte[36];
        m.Read(result.Rsdp, rsdp);
        ulong xsdtAddress = BinaryPrimitives.ReadUInt64LittleEndian(rsdp.AsSpan(24));
        var xsdt = Table(m, xsdtAddress);
        var others = new List<(ulong Address, int Length)> { (result.Rsdp.Value, 36), (xsdtAddress, xsdt.Length) };
        for (int i = 0; i < (xsdt.Length - 36) / 8; i++)
        {
            ulong a = BinaryPrimitives.ReadUInt64LittleEndian(xsdt.AsSpan(36 + (i * 8)));
            Assert.NotEqual(facs, a);
            others.Add((a, Table(m, a).Length));
        }

        ulong dsdt = BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(140));
        others.Add((dsdt, Table(m, dsdt).Length));
        Assert.All(others, o => Assert.True(o.Address + (ulong)o.Length <= facs || facs + 64 <= o.Address, $"table at 0x{o.Address:x} overlaps the FACS"));
    }

    [Fact]
    public void Fadt_gives_the_pm_timer_port_in_both_blocks_with_tmr_val_ext_for_a_32_bit_timer()
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        var fadt = Fadt(m, AcpiTables.Write(m).Rsdp);

        Assert.Equal(0x608u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(76)));  // PM_TMR_BLK
        Assert.Equal(4, fadt[91]);                                                       // PM_TMR_LEN
        Assert.NotEqual(0u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(112)) & (1u << 8)); // TMR_VAL_EXT
        Assert.Equal(1, fadt[208]);                                                      // X_PM_TMR_BLK: system I/O
        Assert.Equal(32, fadt[209]);                                                     // 32-bit register
        Assert.Equal(0, fadt[210]);
        Assert.Equal(3, fadt[211]);                                                      // dword access
        Assert.Equal(0x608UL, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(212)));
    }

    [Fact]
    public void Fadt_of_a_24_bit_timer_clears_tmr_val_ext_and_of_no_timer_leaves_the_blocks_empty()
    {
        using var narrow = GuestMemory.CreateRam(2 << 20);
        var fadt = Fadt(narrow, AcpiTables.Write(narrow, new AcpiTablesOptions { PmTimerPort = 0xB008, PmTimer32Bit = false }).Rsdp);
        Assert.Equal(0xB008u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(76)));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(112)) & (1u << 8));

        using var none = GuestMemory.CreateRam(2 << 20);
        fadt = Fadt(none, AcpiTables.Write(none, new AcpiTablesOptions { PmTimerPort = 0 }).Rsdp);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(76)));
        Assert.Equal(0, fadt[91]);
        Assert.All(fadt[208..220], b => Assert.Equal(0, b));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(112)) & (1u << 8));
    }

    [Theory]
    [InlineData(0xFFFDu)]
    [InlineData(0xFFFFu)]
    public void Pm_timer_block_past_port_ffff_fails_naming_the_option(uint port)
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        var ex = Assert.Throws<BootImageException>(() => AcpiTables.Write(m, new AcpiTablesOptions { PmTimerPort = (ushort)port }));
        Assert.Equal("pm_timer_port", ex.Field);
    }

    [Fact]
    public void Madt_lists_the_processors_ioapic_irq0_override_and_nmi()
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        AcpiTables.Write(m, new AcpiTablesOptions { ProcessorCount = 2 });
        var rsdp = new byte[36];
        m.Read(new GuestAddress(0xE0000), rsdp);
        var xsdt = Table(m, BinaryPrimitives.ReadUInt64LittleEndian(rsdp.AsSpan(24)));
        var madt = Enumerable.Range(0, 2).Select(i => Table(m, BinaryPrimitives.ReadUInt64LittleEndian(xsdt.AsSpan(36 + (i * 8))))).Single(t => Signature(t) == "APIC");
        Assert.Equal(0xFEE00000u, BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(36)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(40)));
        var entries = new List<byte[]>();
        for (int off = 44; off < madt.Length; off += madt[off + 1])
        {
            Assert.True(madt[off + 1] >= 2);
            entries.Add(madt[off..(off + madt[off + 1])]);
        }

        Assert.Equal([0, 0, 1, 2, 4], entries.Select(e => e[0]));
        Assert.Equal(1, entries[1][3]);       // second processor's APIC ID
        Assert.Equal(2, entries[2][2]);       // IOAPIC ID after the processors
        Assert.Equal(0xFEC00000u, BinaryPrimitives.ReadUInt32LittleEndian(entries[2].AsSpan(4)));
        Assert.Equal(0, entries[3][3]);       // source IRQ 0
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(entries[3].AsSpan(4)));
        Assert.Equal(1, entries[4][5]);       // LINT1
    }

    [Fact]
    public void Aml_package_length_uses_the_multi_byte_forms_past_63_bytes()
    {
        Assert.Equal([0x05, 1, 2, 3, 4], AcpiTables.Aml.WithPkgLength([1, 2, 3, 4]));
        var big = AcpiTables.Aml.WithPkgLength(new byte[100]);
        Assert.Equal(0x40 | (102 & 0xF), big[0]);
        Assert.Equal(102 >> 4, big[1]);
        Assert.Equal(102, big.Length);
    }

    [Fact]
    public void Out_of_range_device_fails_naming_the_option()
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        var ex = Assert.Throws<BootImageException>(() => AcpiTables.Write(m, new AcpiTablesOptions { VirtioMmioDevices = [new AcpiVirtioMmioDevice(new GuestAddress(0xD0000000), 0x1000, 40)] }));
        Assert.Equal("virtio_mmio_devices", ex.Field);
    }

    private static byte[] Dsdt(GuestMemory m, GuestAddress rsdp) => Table(m, BinaryPrimitives.ReadUInt64LittleEndian(Fadt(m, rsdp).AsSpan(140)));

    [Fact]
    public void Devices_with_hardware_ids_are_described_with_their_ports_window_and_interrupt()
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        var result = AcpiTables.Write(m, new AcpiTablesOptions
        {
            Com1 = false,
            Devices =
            [
                new AcpiDevice("VIRT0001", 0x1000, 8, new GuestAddress(0xD0002000), 0x1000, 10),
                new AcpiDevice("VIRT0001", null, 0, new GuestAddress(0x1_0000_0000), 0x2000, null),
                new AcpiDevice("PNP0C0F", 0x2000, 300, null, 0, 22),
            ],
        });
        var dsdt = Dsdt(m, result.Rsdp);
        string text = Encoding.ASCII.GetString(dsdt);
        Assert.Equal(["UD00", "UD01", "UD02"], new[] { "UD00", "UD01", "UD02" }.Where(n => text.Contains(n, StringComparison.Ordinal)));
        Assert.Equal(2, CountOf(text, "VIRT0001\0"));

        // _HID strings, and _UID counting per hardware ID: 0, 1 for the two VIRT0001 devices, 0 for PNP0C0F.
        Assert.True(IndexOf(dsdt, [.. "_HID"u8, 0x0D, .. "VIRT0001"u8, 0, 0x08, .. "_UID"u8, 0x01]) > 0);
        Assert.True(IndexOf(dsdt, [.. "_HID"u8, 0x0D, .. "PNP0C0F"u8, 0, 0x08, .. "_UID"u8, 0x00]) > 0);

        // IO (Decode16, 0x1000, 0x1000, 1, 8); Memory32Fixed (ReadWrite, 0xD0002000, 0x1000); interrupt 10, level, active high.
        Assert.True(IndexOf(dsdt, [0x47, 1, 0x00, 0x10, 0x00, 0x10, 1, 8, 0x86, 9, 0, 1, 0x00, 0x20, 0x00, 0xD0, 0x00, 0x10, 0, 0, 0x89, 6, 0, 1, 1, 10, 0, 0, 0, 0x79, 0]) > 0);

        // Above 4 GiB: QWordMemory with min 0x1_0000_0000, max 0x1_0000_1FFF, length 0x2000, and no interrupt.
        byte[] qword = [0x8A, 0x2B, 0, 0, 0x0D, 0x01, .. new byte[8], .. Le64(0x1_0000_0000), .. Le64(0x1_0000_1FFF), .. new byte[8], .. Le64(0x2000), 0x79, 0];
        Assert.True(IndexOf(dsdt, qword) > 0);

        // 300 ports: two IO descriptors, 255 from 0x2000 and 45 from 0x20FF.
        Assert.True(IndexOf(dsdt, [0x47, 1, 0x00, 0x20, 0x00, 0x20, 1, 255, 0x47, 1, 0xFF, 0x20, 0xFF, 0x20, 1, 45, 0x89, 6, 0, 1, 1, 22, 0, 0, 0]) > 0);
    }

    private static byte[] Le64(ulong v)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        return b;
    }

    [Theory]
    [InlineData("VIRT0001", true)]
    [InlineData("AB1C00FF", true)]
    [InlineData("PNP0C0F", true)]
    [InlineData("virt0001", false)]
    [InlineData("VIRT001", false)]
    [InlineData("VIRT00G1", false)]
    [InlineData("PN10C0F", false)]
    [InlineData("VIRT0001X", false)]
    [InlineData("", false)]
    public void Hardware_ids_follow_the_acpi_and_pnp_forms(string id, bool valid) => Assert.Equal(valid, AcpiDevice.IsValidHardwareId(id));

    [Fact]
    public void A_device_with_a_bad_id_ports_past_ffff_or_a_gsi_past_23_fails_naming_the_option()
    {
        using var m = GuestMemory.CreateRam(2 << 20);
        foreach (var bad in new[]
        {
            new AcpiDevice("virt0001", 0x1000, 8, null, 0, null),
            new AcpiDevice("VIRT0001", 0xFFF8, 9, null, 0, null),
            new AcpiDevice("VIRT0001", null, 0, null, 0, 24),
            new AcpiDevice("VIRT0001", 0x1000, 0, null, 0, null),
        })
        {
            var ex = Assert.Throws<BootImageException>(() => AcpiTables.Write(m, new AcpiTablesOptions { Devices = [bad] }));
            Assert.Equal("devices", ex.Field);
        }
    }

    [Fact]
    public void Rsdp_address_reaches_the_zero_page()
    {
        using var m = GuestMemory.CreateRam(64 << 20);
        var acpi = AcpiTables.Write(m);
        var r = LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(), new LinuxBootOptions { AcpiRsdpAddress = acpi.Rsdp });
        Assert.Equal(0xE0000UL, m.Read<ulong>(r.Find("zero page")!.Value.Address + 0x70));
    }

    [Fact]
    public void Dsdt_disassembles_cleanly_with_iasl_when_installed()
    {
        string? iasl = new[] { "/usr/bin/iasl", "/usr/local/bin/iasl" }.FirstOrDefault(File.Exists);
        if (iasl is null)
        {
            Assert.Skip("iasl (acpica-tools) is not installed.");
        }

        using var m = GuestMemory.CreateRam(2 << 20);
        AcpiTables.Write(m, WithDevices);
        var rsdp = new byte[36];
        m.Read(new GuestAddress(0xE0000), rsdp);
        var xsdt = Table(m, BinaryPrimitives.ReadUInt64LittleEndian(rsdp.AsSpan(24)));
        var fadt = Enumerable.Range(0, 2).Select(i => Table(m, BinaryPrimitives.ReadUInt64LittleEndian(xsdt.AsSpan(36 + (i * 8))))).Single(t => Signature(t) == "FACP");
        var dsdt = Table(m, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(140)));

        string dir = Directory.CreateTempSubdirectory("virt-acpi").FullName;
        try
        {
            File.WriteAllBytes(Path.Combine(dir, "dsdt.aml"), dsdt);
            var psi = new ProcessStartInfo(iasl, "-d dsdt.aml") { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi)!;
            string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, output);
            string dsl = File.ReadAllText(Path.Combine(dir, "dsdt.dsl"));
            Assert.Contains("Device (VR00)", dsl, StringComparison.Ordinal);
            Assert.Contains("Memory32Fixed (ReadWrite,", dsl, StringComparison.Ordinal);
            Assert.Contains("0xD0001000", dsl, StringComparison.Ordinal);
            Assert.Contains("Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )", dsl, StringComparison.Ordinal);
            Assert.Contains("Name (_S5, Package (0x02)", dsl, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static int CountOf(string text, string value)
    {
        int count = 0;
        for (int i = text.IndexOf(value, StringComparison.Ordinal); i >= 0; i = text.IndexOf(value, i + 1, StringComparison.Ordinal))
        {
            count++;
        }

        return count;
    }

    private static int IndexOf(byte[] haystack, byte[] needle) => haystack.AsSpan().IndexOf(needle);
}
