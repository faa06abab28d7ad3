using System.Buffers.Binary;
using Virt.Memory;

namespace Virt.Testing.Virtio;

/// <summary>
/// Plays the guest driver's side of one split virtqueue: lays out the descriptor table, available and used rings
/// in guest memory, publishes chains and reads used entries, so devices can be tested without a guest CPU.
/// It writes whatever it is told, including malformed structures, for attack tests.
/// </summary>
public sealed class MockSplitQueue
{
    /// <summary>Descriptor flag NEXT.</summary>
    public const ushort FlagNext = 1;
    /// <summary>Descriptor flag WRITE (device-writable).</summary>
    public const ushort FlagWrite = 2;
    /// <summary>Descriptor flag INDIRECT.</summary>
    public const ushort FlagIndirect = 4;

    private readonly IGuestMemory _memory;
    private ushort _nextDescriptor;
    private ushort _availIdx;
    private ushort _lastSeenUsed;

    /// <summary>Lays out a queue of <paramref name="size"/> entries starting at <paramref name="start"/> (4 KiB aligned is simplest).</summary>
    public MockSplitQueue(IGuestMemory memory, GuestAddress start, ushort size)
    {
        _memory = memory;
        Size = size;
        DescriptorTable = start;
        AvailRing = start + (16UL * size);
        ulong usedOffset = ((16UL * size) + 6 + (2UL * size) + 3) & ~3UL;
        UsedRing = start + usedOffset;
        End = UsedRing + 6 + (8UL * size);
        Clear();
    }

    /// <summary>Queue size.</summary>
    public ushort Size { get; }

    /// <summary>Descriptor table address.</summary>
    public GuestAddress DescriptorTable { get; }

    /// <summary>Available ring address.</summary>
    public GuestAddress AvailRing { get; }

    /// <summary>Used ring address.</summary>
    public GuestAddress UsedRing { get; }

    /// <summary>First address after the rings.</summary>
    public GuestAddress End { get; }

    /// <summary>The driver's available index (the next slot it fills).</summary>
    public ushort AvailIndex => _availIdx;

    /// <summary>The device's used index as it stands in guest memory.</summary>
    public ushort UsedIndex => _memory.Read<ushort>(UsedRing + 2);

    /// <summary>The device's avail_event field (EVENT_IDX).</summary>
    public ushort AvailEvent => _memory.Read<ushort>(UsedRing + 4 + (8UL * Size));

    /// <summary>Zeroes the rings and restarts the driver's indexes.</summary>
    public void Clear()
    {
        _memory.Write(DescriptorTable, new byte[End - DescriptorTable]);
        _nextDescriptor = 0;
        _availIdx = 0;
        _lastSeenUsed = 0;
    }

    /// <summary>Writes descriptor <paramref name="index"/> verbatim.</summary>
    public void WriteDescriptor(int index, GuestAddress address, uint length, ushort flags, ushort next) =>
        WriteDescriptorAt(DescriptorTable + (16UL * (uint)index), address, length, flags, next);

    /// <summary>Writes a descriptor at any guest address (for indirect tables).</summary>
    public void WriteDescriptorAt(GuestAddress at, GuestAddress address, uint length, ushort flags, ushort next)
    {
        Span<byte> d = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(d, address.Value);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
        _memory.Write(at, d);
    }

    /// <summary>Puts <paramref name="head"/> in the next available slot and publishes it.</summary>
    public void Publish(ushort head)
    {
        _memory.Write(AvailRing + 4 + (2UL * (uint)(_availIdx % Size)), head);
        _availIdx++;
        _memory.Write(AvailRing + 2, _availIdx);
    }

    /// <summary>Writes the available index verbatim (for attacks).</summary>
    public void SetAvailIndex(ushort value)
    {
        _availIdx = value;
        _memory.Write(AvailRing + 2, value);
    }

    /// <summary>Writes the available ring's flags (bit 0: no interrupt).</summary>
    public void SetAvailFlags(ushort flags) => _memory.Write(AvailRing, flags);

    /// <summary>Writes used_event (EVENT_IDX).</summary>
    public void SetUsedEvent(ushort value) => _memory.Write(AvailRing + 4 + (2UL * Size), value);

    /// <summary>
    /// Builds a chain over <paramref name="buffers"/> from the next free descriptors and publishes it.
    /// Returns the head index.
    /// </summary>
    public ushort AddChain(params (GuestAddress Address, uint Length, bool Writable)[] buffers)
    {
        ArgumentNullException.ThrowIfNull(buffers);
        ushort head = _nextDescriptor;
        for (int i = 0; i < buffers.Length; i++)
        {
            ushort index = (ushort)((head + i) % Size);
            ushort next = (ushort)((head + i + 1) % Size);
            ushort flags = (ushort)((buffers[i].Writable ? FlagWrite : 0) | (i + 1 < buffers.Length ? FlagNext : 0));
            WriteDescriptor(index, buffers[i].Address, buffers[i].Length, flags, next);
        }

        _nextDescriptor = (ushort)((head + buffers.Length) % Size);
        Publish(head);
        return head;
    }

    /// <summary>
    /// Builds a chain whose single descriptor points at an indirect table at <paramref name="table"/> holding
    /// <paramref name="buffers"/>, and publishes it.
    /// </summary>
    public ushort AddIndirectChain(GuestAddress table, params (GuestAddress Address, uint Length, bool Writable)[] buffers)
    {
        ArgumentNullException.ThrowIfNull(buffers);
        for (int i = 0; i < buffers.Length; i++)
        {
            ushort flags = (ushort)((buffers[i].Writable ? FlagWrite : 0) | (i + 1 < buffers.Length ? FlagNext : 0));
            WriteDescriptorAt(table + (16UL * (uint)i), buffers[i].Address, buffers[i].Length, flags, (ushort)(i + 1));
        }

        ushort head = _nextDescriptor;
        WriteDescriptor(head, table, (uint)(16 * buffers.Length), FlagIndirect, 0);
        _nextDescriptor = (ushort)((head + 1) % Size);
        Publish(head);
        return head;
    }

    /// <summary>Reads used ring entry <paramref name="slot"/> (modulo the size): chain head and bytes written.</summary>
    public (uint Id, uint Length) ReadUsed(int slot)
    {
        GuestAddress at = UsedRing + 4 + (8UL * (uint)(slot % Size));
        return (_memory.Read<uint>(at), _memory.Read<uint>(at + 4));
    }

    /// <summary>Takes the next used entry if the device has published one.</summary>
    public bool TryTakeUsed(out (uint Id, uint Length) entry)
    {
        if (UsedIndex == _lastSeenUsed)
        {
            entry = default;
            return false;
        }

        entry = ReadUsed(_lastSeenUsed);
        _lastSeenUsed++;
        return true;
    }

    /// <summary>
    /// Waits (polling) until the device has published a used entry, and takes it. The first 2 ms spin (yielding the
    /// processor), as a polling driver would, so benchmarks of short requests measure the device rather than a
    /// sleep; after that the wait sleeps 1 ms between looks.
    /// </summary>
    /// <exception cref="TimeoutException">Nothing was used within <paramref name="timeout"/> (default 10 s).</exception>
    public (uint Id, uint Length) WaitUsed(TimeSpan? timeout = null)
    {
        if (TryTakeUsed(out var ready))
        {
            // Already used (a device that served the request on the notifying thread): no clock to read.
            return ready;
        }

        var limit = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        long spinUntil = System.Diagnostics.Stopwatch.GetTimestamp() + (System.Diagnostics.Stopwatch.Frequency / 500);
        var spin = new SpinWait();
        while (true)
        {
            if (TryTakeUsed(out var entry))
            {
                return entry;
            }

            if (DateTime.UtcNow > limit)
            {
                throw new TimeoutException($"The device used no buffer (used index {UsedIndex}) within the timeout.");
            }

            spin.SpinOnce(sleep1Threshold: System.Diagnostics.Stopwatch.GetTimestamp() < spinUntil ? -1 : 0);
        }
    }
}
