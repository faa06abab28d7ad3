using System.Buffers.Binary;
using Virt.Cpu;
using Virt.Memory;

namespace Virt.Boot;

/// <summary>
/// Loads an ELF <c>vmlinux</c> through its PVH entry point (the Xen <c>XEN_ELFNOTE_PHYS32_ENTRY</c>
/// note, which Linux has with <c>CONFIG_PVH</c>): PT_LOAD segments at their physical addresses, an
/// <c>hvm_start_info</c> with the command line, the initrd as module 0 and the memory map, and a
/// 32-bit protected-mode start with EBX pointing at it.
/// </summary>
public static class PvhLoader
{
    /// <summary>The ELF note type that holds the 32-bit physical entry point.</summary>
    public const uint Phys32EntryNote = 18;
    /// <summary><c>hvm_start_info.magic</c>.</summary>
    public const uint StartInfoMagic = 0x336EC578;
    /// <summary>The <c>hvm_start_info</c> version written (1 adds the memory map).</summary>
    public const uint StartInfoVersion = 1;

    private const int StartInfoSize = 56, ModuleEntrySize = 32, MemmapEntrySize = 24;

    private static ReadOnlySpan<byte> XenNoteName => "Xen"u8;

    /// <summary>Whether <paramref name="image"/> is an ELF file with a PVH entry note (cheap to call before choosing a loader).</summary>
    public static bool HasPvhNote(ReadOnlySpan<byte> image)
    {
        if (!ElfImage.HasElfMagic(image))
        {
            return false;
        }

        try
        {
            var elf = ElfImage.Parse(image);
            return elf.FindNote(image, XenNoteName, Phys32EntryNote).Length >= 4;
        }
        catch (BootImageException)
        {
            return false;
        }
    }

    /// <summary>Loads <paramref name="image"/> and returns the PVH entry state (32-bit protected mode, paging off, EBX = start info).</summary>
    /// <exception cref="BootImageException">The ELF is truncated or corrupt, has no PVH note, or does not fit; the field is named.</exception>
    public static BootResult Load(IGuestMemory memory, ReadOnlySpan<byte> image, LinuxBootOptions? options = null, SpecialRegisters initial = default) =>
        LoadBelow(memory, image, options, initial, 1UL << 32);

    /// <summary>As <see cref="Load(IGuestMemory, ReadOnlySpan{byte}, LinuxBootOptions?, SpecialRegisters)"/>, with the initrd below <paramref name="initrdLimit"/>.</summary>
    internal static BootResult LoadBelow(IGuestMemory memory, ReadOnlySpan<byte> image, LinuxBootOptions? options, SpecialRegisters initial, ulong initrdLimit)
    {
        ArgumentNullException.ThrowIfNull(memory);
        options ??= new LinuxBootOptions();
        var elf = ElfImage.Parse(image);
        var note = elf.FindNote(image, XenNoteName, Phys32EntryNote);
        if (note.Length < 4)
        {
            throw new BootImageException("XEN_ELFNOTE_PHYS32_ENTRY", "the ELF has no PVH entry note (Xen note type 18); build the kernel with CONFIG_PVH=y, or boot its bzImage instead.");
        }

        ulong entry = note.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(note) : BinaryPrimitives.ReadUInt32LittleEndian(note);
        if (entry > uint.MaxValue)
        {
            throw new BootImageException("XEN_ELFNOTE_PHYS32_ENTRY", $"the entry 0x{entry:x} is above 4 GiB; a 32-bit entry point must be below.");
        }

        var map = E820Map.FromMemory(memory);
        var placements = new List<BootPlacement>();
        ulong kernelEnd = elf.Load(memory, map, image);
        ulong kernelStart = elf.Segments.Min(s => s.PhysicalAddress);
        placements.Add(new BootPlacement("kernel", new GuestAddress(kernelStart), kernelEnd - kernelStart));

        byte[] cmdline = LinuxLoader.EncodeCommandLine(options.CommandLine, 4095);
        LinuxLoader.RequireRam(map, options.CommandLineAddress, (ulong)cmdline.Length, "cmdline_paddr", "command line");
        memory.Write(options.CommandLineAddress, cmdline);
        placements.Add(new BootPlacement("command line", options.CommandLineAddress, (ulong)cmdline.Length));

        ulong initrdSize = (ulong)options.Initrd.Length;
        ulong initrdAddress = 0;
        if (initrdSize > 0)
        {
            ulong? at = E820Map.FindHighest(map, initrdSize, kernelEnd, initrdLimit);
            initrdAddress = at ?? throw new BootImageException("initrd", $"the initrd of {initrdSize} bytes does not fit in RAM above the kernel (0x{kernelEnd:x}) and below 0x{initrdLimit:x}; give the VM more memory or use a smaller initrd.");
            memory.Write(new GuestAddress(initrdAddress), options.Initrd.Span);
            placements.Add(new BootPlacement("initrd", new GuestAddress(initrdAddress), initrdSize));
        }

        // start info, then the memory map, then the module list, all in the 4 KiB at BootParamsAddress.
        ulong info = options.BootParamsAddress.Value;
        ulong memmap = info + StartInfoSize;
        ulong modlist = memmap + (ulong)(map.Count * MemmapEntrySize);
        ulong total = modlist + ModuleEntrySize - info;
        if (total > 4096)
        {
            throw new BootImageException("memmap_entries", $"the memory map has {map.Count} ranges, too many for the start-info page; use fewer memory regions.");
        }

        var block = new byte[total];
        var si = block.AsSpan(0, StartInfoSize);
        BinaryPrimitives.WriteUInt32LittleEndian(si, StartInfoMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(si[4..], StartInfoVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(si[12..], initrdSize > 0 ? 1u : 0u);
        BinaryPrimitives.WriteUInt64LittleEndian(si[16..], initrdSize > 0 ? modlist : 0);
        BinaryPrimitives.WriteUInt64LittleEndian(si[24..], options.CommandLineAddress.Value);
        BinaryPrimitives.WriteUInt64LittleEndian(si[32..], options.AcpiRsdpAddress?.Value ?? 0);
        BinaryPrimitives.WriteUInt64LittleEndian(si[40..], memmap);
        BinaryPrimitives.WriteUInt32LittleEndian(si[48..], (uint)map.Count);
        for (int i = 0; i < map.Count; i++)
        {
            var e = block.AsSpan(StartInfoSize + (i * MemmapEntrySize), MemmapEntrySize);
            BinaryPrimitives.WriteUInt64LittleEndian(e, map[i].Address.Value);
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], map[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(e[16..], (uint)map[i].Type);
        }

        var mod = block.AsSpan((int)(modlist - info), ModuleEntrySize);
        BinaryPrimitives.WriteUInt64LittleEndian(mod, initrdAddress);
        BinaryPrimitives.WriteUInt64LittleEndian(mod[8..], initrdSize);
        Protected32Entry.WriteInfoBlock(memory, map, options, block, total, "start_info", "PVH start info", "start info", placements);
        return Protected32Entry.Enter(memory, initial, options, entry, 0, info, placements, map);
    }
}
