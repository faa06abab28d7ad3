using Virt.Devices.Virtio;

namespace Virt.Devices.Tests.Virtio;

/// <summary>A device that serves its queues inline: it pops every chain, fills its writable part with 0xAB and completes it.</summary>
internal sealed class TestDevice : IVirtioDevice
{
    private readonly byte[] _config = [1, 2, 3, 4, 5, 6, 7, 8];

    public TestDevice(ushort maxQueueSize = 16, int queues = 1) =>
        QueueMaxSizes = Enumerable.Repeat(maxQueueSize, queues).ToArray();

    public VirtioDeviceType DeviceType => VirtioDeviceType.Entropy;
    public ulong DeviceFeatures => 1UL << 3;
    public IReadOnlyList<ushort> QueueMaxSizes { get; }
    public int ConfigSize => _config.Length;
    public VirtioDeviceContext? Context { get; private set; }
    public List<DescriptorChain> Chains { get; } = [];
    public int Resets { get; private set; }

    public void ReadConfig(int offset, Span<byte> data) => _config.AsSpan(offset, data.Length).CopyTo(data);
    public void WriteConfig(int offset, ReadOnlySpan<byte> data) => data.CopyTo(_config.AsSpan(offset));
    public void Activate(VirtioDeviceContext context) => Context = context;
    public void Reset()
    {
        Context = null;
        Resets++;
    }

    public void QueueNotified(int queueIndex)
    {
        if (Context is not { } context)
        {
            return;
        }

        var queue = context.Queues[queueIndex];
        while (queue.TryPop(out var chain))
        {
            Chains.Add(chain);
            var fill = new byte[chain.WritableLength];
            Array.Fill(fill, (byte)0xAB);
            int written = chain.Write(0, fill);
            queue.AddUsed(chain, (uint)written);
        }

        context.SignalUsed(queue);
    }
}
