using System.Buffers.Binary;
using System.Text;
using Virt.Memory;

namespace Virt.Boot;

/// <summary>What <see cref="MpTable.Write"/> announces.</summary>
public sealed record MpTableOptions
{
    /// <summary>Where the floating pointer goes; the configuration table follows it. Default: the last KiB of base memory (0x9FC00), where Linux looks.</summary>
    public GuestAddress Address { get; init; } = new(0x9FC00);

    /// <summary>Number of processors (APIC IDs 0 to n-1; the first is the bootstrap processor).</summary>
    public int ProcessorCount { get; init; } = 1;

    /// <summary>Address of the IOAPIC.</summary>
    public GuestAddress IoApicAddress { get; init; } = new(0xFEC00000);

    /// <summary>Number of IOAPIC input pins to announce interrupt assignments for (16-24).</summary>
    public int IoApicPins { get; init; } = 24;

    /// <summary>GSIs (IOAPIC pins) that are level-triggered and active-high, e.g. those of virtio-mmio devices; the rest are ISA edge-triggered.</summary>
    public IReadOnlySet<int> LevelTriggeredPins { get; init; } = new HashSet<int>();
}

/// <summary>
/// Writes an Intel MultiProcessor Specification 1.4 table: the floating pointer ("_MP_") and a
/// configuration table ("PCMP") with the processors, an ISA bus, one IOAPIC, an interrupt assignment
/// for every IOAPIC pin (ISA IRQ 0 on pin 2, the rest on the pin of their number) and the local
/// interrupts (ExtINT on LINT0, NMI on LINT1).
/// </summary>
/// <remarks>
/// Kernels built without <c>CONFIG_X86_MPPARSE</c> (Debian's cloud kernel among them) ignore it and
/// need ACPI tables instead; see docs/linux-guests.md.
/// </remarks>
public static class MpTable
{
    /// <summary>The floating pointer's signature.</summary>
    public const uint FloatingSignature = 0x5F504D5F; // "_MP_"
    /// <summary>The configuration table's signature.</summary>
    public const uint ConfigSignature = 0x504D4350;   // "PCMP"
    /// <summary>Specification revision 1.4.</summary>
    public const byte SpecRevision = 4;
    /// <summary>Local APIC version announced for each processor (integrated APIC).</summary>
    public const byte LocalApicVersion = 0x14;
    /// <summary>IOAPIC version announced.</summary>
    public const byte IoApicVersion = 0x11;
    /// <summary>The address of the local APICs.</summary>
    public const uint LocalApicAddress = 0xFEE00000;

    private const int FloatingSize = 16, HeaderSize = 44, ProcessorEntrySize = 20, EntrySize = 8;
    private const byte EntryProcessor = 0, EntryBus = 1, EntryIoApic = 2, EntryIoInterrupt = 3, EntryLocalInterrupt = 4;
    private const byte CpuEnabled = 1, CpuBootstrap = 2;
    private const byte InterruptInt = 0, InterruptNmi = 1, InterruptExtInt = 3;
    private const ushort FlagsConforming = 0;
    private const ushort FlagsLevelActiveHigh = 0x1 | (0x3 << 2); // polarity 01 active high, trigger 11 level
    private const byte IsaBusId = 0;
    private const uint CpuSignature = 0x600;     // family 6
    private const uint CpuFeatures = 0x201;      // FPU, APIC
    private const int MaxSize = 1024;

    /// <summary>Writes the tables; returns the bytes written (floating pointer and configuration table).</summary>
    /// <exception cref="BootImageException">Too many processors for the space, or the space is not in guest RAM.</exception>
    public static BootPlacement Write(IGuestMemory memory, MpTableOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(memory);
        options ??= new MpTableOptions();
        if (options.ProcessorCount is < 1 or > 254)
        {
            throw new BootImageException("processor_count", $"is {options.ProcessorCount}; an MP table holds 1 to 254 processors.");
        }

        if (options.IoApicPins is < 16 or > 240)
        {
            throw new BootImageException("ioapic_pins", $"is {options.IoApicPins}; announce 16 to 240 pins.");
        }

        byte ioApicId = (byte)options.ProcessorCount;
        var table = new List<byte>();
        void Add(ReadOnlySpan<byte> entry) => table.AddRange(entry.ToArray());

        for (int cpu = 0; cpu < options.ProcessorCount; cpu++)
        {
            var e = new byte[ProcessorEntrySize];
            e[0] = EntryProcessor;
            e[1] = (byte)cpu;
            e[2] = LocalApicVersion;
            e[3] = (byte)(CpuEnabled | (cpu == 0 ? CpuBootstrap : 0));
            BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4), CpuSignature);
            BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(8), CpuFeatures);
            Add(e);
        }

        Add([EntryBus, IsaBusId, .. "ISA   "u8]);

        var io = new byte[EntrySize];
        io[0] = EntryIoApic;
        io[1] = ioApicId;
        io[2] = IoApicVersion;
        io[3] = 1; // enabled
        BinaryPrimitives.WriteUInt32LittleEndian(io.AsSpan(4), (uint)options.IoApicAddress.Value);
        Add(io);

        for (int irq = 0; irq < options.IoApicPins; irq++)
        {
            if (irq == 2)
            {
                continue; // the cascade; pin 2 carries ISA IRQ 0
            }

            int pin = irq == 0 ? 2 : irq;
            ushort flags = options.LevelTriggeredPins.Contains(pin) ? FlagsLevelActiveHigh : FlagsConforming;
            Add(Interrupt(EntryIoInterrupt, InterruptInt, flags, (byte)irq, ioApicId, (byte)pin));
        }

        Add(Interrupt(EntryLocalInterrupt, InterruptExtInt, FlagsConforming, 0, 0xFF, 0));
        Add(Interrupt(EntryLocalInterrupt, InterruptNmi, FlagsConforming, 0, 0xFF, 1));

        int entryCount = options.ProcessorCount + 2 + (options.IoApicPins - 1) + 2;
        int configLength = HeaderSize + table.Count;
        int total = FloatingSize + configLength;
        if (total > MaxSize)
        {
            throw new BootImageException("processor_count", $"{options.ProcessorCount} processors and {options.IoApicPins} pins need {total} bytes, more than the 1 KiB the MP table may use; announce fewer.");
        }

        var bytes = new byte[total];
        var fp = bytes.AsSpan(0, FloatingSize);
        ulong configAddress = options.Address.Value + FloatingSize;
        BinaryPrimitives.WriteUInt32LittleEndian(fp, FloatingSignature);
        BinaryPrimitives.WriteUInt32LittleEndian(fp[4..], (uint)configAddress);
        fp[8] = 1; // length in 16-byte paragraphs
        fp[9] = SpecRevision;
        fp[10] = Checksum(fp);

        var config = bytes.AsSpan(FloatingSize);
        BinaryPrimitives.WriteUInt32LittleEndian(config, ConfigSignature);
        BinaryPrimitives.WriteUInt16LittleEndian(config[4..], (ushort)configLength);
        config[6] = SpecRevision;
        Encoding.ASCII.GetBytes("VIRTSDK ", config[8..16]);
        Encoding.ASCII.GetBytes("VIRT.SDK    ", config[16..28]);
        BinaryPrimitives.WriteUInt16LittleEndian(config[34..], (ushort)entryCount);
        BinaryPrimitives.WriteUInt32LittleEndian(config[36..], LocalApicAddress);
        table.ToArray().CopyTo(config[HeaderSize..]);
        config[7] = Checksum(config);

        if (!memory.Contains(options.Address, (ulong)total) || options.Address.Value + (ulong)total > uint.MaxValue)
        {
            throw new BootImageException("mp_table", $"the MP table at {options.Address} (0x{total:x} bytes) is not in guest memory below 4 GiB; give the VM at least 640 KiB of RAM at address 0 or move the table.");
        }

        memory.Write(options.Address, bytes);
        return new BootPlacement("mp table", options.Address, (ulong)total);
    }

    private static byte[] Interrupt(byte entryType, byte interruptType, ushort flags, byte sourceIrq, byte destination, byte destinationInput)
    {
        var e = new byte[EntrySize];
        e[0] = entryType;
        e[1] = interruptType;
        BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(2), flags);
        e[4] = IsaBusId;
        e[5] = sourceIrq;
        e[6] = destination;
        e[7] = destinationInput;
        return e;
    }

    /// <summary>The byte that makes <paramref name="data"/> (with its checksum byte zero) sum to zero.</summary>
    internal static byte Checksum(ReadOnlySpan<byte> data)
    {
        byte sum = 0;
        foreach (byte b in data)
        {
            sum += b;
        }

        return (byte)-sum;
    }
}
