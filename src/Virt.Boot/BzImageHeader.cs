using System.Buffers.Binary;

namespace Virt.Boot;

/// <summary>
/// The setup header of a Linux bzImage (Linux x86 boot protocol, <c>Documentation/arch/x86/boot.rst</c>),
/// checked for what a 64-bit direct boot needs.
/// </summary>
public sealed record BzImageHeader
{
    /// <summary>Offset of the setup header in the image and in the zero page.</summary>
    public const int Offset = 0x1F1;

    /// <summary>The value of <c>boot_flag</c> (0x1FE) in every bootable image.</summary>
    public const ushort BootFlagMagic = 0xAA55;

    /// <summary>The value of <c>header</c> (0x202): "HdrS" little-endian.</summary>
    public const uint HeaderMagic = 0x53726448;

    /// <summary>The oldest protocol this loader accepts: 2.06 added <c>cmdline_size</c>.</summary>
    public const ushort MinimumVersion = 0x0206;

    /// <summary><c>loadflags</c> bit 0: the protected-mode code is loaded at 0x100000.</summary>
    public const byte LoadedHigh = 0x01;

    /// <summary><c>xloadflags</c> bit 0: the kernel has the 64-bit entry point at load address + 0x200.</summary>
    public const ushort XlfKernel64 = 0x0001;

    /// <summary><c>xloadflags</c> bit 1: kernel, boot_params, command line and initrd may be above 4 GiB.</summary>
    public const ushort XlfCanBeLoadedAbove4G = 0x0002;

    /// <summary>The number of 512-byte setup sectors assumed when <c>setup_sects</c> is 0.</summary>
    public const int DefaultSetupSectors = 4;

    /// <summary>Bytes of the image needed to read every field this loader uses (up to <c>init_size</c>).</summary>
    internal const int MinimumLength = 0x264;

    // Field offsets in the image (and the zero page).
    internal const int SetupSectsOffset = 0x1F1, SyssizeOffset = 0x1F4, BootFlagOffset = 0x1FE, JumpOffset = 0x200,
        HeaderOffset = 0x202, VersionOffset = 0x206, TypeOfLoaderOffset = 0x210, LoadflagsOffset = 0x211,
        Code32StartOffset = 0x214, RamdiskImageOffset = 0x218, RamdiskSizeOffset = 0x21C, HeapEndPtrOffset = 0x224,
        ExtLoaderVerOffset = 0x226, CmdLinePtrOffset = 0x228, InitrdAddrMaxOffset = 0x22C, KernelAlignmentOffset = 0x230,
        RelocatableOffset = 0x234, MinAlignmentOffset = 0x235, XloadflagsOffset = 0x236, CmdlineSizeOffset = 0x238,
        PrefAddressOffset = 0x258, InitSizeOffset = 0x260;

    /// <summary>Number of 512-byte setup sectors after the boot sector (0 in the file means 4).</summary>
    public required int SetupSectors { get; init; }

    /// <summary>Boot protocol version, e.g. 0x020F for 2.15.</summary>
    public required ushort Version { get; init; }

    /// <summary>The raw <c>loadflags</c>.</summary>
    public required byte LoadFlags { get; init; }

    /// <summary>The raw <c>xloadflags</c> (0 before protocol 2.12).</summary>
    public required ushort XLoadFlags { get; init; }

    /// <summary>Size of the protected-mode code in bytes (<c>syssize</c> × 16).</summary>
    public required ulong SystemSize { get; init; }

    /// <summary>Highest address the initrd may occupy (<c>initrd_addr_max</c>).</summary>
    public required uint InitrdAddressMax { get; init; }

    /// <summary>Alignment a relocatable kernel needs (<c>kernel_alignment</c>).</summary>
    public required uint KernelAlignment { get; init; }

    /// <summary>Whether the protected-mode kernel may be loaded at any <see cref="KernelAlignment"/>-aligned address.</summary>
    public required bool Relocatable { get; init; }

    /// <summary>Longest command line in bytes without the terminating NUL (<c>cmdline_size</c>).</summary>
    public required uint CommandLineSize { get; init; }

    /// <summary>Preferred load address (<c>pref_address</c>, 0 before protocol 2.10).</summary>
    public required ulong PreferredAddress { get; init; }

    /// <summary>Bytes of memory the kernel needs from its load address while it decompresses (<c>init_size</c>; at least the file's payload).</summary>
    public required ulong InitSize { get; init; }

    /// <summary>File offset of the protected-mode kernel: (setup sectors + 1) × 512.</summary>
    public int KernelOffset => (SetupSectors + 1) * 512;

    /// <summary>Whether the image offers the 64-bit entry point.</summary>
    public bool Supports64BitEntry => (XLoadFlags & XlfKernel64) != 0;

    /// <summary>Reads and checks the setup header of <paramref name="image"/>.</summary>
    /// <exception cref="BootImageException">The image is truncated, not a bzImage, or older than protocol 2.06.</exception>
    public static BzImageHeader Parse(ReadOnlySpan<byte> image)
    {
        if (image.Length < MinimumLength)
        {
            throw new BootImageException("setup_header", $"the image is {image.Length} bytes, too short to hold a bzImage setup header (0x{MinimumLength:x} bytes); the file is truncated or not a Linux kernel.");
        }

        ushort bootFlag = BinaryPrimitives.ReadUInt16LittleEndian(image[BootFlagOffset..]);
        if (bootFlag != BootFlagMagic)
        {
            throw new BootImageException("boot_flag", $"is 0x{bootFlag:x4}, expected 0x{BootFlagMagic:x4}; this is not a bzImage (for an ELF vmlinux use the PVH loader).");
        }

        uint header = BinaryPrimitives.ReadUInt32LittleEndian(image[HeaderOffset..]);
        if (header != HeaderMagic)
        {
            throw new BootImageException("header", $"is 0x{header:x8}, expected \"HdrS\" (0x{HeaderMagic:x8}); the kernel predates boot protocol 2.00 or the image is corrupt.");
        }

        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(image[VersionOffset..]);
        if (version < MinimumVersion)
        {
            throw new BootImageException("version", $"boot protocol {version >> 8}.{version & 0xFF:d2} is older than 2.06; use a kernel from Linux 2.6.22 or later.");
        }

        byte loadFlags = image[LoadflagsOffset];
        if ((loadFlags & LoadedHigh) == 0)
        {
            throw new BootImageException("loadflags", "LOADED_HIGH is clear: this is a zImage whose kernel runs at 0x10000; build a bzImage (make bzImage).");
        }

        int setupSectors = image[SetupSectsOffset];
        if (setupSectors == 0)
        {
            setupSectors = DefaultSetupSectors;
        }

        int kernelOffset = (setupSectors + 1) * 512;
        if (image.Length <= kernelOffset)
        {
            throw new BootImageException("setup_sects", $"says the protected-mode kernel starts at 0x{kernelOffset:x}, but the image is only {image.Length} bytes; the file is truncated.");
        }

        ulong systemSize = (ulong)BinaryPrimitives.ReadUInt32LittleEndian(image[SyssizeOffset..]) * 16;
        ulong payload = (ulong)(image.Length - kernelOffset);
        if (systemSize > payload)
        {
            throw new BootImageException("syssize", $"says the protected-mode kernel is {systemSize} bytes, but the image holds only {payload} after the setup sectors; the file is truncated.");
        }

        bool relocatable = version >= 0x0205 && image[RelocatableOffset] != 0;
        uint alignment = BinaryPrimitives.ReadUInt32LittleEndian(image[KernelAlignmentOffset..]);
        if (relocatable && (alignment < 4096 || (alignment & (alignment - 1)) != 0))
        {
            throw new BootImageException("kernel_alignment", $"is 0x{alignment:x}, not a power of two of at least 4 KiB; the image is corrupt.");
        }

        ulong initSize = version >= 0x020A ? BinaryPrimitives.ReadUInt32LittleEndian(image[InitSizeOffset..]) : 0;
        uint cmdlineSize = BinaryPrimitives.ReadUInt32LittleEndian(image[CmdlineSizeOffset..]);
        return new BzImageHeader
        {
            SetupSectors = setupSectors,
            Version = version,
            LoadFlags = loadFlags,
            XLoadFlags = version >= 0x020C ? BinaryPrimitives.ReadUInt16LittleEndian(image[XloadflagsOffset..]) : (ushort)0,
            SystemSize = systemSize,
            InitrdAddressMax = BinaryPrimitives.ReadUInt32LittleEndian(image[InitrdAddrMaxOffset..]),
            KernelAlignment = alignment,
            Relocatable = relocatable,
            CommandLineSize = cmdlineSize,
            PreferredAddress = version >= 0x020A ? BinaryPrimitives.ReadUInt64LittleEndian(image[PrefAddressOffset..]) : 0,
            InitSize = Math.Max(initSize, payload),
        };
    }
}
