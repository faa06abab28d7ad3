using Microsoft.Extensions.Logging;
using Virt.Devices;
using Virt.Memory;

namespace Virt;

/// <summary>Where a device of a VM was placed: its ports, MMIO window and interrupt line.</summary>
/// <param name="Name">The name the device was added with.</param>
/// <param name="Port">The first of its I/O ports, or <see langword="null"/> when it has none.</param>
/// <param name="PortCount">How many ports it decodes (0 when it has none).</param>
/// <param name="MmioAddress">The guest physical address of its MMIO window, or <see langword="null"/> when it has none.</param>
/// <param name="MmioSize">The size of its MMIO window in bytes (0 when it has none).</param>
/// <param name="Irq">Its interrupt line (GSI), or <see langword="null"/> when it has none.</param>
public sealed record DevicePlacement(string Name, ushort? Port, ushort PortCount, GuestAddress? MmioAddress, ulong MmioSize, uint? Irq);

/// <summary>
/// What a device factory gets when the VM is assembled (see <see cref="VirtualMachineBuilder.WithDevice{TDevice}"/>
/// and <see cref="VirtualMachineBuilder.WithVirtioDevice"/>): the resources the device manager gave the device,
/// its interrupt line, guest memory and logging.
/// </summary>
/// <remarks>A factory runs once per built VM, on the thread that calls <see cref="VirtualMachineBuilder.Build"/>.</remarks>
public sealed class DeviceContext
{
    private readonly IInterruptLine? _line;
    private readonly string? _noLineReason;
    private readonly MachineResources _owned;

    internal DeviceContext(DevicePlacement placement, IInterruptLine? line, string? noLineReason, IGuestMemory memory, bool hasInterruptController, ILoggerFactory loggerFactory, MachineResources owned, int vcpuCount)
    {
        VcpuCount = vcpuCount;
        Placement = placement;
        _line = line;
        _noLineReason = noLineReason;
        Memory = memory;
        HasInterruptController = hasInterruptController;
        LoggerFactory = loggerFactory;
        _owned = owned;
    }

    /// <summary>The name the device was added with.</summary>
    public string Name => Placement.Name;

    /// <summary>The ports, MMIO window and interrupt line the device got.</summary>
    public DevicePlacement Placement { get; }

    /// <summary>
    /// The device's interrupt line, wired to <see cref="DevicePlacement.Irq"/> of the VM's interrupt controller. Raising it
    /// does nothing when the VM has no interrupt controller (see <see cref="HasInterruptController"/>). Thread-safe.
    /// </summary>
    /// <exception cref="InvalidOperationException">The device did not ask for a line (set <see cref="DeviceResources.Interrupt"/>), or it is a virtio device, whose transport drives the line.</exception>
    public IInterruptLine InterruptLine => _line ?? throw new InvalidOperationException(_noLineReason);

    /// <summary>Whether the VM has interrupt controllers (<see cref="VirtualMachineBuilder.WithInterruptController"/>, implied by a Linux kernel), so that interrupt lines reach the guest.</summary>
    public bool HasInterruptController { get; }

    /// <summary>The VM's vCPUs, e.g. for a device that offers one queue per vCPU.</summary>
    public int VcpuCount { get; }

    /// <summary>Guest physical memory, for devices that read or write guest RAM (DMA).</summary>
    public IGuestMemory Memory { get; }

    /// <summary>The VM's logger factory (<see cref="VirtualMachineBuilder.WithLogging"/>), or one that discards everything.</summary>
    public ILoggerFactory LoggerFactory { get; }

    /// <summary>Releases <paramref name="resource"/> when the VM is disposed, or at once if building the VM fails later on.</summary>
    /// <remarks>
    /// Call it from the factory. The VM does not dispose the device itself: register it here when the factory
    /// created it for this VM alone. Resources are released in the reverse order of registration.
    /// </remarks>
    public void DisposeWithMachine(IAsyncDisposable resource)
    {
        ArgumentNullException.ThrowIfNull(resource);
        _owned.Add(resource);
    }
}
