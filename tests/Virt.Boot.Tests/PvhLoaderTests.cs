using System.Buffers.Binary;
using Virt.Memory;
using Xunit;

namespace Virt.Boot.Tests;

public sealed class PvhLoaderTests
{
    [Fact]
    public void Elf_with_pvh_note_loads_segments_and_enters_32_bit_with_ebx_at_start_info()
    {
        using var m = GuestMemory.CreateRam(64 << 20);
        var image = SyntheticElf.Build(is64: true);
        Assert.True(PvhLoader.HasPvhNote(image));
        m.Write(new GuestAddress(0x100100), 0xFFFFFFFFFFFFFFFFUL); // stale bytes where the bss goes
        var r = PvhLoader.Load(m, image, new LinuxBootOptions { CommandLine = "console=ttyS0", Initrd = new byte[5000], AcpiRsdpAddress = new GuestAddress(0xE0000) });

        Assert.Equal(StartMode.Protected32, r.Mode);
        Assert.Equal(0x100020UL, r.Registers.Rip);
        Assert.Equal(0x7000UL, r.Registers.Rbx);
        Assert.Equal(0UL, r.SpecialRegisters.Cr0 & ProcessorSetup.Cr0Paging);
        Assert.NotEqual(0UL, r.SpecialRegisters.Cr0 & ProcessorSetup.Cr0ProtectionEnable);
        Assert.Equal(0x90, m.Read<byte>(new GuestAddress(0x100000)));
        Assert.Equal(0UL, m.Read<ulong>(new GuestAddress(0x100100)));

        var si = new byte[56];
        m.Read(new GuestAddress(0x7000), si);
        Assert.Equal(0x336EC578u, BinaryPrimitives.ReadUInt32LittleEndian(si));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(si.AsSpan(4)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(si.AsSpan(12)));
        Assert.Equal(0x20000UL, BinaryPrimitives.ReadUInt64LittleEndian(si.AsSpan(24)));
        Assert.Equal(0xE0000UL, BinaryPrimitives.ReadUInt64LittleEndian(si.AsSpan(32)));
        ulong memmap = BinaryPrimitives.ReadUInt64LittleEndian(si.AsSpan(40));
        uint entries = BinaryPrimitives.ReadUInt32LittleEndian(si.AsSpan(48));
        Assert.Equal(3u, entries);
        Assert.Equal(0x100000UL, m.Read<ulong>(new GuestAddress(memmap + 48)));
        Assert.Equal(1u, m.Read<uint>(new GuestAddress(memmap + 48 + 16)));

        ulong modlist = BinaryPrimitives.ReadUInt64LittleEndian(si.AsSpan(16));
        ulong initrd = m.Read<ulong>(new GuestAddress(modlist));
        Assert.Equal(r.Find("initrd")!.Value.Address.Value, initrd);
        Assert.Equal(5000UL, m.Read<ulong>(new GuestAddress(modlist + 8)));
        Assert.True(initrd + 5000 <= 64 << 20 && initrd + 5000 + 4096 > 64 << 20);
    }

    [Fact]
    public void Elf32_note_with_a_4_byte_entry_works()
    {
        using var m = GuestMemory.CreateRam(16 << 20);
        var r = PvhLoader.Load(m, SyntheticElf.Build(is64: false, pvhEntry: 0x100040));
        Assert.Equal(0x100040UL, r.Registers.Rip);
    }

    [Fact]
    public void Elf_without_the_note_fails_naming_it()
    {
        using var m = GuestMemory.CreateRam(16 << 20);
        var image = SyntheticElf.Build(is64: true, pvhEntry: null);
        Assert.False(PvhLoader.HasPvhNote(image));
        var ex = Assert.Throws<BootImageException>(() => PvhLoader.Load(m, image));
        Assert.Equal("XEN_ELFNOTE_PHYS32_ENTRY", ex.Field);
    }

    public static TheoryData<string, Func<byte[]>> Corruptions => new()
    {
        { "e_ident", () => SyntheticElf.Build(true)[..40] },
        { "e_ident", () => { var i = SyntheticElf.Build(true); i[1] = (byte)'X'; return i; } },
        { "e_machine", () => { var i = SyntheticElf.Build(true); i[18] = 0xB7; return i; } },
        { "e_phoff", () => { var i = SyntheticElf.Build(true); BinaryPrimitives.WriteUInt64LittleEndian(i.AsSpan(32), 0xFFFFFFF0); return i; } },
        { "e_phnum", () => { var i = SyntheticElf.Build(true); BinaryPrimitives.WriteUInt16LittleEndian(i.AsSpan(56), 0); return i; } },
        { "p_filesz", () => SyntheticElf.Build(true)[..0x1010] },
        { "p_paddr", () => SyntheticElf.Build(true, loadAddress: 0x1000, entry: 0x1000, pvhEntry: 0x1000) },
        { "p_paddr", () => SyntheticElf.Build(true, loadAddress: 0x40000000) },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void Corrupt_elf_fails_naming_the_field(string field, Func<byte[]> make)
    {
        using var m = GuestMemory.CreateRam(16 << 20);
        var ex = Assert.Throws<BootImageException>(() => PvhLoader.Load(m, make()));
        Assert.Equal(field, ex.Field);
    }

    [Fact]
    public void Malformed_note_sizes_do_not_read_past_the_segment()
    {
        var image = SyntheticElf.Build(is64: true);
        int noteOff = 64 + (56 * 2);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(noteOff), 0xFFFFFFF0); // namesz
        Assert.False(PvhLoader.HasPvhNote(image));
    }
}
