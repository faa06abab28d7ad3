using Xunit;

namespace Virt.X86.Tests.Elf;

/// <summary>
/// ELF files come from API users and guests' images: whatever the bytes, parsing succeeds or fails with an
/// <see cref="ElfFormatException"/> that names a field, and whatever parses can be walked (notes, segment
/// contents) without any exception.
/// </summary>
public sealed class ElfFuzzTests
{
    private const int Iterations = 5000;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Corrupted_headers_parse_or_fail_with_a_named_field(bool is64)
    {
        var original = ElfBuilder.Typical(is64, out _, out _);
        int headerBytes = (is64 ? 64 + (6 * 56) : 52 + (6 * 32)) + 64;
        var random = new Random(is64 ? 64 : 32);
        int parsed = 0, refused = 0;
        for (int i = 0; i < Iterations; i++)
        {
            var file = (byte[])original.Clone();
            for (int f = random.Next(1, 8); f > 0; f--)
            {
                // Mostly the headers, sometimes the notes, sometimes a whole 64-bit field set to an extreme.
                int at = random.Next(5) == 0 ? 0x1800 + random.Next(64) : random.Next(headerBytes);
                file[at] = random.Next(4) == 0 ? (byte)0xFF : (byte)random.Next(256);
            }

            if (Outcome(file))
            {
                parsed++;
            }
            else
            {
                refused++;
            }
        }

        Assert.Equal(Iterations, parsed + refused);
        Assert.True(refused > 0 && parsed > 0, $"parsed {parsed}, refused {refused}");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Truncated_files_parse_or_fail_with_a_named_field(bool is64)
    {
        var original = ElfBuilder.Typical(is64, out _, out _);
        for (int length = 0; length <= original.Length; length += length < 0x200 ? 1 : 7)
        {
            Outcome(original[..length]);
        }
    }

    [Fact]
    public void Random_bytes_with_an_elf_identification_parse_or_fail_with_a_named_field()
    {
        var random = new Random(99);
        for (int i = 0; i < Iterations; i++)
        {
            var file = new byte[random.Next(0, 600)];
            random.NextBytes(file);
            if (file.Length >= 6)
            {
                "\u007FELF"u8.CopyTo(file);
                file[4] = (byte)random.Next(1, 3);
                file[5] = 1;
            }

            Outcome(file);
        }
    }

    /// <summary>Parses <paramref name="file"/> and, when it parses, reads everything it describes. False when refused.</summary>
    private static bool Outcome(byte[] file)
    {
        ElfFile elf;
        try
        {
            elf = ElfFile.Parse(file);
        }
        catch (ElfFormatException e)
        {
            Assert.False(string.IsNullOrEmpty(e.Field));
            Assert.StartsWith(e.Location + ": ", e.Message, StringComparison.Ordinal);
            Assert.Contains(e.Field.Split('[')[0], e.Location, StringComparison.Ordinal);
            return false;
        }

        foreach (var h in elf.ProgramHeaders)
        {
            Assert.Equal((int)h.FileSize, elf.GetContents(file, h).Length);
        }

        foreach (var note in elf.Notes(file))
        {
            Assert.True(note.Name.Length + note.Descriptor.Length <= file.Length);
        }

        return true;
    }
}
