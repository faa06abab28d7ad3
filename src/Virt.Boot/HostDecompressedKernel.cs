using System.Buffers.Binary;
using System.IO.Compression;
using Virt.Cpu;
using Virt.Memory;

namespace Virt.Boot;

/// <summary>How a bzImage's payload (the compressed <c>vmlinux</c>) is compressed, by its magic.</summary>
internal enum PayloadCompression
{
    /// <summary>No magic this loader knows.</summary>
    Unknown,

    /// <summary>gzip (1F 8B); decoded on the host.</summary>
    Gzip,

    /// <summary>LZ4 legacy frame (02 21 4C 18); decoded on the host.</summary>
    Lz4Legacy,

    /// <summary>bzip2 ("BZh"); left to the kernel.</summary>
    Bzip2,

    /// <summary>LZMA (5D 00 00); left to the kernel.</summary>
    Lzma,

    /// <summary>xz (FD "7zXZ" 00); left to the kernel.</summary>
    Xz,

    /// <summary>LZO (89 "LZO"); left to the kernel.</summary>
    Lzo,

    /// <summary>Zstandard (28 B5 2F FD); left to the kernel.</summary>
    Zstd,
}

/// <summary>
/// Boots a bzImage without its in-guest decompressor: the payload (<c>payload_offset</c>, <c>payload_length</c>,
/// boot protocol 2.08+) is decompressed on the host, and the <c>vmlinux</c> inside is loaded at its ELF physical
/// addresses and entered through its PVH note (<see cref="PvhLoader"/>).
/// </summary>
/// <remarks>
/// <para>
/// Loaded where it was linked (<c>LOAD_PHYSICAL_ADDR</c>, which is the header's <c>pref_address</c>), a relocatable
/// x86-64 kernel needs no relocation: its decompressor applies the relocation table only when KASLR or the load address
/// moves it. The kernel then runs as with <c>nokaslr</c>.
/// </para>
/// <para>
/// The host path is taken only when everything fits: a payload compressed with gzip or LZ4, a declared size within
/// <c>init_size</c>, an x86-64 ELF with a PVH entry note whose segments lie in [<c>pref_address</c>,
/// <c>pref_address</c> + <c>init_size</c>). Otherwise <see cref="TryLoad"/> returns <see langword="null"/> and the
/// caller loads the bzImage as it is. A payload of a known format that does not decode is corrupt: the kernel's own
/// decompressor would stop on it too, so that is a <see cref="BootImageException"/>.
/// </para>
/// <para>
/// Decompressed images are kept per process (the most recent one, matched by the compressed bytes), so building the
/// same kernel's VM again (tests, cold reset) does not decompress again.
/// </para>
/// </remarks>
internal static class HostDecompressedKernel
{
    /// <summary>The largest decompressed kernel accepted (the kernel's own limit, <c>init_size</c>, is smaller in practice).</summary>
    public const int MaxDecompressedSize = 1 << 30;

    internal const int PayloadOffsetOffset = 0x248, PayloadLengthOffset = 0x24C;

    private const ushort PayloadFieldsVersion = 0x0208;

    private static readonly Lock s_cacheLock = new();
    private static byte[]? s_cachedPayload;
    private static byte[]? s_cachedKernel;

    private static int s_decompressions;

    /// <summary>Decompressions done since the process started (for tests of the cache).</summary>
    internal static int Decompressions => Volatile.Read(ref s_decompressions);

    /// <summary>The payload's format, by its first bytes.</summary>
    public static PayloadCompression Identify(ReadOnlySpan<byte> payload) => payload switch
    {
        [0x1F, 0x8B, ..] => PayloadCompression.Gzip,
        [0x02, 0x21, 0x4C, 0x18, ..] => PayloadCompression.Lz4Legacy,
        [(byte)'B', (byte)'Z', (byte)'h', ..] => PayloadCompression.Bzip2,
        [0x5D, 0x00, 0x00, ..] => PayloadCompression.Lzma,
        [0xFD, (byte)'7', (byte)'z', (byte)'X', (byte)'Z', 0x00, ..] => PayloadCompression.Xz,
        [0x89, (byte)'L', (byte)'Z', (byte)'O', ..] => PayloadCompression.Lzo,
        [0x28, 0xB5, 0x2F, 0xFD, ..] => PayloadCompression.Zstd,
        _ => PayloadCompression.Unknown,
    };

    /// <summary>
    /// The compressed payload of <paramref name="image"/>, or an empty span when the header has no payload fields
    /// (protocol before 2.08) or they point outside the protected-mode kernel.
    /// </summary>
    public static ReadOnlySpan<byte> Payload(ReadOnlySpan<byte> image, BzImageHeader header)
    {
        if (header.Version < PayloadFieldsVersion)
        {
            return [];
        }

        ulong offset = BinaryPrimitives.ReadUInt32LittleEndian(image[PayloadOffsetOffset..]);
        ulong length = BinaryPrimitives.ReadUInt32LittleEndian(image[PayloadLengthOffset..]);
        ulong available = (ulong)(image.Length - header.KernelOffset);
        return length < 8 || offset > available || length > available - offset
            ? []
            : image.Slice(header.KernelOffset + (int)offset, (int)length);
    }

    /// <summary>
    /// Decompresses <paramref name="payload"/> (gzip or LZ4 legacy, with the decompressed size in its last 4 bytes as
    /// the kernel's build appends it), or returns <see langword="null"/> for another format or a size outside
    /// (0, <paramref name="sizeLimit"/>].
    /// </summary>
    /// <exception cref="BootImageException">The stream is corrupt or does not decode to its declared size; the field is <c>payload</c>.</exception>
    public static byte[]? Decompress(ReadOnlySpan<byte> payload, ulong sizeLimit)
    {
        var format = Identify(payload);
        if (format is not (PayloadCompression.Gzip or PayloadCompression.Lz4Legacy) || payload.Length < 8)
        {
            return null;
        }

        uint declared = BinaryPrimitives.ReadUInt32LittleEndian(payload[^4..]);
        if (declared == 0 || declared > Math.Min(sizeLimit, MaxDecompressedSize))
        {
            return null;
        }

        var output = GC.AllocateUninitializedArray<byte>((int)declared);
        int written = format == PayloadCompression.Lz4Legacy
            ? Lz4Legacy.Decode(payload[..^4], output, "payload")
            : Gunzip(payload, output);
        if (written != output.Length)
        {
            throw new BootImageException("payload", $"the {Describe(format)} stream decodes to {written} bytes but its last 4 bytes say {declared}; the image is corrupt.");
        }

        Interlocked.Increment(ref s_decompressions);
        return output;
    }

    /// <summary>
    /// Loads <paramref name="image"/> (a bzImage) from its host-decompressed <c>vmlinux</c> through the PVH entry, or
    /// returns <see langword="null"/> (nothing written to guest memory) when that path does not apply.
    /// </summary>
    /// <exception cref="BootImageException">
    /// The header is corrupt, the command line is too long, the payload is corrupt, or the kernel or initrd does not fit.
    /// </exception>
    public static BootResult? TryLoad(IGuestMemory memory, ReadOnlySpan<byte> image, LinuxBootOptions options, SpecialRegisters initial)
    {
        var header = BzImageHeader.Parse(image);
        ulong pref = header.PreferredAddress;
        if (!header.Supports64BitEntry || pref < LinuxLoader.DefaultKernelAddress || pref > uint.MaxValue
            || (header.Relocatable && pref % header.KernelAlignment != 0))
        {
            return null;
        }

        // The same limit as the in-guest path: the kernel's cmdline_size, not the PVH start info's.
        _ = LinuxLoader.EncodeCommandLine(options.CommandLine, header.CommandLineSize);

        // The same RAM as the in-guest path needs, which also bounds what decompression may allocate by the guest's size.
        if (!E820Map.IsRam(E820Map.FromMemory(memory), pref, header.InitSize))
        {
            return null;
        }

        var payload = Payload(image, header);
        if (Identify(payload) is not (PayloadCompression.Gzip or PayloadCompression.Lz4Legacy))
        {
            return null;
        }

        var vmlinux = Cached(payload, header.InitSize);
        if (vmlinux is null || !Fits(vmlinux, pref, header.InitSize))
        {
            return null;
        }

        ulong initrdLimit = Math.Min((ulong)header.InitrdAddressMax + 1, 1UL << 32);
        return PvhLoader.LoadBelow(memory, vmlinux, options, initial, initrdLimit) with { KernelDecompressedOnHost = true };
    }

    /// <summary>Whether <paramref name="vmlinux"/> is an x86-64 ELF with a PVH entry, linked within [<paramref name="start"/>, + <paramref name="size"/>).</summary>
    internal static bool Fits(ReadOnlySpan<byte> vmlinux, ulong start, ulong size)
    {
        if (!ElfImage.HasElfMagic(vmlinux))
        {
            return false;
        }

        ElfImage elf;
        try
        {
            elf = ElfImage.Parse(vmlinux);
        }
        catch (BootImageException)
        {
            return false;
        }

        var note = elf.FindNote(vmlinux, "Xen"u8, PvhLoader.Phys32EntryNote);
        if (!elf.Is64Bit || note.Length < 4)
        {
            return false;
        }

        ulong entry = note.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(note) : BinaryPrimitives.ReadUInt32LittleEndian(note);
        ulong end = start + size;
        bool entryInCode = false;
        foreach (var s in elf.Segments)
        {
            if (s.PhysicalAddress < start || s.MemorySize > end - start || s.PhysicalAddress - start > end - start - s.MemorySize)
            {
                return false;
            }

            entryInCode |= entry >= s.PhysicalAddress && entry - s.PhysicalAddress < s.FileSize;
        }

        return entryInCode && elf.Segments.Min(s => s.PhysicalAddress) == start;
    }

    private static byte[]? Cached(ReadOnlySpan<byte> payload, ulong sizeLimit)
    {
        lock (s_cacheLock)
        {
            if (s_cachedPayload is not null && payload.SequenceEqual(s_cachedPayload))
            {
                return s_cachedKernel;
            }
        }

        var kernel = Decompress(payload, sizeLimit);
        lock (s_cacheLock)
        {
            s_cachedPayload = payload.ToArray();
            s_cachedKernel = kernel;
        }

        return kernel;
    }

    private static int Gunzip(ReadOnlySpan<byte> payload, byte[] output)
    {
        try
        {
            using var stream = new GZipStream(new MemoryStream(payload.ToArray(), writable: false), CompressionMode.Decompress);
            int written = 0;
            while (written < output.Length)
            {
                int n = stream.Read(output, written, output.Length - written);
                if (n == 0)
                {
                    return written;
                }

                written += n;
            }

            Span<byte> extra = stackalloc byte[1];
            return stream.Read(extra) == 0 ? written : throw new BootImageException("payload", $"the gzip stream decodes to more than the {output.Length} bytes its last 4 bytes declare; the image is corrupt.");
        }
        catch (InvalidDataException e)
        {
            throw new BootImageException("payload", $"the gzip stream is corrupt ({e.Message}).");
        }
    }

    private static string Describe(PayloadCompression format) => format == PayloadCompression.Gzip ? "gzip" : "LZ4";
}
