using Virt.Cpu;
using Virt.Devices;
using Virt.Snapshots;

namespace Virt;

/// <summary>
/// The "machine" section of a snapshot: what a restore needs to rebuild the same machine around the saved state (memory
/// size, vCPUs, controllers, platform devices, where every device sat, the kernel command line) and the CPUID features
/// the guest was offered, which the restoring backend must offer too.
/// </summary>
internal sealed record MachineDescription
{
    public const string SectionName = "machine";

    public const int Version = 3;

    /// <summary>The leaves and registers whose feature bits a restore compares.</summary>
    internal static readonly (uint Function, uint Index, CpuidRegister Register)[] FeatureRegisters =
    [
        (1, 0, CpuidRegister.Ecx), (1, 0, CpuidRegister.Edx), (7, 0, CpuidRegister.Ebx), (7, 0, CpuidRegister.Ecx),
        (7, 0, CpuidRegister.Edx), (0x8000_0001, 0, CpuidRegister.Ecx), (0x8000_0001, 0, CpuidRegister.Edx),
    ];

    public required string Name { get; init; }

    public required ulong MemorySize { get; init; }

    public required int VcpuCount { get; init; }

    public required string Backend { get; init; }

    public bool InterruptController { get; init; }

    public bool LinuxPlatform { get; init; }

    public bool SerialConsole { get; init; }

    public int DebugExitPort { get; init; } = -1;

    /// <summary>The debug-exit port's width in bytes (1, 2 or 4). Since version 3; 1 before.</summary>
    public int DebugExitWidth { get; init; } = 1;

    /// <summary>How the debug-exit device turns a value into an exit code. Since version 3; raw before.</summary>
    public DebugExitConvention DebugExitConvention { get; init; }

    /// <summary>Whether the machine has the ACPI PM timer (whose count is a section of its own). Since version 3; none before.</summary>
    public bool AcpiPmTimer { get; init; }

    public VirtioDiscovery VirtioDiscovery { get; init; }

    public string? KernelCommandLine { get; init; }

    public IReadOnlyList<CpuidFeature> MaskedCpuidFeatures { get; init; } = [];

    /// <summary>The physical address width the VM asked for (<see cref="VirtualMachineBuilder.WithPhysicalAddressBits"/>), or null for the backend's. Since version 2.</summary>
    public int? PhysicalAddressBits { get; init; }

    /// <summary>The feature words of <see cref="FeatureRegisters"/>, as the guest's CPUID showed them.</summary>
    public IReadOnlyList<uint> OfferedFeatures { get; init; } = [];

    /// <summary>Every configured device: virtio ones as (kind, window, line), others as (name, ports, window, line).</summary>
    public IReadOnlyList<SavedDevice> Devices { get; init; } = [];

    public void Write(StateWriter w)
    {
        w.WriteString(Name);
        w.WriteUInt64(MemorySize);
        w.WriteInt32(VcpuCount);
        w.WriteString(Backend);
        w.WriteBoolean(InterruptController);
        w.WriteBoolean(LinuxPlatform);
        w.WriteBoolean(SerialConsole);
        w.WriteInt32(DebugExitPort);
        w.WriteByte((byte)VirtioDiscovery);
        w.WriteBoolean(KernelCommandLine is not null);
        w.WriteString(KernelCommandLine ?? "");
        w.WriteInt32(MaskedCpuidFeatures.Count);
        foreach (var f in MaskedCpuidFeatures)
        {
            w.WriteUInt32(f.Function);
            w.WriteUInt32(f.Index);
            w.WriteByte((byte)f.Register);
            w.WriteByte((byte)f.Bit);
        }

        w.WriteInt32(OfferedFeatures.Count);
        foreach (uint v in OfferedFeatures)
        {
            w.WriteUInt32(v);
        }

        w.WriteInt32(Devices.Count);
        foreach (var d in Devices)
        {
            w.WriteString(d.Name);
            w.WriteBoolean(d.IsVirtio);
            w.WriteInt32(d.Port ?? -1);
            w.WriteUInt16(d.PortCount);
            w.WriteUInt64(d.MmioAddress ?? ulong.MaxValue);
            w.WriteUInt64(d.MmioSize);
            w.WriteInt32(d.Irq is uint irq ? (int)irq : -1);
        }

        w.WriteInt32(PhysicalAddressBits ?? 0);
        w.WriteByte((byte)DebugExitWidth);
        w.WriteByte((byte)DebugExitConvention);
        w.WriteBoolean(AcpiPmTimer);
    }

    public static MachineDescription Read(ref StateReader r, int version)
    {
        if (version is < 1 or > Version)
        {
            throw r.UnsupportedVersion(version, Version);
        }

        string name = r.ReadString("name", 256);
        ulong memory = r.ReadUInt64InRange("memory size", 4096, VirtualMachineBuilder.MaxMemorySize);
        if (memory % 4096 != 0)
        {
            throw new SnapshotFormatException(r.Section, "memory size", $"{memory} is not a multiple of 4 KiB.");
        }

        int vcpus = r.ReadInt32InRange("vCPU count", 1, VirtualMachineBuilder.MaxVcpuCount);
        string backend = r.ReadString("backend", 64);
        bool irqchip = r.ReadBoolean("interrupt controller");
        bool linux = r.ReadBoolean("Linux platform");
        bool serial = r.ReadBoolean("serial console");
        int debugExit = r.ReadInt32InRange("debug-exit port", -1, ushort.MaxValue);
        byte discovery = r.ReadByte("virtio discovery");
        if (discovery > (byte)VirtioDiscovery.CommandLine)
        {
            throw new SnapshotFormatException(r.Section, "virtio discovery", $"{discovery} is not a known discovery method.");
        }

        bool hasCommandLine = r.ReadBoolean("has command line");
        string commandLine = r.ReadString("command line", 64 * 1024);
        int maskedCount = r.ReadInt32InRange("masked feature count", 0, 1024);
        var masked = new CpuidFeature[maskedCount];
        for (int i = 0; i < maskedCount; i++)
        {
            uint function = r.ReadUInt32("masked feature leaf");
            uint index = r.ReadUInt32("masked feature sub-leaf");
            byte register = r.ReadByte("masked feature register");
            byte bit = r.ReadByte("masked feature bit");
            if (register > (byte)CpuidRegister.Edx || bit > 31)
            {
                throw new SnapshotFormatException(r.Section, "masked feature", $"register {register} bit {bit} is out of range.");
            }

            masked[i] = new CpuidFeature(function, index, (CpuidRegister)register, bit);
        }

        int offeredCount = r.ReadInt32InRange("offered feature words", 0, FeatureRegisters.Length);
        var offered = new uint[offeredCount];
        for (int i = 0; i < offeredCount; i++)
        {
            offered[i] = r.ReadUInt32("offered feature word");
        }

        int deviceCount = r.ReadInt32InRange("device count", 0, 4096);
        var devices = new SavedDevice[deviceCount];
        for (int i = 0; i < deviceCount; i++)
        {
            string deviceName = r.ReadString("device name", 256);
            bool isVirtio = r.ReadBoolean("device is virtio");
            int port = r.ReadInt32InRange("device port", -1, ushort.MaxValue);
            ushort portCount = r.ReadUInt16("device port count");
            ulong mmio = r.ReadUInt64("device MMIO address");
            ulong mmioSize = r.ReadUInt64InRange("device MMIO size", 0, 1UL << 40);
            int irq = r.ReadInt32InRange("device IRQ", -1, 255);
            devices[i] = new SavedDevice(deviceName, isVirtio, port < 0 ? null : (ushort)port, portCount,
                mmio == ulong.MaxValue ? null : mmio, mmioSize, irq < 0 ? null : (uint)irq);
        }

        int physicalBits = version >= 2 ? r.ReadInt32InRange("physical address bits", 0, 52) : 0;
        if (physicalBits is > 0 and < 32)
        {
            throw new SnapshotFormatException(r.Section, "physical address bits", $"{physicalBits} is neither 0 (the backend's width) nor 32-52.");
        }

        int debugExitWidth = 1;
        var convention = DebugExitConvention.Raw;
        bool pmTimer = false;
        if (version >= 3)
        {
            debugExitWidth = r.ReadByte("debug-exit width");
            if (!DebugExitDevice.IsValidWidth(debugExitWidth))
            {
                throw new SnapshotFormatException(r.Section, "debug-exit width", $"{debugExitWidth} is not 1, 2 or 4.");
            }

            byte conventionByte = r.ReadByte("debug-exit convention");
            convention = (DebugExitConvention)conventionByte;
            if (!Enum.IsDefined(convention))
            {
                throw new SnapshotFormatException(r.Section, "debug-exit convention", $"{conventionByte} is not a known convention.");
            }

            pmTimer = r.ReadBoolean("ACPI PM timer");
        }

        if (debugExit >= 0 && debugExit + debugExitWidth > 0x10000)
        {
            throw new SnapshotFormatException(r.Section, "debug-exit width", $"a port {debugExitWidth} bytes wide at 0x{debugExit:x} runs past port 0xffff.");
        }

        r.EnsureEnd();
        return new MachineDescription
        {
            DebugExitWidth = debugExitWidth, DebugExitConvention = convention, AcpiPmTimer = pmTimer,
            PhysicalAddressBits = physicalBits == 0 ? null : physicalBits,
            Name = name, MemorySize = memory, VcpuCount = vcpus, Backend = backend, InterruptController = irqchip,
            LinuxPlatform = linux, SerialConsole = serial, DebugExitPort = debugExit, VirtioDiscovery = (VirtioDiscovery)discovery,
            KernelCommandLine = hasCommandLine ? commandLine : null, MaskedCpuidFeatures = masked, OfferedFeatures = offered,
            Devices = devices,
        };
    }

    /// <summary>The feature words of <see cref="FeatureRegisters"/> in <paramref name="cpuid"/>.</summary>
    public static uint[] FeatureWords(IReadOnlyList<CpuidEntry> cpuid) =>
    [
        .. FeatureRegisters.Select(f =>
        {
            var e = cpuid.FirstOrDefault(c => c.Function == f.Function && ((c.Flags & CpuidEntry.SignificantIndex) == 0 || c.Index == f.Index));
            return f.Register switch
            {
                CpuidRegister.Eax => e.Eax,
                CpuidRegister.Ebx => e.Ebx,
                CpuidRegister.Ecx => e.Ecx,
                _ => e.Edx,
            };
        }),
    ];
}

/// <summary>A device as a snapshot records where it sat.</summary>
internal sealed record SavedDevice(string Name, bool IsVirtio, ushort? Port, ushort PortCount, ulong? MmioAddress, ulong MmioSize, uint? Irq);

/// <summary>The snapshot a VM is being restored from: the open file, its machine description and its memory section.</summary>
internal sealed class SnapshotSource(SnapshotReader reader, MachineDescription description, Microsoft.Win32.SafeHandles.SafeFileHandle memoryFile, long memoryOffset)
{
    public SnapshotReader Reader { get; } = reader;

    public MachineDescription Description { get; } = description;

    /// <summary>The file guest RAM is mapped from (copy-on-write): the snapshot itself, or a migration's received pages.</summary>
    public Microsoft.Win32.SafeHandles.SafeFileHandle MemoryFile { get; } = memoryFile;

    /// <summary>Where guest physical address 0 lies in <see cref="MemoryFile"/>.</summary>
    public long MemoryOffset { get; } = memoryOffset;
}
