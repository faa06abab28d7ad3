using System.Buffers.Binary;
using System.Text;
using Virt.Memory;
using Xunit;

namespace Virt.Boot.Tests;

public sealed class MultibootLoaderTests
{
    private static byte[] ElfKernel(uint flags = 0x3) => SyntheticElf.Build(is64: false, pvhEntry: null, prefix: SyntheticElf.MultibootHeader(flags));

    /// <summary>An a.out-kludge kernel: header at file offset 0x40, image loaded at 2 MiB from file offset 0.</summary>
    private static byte[] KludgeKernel(uint loadEnd = 0x200000 + 0x2000, uint bssEnd = 0x200000 + 0x3000, uint entry = 0x200080)
    {
        var image = new byte[0x2000];
        image.AsSpan().Fill(0xCC);
        var header = SyntheticElf.MultibootHeader(0x10003, (0x200040, 0x200000, loadEnd, bssEnd, entry));
        header.CopyTo(image, 0x40);
        return image;
    }

    [Fact]
    public void Elf_multiboot_kernel_enters_with_the_magic_and_info_in_eax_ebx()
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        var image = ElfKernel();
        Assert.Equal(0x800, MultibootLoader.FindHeader(image));
        var r = MultibootLoader.Load(m, image, new LinuxBootOptions { CommandLine = "kernel.arg=1", Initrd = new byte[3000] });

        Assert.Equal(StartMode.Protected32, r.Mode);
        Assert.Equal(0x2BADB002UL, r.Registers.Rax);
        Assert.Equal(0x7000UL, r.Registers.Rbx);
        Assert.Equal(0x100010UL, r.Registers.Rip);
        Assert.Equal(0x90, m.Read<byte>(new GuestAddress(0x100000)));

        var mbi = new byte[120];
        m.Read(new GuestAddress(0x7000), mbi);
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(mbi);
        Assert.Equal(0x1u | 0x4 | 0x8 | 0x40 | 0x200, flags);
        Assert.Equal(639u, BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(4)));
        Assert.Equal((32u << 10) - 1024, BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(8)));

        uint cmd = BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(16));
        var text = new byte[13];
        m.Read(new GuestAddress(cmd), text);
        Assert.Equal("kernel.arg=1\0", Encoding.ASCII.GetString(text));

        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(20)));
        uint mods = BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(24));
        uint modStart = m.Read<uint>(new GuestAddress(mods));
        uint modEnd = m.Read<uint>(new GuestAddress(mods + 4));
        Assert.Equal(0u, modStart % 4096);
        Assert.True(modStart >= 0x100000 + 0x1100);
        Assert.Equal(3000u, modEnd - modStart);

        uint mmapLength = BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(44));
        uint mmapAddr = BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(48));
        Assert.Equal(3u * 24, mmapLength);
        Assert.Equal(20u, m.Read<uint>(new GuestAddress(mmapAddr)));
        Assert.Equal(0x100000UL, m.Read<ulong>(new GuestAddress(mmapAddr + 48 + 4)));
        Assert.Equal(1u, m.Read<uint>(new GuestAddress(mmapAddr + 48 + 20)));

        uint name = BinaryPrimitives.ReadUInt32LittleEndian(mbi.AsSpan(64));
        var nameBytes = new byte[9];
        m.Read(new GuestAddress(name), nameBytes);
        Assert.Equal("Virt.Sdk\0", Encoding.ASCII.GetString(nameBytes));
    }

    [Fact]
    public void Address_fields_load_the_image_and_zero_the_bss()
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        m.Write(new GuestAddress(0x202800), 0xABCDUL);
        var r = MultibootLoader.Load(m, KludgeKernel());
        Assert.Equal(0x200080UL, r.Registers.Rip);
        Assert.Equal(0xCC, m.Read<byte>(new GuestAddress(0x200000)));
        Assert.Equal(0x1BADB002u, m.Read<uint>(new GuestAddress(0x200040)));
        Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(0x202800)));
        Assert.Equal(0x3000UL, r.Find("kernel")!.Value.Length);
    }

    public static TheoryData<string, Func<byte[]>> Corruptions => new()
    {
        { "magic", () => new byte[0x3000] },
        { "checksum", () => { var i = ElfKernel(); i[0x800 + 8] ^= 1; return i; } },
        { "flags", () => ElfKernel(0x7) },
        { "load_end_addr", () => KludgeKernel(loadEnd: 0x200000 + 0x9000) },
        { "bss_end_addr", () => KludgeKernel(bssEnd: 0x200100) },
        { "entry_addr", () => KludgeKernel(entry: 0x100000) },
        { "header_addr", () => KludgeKernel()[..0x50] },
        { "e_phoff", () => { var i = ElfKernel(); BinaryPrimitives.WriteUInt32LittleEndian(i.AsSpan(28), 0x7FFFFFF0); return i; } },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void Corrupt_kernel_fails_naming_the_field(string field, Func<byte[]> make)
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        var ex = Assert.Throws<BootImageException>(() => MultibootLoader.Load(m, make()));
        Assert.Equal(field, ex.Field);
    }

    /// <summary>An a.out-kludge kernel of 0x2000 bytes plus 0x1000 of bss loaded at <paramref name="load"/>, entry at +0x80.</summary>
    private static byte[] KludgeKernelAt(uint load)
    {
        var image = new byte[0x2000];
        image.AsSpan().Fill(0xCC);
        SyntheticElf.MultibootHeader(0x10003, (load + 0x40, load, load + 0x2000, load + 0x3000, load + 0x80)).CopyTo(image, 0x40);
        return image;
    }

    [Fact]
    public void Elf_kernel_linked_below_1_MiB_loads_there_and_its_module_goes_above_1_MiB()
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        var image = SyntheticElf.Build(is64: false, loadAddress: 0x10000, entry: 0x10010, pvhEntry: null, prefix: SyntheticElf.MultibootHeader(0x3));

        var r = MultibootLoader.Load(m, image, new LinuxBootOptions { Initrd = new byte[3000] });

        Assert.Equal(0x10010UL, r.Registers.Rip);
        Assert.Equal(0x10000UL, r.Find("kernel")!.Value.Address.Value);
        Assert.Equal(0x90, m.Read<byte>(new GuestAddress(0x10000)));
        Assert.Equal(0x100000UL, r.Find("initrd")!.Value.Address.Value);
    }

    [Theory]
    [InlineData(0x10000u)]
    [InlineData(0x30000u)]
    [InlineData(0x9C000u)]
    public void Address_field_kernel_below_1_MiB_clear_of_the_boot_structures_loads(uint load)
    {
        using var m = GuestMemory.CreateRam(32 << 20);

        var r = MultibootLoader.Load(m, KludgeKernelAt(load), new LinuxBootOptions { CommandLine = "root=/dev/ram0" });

        Assert.Equal(load + 0x80UL, r.Registers.Rip);
        Assert.Equal(0xCC, m.Read<byte>(new GuestAddress(load)));
        Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(load + 0x2800)));
        Assert.Equal(MultibootLoader.BootloaderMagic, r.Registers.Rax);
    }

    [Theory]
    [InlineData(0x0u, "interrupt vector table")]
    [InlineData(0x400u, "interrupt vector table")]
    [InlineData(0x1000u, "the GDT")] // with the GDT moved to 0x2000 for this case
    [InlineData(0x5000u, "boot information")]
    [InlineData(0x8000u, "boot stack")]
    [InlineData(0x1F000u, "command line")]
    [InlineData(0x9E000u, "not RAM")]
    [InlineData(0xE0000u, "not RAM")]
    public void Kernel_overlapping_what_the_platform_places_in_low_memory_is_refused_naming_it(uint load, string named)
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        var options = new LinuxBootOptions
        {
            CommandLine = "console=ttyS0",
            Processor = load == 0x1000 ? new ProcessorSetupOptions { GdtAddress = new GuestAddress(0x2000), TssAddress = new GuestAddress(0x2080) } : new(),
        };

        var ex = Assert.Throws<BootImageException>(() => MultibootLoader.Load(m, KludgeKernelAt(load), options));

        Assert.Equal("load_addr", ex.Field);
        Assert.Contains(named, ex.Message, StringComparison.Ordinal);
        Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(load < 0x9FC00 ? load : 0x1000)));
    }

    [Fact]
    public void Elf_segment_over_the_boot_stack_is_refused_and_nothing_is_written()
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        var image = SyntheticElf.Build(is64: false, loadAddress: 0x8E00, entry: 0x8E10, pvhEntry: null, prefix: SyntheticElf.MultibootHeader(0x3));

        var ex = Assert.Throws<BootImageException>(() => MultibootLoader.Load(m, image));

        Assert.Equal("p_paddr", ex.Field);
        Assert.Contains("boot stack", ex.Message, StringComparison.Ordinal);
        Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(0x8E00)));
    }

    [Fact]
    public void Command_line_is_passed_exactly_as_given()
    {
        using var m = GuestMemory.CreateRam(32 << 20);
        const string line = "/boot/kernel.elf  --verbose quiet";

        var r = MultibootLoader.Load(m, KludgeKernelAt(0x200000), new LinuxBootOptions { CommandLine = line });

        uint cmd = m.Read<uint>(new GuestAddress(r.Registers.Rbx + 16));
        var text = new byte[line.Length + 1];
        m.Read(new GuestAddress(cmd), text);
        Assert.Equal(line + "\0", Encoding.ASCII.GetString(text));
    }

    [Fact]
    public void Header_beyond_8_KiB_is_not_found()
    {
        var image = new byte[0x4000];
        SyntheticElf.MultibootHeader(0x3).CopyTo(image, 0x2000);
        Assert.Equal(-1, MultibootLoader.FindHeader(image));
    }
}
