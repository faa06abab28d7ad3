using System.Buffers.Binary;
using Virt.Devices;
using Virt.Memory;

namespace Virt.Testing.Virtio;

/// <summary>
/// Plays a virtio-mmio driver against a transport (an <see cref="IMmioDevice"/>): the status handshake,
/// feature negotiation, queue set-up with <see cref="MockSplitQueue"/> rings, notifications and interrupt acks.
/// </summary>
public sealed class MockVirtioDriver
{
    /// <summary>VIRTIO_F_VERSION_1.</summary>
    public const ulong Version1 = 1UL << 32;
    /// <summary>VIRTIO_F_INDIRECT_DESC.</summary>
    public const ulong IndirectDesc = 1UL << 28;
    /// <summary>VIRTIO_F_EVENT_IDX.</summary>
    public const ulong EventIdx = 1UL << 29;

    private readonly IMmioDevice _device;
    private readonly IGuestMemory _memory;
    private readonly List<MockSplitQueue> _queues = [];
    private ulong _nextData;

    /// <summary>Creates the driver; queues go at <paramref name="ringArea"/>, buffers from <paramref name="dataArea"/> up.</summary>
    public MockVirtioDriver(IMmioDevice device, IGuestMemory memory, GuestAddress ringArea, GuestAddress dataArea)
    {
        _device = device;
        _memory = memory;
        RingArea = ringArea;
        DataArea = dataArea;
        _nextData = dataArea.Value;
    }

    /// <summary>Where the queues' rings are laid out.</summary>
    public GuestAddress RingArea { get; }

    /// <summary>Where buffers are allocated.</summary>
    public GuestAddress DataArea { get; }

    /// <summary>The queues set up by <see cref="Initialize"/>.</summary>
    public IReadOnlyList<MockSplitQueue> Queues => _queues;

    /// <summary>Reads a 32-bit register.</summary>
    public uint ReadRegister(int offset)
    {
        Span<byte> b = stackalloc byte[4];
        _device.Read((ulong)offset, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    /// <summary>Writes a 32-bit register.</summary>
    public void WriteRegister(int offset, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        _device.Write((ulong)offset, b);
    }

    /// <summary>The device features (both words).</summary>
    public ulong ReadDeviceFeatures()
    {
        WriteRegister(0x14, 0);
        ulong low = ReadRegister(0x10);
        WriteRegister(0x14, 1);
        return low | ((ulong)ReadRegister(0x10) << 32);
    }

    /// <summary>Status register.</summary>
    public uint Status => ReadRegister(0x70);

    /// <summary>
    /// Resets the device, negotiates <paramref name="wantedFeatures"/> (intersected with what the device offers,
    /// always with VERSION_1), sets up every queue with <paramref name="queueSize"/> entries (or the device's
    /// maximum if smaller) and sets DRIVER_OK. Returns the negotiated features.
    /// </summary>
    public ulong Initialize(ulong wantedFeatures = ulong.MaxValue, ushort queueSize = 16)
    {
        WriteRegister(0x70, 0);
        WriteRegister(0x70, 1);
        WriteRegister(0x70, 1 | 2);
        ulong features = ReadDeviceFeatures() & (wantedFeatures | Version1);
        WriteRegister(0x24, 0);
        WriteRegister(0x20, (uint)features);
        WriteRegister(0x24, 1);
        WriteRegister(0x20, (uint)(features >> 32));
        WriteRegister(0x70, 1 | 2 | 8);
        if ((Status & 8) == 0)
        {
            throw new InvalidOperationException("The device refused the features.");
        }

        _queues.Clear();
        GuestAddress at = RingArea;
        for (uint q = 0; ; q++)
        {
            WriteRegister(0x30, q);
            uint max = ReadRegister(0x34);
            if (max == 0)
            {
                break;
            }

            ushort size = (ushort)Math.Min(max, queueSize);
            var queue = new MockSplitQueue(_memory, at, size);
            _queues.Add(queue);
            at = new GuestAddress((queue.End.Value + 4095) & ~4095UL);
            WriteRegister(0x38, size);
            WriteRegister(0x80, (uint)queue.DescriptorTable.Value);
            WriteRegister(0x84, (uint)(queue.DescriptorTable.Value >> 32));
            WriteRegister(0x90, (uint)queue.AvailRing.Value);
            WriteRegister(0x94, (uint)(queue.AvailRing.Value >> 32));
            WriteRegister(0xa0, (uint)queue.UsedRing.Value);
            WriteRegister(0xa4, (uint)(queue.UsedRing.Value >> 32));
            WriteRegister(0x44, 1);
        }

        WriteRegister(0x70, 1 | 2 | 8 | 4);
        return features;
    }

    /// <summary>Allocates <paramref name="length"/> bytes of buffer space (16-byte aligned) in the data area.</summary>
    public GuestAddress Allocate(uint length)
    {
        var at = new GuestAddress(_nextData);
        _nextData = (_nextData + length + 15) & ~15UL;
        return at;
    }

    /// <summary>Restarts buffer allocation at the start of the data area.</summary>
    public void ResetAllocations() => _nextData = DataArea.Value;

    /// <summary>Notifies queue <paramref name="queue"/>.</summary>
    public void Notify(int queue) => WriteRegister(0x50, (uint)queue);

    /// <summary>Reads and acknowledges the interrupt status.</summary>
    public uint AcknowledgeInterrupts()
    {
        uint status = ReadRegister(0x60);
        WriteRegister(0x64, status);
        return status;
    }

    /// <summary>Reads <paramref name="length"/> bytes of device configuration space at <paramref name="offset"/>.</summary>
    public byte[] ReadConfig(int offset, int length)
    {
        var b = new byte[length];
        _device.Read((ulong)(0x100 + offset), b);
        return b;
    }
}

/// <summary>An interrupt line that counts edges and remembers its level.</summary>
public sealed class RecordingInterruptLine : IInterruptLine
{
    private readonly object _gate = new();
    private int _raised;
    private int _level;
    private int _waiters;

    /// <summary>How many times the line was raised.</summary>
    public int RaiseCount => Volatile.Read(ref _raised);

    /// <summary>Whether the line is high now.</summary>
    public bool IsHigh => Volatile.Read(ref _level) != 0;

    /// <inheritdoc />
    public void Raise()
    {
        Interlocked.Increment(ref _raised);
        Volatile.Write(ref _level, 1);
        if (Volatile.Read(ref _waiters) != 0)
        {
            lock (_gate)
            {
                Monitor.PulseAll(_gate);
            }
        }
    }

    /// <summary>
    /// Blocks until the line has been raised more than <paramref name="seen"/> times (a <see cref="RaiseCount"/> read
    /// before the driver's notification) or <paramref name="timeout"/> passes. A test waiting for the device this way
    /// leaves the CPU to the device's worker, where a spin would compete with it on a loaded host.
    /// </summary>
    /// <returns>Whether the line was raised meanwhile.</returns>
    public bool WaitForRaise(int seen, TimeSpan timeout)
    {
        lock (_gate)
        {
            Interlocked.Increment(ref _waiters);
            try
            {
                return RaiseCount != seen || (Monitor.Wait(_gate, timeout) && RaiseCount != seen);
            }
            finally
            {
                Interlocked.Decrement(ref _waiters);
            }
        }
    }

    /// <inheritdoc />
    public void Lower() => Volatile.Write(ref _level, 0);
}
