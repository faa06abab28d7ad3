using System.Collections.Immutable;
using Microsoft.Extensions.Logging;
using Virt.Boot;
using Virt.Cpu;
using Virt.Devices;

namespace Virt;

/// <summary>The merged, immutable settings behind a <see cref="VirtualMachineBuilder"/>.</summary>
internal sealed record VirtualMachineConfiguration
{
    public string Name { get; init; } = "vm";

    public ulong MemorySize { get; init; } = 64UL << 20;

    public int VcpuCount { get; init; } = 1;

    public BackendKind Backend { get; init; } = BackendKind.Auto;

    public IHypervisor? CustomBackend { get; init; }

    public Stream? SerialOutput { get; init; }

    public TextWriter? SerialWriter { get; init; }

    public bool HasSerialConsole => SerialOutput is not null || SerialWriter is not null;

    public Stream? SerialInput { get; init; }

    public ushort? DebugExitPort { get; init; }

    public ImmutableList<FlatImage> Images { get; init; } = [];

    public GuestAddress? EntryPoint { get; init; }

    public StartMode StartMode { get; init; } = StartMode.Long64;

    public GeneralRegisters? InitialRegisters { get; init; }

    public ImmutableList<PortDeviceRegistration> PortDevices { get; init; } = [];

    public ImmutableList<MmioDeviceRegistration> MmioDevices { get; init; } = [];

    public ImmutableList<CpuidFeature> MaskedCpuidFeatures { get; init; } = [];

    public long? InstructionBudget { get; init; }

    public ILoggerFactory? LoggerFactory { get; init; }

    public ImmutableList<VirtioDeviceSpec> VirtioDevices { get; init; } = [];

    public bool InterruptController { get; init; }

    public ReadOnlyMemory<byte> Kernel { get; init; }

    public ReadOnlyMemory<byte> Initrd { get; init; }

    public string? KernelCommandLine { get; init; }

    public VirtioDiscovery VirtioDiscovery { get; init; } = VirtioDiscovery.Acpi;
}

internal sealed record FlatImage(ReadOnlyMemory<byte> Bytes, GuestAddress Address);

internal sealed record PortDeviceRegistration(ushort Start, ushort Length, IPortIoDevice Device, string Name);

internal sealed record MmioDeviceRegistration(GuestAddress Start, ulong Length, IMmioDevice Device, string Name);
