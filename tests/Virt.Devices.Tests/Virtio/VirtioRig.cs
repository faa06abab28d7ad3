using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;

namespace Virt.Devices.Tests.Virtio;

/// <summary>Guest memory (256 KiB of RAM, a hole above), a transport over a <see cref="TestDevice"/>, and a mock driver.</summary>
internal sealed class VirtioRig : IDisposable
{
    public const ulong RamSize = 0x40000;
    public static readonly GuestAddress OutsideRam = new(0x80000);

    public VirtioRig(ulong features = ulong.MaxValue, ushort queueSize = 16, ushort maxQueueSize = 16, bool initialize = true)
    {
        Ram = GuestMemory.CreateRam(RamSize);
        Memory = new CheckedGuestMemory(Ram);
        Device = new TestDevice(maxQueueSize);
        Transport = new VirtioMmioTransport(Device, Memory, Irq, Logger);
        Driver = new MockVirtioDriver(Transport, Memory, new GuestAddress(0x1000), new GuestAddress(0x20000));
        if (initialize)
        {
            Driver.Initialize(features, queueSize);
        }
    }

    public GuestMemory Ram { get; }
    public CheckedGuestMemory Memory { get; }
    public TestDevice Device { get; }
    public RecordingInterruptLine Irq { get; } = new();
    public ListLogger Logger { get; } = new();
    public VirtioMmioTransport Transport { get; }
    public MockVirtioDriver Driver { get; }
    public MockSplitQueue Queue => Driver.Queues[0];
    public bool NeedsReset => (Driver.Status & (uint)VirtioDeviceStatus.DeviceNeedsReset) != 0;

    public void AssertRejected(string reasonFragment)
    {
        Xunit.Assert.True(NeedsReset, "the device should be in DEVICE_NEEDS_RESET");
        Xunit.Assert.Equal(0, Queue.UsedIndex);
        Xunit.Assert.Contains(Logger.Messages, m => m.Contains(reasonFragment, StringComparison.Ordinal));
        Xunit.Assert.True((Transport.InterruptStatus & 2) != 0, "a configuration-change interrupt should be pending");
        Xunit.Assert.True(Memory.Violations == 0, Memory.LastViolation);
    }

    public void Dispose() => Ram.Dispose();
}
