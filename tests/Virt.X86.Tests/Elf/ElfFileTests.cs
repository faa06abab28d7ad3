using System.Buffers.Binary;
using Xunit;

namespace Virt.X86.Tests.Elf;

public sealed class ElfFileTests
{
    private static ElfFormatException Refused(byte[] file) => Assert.Throws<ElfFormatException>(() => ElfFile.Parse(file));

    private static byte[] Typical(bool is64 = true) => ElfBuilder.Typical(is64, out _, out _);

    private static int Ph(bool is64, int index, int field) => (is64 ? 64 : 52) + (index * (is64 ? 56 : 32)) + field;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_typical_executable_parses_with_every_program_header(bool is64)
    {
        var file = Typical(is64);
        var elf = ElfFile.Parse(file);

        Assert.Equal(is64 ? ElfClass.Elf64 : ElfClass.Elf32, elf.Class);
        Assert.Equal(ElfFileType.Executable, elf.Type);
        Assert.Equal(ElfMachine.X64, elf.Machine);
        Assert.Equal(0x401000UL, elf.Entry);
        Assert.Equal(6, elf.ProgramHeaders.Count);
        Assert.Equal(is64 ? 56 : 32, elf.ProgramHeaderEntrySize);
        var data = elf.ProgramHeaders[1];
        Assert.Equal(new ElfProgramHeader(1, ElfSegmentType.Load, ElfSegmentFlags.Read | ElfSegmentFlags.Write, 0x1000, 0x401000, 0x401000, 0x800, 0x3000, 0x1000), data);
        Assert.Equal(ElfSegmentType.Tls, elf.Find(ElfSegmentType.Tls)!.Value.Type);
        Assert.Equal(ElfSegmentFlags.Read | ElfSegmentFlags.Write, elf.Find(ElfSegmentType.GnuStack)!.Value.Flags);
        Assert.Null(elf.Find(ElfSegmentType.ProgramHeaders));
        Assert.Equal("/lib64/ld-linux-x86-64.so.2\0"u8.ToArray(), elf.GetContents(file, elf.Find(ElfSegmentType.Interpreter)!.Value).ToArray());
    }

    [Fact]
    public void Notes_are_walked_in_order_with_names_without_their_nul()
    {
        var file = Typical();
        var elf = ElfFile.Parse(file);
        var seen = new List<(string, uint, byte[])>();
        foreach (var note in elf.Notes(file))
        {
            seen.Add((System.Text.Encoding.ASCII.GetString(note.Name), note.Type, note.Descriptor.ToArray()));
        }

        Assert.Equal(2, seen.Count);
        Assert.Equal(("GNU", 1u), (seen[0].Item1, seen[0].Item2));
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, seen[0].Item3);
        Assert.Equal(("Xen", 18u), (seen[1].Item1, seen[1].Item2));
        Assert.Equal(0x100020u, BinaryPrimitives.ReadUInt32LittleEndian(elf.FindNote(file, "Xen"u8, 18)));
        Assert.True(elf.FindNote(file, "Xen"u8, 17).IsEmpty);
        Assert.True(elf.FindNote(file, "Xe"u8, 18).IsEmpty);
    }

    [Fact]
    public void Notes_in_an_8_byte_aligned_segment_are_padded_to_8()
    {
        var first = ElfBuilder.Note("GNU", 5, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], align: 8);
        var second = ElfBuilder.Note("GNU", 6, [9], align: 8);
        byte[] notes = [.. first, .. second];
        var file = ElfBuilder.Build(true, [new(ElfSegmentType.Note, 0x100, (ulong)notes.Length, Align: 8)], payload: [(0x100, notes)]);
        var elf = ElfFile.Parse(file);
        Assert.Equal(new byte[] { 9 }, elf.FindNote(file, "GNU"u8, 6).ToArray());
    }

    [Fact]
    public void A_note_whose_sizes_overrun_its_segment_ends_the_walk_of_that_segment_only()
    {
        var bad = ElfBuilder.Note("Bad", 1, [1, 2, 3, 4]);
        BinaryPrimitives.WriteUInt32LittleEndian(bad.AsSpan(4), 0xFFFF_FFF0); // descsz
        var good = ElfBuilder.Note("Xen", 18, [1, 0, 0, 0]);
        var file = ElfBuilder.Build(true,
            [new(ElfSegmentType.Note, 0x100, (ulong)bad.Length), new(ElfSegmentType.Note, 0x200, (ulong)good.Length)],
            payload: [(0x100, bad), (0x200, good)]);
        var elf = ElfFile.Parse(file);

        int count = 0;
        foreach (var note in elf.Notes(file))
        {
            Assert.Equal((uint)18, note.Type);
            count++;
        }

        Assert.Equal(1, count);
    }

    [Fact]
    public void Bytes_of_another_length_are_refused_by_the_methods_that_read_the_file()
    {
        var file = Typical();
        var elf = ElfFile.Parse(file);
        Assert.Throws<ArgumentException>(() => elf.Notes(file.AsSpan(1)));
        Assert.Throws<ArgumentException>(() => elf.GetContents(file, new ElfProgramHeader(0, ElfSegmentType.Load, 0, 0x1F00, 0, 0, 0x200, 0x200, 0)));
    }

    [Fact]
    public void A_file_without_program_headers_parses()
    {
        var file = ElfBuilder.Build(true, [], type: 1);
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(32), 0);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(54), 0);
        var elf = ElfFile.Parse(file);
        Assert.Empty(elf.ProgramHeaders);
        Assert.Equal(ElfFileType.Relocatable, elf.Type);
    }

    [Fact]
    public void A_file_shorter_than_e_ident_is_refused_naming_e_ident()
    {
        var e = Refused(new byte[10]);
        Assert.Equal("e_ident", e.Field);
        Assert.Equal("e_ident", e.Location);
        Assert.Contains("truncated", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_without_the_magic_is_refused_naming_ei_mag()
    {
        var e = Refused(new byte[64]);
        Assert.Equal("e_ident", e.Field);
        Assert.Equal("e_ident[EI_MAG]", e.Location);
        Assert.Equal(-1, e.ProgramHeaderIndex);
        Assert.StartsWith("e_ident[EI_MAG]: ", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(4, 3, "e_ident[EI_CLASS]")]
    [InlineData(5, 2, "e_ident[EI_DATA]")]
    public void Unknown_class_or_big_endian_data_is_refused(int at, byte value, string location)
    {
        var file = Typical();
        file[at] = value;
        Assert.Equal(location, Refused(file).Location);
    }

    [Theory]
    [InlineData(true, 63)]
    [InlineData(false, 51)]
    public void A_truncated_file_header_is_refused_naming_e_ident(bool is64, int length)
    {
        var e = Refused(Typical(is64)[..length]);
        Assert.Equal("e_ident", e.Location);
        Assert.Contains(is64 ? "ELF64" : "ELF32", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_program_header_entry_smaller_than_the_class_is_refused_naming_e_phentsize()
    {
        var file = Typical();
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(54), 55);
        Assert.Equal("e_phentsize", Refused(file).Field);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Program_headers_past_the_end_are_refused_naming_e_phoff(bool is64)
    {
        var file = Typical(is64);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(32), ulong.MaxValue - 8);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(28), (uint)file.Length - 40);
        }

        Assert.Equal("e_phoff", Refused(file).Field);
    }

    [Fact]
    public void A_program_header_table_larger_than_the_file_is_refused_naming_e_phoff()
    {
        var file = Typical();
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(56), 0xFFFF);
        Assert.Equal("e_phoff", Refused(file).Field);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_segment_offset_past_the_end_is_refused_naming_the_header_and_p_offset(bool is64)
    {
        var file = Typical(is64);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(Ph(is64, 2, 8)), 0x1_0000);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(Ph(is64, 2, 4)), 0x1_0000);
        }

        var e = Refused(file);
        Assert.Equal("p_offset", e.Field);
        Assert.Equal("program header 2 p_offset", e.Location);
        Assert.Equal(2, e.ProgramHeaderIndex);
    }

    [Fact]
    public void Segment_bytes_that_run_past_the_end_are_refused_naming_offset_and_size()
    {
        var file = Typical();
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(Ph(true, 4, 32)), 0x1000); // PT_INTERP p_filesz
        var e = Refused(file);
        Assert.Equal("p_filesz", e.Field);
        Assert.Equal("program header 4 p_offset+p_filesz", e.Location);
        Assert.Contains("PT_INTERP", e.Reason, StringComparison.Ordinal);
        Assert.Contains("past the end of the 8192-byte file", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_truncated_file_is_refused_at_the_segment_it_cuts()
    {
        var e = Refused(Typical()[..0x1900]);
        Assert.Equal("program header 3 p_offset+p_filesz", e.Location);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void Load_and_tls_segments_with_more_file_than_memory_bytes_are_refused_naming_p_filesz(int header)
    {
        var file = Typical();
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(Ph(true, header, 40)), 1);
        var e = Refused(file);
        Assert.Equal($"program header {header} p_filesz", e.Location);
        Assert.Contains("larger than p_memsz 0x1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Other_segments_may_have_more_file_than_memory_bytes()
    {
        var file = Typical();
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(Ph(true, 2, 40)), 0); // PT_NOTE p_memsz
        Assert.Equal(0UL, ElfFile.Parse(file).ProgramHeaders[2].MemorySize);
    }

    [Fact]
    public void The_magic_check_is_cheap_and_total()
    {
        Assert.True(ElfFile.HasMagic(Typical()));
        Assert.False(ElfFile.HasMagic("\u007FEL"u8));
        Assert.False(ElfFile.HasMagic("MZ\0\0"u8));
    }
}
