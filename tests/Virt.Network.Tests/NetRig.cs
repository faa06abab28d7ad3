using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Testing.Virtio;

namespace Virt.Network.Tests;

/// <summary>One guest with a virtio-net device over a backend, driven by the mock driver.</summary>
internal sealed class NetRig : VirtioTestRig
{
    private readonly List<GuestAddress> _rxBuffers = [];

    public NetRig(INetworkBackend backend, MacAddress mac, VirtioNetOptions? options = null, ulong features = ulong.MaxValue, ulong ramSize = 0x200000)
        : base(new VirtioNetDevice(backend, mac, options), ramSize: ramSize)
    {
        Device = (VirtioNetDevice)Transport.Device;
        Features = Driver.Initialize(features, 64);
    }

    public VirtioNetDevice Device { get; }
    public ulong Features { get; }
    public MockSplitQueue Rx => Driver.Queues[0];
    public MockSplitQueue Tx => Driver.Queues[1];

    /// <summary>Gives the device <paramref name="count"/> receive buffers of <paramref name="size"/> bytes.</summary>
    public void PostReceiveBuffers(int count, uint size = 1526)
    {
        for (int i = 0; i < count; i++)
        {
            var b = Driver.Allocate(size);
            ushort head = Rx.AddChain((b, size, true));
            while (_rxBuffers.Count <= head)
            {
                _rxBuffers.Add(default);
            }

            _rxBuffers[head] = b;
        }

        Driver.Notify(0);
    }

    /// <summary>Sends <paramref name="frame"/> with an optional header, waits until the device used the chain.</summary>
    public void Send(byte[] frame, byte[]? header = null)
    {
        var h = Driver.Allocate(12);
        Memory.Write(h, header ?? new byte[12]);
        var f = Driver.Allocate((uint)frame.Length);
        Memory.Write(f, frame);
        Tx.AddChain((h, 12, false), (f, (uint)frame.Length, false));
        Driver.Notify(1);
        Tx.WaitUsed();
    }

    /// <summary>Takes the next received packet: its header and frame, gathered over num_buffers buffers.</summary>
    public (byte[] Header, byte[] Frame)? TryReceive(TimeSpan? timeout = null)
    {
        (uint Id, uint Length) first;
        try
        {
            first = Rx.WaitUsed(timeout ?? TimeSpan.FromSeconds(5));
        }
        catch (TimeoutException)
        {
            return null;
        }

        var header = new byte[12];
        Memory.Read(_rxBuffers[(int)first.Id], header);
        int buffers = BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(10));
        var data = new List<byte>();
        var bytes = new byte[first.Length - 12];
        Memory.Read(_rxBuffers[(int)first.Id] + 12, bytes);
        data.AddRange(bytes);
        for (int i = 1; i < buffers; i++)
        {
            var next = Rx.WaitUsed();
            bytes = new byte[next.Length];
            Memory.Read(_rxBuffers[(int)next.Id], bytes);
            data.AddRange(bytes);
        }

        return (header, [.. data]);
    }

    public static byte[] Frame(MacAddress to, MacAddress from, int payload = 46, byte fill = 0x42, ushort etherType = 0x88b5)
    {
        var f = new byte[14 + payload];
        to.CopyTo(f);
        from.CopyTo(f.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), etherType);
        f.AsSpan(14).Fill(fill);
        return f;
    }
}

/// <summary>A clock the test moves by hand.</summary>
internal sealed class ManualTimeProvider : TimeProvider
{
    private long _ticks;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;
    public override long GetTimestamp() => Interlocked.Read(ref _ticks);
    public override DateTimeOffset GetUtcNow() => new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero).AddTicks(GetTimestamp());
    public void Advance(TimeSpan by) => Interlocked.Add(ref _ticks, by.Ticks);
}
