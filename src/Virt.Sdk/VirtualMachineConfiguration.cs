using System.Collections.Immutable;
using Microsoft.Extensions.Logging;
using Virt.Boot;
using Virt.Cpu;
using Virt.Devices;

namespace Virt;

/// <summary>The merged, immutable settings behind a <see cref="VirtualMachineBuilder"/>.</summary>
internal sealed record VirtualMachineConfiguration
{
    public string Name { get; init; } = DefaultMachineNames.Next();

    public ulong MemorySize { get; init; } = 64UL << 20;

    public int VcpuCount { get; init; } = 1;

    public BackendKind Backend { get; init; } = BackendKind.Auto;

    public IHypervisor? CustomBackend { get; init; }

    public Stream? SerialOutput { get; init; }

    public TextWriter? SerialWriter { get; init; }

    public bool HasSerialConsole => SerialOutput is not null || SerialWriter is not null;

    public Stream? SerialInput { get; init; }

    public ushort? DebugExitPort { get; init; }

    /// <summary>Ports the debug-exit device decodes, and so the widest value it takes: 1, 2 or 4.</summary>
    public int DebugExitWidth { get; init; } = 1;

    /// <summary>How the value written to the debug-exit port becomes the exit code.</summary>
    public DebugExitConvention DebugExitConvention { get; init; } = DebugExitConvention.Raw;

    /// <summary>Whether the VM has an ACPI PM timer: set by <c>WithAcpiPmTimer</c>; unset means what a kernel boot implies (a timer for Linux guests).</summary>
    public bool? AcpiPmTimer { get; init; }

    /// <summary>Whether the VM has the ACPI PM timer at <see cref="AcpiPmTimer"/>'s default port.</summary>
    public bool HasAcpiPmTimer => AcpiPmTimer ?? LinuxPlatform;

    public ImmutableList<FlatImage> Images { get; init; } = [];

    public GuestAddress? EntryPoint { get; init; }

    public StartMode StartMode { get; init; } = StartMode.Long64;

    public GeneralRegisters? InitialRegisters { get; init; }

    /// <summary>Every device added with <c>WithDevice</c>, <c>WithPortIoDevice</c>, <c>WithMmioDevice</c> or a <c>WithVirtio*</c> method, in that order.</summary>
    public ImmutableList<DeviceSpec> Devices { get; init; } = [];

    public ImmutableList<CpuidFeature> MaskedCpuidFeatures { get; init; } = [];

    /// <summary>CPUID features the guest must see (<see cref="VirtualMachineBuilder.WithCpuidFeature"/>, <see cref="VirtualMachineBuilder.WithCpuModel"/>).</summary>
    public ImmutableList<CpuidFeature> RequiredCpuidFeatures { get; init; } = [];

    /// <summary>The physical address width the guest's CPUID reports, or <see langword="null"/> for the backend's.</summary>
    public int? PhysicalAddressBits { get; init; }

    public long? InstructionBudget { get; init; }

    public ILoggerFactory? LoggerFactory { get; init; }

    public bool InterruptController { get; init; }

    public ReadOnlyMemory<byte> Kernel { get; init; }

    public ReadOnlyMemory<byte> Initrd { get; init; }

    public string? KernelCommandLine { get; init; }

    public VirtioDiscovery VirtioDiscovery { get; init; } = VirtioDiscovery.Acpi;

    /// <summary>A bzImage's kernel is decompressed on the host where it can be (<see cref="Boot.LinuxBootOptions.DecompressKernelOnHost"/>).</summary>
    public bool DecompressKernelOnHost { get; init; } = true;

    /// <summary>The VM has a Linux guest's platform devices (i8042, RTC, ACPI sleep): set with a kernel, or by a restored Linux guest.</summary>
    public bool LinuxPlatform { get; init; }

    /// <summary>The backend records which guest pages are written, so a live migration copies memory while the guest runs.</summary>
    public bool TrackDirtyPages { get; init; }

    /// <summary>The guest agent's vsock port (<c>virt.agent=</c> on the kernel command line), or null without an agent.</summary>
    public uint? GuestAgentPort { get; init; }

    /// <summary>Shared folders (virtio-fs) added with <c>WithSharedFolder</c>: their tags, and the mounts /init is told about.</summary>
    public ImmutableList<SharedFolderMount> SharedFolders { get; init; } = [];

    /// <summary>When the VM is restored from a snapshot: where its memory and state come from (no images, boot or start state are loaded).</summary>
    public SnapshotSource? Restore { get; init; }

    /// <summary>The resource pool the VM is admitted to when built, if any.</summary>
    public ResourcePool? Pool { get; init; }

    /// <summary>What the VM asks of <see cref="Pool"/>.</summary>
    public ResourceRequest? PoolRequest { get; init; }
}

internal sealed record FlatImage(ReadOnlyMemory<byte> Bytes, GuestAddress Address);

/// <summary>A device as the builder records it: created once per built VM, where the <see cref="DeviceManager"/> placed it.</summary>
/// <param name="Name">The name for placements, bus registrations and messages (for virtio devices their kind, e.g. <c>virtio-blk</c>).</param>
/// <param name="Resources">The ports, MMIO window and interrupt line it asks for.</param>
/// <param name="Create">
/// Creates the device for one VM: an <see cref="IPortIoDevice"/> and/or <see cref="IMmioDevice"/> matching
/// <paramref name="Resources"/>, or for <paramref name="IsVirtio"/> an <see cref="Devices.Virtio.IVirtioDevice"/>.
/// </param>
/// <param name="IsVirtio">Whether the device goes behind a virtio-mmio transport (one page-aligned window and a line).</param>
internal sealed record DeviceSpec(string Name, DeviceResources Resources, Func<DeviceContext, object> Create, bool IsVirtio = false);
