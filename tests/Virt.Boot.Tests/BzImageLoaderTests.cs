using System.Buffers.Binary;
using System.Text;
using Virt.Memory;
using Xunit;

namespace Virt.Boot.Tests;

public sealed class BzImageLoaderTests
{
    private const ulong Mib = 1UL << 20;

    private static GuestMemory Ram(ulong mib = 64) => GuestMemory.CreateRam(mib * Mib);

    private static byte[] ZeroPage(GuestMemory m, BootResult r)
    {
        var zp = new byte[4096];
        m.Read(r.Find("zero page")!.Value.Address, zp);
        return zp;
    }

    [Fact]
    public void Relocatable_kernel_goes_to_pref_address_and_enters_at_plus_0x200_in_long_mode()
    {
        using var m = Ram();
        var image = SyntheticImages.BzImage();
        var r = LinuxLoader.LoadBzImage(m, image);

        Assert.Equal(0x1000000UL, r.Find("kernel")!.Value.Address.Value);
        Assert.Equal(0x1000200UL, r.EntryPoint.Value);
        Assert.Equal(0x1000200UL, r.Registers.Rip);
        Assert.Equal(0x7000UL, r.Registers.Rsi);
        Assert.Equal(StartMode.Long64, r.Mode);
        Assert.NotEqual(0UL, r.SpecialRegisters.Efer & ProcessorSetup.EferLongModeActive);
        Assert.NotEqual(0UL, r.SpecialRegisters.Cr0 & ProcessorSetup.Cr0Paging);
        Assert.Equal(0UL, r.Registers.Rflags & 0x200); // interrupts off
        Assert.Equal(0xE9, m.Read<byte>(new GuestAddress(0x1000000)));
        Assert.Equal(0xC3, m.Read<byte>(new GuestAddress(0x1000000 + 0x2000 - 1)));
    }

    [Fact]
    public void Non_relocatable_kernel_goes_to_1_MiB()
    {
        using var m = Ram();
        var r = LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(relocatable: false));
        var kernel = r.Find("kernel")!.Value;
        Assert.Equal(0x100000UL, kernel.Address.Value);
        Assert.Equal(0x100200UL, r.Registers.Rip);
        Assert.Equal(0x1000000UL + 0x40000 - 0x100000, kernel.Length); // up to pref_address + init_size
    }

    [Fact]
    public void Kernel_without_a_usable_pref_address_goes_to_1_MiB()
    {
        using var m = Ram(16);
        var r = LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(prefAddress: 0));
        Assert.Equal(0x100000UL, r.Find("kernel")!.Value.Address.Value);
    }

    [Fact]
    public void Ram_that_ends_before_pref_address_plus_init_size_fails_naming_init_size()
    {
        using var m = Ram(16);
        var ex = Assert.Throws<BootImageException>(() => LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage()));
        Assert.Equal("init_size", ex.Field);
        Assert.Contains("more memory", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Initrd_stays_above_the_kernels_working_area()
    {
        using var m = Ram(18);
        var r = LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(relocatable: false), new LinuxBootOptions { Initrd = new byte[0x1000] });
        Assert.True(r.Find("initrd")!.Value.Address.Value >= 0x1000000 + 0x40000);
    }

    [Fact]
    public void Zero_page_carries_the_header_loader_type_command_line_and_initrd()
    {
        using var m = Ram();
        var image = SyntheticImages.BzImage();
        var initrd = new byte[10000];
        initrd[0] = 0x1F;
        initrd[^1] = 0x8B;
        var r = LinuxLoader.LoadBzImage(m, image, new LinuxBootOptions { CommandLine = "console=ttyS0 quiet", Initrd = initrd });
        var zp = ZeroPage(m, r);

        Assert.Equal(0xAA55, BinaryPrimitives.ReadUInt16LittleEndian(zp.AsSpan(0x1FE)));
        Assert.Equal(0x53726448u, BinaryPrimitives.ReadUInt32LittleEndian(zp.AsSpan(0x202)));
        Assert.Equal(0x020F, BinaryPrimitives.ReadUInt16LittleEndian(zp.AsSpan(0x206)));
        Assert.Equal(0xFF, zp[0x210]);
        Assert.Equal(0x01, zp[0x211] & 0x01);
        Assert.Equal(0, zp[0x1EF]); // sentinel: a non-zero value makes the kernel discard the fields

        uint cmdPtr = BinaryPrimitives.ReadUInt32LittleEndian(zp.AsSpan(0x228));
        Assert.Equal(0x20000u, cmdPtr);
        var cmd = new byte[20];
        m.Read(new GuestAddress(cmdPtr), cmd);
        Assert.Equal("console=ttyS0 quiet\0", Encoding.ASCII.GetString(cmd));

        uint rdImage = BinaryPrimitives.ReadUInt32LittleEndian(zp.AsSpan(0x218));
        uint rdSize = BinaryPrimitives.ReadUInt32LittleEndian(zp.AsSpan(0x21C));
        Assert.Equal(10000u, rdSize);
        Assert.Equal(r.Find("initrd")!.Value.Address.Value, rdImage);
        Assert.Equal(0x1F, m.Read<byte>(new GuestAddress(rdImage)));
        Assert.Equal(0x8B, m.Read<byte>(new GuestAddress(rdImage + 9999)));
    }

    [Fact]
    public void Initrd_goes_as_high_as_possible_page_aligned_below_ram_end()
    {
        using var m = Ram();
        var initrd = new byte[10000];
        var r = LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(), new LinuxBootOptions { Initrd = initrd });
        ulong at = r.Find("initrd")!.Value.Address.Value;
        Assert.Equal(0UL, at % 4096);
        Assert.True(at + 10000 <= 64 * Mib);
        Assert.True(at + 10000 + 4096 > 64 * Mib, $"initrd at 0x{at:x} is not at the top of RAM");
    }

    [Fact]
    public void Initrd_stays_below_initrd_addr_max()
    {
        using var m = Ram();
        var initrd = new byte[0x3000];
        var r = LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(initrdAddrMax: 0x1FFFFFF), new LinuxBootOptions { Initrd = initrd });
        ulong at = r.Find("initrd")!.Value.Address.Value;
        Assert.Equal(0x2000000UL - 0x3000, at);
    }

    [Fact]
    public void E820_reports_base_memory_the_isa_hole_and_extended_memory()
    {
        using var m = Ram();
        var r = LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage());
        var zp = ZeroPage(m, r);
        Assert.Equal(3, zp[0x1E8]);
        (ulong, ulong, uint) Entry(int i)
        {
            var e = zp.AsSpan(0x2D0 + (i * 20));
            return (BinaryPrimitives.ReadUInt64LittleEndian(e), BinaryPrimitives.ReadUInt64LittleEndian(e[8..]), BinaryPrimitives.ReadUInt32LittleEndian(e[16..]));
        }

        Assert.Equal((0UL, 0x9FC00UL, 1u), Entry(0));
        Assert.Equal((0x9FC00UL, 0x100000UL - 0x9FC00, 2u), Entry(1));
        Assert.Equal((0x100000UL, (64 * Mib) - 0x100000, 1u), Entry(2));
        Assert.Equal(r.MemoryMap.Count, zp[0x1E8]);
    }

    [Fact]
    public void E820_covers_ram_above_4_GiB_and_reports_rom_reserved()
    {
        using var m = GuestMemory.Create(
            GuestMemoryRegionSpec.Ram(new GuestAddress(0), 32 * Mib),
            GuestMemoryRegionSpec.Rom(new GuestAddress(0xFFFF0000), 0x10000),
            GuestMemoryRegionSpec.Ram(new GuestAddress(1UL << 32), 2 * Mib));
        var map = E820Map.FromMemory(m);
        Assert.Equal(
            [
                new E820Entry(new GuestAddress(0), 0x9FC00, E820Type.Ram),
                new E820Entry(new GuestAddress(0x9FC00), 0x60400, E820Type.Reserved),
                new E820Entry(new GuestAddress(0x100000), (32 * Mib) - 0x100000, E820Type.Ram),
                new E820Entry(new GuestAddress(0xFFFF0000), 0x10000, E820Type.Reserved),
                new E820Entry(new GuestAddress(1UL << 32), 2 * Mib, E820Type.Ram),
            ],
            map);
    }

    [Fact]
    public void Setup_sects_zero_means_four()
    {
        var h = BzImageHeader.Parse(SyntheticImages.BzImage(setupSects: 0));
        Assert.Equal(4, h.SetupSectors);
        Assert.Equal(0xA00, h.KernelOffset);
    }

    [Fact]
    public void Init_size_is_at_least_the_payload()
    {
        var h = BzImageHeader.Parse(SyntheticImages.BzImage(payloadSize: 0x8000, initSize: 0x100));
        Assert.Equal(0x8000UL, h.InitSize);
    }

    public static TheoryData<string, Func<byte[]>> Corruptions => new()
    {
        { "setup_header", () => SyntheticImages.BzImage()[..0x200] },
        { "setup_sects", () => SyntheticImages.BzImage()[..0xA00] },
        { "syssize", () => SyntheticImages.BzImage()[..0xB00] },
        { "boot_flag", () => Patch(SyntheticImages.BzImage(), 0x1FE, 0x00) },
        { "header", () => Patch(SyntheticImages.BzImage(), 0x202, (byte)'X') },
        { "version", () => SyntheticImages.BzImage(version: 0x0204) },
        { "loadflags", () => SyntheticImages.BzImage(loadflags: 0) },
        { "xloadflags", () => SyntheticImages.BzImage(xloadflags: 0) },
        { "kernel_alignment", () => Patch(SyntheticImages.BzImage(), 0x230, 0x01) },
    };

    private static byte[] Patch(byte[] image, int offset, byte value)
    {
        image[offset] = value;
        return image;
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void Corrupt_image_fails_naming_the_field(string field, Func<byte[]> make)
    {
        using var m = Ram();
        var ex = Assert.Throws<BootImageException>(() => LinuxLoader.LoadBzImage(m, make()));
        Assert.Equal(field, ex.Field);
        Assert.StartsWith(field + ":", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Empty_file_fails_as_truncated()
    {
        using var m = Ram();
        var ex = Assert.Throws<BootImageException>(() => LinuxLoader.LoadBzImage(m, []));
        Assert.Contains("truncated", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Initrd_larger_than_ram_fails_naming_initrd()
    {
        using var m = Ram(32);
        var ex = Assert.Throws<BootImageException>(() => LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(), new LinuxBootOptions { Initrd = new byte[32 * Mib] }));
        Assert.Equal("initrd", ex.Field);
        Assert.Contains("more memory", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Command_line_longer_than_cmdline_size_fails()
    {
        using var m = Ram();
        var ex = Assert.Throws<BootImageException>(() => LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(cmdlineSize: 16), new LinuxBootOptions { CommandLine = new string('a', 17) }));
        Assert.Equal("cmdline_size", ex.Field);
        LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(cmdlineSize: 16), new LinuxBootOptions { CommandLine = new string('a', 16) });
    }

    [Fact]
    public void Command_line_with_a_nul_fails()
    {
        using var m = Ram();
        var ex = Assert.Throws<BootImageException>(() => LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(), new LinuxBootOptions { CommandLine = "a\0b" }));
        Assert.Equal("cmdline", ex.Field);
    }

    [Fact]
    public void Kernel_too_big_for_ram_fails_naming_init_size()
    {
        using var m = Ram(4);
        var ex = Assert.Throws<BootImageException>(() => LinuxLoader.LoadBzImage(m, SyntheticImages.BzImage(initSize: 8 << 20)));
        Assert.Equal("init_size", ex.Field);
    }

    [Fact]
    public void Debian_cloud_kernel_header_parses_when_the_guest_kit_is_present()
    {
        string path = Path.Combine(Virt.Testing.RepositoryPaths.LinuxGuestKit, "vmlinuz");
        if (!File.Exists(path))
        {
            Assert.Skip("artifacts/linux/vmlinuz is missing; run scripts/get-linux-guest.sh to fetch the guest kit.");
        }

        var image = File.ReadAllBytes(path);
        var h = BzImageHeader.Parse(image);
        Assert.True(h.Version >= 0x020F, $"protocol 0x{h.Version:x}");
        Assert.True(h.Supports64BitEntry);
        Assert.True(h.Relocatable);
        Assert.True(h.InitSize > (ulong)(image.Length - h.KernelOffset));
        Assert.True(h.CommandLineSize >= 255);

        using var m = Ram(256);
        var r = LinuxLoader.LoadBzImage(m, image, new LinuxBootOptions { CommandLine = "console=ttyS0", Initrd = new byte[4096] });
        var kernel = r.Find("kernel")!.Value;
        Assert.Equal(kernel.Address.Value + 0x200, r.Registers.Rip);
        Assert.True(r.Find("initrd")!.Value.Address.Value >= kernel.Address.Value + kernel.Length);
    }
}
