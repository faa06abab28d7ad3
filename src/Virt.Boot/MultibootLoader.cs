using System.Buffers.Binary;
using Virt.Cpu;
using Virt.Memory;

namespace Virt.Boot;

/// <summary>
/// Loads a Multiboot (version 0.6.96, "Multiboot 1") kernel: the header in the first 8 KiB, the image
/// by the header's address fields (the a.out kludge) or by its ELF program headers, and a
/// <c>multiboot_info</c> with mem_lower/mem_upper, the memory map, the command line, the modules
/// (the initrd as module 0) and the loader name. Entry in 32-bit protected mode with
/// EAX = 0x2BADB002 and EBX = the info structure.
/// </summary>
/// <remarks>
/// The kernel may load anywhere in RAM, below 1 MiB too, as long as it stays clear of what the loader and the
/// platform put there: the real-mode interrupt vector table and BIOS data area (0-0x4FF), the GDT and TSS, the
/// Multiboot information, the boot stack and the command line (<see cref="LinuxBootOptions"/> gives their places), and
/// the ISA hole 0x9FC00-0xFFFFF, which the memory map reports reserved. With the default layout a kernel fits at
/// 0x10000-0x1FFFF, 0x30000-0x9FBFF or at 1 MiB and above. The command line is passed exactly as given.
/// </remarks>
public static class MultibootLoader
{
    /// <summary>The header magic.</summary>
    public const uint HeaderMagic = 0x1BADB002;
    /// <summary>EAX at entry.</summary>
    public const uint BootloaderMagic = 0x2BADB002;
    /// <summary>How far into the image the header may start.</summary>
    public const int SearchLimit = 8192;

    private const uint FlagPageAlignModules = 1u << 0;  // header: modules on 4 KiB boundaries
    private const uint FlagMemoryInfo = 1u << 1;        // header: wants mem_* and mmap
    private const uint FlagAddressFields = 1u << 16;    // header: load addresses follow (a.out kludge)
    private const uint SupportedRequirements = FlagPageAlignModules | FlagMemoryInfo;
    private const uint InfoMemory = 1u << 0, InfoCmdline = 1u << 2, InfoModules = 1u << 3, InfoMmap = 1u << 6, InfoLoaderName = 1u << 9;
    private const int InfoSize = 120, ModuleSize = 16, MmapEntrySize = 24;

    /// <summary>The boot loader name, written after the command line.</summary>
    private static ReadOnlySpan<byte> LoaderName => "Virt.Sdk\0"u8;

    /// <summary>The offset of a valid Multiboot header in <paramref name="image"/>, or -1.</summary>
    public static int FindHeader(ReadOnlySpan<byte> image)
    {
        int limit = Math.Min(image.Length, SearchLimit) - 12;
        for (int off = 0; off <= limit; off += 4)
        {
            uint magic = BinaryPrimitives.ReadUInt32LittleEndian(image[off..]);
            if (magic != HeaderMagic)
            {
                continue;
            }

            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(image[(off + 4)..]);
            uint checksum = BinaryPrimitives.ReadUInt32LittleEndian(image[(off + 8)..]);
            if (unchecked(magic + flags + checksum) == 0)
            {
                return off;
            }
        }

        return -1;
    }

    /// <summary>Loads <paramref name="image"/>; <see cref="LinuxBootOptions.CommandLine"/> is the kernel command line and <see cref="LinuxBootOptions.Initrd"/> (if any) module 0.</summary>
    /// <exception cref="BootImageException">No valid header, unsupported requirement flags, a truncated or corrupt image, or it does not fit; the field is named.</exception>
    public static BootResult Load(IGuestMemory memory, ReadOnlySpan<byte> image, LinuxBootOptions? options = null, SpecialRegisters initial = default)
    {
        ArgumentNullException.ThrowIfNull(memory);
        options ??= new LinuxBootOptions();
        int header = FindHeader(image);
        if (header < 0)
        {
            bool magicOnly = image[..Math.Min(image.Length, SearchLimit)].IndexOf(BitConverter.GetBytes(HeaderMagic)) >= 0;
            throw magicOnly
                ? new BootImageException("checksum", "a Multiboot header magic is present but magic + flags + checksum is not 0; the image is corrupt.")
                : new BootImageException("magic", $"no Multiboot header (0x{HeaderMagic:x8}, 4-byte aligned) in the first 8 KiB; this is not a Multiboot kernel.");
        }

        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(image[(header + 4)..]);
        uint unsupported = flags & 0xFFFF & ~SupportedRequirements;
        if (unsupported != 0)
        {
            throw new BootImageException("flags", $"requirement bits 0x{unsupported:x} are set (bit 2: a video mode); only page-aligned modules (bit 0) and memory information (bit 1) are offered. Clear the bits in the kernel's header.");
        }

        var map = E820Map.FromMemory(memory);
        var placements = new List<BootPlacement>();
        byte[] cmdline = LinuxLoader.EncodeCommandLine(options.CommandLine, 4095);
        var reserved = KernelPlacement.ProtectedModeStructures(options, (ulong)cmdline.Length + (ulong)LoaderName.Length);
        ulong entry, kernelStart, kernelEnd;
        if ((flags & FlagAddressFields) != 0)
        {
            (entry, kernelStart, kernelEnd) = LoadByAddressFields(memory, map, image, header, reserved);
        }
        else
        {
            var elf = ElfImage.Parse(image);
            kernelEnd = elf.Load(memory, map, image, reserved);
            kernelStart = elf.Segments.Min(s => s.PhysicalAddress);
            entry = elf.Entry;
        }

        if (entry > uint.MaxValue)
        {
            throw new BootImageException("entry_addr", $"the entry point 0x{entry:x} is above 4 GiB; a Multiboot entry must be a 32-bit physical address.");
        }

        placements.Add(new BootPlacement("kernel", new GuestAddress(kernelStart), kernelEnd - kernelStart));

        LinuxLoader.RequireRam(map, options.CommandLineAddress, (ulong)cmdline.Length + 16, "cmdline", "command line");
        memory.Write(options.CommandLineAddress, cmdline);
        placements.Add(new BootPlacement("command line", options.CommandLineAddress, (ulong)cmdline.Length));
        ulong loaderName = options.CommandLineAddress.Value + (ulong)cmdline.Length;
        memory.Write(new GuestAddress(loaderName), LoaderName);

        // Module 0 right after the kernel, page-aligned, as boot loaders commonly place modules; at 1 MiB or above, clear
        // of the boot structures, when the kernel lives in low memory.
        ulong initrdSize = (ulong)options.Initrd.Length;
        ulong moduleStart = 0;
        if (initrdSize > 0)
        {
            moduleStart = (Math.Max(kernelEnd, E820Map.ExtendedMemoryStart) + 0xFFF) & ~0xFFFUL;
            if (moduleStart + initrdSize > uint.MaxValue || !E820Map.IsRam(map, moduleStart, initrdSize))
            {
                throw new BootImageException("mods_addr", $"the module of {initrdSize} bytes does not fit in RAM after the kernel (0x{moduleStart:x}); give the VM more memory.");
            }

            memory.Write(new GuestAddress(moduleStart), options.Initrd.Span);
            placements.Add(new BootPlacement("initrd", new GuestAddress(moduleStart), initrdSize));
        }

        ulong info = options.BootParamsAddress.Value;
        ulong mods = info + InfoSize;
        ulong mmap = mods + ModuleSize;
        ulong total = mmap + (ulong)(map.Count * MmapEntrySize) - info;
        if (total > 4096)
        {
            throw new BootImageException("mmap_length", $"the memory map has {map.Count} ranges, too many for the info page; use fewer memory regions.");
        }

        var block = new byte[total];
        var mbi = block.AsSpan(0, InfoSize);
        ulong lowKb = 0, highKb = 0;
        foreach (var e in map)
        {
            if (e.Type == E820Type.Ram && e.Address.Value == 0)
            {
                lowKb = Math.Min(e.Size, E820Map.BaseMemoryEnd) / 1024;
            }

            if (e.Type == E820Type.Ram && e.Address.Value == E820Map.ExtendedMemoryStart)
            {
                highKb = Math.Min(e.Size / 1024, uint.MaxValue);
            }
        }

        uint infoFlags = InfoMemory | InfoCmdline | InfoMmap | InfoLoaderName | (initrdSize > 0 ? InfoModules : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi, infoFlags);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[4..], (uint)lowKb);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[8..], (uint)highKb);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[12..], 0xFFFFFFFF); // boot_device: none
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[16..], (uint)options.CommandLineAddress.Value);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[20..], initrdSize > 0 ? 1u : 0u);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[24..], (uint)mods);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[44..], (uint)(map.Count * MmapEntrySize));
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[48..], (uint)mmap);
        BinaryPrimitives.WriteUInt32LittleEndian(mbi[64..], (uint)loaderName);

        var mod = block.AsSpan(InfoSize, ModuleSize);
        BinaryPrimitives.WriteUInt32LittleEndian(mod, (uint)moduleStart);
        BinaryPrimitives.WriteUInt32LittleEndian(mod[4..], (uint)(moduleStart + initrdSize));
        BinaryPrimitives.WriteUInt32LittleEndian(mod[8..], (uint)(loaderName + 8)); // the empty string after the loader name

        for (int i = 0; i < map.Count; i++)
        {
            var e = block.AsSpan(InfoSize + ModuleSize + (i * MmapEntrySize), MmapEntrySize);
            BinaryPrimitives.WriteUInt32LittleEndian(e, MmapEntrySize - 4); // size, not counting itself
            BinaryPrimitives.WriteUInt64LittleEndian(e[4..], map[i].Address.Value);
            BinaryPrimitives.WriteUInt64LittleEndian(e[12..], map[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(e[20..], (uint)map[i].Type);
        }

        Protected32Entry.WriteInfoBlock(memory, map, options, block, total, "multiboot_info", "Multiboot information", "multiboot info", placements);
        return Protected32Entry.Enter(memory, initial, options, entry, BootloaderMagic, info, placements, map);
    }

    private static (ulong Entry, ulong Start, ulong End) LoadByAddressFields(IGuestMemory memory, IReadOnlyList<E820Entry> map, ReadOnlySpan<byte> image, int header, IReadOnlyList<BootPlacement> reserved)
    {
        if (image.Length < header + 32)
        {
            throw new BootImageException("header_addr", "the header's address fields run past the end of the file; the file is truncated.");
        }

        var h = image[header..];
        uint headerAddr = BinaryPrimitives.ReadUInt32LittleEndian(h[12..]);
        uint loadAddr = BinaryPrimitives.ReadUInt32LittleEndian(h[16..]);
        uint loadEndAddr = BinaryPrimitives.ReadUInt32LittleEndian(h[20..]);
        uint bssEndAddr = BinaryPrimitives.ReadUInt32LittleEndian(h[24..]);
        uint entryAddr = BinaryPrimitives.ReadUInt32LittleEndian(h[28..]);
        if (loadAddr > headerAddr || headerAddr - loadAddr > (uint)header)
        {
            throw new BootImageException("load_addr", $"load_addr 0x{loadAddr:x} and header_addr 0x{headerAddr:x} put the start of the image before the file's start; the header is corrupt.");
        }

        int fileStart = header - (int)(headerAddr - loadAddr);
        ulong loadLength = loadEndAddr == 0 ? (ulong)(image.Length - fileStart) : loadEndAddr > loadAddr ? loadEndAddr - loadAddr : 0;
        if (loadLength == 0 || loadLength > (ulong)(image.Length - fileStart))
        {
            throw new BootImageException("load_end_addr", $"0x{loadEndAddr:x} asks for 0x{loadLength:x} bytes from file offset 0x{fileStart:x}, but the file has {image.Length - fileStart}; the file is truncated or the header corrupt.");
        }

        ulong end = loadAddr + loadLength;
        if (bssEndAddr != 0)
        {
            if (bssEndAddr < end)
            {
                throw new BootImageException("bss_end_addr", $"0x{bssEndAddr:x} is below load_end_addr 0x{end:x}; the header is corrupt.");
            }

            end = bssEndAddr;
        }

        if (entryAddr < loadAddr || entryAddr >= end)
        {
            throw new BootImageException("entry_addr", $"0x{entryAddr:x} is outside the loaded image 0x{loadAddr:x}-0x{end:x}; the header is corrupt.");
        }

        KernelPlacement.Check("load_addr", "the image", loadAddr, end - loadAddr, map, reserved);

        memory.Write(new GuestAddress(loadAddr), image.Slice(fileStart, (int)loadLength));
        ElfImage.ZeroFill(memory, loadAddr + loadLength, end - loadAddr - loadLength);
        return (entryAddr, loadAddr, end);
    }
}
