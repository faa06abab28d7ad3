using System.Buffers.Binary;
using System.Text;
using Virt.Cpu;
using Virt.Memory;
using Virt.X86;

namespace Virt.Boot;

/// <summary>
/// Loads a Linux bzImage per the x86 boot protocol (<c>Documentation/arch/x86/boot.rst</c>) and
/// prepares the vCPU for its 64-bit entry point.
/// </summary>
public static class LinuxLoader
{
    /// <summary>Address the protected-mode kernel of a non-relocatable bzImage runs at.</summary>
    public const ulong DefaultKernelAddress = 0x100000;

    /// <summary>Offset of the 64-bit entry point from the load address of the protected-mode kernel.</summary>
    public const ulong Entry64Offset = 0x200;

    /// <summary><c>type_of_loader</c> for a loader without an assigned ID.</summary>
    public const byte UndefinedLoaderType = 0xFF;

    /// <summary>Size of the zero page (<c>struct boot_params</c>).</summary>
    public const int ZeroPageSize = 4096;

    // Zero-page fields outside the setup header.
    private const int AcpiRsdpAddrOffset = 0x070; // u64: where the RSDP is (protocol 2.14+)
    private const int E820EntriesOffset = 0x1E8; // u8: entries in e820_table
    private const int E820TableOffset = 0x2D0;   // 128 × struct boot_e820_entry { u64 addr; u64 size; u32 type; }
    private const int E820EntrySize = 20;
    private const int SetupHeaderEndLimit = 0x290; // edd_mbr_sig_buffer follows the header area

    /// <summary>
    /// Loads <paramref name="image"/> (a bzImage) with <paramref name="options"/> into <paramref name="memory"/>
    /// and returns the 64-bit entry state: RIP = load address + 0x200, RSI = zero page, long mode with
    /// an identity map of the low 4 GiB, interrupts off.
    /// </summary>
    /// <param name="memory">Guest memory; RAM must start at 0 (the boot structures live in low memory).</param>
    /// <param name="image">The bzImage file.</param>
    /// <param name="options">Command line, initrd and layout; defaults when <see langword="null"/>.</param>
    /// <param name="initial">Special registers to start from (e.g. the vCPU's current ones, for <c>ApicBase</c>).</param>
    /// <exception cref="BootImageException">
    /// The image is truncated or corrupt, older than protocol 2.06, has no 64-bit entry, or the kernel,
    /// command line or initrd do not fit; <see cref="BootImageException.Field"/> names the culprit.
    /// </exception>
    public static BootResult LoadBzImage(IGuestMemory memory, ReadOnlySpan<byte> image, LinuxBootOptions? options = null, SpecialRegisters initial = default)
    {
        ArgumentNullException.ThrowIfNull(memory);
        options ??= new LinuxBootOptions();
        var header = BzImageHeader.Parse(image);
        if (!header.Supports64BitEntry)
        {
            throw new BootImageException("xloadflags", "XLF_KERNEL_64 is clear: the kernel has no 64-bit entry point; build it for x86-64 (CONFIG_X86_64) with boot protocol 2.12 or later.");
        }

        var map = E820Map.FromMemory(memory);
        var placements = new List<BootPlacement>();

        // Kernel: a relocatable kernel is loaded at pref_address (where it runs, saving the
        // decompressor a move); any other at 1 MiB. Either way the decompressor works from
        // max(load address, pref_address) up to init_size bytes further (LOAD_PHYSICAL_ADDR in
        // arch/x86/boot/compressed/head_64.S), so that range must be RAM.
        ulong pref = header.PreferredAddress;
        bool usablePref = pref >= DefaultKernelAddress && pref <= uint.MaxValue && (!header.Relocatable || pref % header.KernelAlignment == 0);
        ulong load = header.Relocatable && usablePref ? pref : DefaultKernelAddress;
        ulong runAddress = usablePref ? Math.Max(load, pref) : load;
        ulong payloadLength = (ulong)(image.Length - header.KernelOffset);
        if (!E820Map.IsRam(map, load, payloadLength) || !E820Map.IsRam(map, runAddress, header.InitSize))
        {
            throw new BootImageException("init_size", $"the kernel is loaded at 0x{load:x} and needs 0x{header.InitSize:x} bytes of RAM from 0x{runAddress:x} to decompress, up to 0x{runAddress + header.InitSize:x}, which the VM does not have; give the VM more memory.");
        }

        var payload = image[header.KernelOffset..];
        memory.Write(new GuestAddress(load), payload);
        placements.Add(new BootPlacement("kernel", new GuestAddress(load), runAddress + header.InitSize - load));

        // Command line.
        byte[] cmdline = EncodeCommandLine(options.CommandLine, header.CommandLineSize);
        RequireRam(map, options.CommandLineAddress, (ulong)cmdline.Length, "cmd_line_ptr", "command line");
        if (options.CommandLineAddress.Value > uint.MaxValue - (ulong)cmdline.Length)
        {
            throw new BootImageException("cmd_line_ptr", $"the command line address {options.CommandLineAddress} is above 4 GiB; move it below.");
        }

        memory.Write(options.CommandLineAddress, cmdline);
        placements.Add(new BootPlacement("command line", options.CommandLineAddress, (ulong)cmdline.Length));

        // Initrd: as high as possible below initrd_addr_max and above the kernel's working area.
        ulong initrdAddress = 0;
        ulong initrdSize = (ulong)options.Initrd.Length;
        if (initrdSize > 0)
        {
            ulong limit = Math.Min((ulong)header.InitrdAddressMax + 1, 1UL << 32);
            ulong kernelEnd = runAddress + header.InitSize;
            ulong? at = E820Map.FindHighest(map, initrdSize, kernelEnd, limit);
            if (at is null)
            {
                throw new BootImageException("initrd", $"the initrd of {initrdSize} bytes does not fit in RAM between the kernel's end (0x{kernelEnd:x}) and initrd_addr_max (0x{header.InitrdAddressMax:x}); give the VM more memory or use a smaller initrd.");
            }

            initrdAddress = at.Value;
            memory.Write(new GuestAddress(initrdAddress), options.Initrd.Span);
            placements.Add(new BootPlacement("initrd", new GuestAddress(initrdAddress), initrdSize));
        }

        // Zero page: the setup header from the image, then what the loader fills in.
        var zp = new byte[ZeroPageSize];
        int headerEnd = Math.Min(Math.Min(BzImageHeader.HeaderOffset + image[BzImageHeader.JumpOffset + 1], SetupHeaderEndLimit), image.Length);
        headerEnd = Math.Max(headerEnd, BzImageHeader.MinimumLength);
        image[BzImageHeader.Offset..headerEnd].CopyTo(zp.AsSpan(BzImageHeader.Offset));
        zp[BzImageHeader.TypeOfLoaderOffset] = UndefinedLoaderType;
        zp[BzImageHeader.ExtLoaderVerOffset] = 0;
        BinaryPrimitives.WriteUInt32LittleEndian(zp.AsSpan(BzImageHeader.CmdLinePtrOffset), (uint)options.CommandLineAddress.Value);
        BinaryPrimitives.WriteUInt32LittleEndian(zp.AsSpan(BzImageHeader.RamdiskImageOffset), (uint)initrdAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(zp.AsSpan(BzImageHeader.RamdiskSizeOffset), (uint)initrdSize);
        BinaryPrimitives.WriteUInt32LittleEndian(zp.AsSpan(BzImageHeader.Code32StartOffset), (uint)load);
        if (options.AcpiRsdpAddress is GuestAddress rsdp)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(zp.AsSpan(AcpiRsdpAddrOffset), rsdp.Value);
        }

        WriteE820(zp, map);
        RequireRam(map, options.BootParamsAddress, ZeroPageSize, "boot_params", "zero page");
        memory.Write(options.BootParamsAddress, zp);
        placements.Add(new BootPlacement("zero page", options.BootParamsAddress, ZeroPageSize));

        var special = ProcessorSetup.Prepare(memory, initial, StartMode.Long64, options.Processor);
        ulong entry = load + Entry64Offset;
        var regs = new GeneralRegisters
        {
            Rip = entry,
            Rsi = options.BootParamsAddress.Value,
            Rsp = options.StackPointer.Value,
            Rflags = Rflags.Fixed,
        };
        return new BootResult
        {
            EntryPoint = new GuestAddress(entry),
            Mode = StartMode.Long64,
            Registers = regs,
            SpecialRegisters = special,
            Placements = placements,
            MemoryMap = map,
        };
    }

    private static void WriteE820(Span<byte> zp, IReadOnlyList<E820Entry> map)
    {
        if (map.Count > E820Map.MaxZeroPageEntries)
        {
            throw new BootImageException("e820_table", $"the memory map has {map.Count} ranges, more than the zero page's {E820Map.MaxZeroPageEntries}; use fewer memory regions.");
        }

        zp[E820EntriesOffset] = (byte)map.Count;
        for (int i = 0; i < map.Count; i++)
        {
            var e = zp.Slice(E820TableOffset + (i * E820EntrySize), E820EntrySize);
            BinaryPrimitives.WriteUInt64LittleEndian(e, map[i].Address.Value);
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], map[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(e[16..], (uint)map[i].Type);
        }
    }

    /// <summary>The command line as ASCII with its NUL, or a <see cref="BootImageException"/> when it is longer than <paramref name="maxLength"/>.</summary>
    internal static byte[] EncodeCommandLine(string commandLine, ulong maxLength)
    {
        ArgumentNullException.ThrowIfNull(commandLine);
        foreach (char c in commandLine)
        {
            if (c is '\0' or > '\x7E')
            {
                throw new BootImageException("cmdline", $"contains the character U+{(int)c:X4}; a kernel command line is printable ASCII without NUL.");
            }
        }

        if ((ulong)commandLine.Length > maxLength)
        {
            throw new BootImageException("cmdline_size", $"the command line is {commandLine.Length} bytes but the kernel accepts at most {maxLength}; shorten it.");
        }

        var bytes = new byte[commandLine.Length + 1];
        Encoding.ASCII.GetBytes(commandLine, bytes);
        return bytes;
    }

    internal static void RequireRam(IReadOnlyList<E820Entry> map, GuestAddress address, ulong length, string field, string what)
    {
        if (!E820Map.IsRam(map, address.Value, length))
        {
            throw new BootImageException(field, $"the {what} at {address} (0x{length:x} bytes) is not in usable RAM; move it or give the VM more memory.");
        }
    }
}
