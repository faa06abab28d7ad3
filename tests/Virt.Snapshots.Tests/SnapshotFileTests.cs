using System.Buffers.Binary;
using Virt.Memory;
using Virt.Testing;
using Xunit;

namespace Virt.Snapshots.Tests;

public sealed class SnapshotFileTests
{
    private sealed class Counter : IPersistentState
    {
        public ulong Value { get; set; }

        public string Label { get; set; } = "";

        public string StateName => "counter";

        public int StateVersion => 2;

        public void SaveState(StateWriter writer)
        {
            writer.WriteUInt64(Value);
            writer.WriteString(Label);
        }

        public void RestoreState(ref StateReader reader, int version)
        {
            if (version != 2)
            {
                throw reader.UnsupportedVersion(version, 2);
            }

            Value = reader.ReadUInt64InRange("value", 0, 1_000_000);
            Label = reader.ReadString("label", 64);
            reader.EnsureEnd();
        }
    }

    private static string WriteSample(TempDirectory dir, out byte[] pageA)
    {
        string path = Path.Combine(dir.Path, "vm.snap");
        pageA = new byte[4096];
        new Random(7).NextBytes(pageA);
        var a = pageA;
        using var w = SnapshotWriter.Create(path);
        w.AddState(new Counter { Value = 42, Label = "forty-two" });
        w.AddSection("machine", 1, "hello"u8);
        long stored = w.AddMemory("ram:0", 64 * 4096, (offset, page) =>
        {
            page.Clear();
            if (offset == 5 * 4096)
            {
                a.CopyTo(page);
            }
            else if (offset == 63 * 4096)
            {
                page[4095] = 0xEE;
            }
        });
        Assert.Equal(2, stored);
        w.Complete();
        return path;
    }

    [Fact]
    public void Sections_round_trip_and_memory_maps_copy_on_write_from_the_file()
    {
        using var dir = new TempDirectory();
        string path = WriteSample(dir, out var pageA);
        using var r = SnapshotReader.Open(path);
        Assert.Equal(SnapshotFormat.Version, r.FormatVersion);
        var counter = new Counter();
        r.RestoreState(counter);
        Assert.Equal(42UL, counter.Value);
        Assert.Equal("forty-two", counter.Label);
        Assert.Equal("hello"u8.ToArray(), r.ReadState("machine"));
        r.VerifyMemory();

        var ram = r.GetSection("ram:0");
        Assert.Equal(0, ram.Offset % 4096);
        using var memory = GuestMemory.Create(GuestMemoryRegionSpec.FromFile(GuestAddress.Zero, (ulong)ram.Length, r.File, ram.Offset));
        var page = new byte[4096];
        memory.Read(new GuestAddress(5 * 4096), page);
        Assert.Equal(pageA, page);
        Assert.Equal(0xEE, memory.Read<byte>(new GuestAddress((63 * 4096) + 4095)));
        Assert.Equal(0, memory.Read<byte>(new GuestAddress(7 * 4096)));

        // Writes stay private: the file, and a second memory mapped from it, do not see them.
        memory.Write(new GuestAddress(5 * 4096), 0xFFFFFFFFu);
        using var clone = GuestMemory.Create(GuestMemoryRegionSpec.FromFile(GuestAddress.Zero, (ulong)ram.Length, r.File, ram.Offset));
        Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(pageA), clone.Read<uint>(new GuestAddress(5 * 4096)));
        r.VerifyMemory();
    }

    [Fact]
    public void Zero_pages_are_holes_in_the_file()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Sparse-file allocation is measured with Linux's stat.");
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "big.snap");
        using (var w = SnapshotWriter.Create(path))
        {
            w.AddMemory("ram:0", 64UL << 20, (offset, page) =>
            {
                page.Clear();
                if (offset == 0)
                {
                    page[0] = 1;
                }
            });
            w.Complete();
        }

        Assert.True(new FileInfo(path).Length >= 64L << 20);
        string blocks = HostTools.Run("stat", $"-c %b {path}").Trim();
        long allocated = long.Parse(blocks, System.Globalization.CultureInfo.InvariantCulture) * 512;
        Assert.True(allocated < 1L << 20, $"a 64 MiB region with one non-zero page allocated {allocated} bytes");
    }

    [Fact]
    public void Missing_file_and_foreign_files_are_refused_with_a_reason()
    {
        using var dir = new TempDirectory();
        Assert.Throws<FileNotFoundException>(() => SnapshotReader.Open(Path.Combine(dir.Path, "none.snap")));
        string other = Path.Combine(dir.Path, "other.bin");
        File.WriteAllBytes(other, new byte[8192]);
        var ex = Assert.Throws<SnapshotFormatException>(() => SnapshotReader.Open(other));
        Assert.Equal("magic", ex.Field);
    }

    [Fact]
    public void A_section_whose_bytes_changed_fails_its_checksum_and_is_named()
    {
        using var dir = new TempDirectory();
        string path = WriteSample(dir, out _);
        long offset;
        using (var r = SnapshotReader.Open(path))
        {
            offset = r.GetSection("counter").Offset;
        }

        var bytes = File.ReadAllBytes(path);
        bytes[offset] ^= 1;
        File.WriteAllBytes(path, bytes);
        using var reader = SnapshotReader.Open(path);
        var ex = Assert.Throws<SnapshotFormatException>(() => reader.RestoreState(new Counter()));
        Assert.Equal("counter", ex.Section);
        Assert.Equal("checksum", ex.Field);
    }

    /// <summary>
    /// Thousands of truncated and corrupted snapshots: each opens and reads, or fails with SnapshotFormatException naming
    /// where; nothing else is thrown and nothing reads past the file.
    /// </summary>
    [Fact]
    public void Truncated_and_corrupted_snapshots_fail_with_a_named_reason_and_nothing_else()
    {
        using var dir = new TempDirectory();
        string path = WriteSample(dir, out _);
        byte[] original = File.ReadAllBytes(path);
        string target = Path.Combine(dir.Path, "fuzz.snap");
        var rng = new Random(1234);
        int refused = 0, accepted = 0;
        for (int i = 0; i < 3000; i++)
        {
            byte[] bytes;
            if (i % 3 == 0)
            {
                bytes = original[..rng.Next(0, original.Length)];
            }
            else
            {
                bytes = (byte[])original.Clone();
                int flips = rng.Next(1, 8);
                for (int f = 0; f < flips; f++)
                {
                    // Most corruption goes where the structure is: the header, the table and the state sections.
                    int at = rng.Next(0, 3) switch
                    {
                        0 => rng.Next(0, SnapshotFormat.HeaderSize),
                        1 => 4096 + rng.Next(0, 3 * SnapshotFormat.SectionEntrySize),
                        _ => rng.Next(0, bytes.Length),
                    };
                    bytes[at] = (byte)rng.Next(256);
                }
            }

            File.WriteAllBytes(target, bytes);
            try
            {
                using var r = SnapshotReader.Open(target);
                var counter = new Counter();
                r.RestoreState(counter);
                r.ReadState("machine");
                r.VerifyMemory();
                accepted++;
            }
            catch (SnapshotFormatException e)
            {
                Assert.False(string.IsNullOrEmpty(e.Field), e.Message);
                refused++;
            }
        }

        Assert.True(refused > 2000, $"only {refused} of 3000 damaged files were refused");
        Assert.True(accepted + refused == 3000);
    }
}
