using Virt.Memory;
using Virt.Testing.Virtio;

namespace Virt.Devices.Tests.Virtio;

/// <summary>Guest memory (256 KiB of RAM, a hole above), a transport over a <see cref="TestDevice"/>, and a mock driver.</summary>
internal sealed class VirtioRig : VirtioTestRig
{
    public const ulong RamSize = 0x40000;
    public static readonly GuestAddress OutsideRam = new(0x80000);

    public VirtioRig(ulong features = ulong.MaxValue, ushort queueSize = 16, ushort maxQueueSize = 16, bool initialize = true)
        : base(new TestDevice(maxQueueSize), RamSize)
    {
        Device = (TestDevice)Transport.Device;
        if (initialize)
        {
            Driver.Initialize(features, queueSize);
        }
    }

    public TestDevice Device { get; }
    public MockSplitQueue Queue => Driver.Queues[0];

    public void AssertRejected(string reasonFragment)
    {
        Xunit.Assert.True(NeedsReset, "the device should be in DEVICE_NEEDS_RESET");
        Xunit.Assert.Equal(0, Queue.UsedIndex);
        Xunit.Assert.Contains(Logger.Messages, m => m.Contains(reasonFragment, StringComparison.Ordinal));
        Xunit.Assert.True((Transport.InterruptStatus & 2) != 0, "a configuration-change interrupt should be pending");
        Xunit.Assert.True(Memory.Violations == 0, Memory.LastViolation);
    }
}
