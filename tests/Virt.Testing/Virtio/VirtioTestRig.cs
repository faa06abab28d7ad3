using Virt.Devices.Virtio;
using Virt.Memory;

namespace Virt.Testing.Virtio;

/// <summary>
/// The usual set-up of a virtio device test: guest RAM behind <see cref="CheckedGuestMemory"/>, the device behind a
/// <see cref="VirtioMmioTransport"/> with a <see cref="RecordingInterruptLine"/> and a <see cref="ListLogger"/>, and a
/// <see cref="MockVirtioDriver"/> with its rings from 0x1000 and its buffers from <c>dataArea</c>. The driver has not
/// initialised the device yet. Uses only the public API of Virt.Devices, as a third-party device's tests would.
/// </summary>
public class VirtioTestRig : IDisposable
{
    /// <summary>Puts <paramref name="device"/> behind a transport in <paramref name="ramSize"/> bytes of RAM.</summary>
    public VirtioTestRig(IVirtioDevice device, ulong ramSize = 0x40000, ulong dataArea = 0x20000)
    {
        Ram = GuestMemory.CreateRam(ramSize);
        Memory = new CheckedGuestMemory(Ram);
        Transport = new VirtioMmioTransport(device, Memory, Irq, Logger);
        Driver = new MockVirtioDriver(Transport, Memory, new GuestAddress(0x1000), new GuestAddress(dataArea));
    }

    /// <summary>Guest RAM.</summary>
    public GuestMemory Ram { get; }

    /// <summary>Guest RAM as the device sees it: accesses outside RAM are counted.</summary>
    public CheckedGuestMemory Memory { get; }

    /// <summary>The device's interrupt line.</summary>
    public RecordingInterruptLine Irq { get; } = new();

    /// <summary>What the transport and the device logged.</summary>
    public ListLogger Logger { get; } = new();

    /// <summary>The transport the driver talks to.</summary>
    public VirtioMmioTransport Transport { get; }

    /// <summary>The driver.</summary>
    public MockVirtioDriver Driver { get; }

    /// <summary>Whether the device set DEVICE_NEEDS_RESET.</summary>
    public bool NeedsReset => (Driver.Status & (uint)VirtioDeviceStatus.DeviceNeedsReset) != 0;

    /// <summary>Allocates a buffer in the data area and writes <paramref name="bytes"/> into it.</summary>
    public GuestAddress Put(ReadOnlySpan<byte> bytes)
    {
        var at = Driver.Allocate((uint)bytes.Length);
        Memory.Write(at, bytes);
        return at;
    }

    /// <summary>Releases guest RAM.</summary>
    public void Dispose()
    {
        Dispose(disposing: true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases guest RAM when <paramref name="disposing"/>.</summary>
    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            Ram.Dispose();
        }
    }
}
