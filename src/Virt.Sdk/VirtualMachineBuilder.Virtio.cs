using Virt.Devices.Virtio;
using Virt.Network;
using Virt.Storage;

namespace Virt;

public sealed partial class VirtualMachineBuilder
{
    /// <summary>First guest physical address of the virtio-mmio windows (one 4 KiB page per device, above RAM).</summary>
    public const ulong VirtioMmioBase = 0xD000_0000;

    /// <summary>The interrupt lines (GSIs) virtio devices get, in the order they are added.</summary>
    internal static readonly uint[] VirtioIrqs = [5, 6, 7, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

    /// <summary>Adds a virtio-blk disk over <paramref name="backend"/>. The caller keeps ownership of the backend.</summary>
    public VirtualMachineBuilder WithVirtioBlock(IBlockBackend backend, VirtioBlockOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        return AddVirtio(new VirtioDeviceSpec("virtio-blk", _ => new VirtioBlockDevice(backend, options), null));
    }

    /// <summary>
    /// Adds a virtio-blk disk backed by the raw image at <paramref name="imagePath"/>. The VM opens the image
    /// when it is built (locking it against other VMs) and closes it when disposed.
    /// </summary>
    /// <exception cref="FileNotFoundException">The image does not exist.</exception>
    public VirtualMachineBuilder WithVirtioBlock(string imagePath, bool readOnly = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(imagePath);
        if (!File.Exists(imagePath))
        {
            throw new FileNotFoundException($"The disk image '{imagePath}' does not exist. Create it with DiskImage.CreateRaw(path, size) or check the path.", imagePath);
        }

        return AddVirtio(new VirtioDeviceSpec("virtio-blk", owned =>
        {
            var backend = RawFileBlockBackend.Open(imagePath, readOnly);
            owned.Add(backend);
            return new VirtioBlockDevice(backend, new VirtioBlockOptions { ReadOnly = readOnly });
        }, null));
    }

    /// <summary>Adds a virtio-net NIC whose frames go to <paramref name="backend"/> (a virtual-network port, TAP, capture).</summary>
    public VirtualMachineBuilder WithVirtioNet(INetworkBackend backend, MacAddress? mac = null, VirtioNetOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var address = mac ?? MacAddress.CreateRandom();
        return AddVirtio(new VirtioDeviceSpec("virtio-net", _ => new VirtioNetDevice(backend, address, options), null));
    }

    /// <summary>
    /// Adds a virtio-net NIC plugged into <paramref name="network"/>: the VM attaches a port when built and
    /// detaches it when disposed.
    /// </summary>
    public VirtualMachineBuilder WithVirtioNet(VirtualNetwork network, MacAddress? mac = null, VirtioNetOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(network);
        var address = mac ?? MacAddress.CreateRandom();
        return AddVirtio(new VirtioDeviceSpec("virtio-net", owned =>
        {
            var port = network.Attach(_config.Name);
            owned.Add(port);
            return new VirtioNetDevice(port, address, options);
        }, null));
    }

    /// <summary>Adds a virtio-console whose single port is connected to <paramref name="stream"/>.</summary>
    public VirtualMachineBuilder WithVirtioConsole(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        return AddVirtio(new VirtioDeviceSpec("virtio-console", owned =>
        {
            var device = new VirtioConsoleDevice(stream);
            owned.Add(device);
            return device;
        }, null));
    }

    /// <summary>Adds a virtio-rng entropy device fed by the host's CSPRNG, optionally limited to <paramref name="bytesPerSecond"/>.</summary>
    public VirtualMachineBuilder WithVirtioRng(long? bytesPerSecond = null) =>
        AddVirtio(new VirtioDeviceSpec("virtio-rng", _ => new VirtioRngDevice(bytesPerSecond), null));

    private VirtualMachineBuilder AddVirtio(VirtioDeviceSpec spec)
    {
        if (_config.VirtioDevices.Count >= VirtioIrqs.Length)
        {
            throw new InvalidOperationException($"A VM can have at most {VirtioIrqs.Length} virtio devices.");
        }

        return new(_config with { VirtioDevices = _config.VirtioDevices.Add(spec) });
    }
}

/// <summary>A virtio device as the builder records it: created per VM when the VM is built.</summary>
/// <param name="Kind">A short name for logs and errors.</param>
/// <param name="Create">Creates the device; adds what the VM must dispose to the list.</param>
/// <param name="Unused">Reserved.</param>
internal sealed record VirtioDeviceSpec(string Kind, Func<List<IAsyncDisposable>, IVirtioDevice> Create, object? Unused);

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
