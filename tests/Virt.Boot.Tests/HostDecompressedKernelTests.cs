using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using Virt.Memory;
using Virt.Testing;
using Xunit;

namespace Virt.Boot.Tests;

/// <summary>
/// The bzImage payload decoders and the host-decompressed boot path. One class, so that its tests run one after
/// another and the process-wide cache's decompression count is not moved by another test meanwhile.
/// </summary>
public sealed class HostDecompressedKernelTests
{
    private const ulong Pref = 0x1000000;

    // `lz4 -l -9` of KnownText.
    private static readonly byte[] KnownLz4 = Convert.FromHexString(
        "02214c1837000000ff16566972742e426f6f74206465636f646573204c5a34206c6567616379206672616d65732e202500103f2120610100245020656e640a");

    private const string KnownText = "Virt.Boot decodes LZ4 legacy frames. Virt.Boot decodes LZ4 legacy frames! aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa end\n";

    [Fact]
    public void Lz4_frame_from_the_lz4_tool_decodes_to_its_text()
    {
        var output = new byte[200];
        int n = Lz4Legacy.Decode(KnownLz4, output, "payload");
        Assert.Equal(KnownText, Encoding.ASCII.GetString(output, 0, n));
    }

    [Fact]
    public void Lz4_round_trips_several_blocks_with_overlapping_matches_and_concatenated_frames()
    {
        var data = new byte[Lz4Legacy.BlockSize + 300_000];
        var random = new Random(7);
        for (int i = 0; i < data.Length; i += 4096)
        {
            // Runs (offset-1 matches), repeated phrases and random stretches.
            switch ((i / 4096) % 3)
            {
                case 0: data.AsSpan(i, Math.Min(4096, data.Length - i)).Fill((byte)i); break;
                case 1: random.NextBytes(data.AsSpan(i, Math.Min(4096, data.Length - i))); break;
                default: "abcabcabcXYZ"u8.ToArray().CopyTo(data, i); break;
            }
        }

        var frame = Lz4Frame(data, concatenate: true);
        var output = new byte[data.Length];
        Assert.Equal(data.Length, Lz4Legacy.Decode(frame.AsSpan(..^4), output, "payload")); // without the size the build appends
        Assert.True(data.AsSpan().SequenceEqual(output));
    }

    public static TheoryData<string, byte[]> CorruptLz4 => new()
    {
        { "no magic", [0x02, 0x21, 0x4C, 0x19, 1, 0, 0, 0, 0x10] },
        { "block longer than the input", [0x02, 0x21, 0x4C, 0x18, 9, 0, 0, 0, 0x10, 0x41] },
        { "block size beyond the bound", [0x02, 0x21, 0x4C, 0x18, 0xFF, 0xFF, 0xFF, 0x7F, 0x10] },
        { "literals past the block", [0x02, 0x21, 0x4C, 0x18, 2, 0, 0, 0, 0x50, 0x41] },
        { "match offset zero", [0x02, 0x21, 0x4C, 0x18, 5, 0, 0, 0, 0x10, 0x41, 0, 0, 0x00] },
        { "match before the start", [0x02, 0x21, 0x4C, 0x18, 5, 0, 0, 0, 0x10, 0x41, 2, 0, 0x00] },
        { "block ends inside an offset", [0x02, 0x21, 0x4C, 0x18, 3, 0, 0, 0, 0x10, 0x41, 1] },
        { "block ends inside a length", [0x02, 0x21, 0x4C, 0x18, 2, 0, 0, 0, 0xF0, 0xFF] },
        { "output overflow", [0x02, 0x21, 0x4C, 0x18, 5, 0, 0, 0, 0x1F, 0x41, 1, 0, 0xFE] },
    };

    [Theory]
    [MemberData(nameof(CorruptLz4))]
    public void Corrupt_lz4_is_refused_naming_the_payload(string what, byte[] frame)
    {
        var output = new byte[64]; // "output overflow" asks for 1 + 15 + 254 + 4 bytes: more than fit
        var ex = Assert.Throws<BootImageException>(() => Lz4Legacy.Decode(frame, output, "payload"));
        Assert.Equal("payload", ex.Field);
        Assert.False(string.IsNullOrEmpty(what));
    }

    [Fact]
    public void Payload_formats_are_told_apart_by_magic()
    {
        Assert.Equal(PayloadCompression.Lz4Legacy, HostDecompressedKernel.Identify(KnownLz4));
        Assert.Equal(PayloadCompression.Gzip, HostDecompressedKernel.Identify(Gzip([1, 2, 3])));
        Assert.Equal(PayloadCompression.Zstd, HostDecompressedKernel.Identify([0x28, 0xB5, 0x2F, 0xFD, 0]));
        Assert.Equal(PayloadCompression.Xz, HostDecompressedKernel.Identify([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 0]));
        Assert.Equal(PayloadCompression.Unknown, HostDecompressedKernel.Identify([0x7F, (byte)'E', (byte)'L', (byte)'F']));
        Assert.Null(HostDecompressedKernel.Decompress([0x28, 0xB5, 0x2F, 0xFD, 0, 0, 0, 0, 4, 0, 0, 0], 1 << 20));
    }

    [Fact]
    public void Gzip_payload_round_trips_and_a_corrupt_one_is_refused()
    {
        var data = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat(KnownText, 100)));
        var gz = Gzip(data);
        Assert.Equal(data, HostDecompressedKernel.Decompress(gz, 1 << 20));

        gz[gz.Length / 2] ^= 0xFF;
        gz[(gz.Length / 2) + 1] ^= 0x5A;
        var ex = Assert.Throws<BootImageException>(() => HostDecompressedKernel.Decompress(gz, 1 << 20));
        Assert.Equal("payload", ex.Field);
    }

    [Fact]
    public void Declared_size_is_bounded_and_must_match_what_the_stream_decodes_to()
    {
        var data = Encoding.ASCII.GetBytes(KnownText);
        var withSize = WithSize(KnownLz4, (uint)data.Length);
        Assert.Equal(data, HostDecompressedKernel.Decompress(withSize, 1 << 20));

        // Beyond the limit (init_size): not decoded here, nothing allocated; the kernel decompresses itself.
        Assert.Null(HostDecompressedKernel.Decompress(WithSize(KnownLz4, 0xFFFF_FFF0), 1 << 20));
        Assert.Null(HostDecompressedKernel.Decompress(WithSize(KnownLz4, 200), 100));

        Assert.Equal("payload", Assert.Throws<BootImageException>(() => HostDecompressedKernel.Decompress(WithSize(KnownLz4, (uint)data.Length + 1), 1 << 20)).Field);
        Assert.Equal("payload", Assert.Throws<BootImageException>(() => HostDecompressedKernel.Decompress(WithSize(KnownLz4, (uint)data.Length - 1), 1 << 20)).Field);
    }

    [Fact]
    public void Bzimage_with_an_lz4_vmlinux_boots_it_through_the_pvh_entry_and_decompresses_it_once()
    {
        var image = BzImageWith(Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: (uint)Pref + 0x20)));
        using var memory = GuestMemory.CreateRam(64 << 20);
        int before = HostDecompressedKernel.Decompressions;
        var r = KernelImage.Load(memory, image, new LinuxBootOptions { CommandLine = "console=ttyS0", Initrd = new byte[4096] });

        Assert.True(r.KernelDecompressedOnHost);
        Assert.Equal(StartMode.Protected32, r.Mode);
        Assert.Equal(Pref + 0x20, r.EntryPoint.Value);
        Assert.Equal(Pref, r.Find("kernel")!.Value.Address.Value);
        Assert.Equal(0x90, memory.Read<byte>(new GuestAddress(Pref)));
        Assert.Equal(before + 1, HostDecompressedKernel.Decompressions);

        // The same image again (a cold reset, another VM): served from the cache.
        using var again = GuestMemory.CreateRam(64 << 20);
        Assert.True(KernelImage.Load(again, image.ToArray(), new LinuxBootOptions()).KernelDecompressedOnHost);
        Assert.Equal(before + 1, HostDecompressedKernel.Decompressions);

        // Turned off: the bzImage as it is, entered at its 64-bit entry.
        using var off = GuestMemory.CreateRam(64 << 20);
        var guest = KernelImage.Load(off, image, new LinuxBootOptions { DecompressKernelOnHost = false });
        Assert.False(guest.KernelDecompressedOnHost);
        Assert.Equal(Pref + LinuxLoader.Entry64Offset, guest.EntryPoint.Value);
    }

    [Fact]
    public void Gzip_payload_boots_through_the_host_path_too()
    {
        var image = BzImageWith(WithSize(Gzip(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: (uint)Pref + 0x30)), null));
        using var memory = GuestMemory.CreateRam(64 << 20);
        var r = KernelImage.Load(memory, image);
        Assert.True(r.KernelDecompressedOnHost);
        Assert.Equal(Pref + 0x30, r.EntryPoint.Value);
    }

    public static TheoryData<string, byte[]> FallbackPayloads => new()
    {
        { "not an ELF", Lz4Frame(new byte[0x3000]) },
        { "an ELF without a PVH note", Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: null)) },
        { "a 32-bit ELF", Lz4Frame(SyntheticElf.Build(is64: false, loadAddress: Pref, entry: Pref, pvhEntry: (uint)Pref)) },
        { "linked elsewhere (would need relocation)", Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: 0x2000000, entry: 0x2000000, pvhEntry: 0x2000020)) },
        { "larger than init_size", Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: (uint)Pref + 0x20, bssSize: 0x80000)) },
        { "PVH entry outside the kernel", Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: 0x3000000)) },
        { "a format decoded only by the kernel", [0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3, 4, 0x10, 0, 0, 0] },
    };

    [Theory]
    [MemberData(nameof(FallbackPayloads))]
    public void Other_payloads_are_left_to_the_kernel_s_decompressor(string what, byte[] payload)
    {
        using var memory = GuestMemory.CreateRam(64 << 20);
        var r = KernelImage.Load(memory, BzImageWith(payload));
        Assert.False(r.KernelDecompressedOnHost, what);
        Assert.Equal(Pref + LinuxLoader.Entry64Offset, r.EntryPoint.Value);
        Assert.Equal(StartMode.Long64, r.Mode);
    }

    [Fact]
    public void Corrupt_lz4_payload_is_refused_and_guest_memory_is_left_alone()
    {
        var payload = Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: (uint)Pref + 0x20));
        BinaryPrimitives.WriteUInt32LittleEndian(payload.AsSpan(4), (uint)payload.Length); // the first block runs past the end
        using var memory = GuestMemory.CreateRam(64 << 20);
        var ex = Assert.Throws<BootImageException>(() => KernelImage.Load(memory, BzImageWith(payload)));
        Assert.Equal("payload", ex.Field);
        Assert.Equal(0, memory.Read<byte>(new GuestAddress(Pref)));
    }

    [Fact]
    public void A_kernel_that_needs_more_ram_than_the_vm_has_is_refused_as_before_without_decompressing()
    {
        var image = BzImageWith(Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: (uint)Pref + 0x20)));
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(0x260), 0x10000000); // init_size 256 MiB
        using var memory = GuestMemory.CreateRam(64 << 20);
        int before = HostDecompressedKernel.Decompressions;
        var ex = Assert.Throws<BootImageException>(() => KernelImage.Load(memory, image));
        Assert.Equal("init_size", ex.Field);
        Assert.Equal(before, HostDecompressedKernel.Decompressions);
    }

    [Fact]
    public void Too_long_a_command_line_is_refused_as_on_the_in_guest_path()
    {
        var image = BzImageWith(Lz4Frame(SyntheticElf.Build(is64: true, loadAddress: Pref, entry: Pref, pvhEntry: (uint)Pref + 0x20)));
        using var memory = GuestMemory.CreateRam(64 << 20);
        var ex = Assert.Throws<BootImageException>(() => KernelImage.Load(memory, image, new LinuxBootOptions { CommandLine = new string('x', 3000) }));
        Assert.Equal("cmdline_size", ex.Field);
    }

    [Fact]
    public void Debian_kernel_payload_is_lz4_and_boots_through_the_pvh_entry_of_its_vmlinux()
    {
        string path = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        Assert.SkipUnless(File.Exists(path), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        var image = File.ReadAllBytes(path);
        var header = BzImageHeader.Parse(image);
        var payload = HostDecompressedKernel.Payload(image, header);
        Assert.Equal(PayloadCompression.Lz4Legacy, HostDecompressedKernel.Identify(payload));

        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var vmlinux = HostDecompressedKernel.Decompress(payload, header.InitSize);
        TestContext.Current.TestOutputHelper?.WriteLine($"{payload.Length} bytes of LZ4 decompressed to {vmlinux!.Length} in {clock.Elapsed.TotalMilliseconds:F1} ms ({(Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMilliseconds:F0} ms CPU in the process)");
        Assert.True(HostDecompressedKernel.Fits(vmlinux, header.PreferredAddress, header.InitSize));

        using var memory = GuestMemory.CreateRam(256 << 20);
        var r = KernelImage.Load(memory, image, new LinuxBootOptions { CommandLine = "console=ttyS0", Initrd = new byte[4096] });
        Assert.True(r.KernelDecompressedOnHost);
        Assert.Equal(StartMode.Protected32, r.Mode);
        Assert.Equal(header.PreferredAddress, r.Find("kernel")!.Value.Address.Value);
        Assert.InRange(r.EntryPoint.Value, header.PreferredAddress, header.PreferredAddress + header.InitSize);
    }

    /// <summary>A bzImage (<see cref="SyntheticImages.BzImage"/>, init_size 0x40000 at 16 MiB) whose payload fields point at <paramref name="payload"/>.</summary>
    private static byte[] BzImageWith(byte[] payload)
    {
        const int at = 0x40;
        var image = SyntheticImages.BzImage(payloadSize: (at + payload.Length + 15) & ~15);
        int kernel = (image[0x1F1] + 1) * 512;
        payload.CopyTo(image, kernel + at);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(HostDecompressedKernel.PayloadOffsetOffset), at);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(HostDecompressedKernel.PayloadLengthOffset), (uint)payload.Length);
        return image;
    }

    /// <summary><paramref name="stream"/> with <paramref name="size"/> (or nothing, when null) appended as the kernel's build does.</summary>
    private static byte[] WithSize(byte[] stream, uint? size)
    {
        if (size is null)
        {
            return stream;
        }

        var result = new byte[stream.Length + 4];
        stream.CopyTo(result, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(result.AsSpan(stream.Length), size.Value);
        return result;
    }

    private static byte[] Gzip(byte[] data)
    {
        var output = new MemoryStream();
        using (var gz = new GZipStream(output, CompressionLevel.Optimal, leaveOpen: true))
        {
            gz.Write(data);
        }

        return output.ToArray(); // the gzip trailer's ISIZE is the size the kernel reads
    }

    /// <summary>An LZ4 legacy frame of <paramref name="data"/> in 8 MiB blocks with the size appended, as the kernel's build makes it.</summary>
    private static byte[] Lz4Frame(byte[] data, bool concatenate = false)
    {
        var frame = new List<byte>(BitConverter.GetBytes(Lz4Legacy.Magic));
        for (int start = 0; start < data.Length; start += Lz4Legacy.BlockSize)
        {
            if (concatenate && start > 0)
            {
                frame.AddRange(BitConverter.GetBytes(Lz4Legacy.Magic));
            }

            var block = Lz4Block(data.AsSpan(start, Math.Min(Lz4Legacy.BlockSize, data.Length - start)));
            frame.AddRange(BitConverter.GetBytes(block.Count));
            frame.AddRange(block);
        }

        frame.AddRange(BitConverter.GetBytes((uint)data.Length));
        return [.. frame];
    }

    /// <summary>A greedy LZ4 block encoder (hash of 4 bytes, 64 KiB window), enough to exercise the decoder.</summary>
    private static List<byte> Lz4Block(ReadOnlySpan<byte> src)
    {
        var output = new List<byte>();
        var table = new int[1 << 16];
        Array.Fill(table, -1);
        int anchor = 0, i = 0;
        while (i + 12 <= src.Length)
        {
            uint seq = BinaryPrimitives.ReadUInt32LittleEndian(src[i..]);
            int h = (int)((seq * 2654435761u) >> 16);
            int candidate = table[h];
            table[h] = i;
            if (candidate >= 0 && i - candidate <= 65535 && BinaryPrimitives.ReadUInt32LittleEndian(src[candidate..]) == seq)
            {
                int length = 4;
                while (i + length < src.Length - 5 && src[candidate + length] == src[i + length])
                {
                    length++;
                }

                Sequence(output, src[anchor..i], i - candidate, length);
                i += length;
                anchor = i;
            }
            else
            {
                i++;
            }
        }

        Sequence(output, src[anchor..], 0, 0);
        return output;
    }

    private static void Sequence(List<byte> output, ReadOnlySpan<byte> literals, int offset, int matchLength)
    {
        int m = matchLength == 0 ? 0 : matchLength - 4;
        output.Add((byte)((Math.Min(literals.Length, 15) << 4) | Math.Min(m, 15)));
        Length(output, literals.Length);
        output.AddRange(literals.ToArray());
        if (matchLength == 0)
        {
            return;
        }

        output.Add((byte)offset);
        output.Add((byte)(offset >> 8));
        Length(output, m);
    }

    private static void Length(List<byte> output, int length)
    {
        if (length < 15)
        {
            return;
        }

        length -= 15;
        while (length >= 255)
        {
            output.Add(255);
            length -= 255;
        }

        output.Add((byte)length);
    }
}
