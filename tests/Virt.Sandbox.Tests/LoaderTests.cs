using System.Buffers.Binary;
using Virt.Sandbox.Linux;
using Virt.Sandbox.Loader;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sandbox.Tests;

public sealed class LoaderTests
{
    private static byte[] Valid() => TinyElf.Build(a => a.ret(), new byte[16]);

    private static string FieldOf(byte[] file) => Assert.Throws<ElfImageException>(() => ElfImage.Parse(file)).Field;

    [Fact]
    public void Valid_tiny_executable_parses_with_entry_and_phdr()
    {
        var image = ElfImage.Parse(Valid());
        Assert.Equal(TinyElf.CodeAddress + 64 + (3 * 56), image.Entry);
        Assert.Equal(TinyElf.CodeAddress + 64, image.ProgramHeaderAddress);
        Assert.Equal(2, image.Segments.Count);
        Assert.False(image.ExecutableStack);
    }

    [Fact]
    public void Truncated_file_is_refused_naming_e_ident() => Assert.Equal("e_ident", FieldOf(new byte[10]));

    [Fact]
    public void Wrong_magic_is_refused() => Assert.Equal("e_ident[EI_MAG]", FieldOf(new byte[64]));

    [Fact]
    public void Wrong_machine_is_refused_naming_e_machine()
    {
        var f = Valid();
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(18), 3);
        Assert.Equal("e_machine", FieldOf(f));
    }

    [Fact]
    public void Program_headers_past_the_end_are_refused_naming_e_phoff()
    {
        var f = Valid();
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(32), (ulong)f.Length - 8);
        Assert.Equal("e_phoff", FieldOf(f));
    }

    [Fact]
    public void Segment_bytes_past_the_end_are_refused_naming_p_offset()
    {
        var f = Valid();
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(64 + 56 + 32), 1UL << 40); // data p_filesz
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(64 + 56 + 40), 1UL << 41); // data p_memsz
        Assert.Contains("p_offset", FieldOf(f), StringComparison.Ordinal);
    }

    [Fact]
    public void Filesz_larger_than_memsz_is_refused()
    {
        var f = Valid();
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(64 + 56 + 40), 1);
        Assert.Contains("p_filesz", FieldOf(f), StringComparison.Ordinal);
    }

    [Fact]
    public void Segment_in_kernel_half_is_refused_naming_p_vaddr()
    {
        var f = Valid();
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(64 + 56 + 16), 0xFFFF_FFFF_8000_1000);
        Assert.Contains("p_vaddr", FieldOf(f), StringComparison.Ordinal);
    }

    [Fact]
    public void Entry_outside_executable_segment_is_refused_naming_e_entry()
    {
        var f = Valid();
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(24), TinyElf.DataAddress);
        Assert.Equal("e_entry", FieldOf(f));
    }

    [Fact]
    public void Interpreter_path_that_is_empty_is_refused()
    {
        var f = Valid();
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(64 + 112), 3); // the GNU_STACK header becomes PT_INTERP (no bytes)
        var e = Assert.Throws<ElfImageException>(() => ElfImage.Parse(f));
        Assert.Equal("PT_INTERP", e.Field);
    }

    [Fact]
    public void Dynamic_executable_names_its_interpreter()
    {
        if (!File.Exists("/usr/bin/true"))
        {
            Assert.Skip("Skipped: /usr/bin/true is not installed.");
        }

        var image = ElfImage.Parse(File.ReadAllBytes("/usr/bin/true"));
        Assert.Equal("/lib64/ld-linux-x86-64.so.2", image.InterpreterPath);
    }

    [Fact]
    public void Interpreter_must_not_name_an_interpreter_itself()
    {
        if (!File.Exists("/usr/bin/true"))
        {
            Assert.Skip("Skipped: /usr/bin/true is not installed.");
        }

        var e = Assert.Throws<ElfImageException>(() => ElfImage.ParseInterpreter(File.ReadAllBytes("/usr/bin/true")));
        Assert.Equal("PT_INTERP", e.Field);
    }

    [Fact]
    public void Executable_stack_flag_is_read_from_pt_gnu_stack() =>
        Assert.True(ElfImage.Parse(TinyElf.Build(a => a.ret(), execStack: true)).ExecutableStack);

    [Fact]
    public void Builder_without_executable_says_what_to_call() =>
        Assert.Contains("WithExecutable", Assert.Throws<InvalidOperationException>(() => Sandbox.CreateBuilder().Build()).Message, StringComparison.Ordinal);

    [Fact]
    public void Random_bytes_after_a_valid_header_never_escape_as_other_exceptions()
    {
        var rng = new Random(1234);
        for (int i = 0; i < 2000; i++)
        {
            var f = Valid();
            for (int k = 0; k < 4; k++)
            {
                f[rng.Next(16, 64 + (3 * 56))] = (byte)rng.Next(256);
            }

            try
            {
                ElfImage.Parse(f);
            }
            catch (ElfImageException)
            {
            }
        }
    }

    [Fact]
    public void Initial_stack_holds_argc_argv_envp_and_auxv_in_abi_order()
    {
        const ulong top = 0x7000_0010_0000;
        var layout = InitialStack.Build(top, ["/bin/p", "a"], ["K=V"], "/bin/p", new byte[16], [(AuxKey.Pagesz, 4096)], 65536);
        Assert.Equal(0UL, layout.Rsp % 16);
        ulong Word(int i) => BinaryPrimitives.ReadUInt64LittleEndian(layout.Bytes.AsSpan(i * 8));
        string Str(ulong va)
        {
            int at = (int)(va - layout.Rsp);
            int end = Array.IndexOf(layout.Bytes, (byte)0, at);
            return System.Text.Encoding.UTF8.GetString(layout.Bytes, at, end - at);
        }

        Assert.Equal(2UL, Word(0));
        Assert.Equal("/bin/p", Str(Word(1)));
        Assert.Equal("a", Str(Word(2)));
        Assert.Equal(0UL, Word(3));
        Assert.Equal("K=V", Str(Word(4)));
        Assert.Equal(0UL, Word(5));
        Assert.Equal(AuxKey.Pagesz, Word(6));
        Assert.Equal(4096UL, Word(7));
        Assert.Equal(AuxKey.Random, Word(8));
    }

    [Theory]
    [InlineData("/", "a/b", "/a/b")]
    [InlineData("/x", "../etc//passwd", "/etc/passwd")]
    [InlineData("/", "/../../..", "/")]
    [InlineData("/d", "./f", "/d/f")]
    public void Guest_paths_normalize_without_escaping_the_root(string cwd, string path, string expected) =>
        Assert.Equal(expected, VirtualFileSystem.Normalize(cwd, path));
}
