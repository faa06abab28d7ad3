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

    [Fact]
    public void Header_beyond_8_KiB_is_not_found()
    {
        var image = new byte[0x4000];
        SyntheticElf.MultibootHeader(0x3).CopyTo(image, 0x2000);
        Assert.Equal(-1, MultibootLoader.FindHeader(image));
    }
}
