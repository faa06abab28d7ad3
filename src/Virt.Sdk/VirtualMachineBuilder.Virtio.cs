using Virt.Devices.Virtio;
using Virt.Network;
using Virt.Storage;

namespace Virt;

public sealed partial class VirtualMachineBuilder
{
    /// <summary>
    /// First guest physical address of the virtio-mmio windows (one 4 KiB page per device, above RAM), and of the
    /// region MMIO windows of other devices come from when they do not ask for a fixed address.
    /// </summary>
    public const ulong VirtioMmioBase = 0xD000_0000;

    /// <summary>Adds a virtio-blk disk over <paramref name="backend"/>. The caller keeps ownership of the backend.</summary>
    public VirtualMachineBuilder WithVirtioBlock(IBlockBackend backend, VirtioBlockOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        return AddVirtio("virtio-blk", _ => new VirtioBlockDevice(backend, options));
    }

    /// <summary>
    /// Adds a virtio-blk disk backed by the image at <paramref name="imagePath"/>: raw, qcow2 (with its backing
    /// chain) or a Virt.Sdk overlay, detected from its contents, with one request queue per vCPU. The VM opens the image when it is built (locking it
    /// against other VMs and QEMU) and closes it when disposed.
    /// </summary>
    /// <exception cref="DiskImageException">The image does not exist (<see cref="DiskImageError.NotFound"/>), the same
    /// exception <see cref="DiskImage.Open"/> throws for it; permission and lock problems surface from the same family
    /// when the VM is built.</exception>
    public VirtualMachineBuilder WithVirtioBlock(string imagePath, bool readOnly = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(imagePath);
        if (!File.Exists(imagePath))
        {
            throw new DiskImageException(imagePath, DiskImageError.NotFound,
                $"The disk image '{imagePath}' does not exist. Create it with DiskImage.CreateRaw(path, size) or check the path.");
        }

        return AddVirtio("virtio-blk", context =>
        {
            var backend = DiskImage.Open(imagePath, readOnly);
            context.DisposeWithMachine(backend);
            return new VirtioBlockDevice(backend, new VirtioBlockOptions
            {
                ReadOnly = readOnly,
                QueueCount = Math.Clamp(context.VcpuCount, 1, VirtioBlockDevice.MaxQueueCount),
            });
        });
    }

    /// <summary>Adds a virtio-net NIC whose frames go to <paramref name="backend"/> (a virtual-network port, TAP, capture).</summary>
    public VirtualMachineBuilder WithVirtioNet(INetworkBackend backend, MacAddress? mac = null, VirtioNetOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var address = mac ?? MacAddress.CreateRandom();
        return AddVirtio("virtio-net", _ => new VirtioNetDevice(backend, address, options));
    }

    /// <summary>
    /// Adds a virtio-net NIC plugged into <paramref name="network"/>: the VM attaches a port when built and
    /// detaches it when disposed.
    /// </summary>
    public VirtualMachineBuilder WithVirtioNet(VirtualNetwork network, MacAddress? mac = null, VirtioNetOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(network);
        var address = mac ?? MacAddress.CreateRandom();
        return AddVirtio("virtio-net", context =>
        {
            var port = network.Attach(_config.Name);
            context.DisposeWithMachine(port);
            return new VirtioNetDevice(port, address, options);
        });
    }

    /// <summary>Adds a virtio-console whose single port is connected to <paramref name="stream"/>.</summary>
    public VirtualMachineBuilder WithVirtioConsole(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        return AddVirtio("virtio-console", context =>
        {
            var device = new VirtioConsoleDevice(stream);
            context.DisposeWithMachine(device);
            return device;
        });
    }

    /// <summary>Adds a virtio-rng entropy device fed by the host's CSPRNG, optionally limited to <paramref name="bytesPerSecond"/>.</summary>
    public VirtualMachineBuilder WithVirtioRng(long? bytesPerSecond = null) =>
        AddVirtio("virtio-rng", _ => new VirtioRngDevice(bytesPerSecond));

    /// <summary>
    /// Adds a virtio device of your own (an <see cref="IVirtioDevice"/>, see docs/devices.md) behind a virtio-mmio
    /// transport: like the built-in ones it gets the next window from <see cref="VirtioMmioBase"/> and the next free
    /// interrupt line, is announced to a Linux guest in the ACPI DSDT or, with <see cref="VirtioDiscovery.CommandLine"/>,
    /// by a <c>virtio_mmio.device=</c> parameter, and is listed in <see cref="VirtualMachine.VirtioDevices"/>.
    /// </summary>
    /// <param name="name">The device's kind or name, e.g. <c>virtio-vsock</c>, for <see cref="VirtioDeviceInfo.Kind"/>, logs and messages.</param>
    /// <param name="create">
    /// Creates the device for one VM when it is built (once per <see cref="Build"/>). The context says where the
    /// device was placed and gives guest memory and logging; register what the VM should release with it through
    /// <see cref="DeviceContext.DisposeWithMachine"/>. The transport drives the interrupt line.
    /// </param>
    /// <exception cref="InvalidOperationException">The VM already has 16 virtio devices.</exception>
    public VirtualMachineBuilder WithVirtioDevice(string name, Func<DeviceContext, IVirtioDevice> create)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(create);
        return AddVirtio(name, create);
    }

    private VirtualMachineBuilder AddVirtio(string kind, Func<DeviceContext, IVirtioDevice> create)
    {
        if (_config.Devices.Count(d => d.IsVirtio) >= DeviceManager.DeviceIrqs.Length)
        {
            throw new InvalidOperationException($"A VM can have at most {DeviceManager.DeviceIrqs.Length} virtio devices.");
        }

        var resources = new DeviceResources { MmioSize = VirtioMmioTransport.WindowSize, Interrupt = true };
        return AddDevice(new DeviceSpec(kind, resources, create, IsVirtio: true));
    }
}

/// <summary>Where a virtio device of a VM lives, for the guest's kernel command line.</summary>
/// <param name="Kind">The device kind, e.g. <c>virtio-blk</c>.</param>
/// <param name="Address">Guest physical address of its virtio-mmio window.</param>
/// <param name="Size">Size of the window in bytes.</param>
/// <param name="Irq">Its interrupt line (GSI).</param>
public sealed record VirtioDeviceInfo(string Kind, GuestAddress Address, ulong Size, uint Irq)
{
    /// <summary>The Linux <c>virtio_mmio.device=&lt;size&gt;@&lt;addr&gt;:&lt;irq&gt;</c> parameter for this device.</summary>
    public string KernelCommandLineFragment => VirtioMmioTransport.KernelCommandLineFragment(Address, Irq);
}
