using Virt.Cpu;
using Virt.Memory;

namespace Virt.Boot;

/// <summary>The kinds of kernel image Virt.Boot can load.</summary>
public enum KernelFormat
{
    /// <summary>None of the formats below.</summary>
    Unknown,

    /// <summary>A Linux bzImage: the x86 boot protocol's setup header ("HdrS" at offset 0x202).</summary>
    BzImage,

    /// <summary>An ELF kernel with a Xen PVH entry note (for example an uncompressed Linux <c>vmlinux</c>).</summary>
    PvhElf,

    /// <summary>A Multiboot (version 1) kernel: the header magic 0x1BADB002 in its first 8 KiB.</summary>
    Multiboot,
}

/// <summary>Recognises a kernel image's format and loads it with the matching loader.</summary>
public static class KernelImage
{
    /// <summary>
    /// The format of <paramref name="image"/>, checked in this order: bzImage, ELF with a PVH note, Multiboot.
    /// A bzImage wins over a Multiboot header (some bzImages carry one).
    /// </summary>
    public static KernelFormat Detect(ReadOnlySpan<byte> image)
    {
        if (image.Length > 0x206 && image[0x202] == (byte)'H' && image[0x203] == (byte)'d' && image[0x204] == (byte)'r' && image[0x205] == (byte)'S')
        {
            return KernelFormat.BzImage;
        }

        if (PvhLoader.HasPvhNote(image))
        {
            return KernelFormat.PvhElf;
        }

        return MultibootLoader.FindHeader(image) >= 0 ? KernelFormat.Multiboot : KernelFormat.Unknown;
    }

    /// <summary>
    /// Loads <paramref name="image"/> with <see cref="LinuxLoader.LoadBzImage"/>, <see cref="PvhLoader.Load"/> or
    /// <see cref="MultibootLoader.Load"/>, by its <see cref="Detect">format</see>. An image of no known format is
    /// handed to the bzImage loader, whose <see cref="BootImageException"/> names the first header field that is wrong.
    /// </summary>
    /// <remarks>
    /// With <see cref="LinuxBootOptions.DecompressKernelOnHost"/> (the default), a bzImage whose payload is gzip or
    /// LZ4 and holds an x86-64 <c>vmlinux</c> with a PVH entry note, linked at the header's <c>pref_address</c>, is
    /// decompressed on the host and its <c>vmlinux</c> loaded through the PVH entry
    /// (<see cref="BootResult.KernelDecompressedOnHost"/> is then set); any other bzImage is loaded as it is.
    /// </remarks>
    /// <exception cref="BootImageException">The image is truncated, corrupt or of no supported format.</exception>
    public static BootResult Load(IGuestMemory memory, ReadOnlySpan<byte> image, LinuxBootOptions? options = null, SpecialRegisters initial = default)
    {
        var format = Detect(image);
        switch (format)
        {
            case KernelFormat.PvhElf:
                return PvhLoader.Load(memory, image, options, initial);
            case KernelFormat.Multiboot:
                return MultibootLoader.Load(memory, image, options, initial);
            case KernelFormat.BzImage when options is null || options.DecompressKernelOnHost:
                ArgumentNullException.ThrowIfNull(memory);
                return HostDecompressedKernel.TryLoad(memory, image, options ?? new LinuxBootOptions(), initial)
                    ?? LinuxLoader.LoadBzImage(memory, image, options, initial);
            default:
                return LinuxLoader.LoadBzImage(memory, image, options, initial);
        }
    }
}
