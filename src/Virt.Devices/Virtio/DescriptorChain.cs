using Virt.Memory;

namespace Virt.Devices.Virtio;

/// <summary>
/// One validated descriptor chain taken from a <see cref="Virtqueue"/>: device-readable buffers first, then
/// device-writable ones, each already checked to lie inside guest RAM. Read and write it as two byte streams.
/// </summary>
/// <remarks>
/// <para>
/// The driver decides the lengths, so a device checks <see cref="ReadableLength"/> and <see cref="WritableLength"/>
/// against what its protocol needs and refuses a request that does not fit; <see cref="Read"/> and
/// <see cref="Write"/> stop at the end of their part and never touch the other one (a device never writes into a
/// buffer the driver marked read-only).
/// </para>
/// <para>
/// Threading: not thread-safe; one thread at a time serves a chain. Failures: nothing the guest did throws;
/// <see cref="ObjectDisposedException"/> only when guest memory was disposed under the device (the VM is gone).
/// </para>
/// </remarks>
public sealed class DescriptorChain
{
    /// <summary>Buffers kept inside the chain object itself (a block request has three), without an array.</summary>
    private const int InlineSegments = 4;

    private readonly IGuestMemory _memory;
    private InlineSegmentArray _inline;
    private Segment[]? _segments;
    private int _count;
    private int _firstWritable = -1;

    internal DescriptorChain(Virtqueue queue, IGuestMemory memory, ushort head)
    {
        Queue = queue;
        _memory = memory;
        Head = head;
    }

    /// <summary>Empties the chain for the request at <paramref name="head"/> (a chain object refilled by <see cref="Virtqueue.TryPopMany"/>).</summary>
    internal void Reset(ushort head)
    {
        Head = head;
        _count = 0;
        _firstWritable = -1;
        ReadableLength = 0;
        WritableLength = 0;
    }

    /// <summary>The queue the chain came from.</summary>
    public Virtqueue Queue { get; }

    /// <summary>Index of the chain's first descriptor (the id reported in the used ring).</summary>
    public ushort Head { get; private set; }

    /// <summary>Total bytes of the device-readable buffers.</summary>
    public long ReadableLength { get; private set; }

    /// <summary>Total bytes of the device-writable buffers.</summary>
    public long WritableLength { get; private set; }

    /// <summary>Number of descriptors (buffers) in the chain, indirect ones included.</summary>
    public int DescriptorCount => _count;

    internal void Add(GuestAddress address, uint length, bool writable)
    {
        if (writable && _firstWritable < 0)
        {
            _firstWritable = _count;
        }

        var segment = new Segment(address.Value, length);
        if (_count < InlineSegments)
        {
            // The first buffers live inline always; a refilled chain that once grew past them keeps its array for the rest.
            _inline[_count++] = segment;
        }
        else
        {
            if (_segments is null)
            {
                _segments = new Segment[InlineSegments * 2];
            }
            else if (_count == _segments.Length)
            {
                Array.Resize(ref _segments, _count * 2);
            }

            _segments[_count++] = segment;
        }

        if (writable)
        {
            WritableLength += length;
        }
        else
        {
            ReadableLength += length;
        }
    }

    /// <summary>
    /// Copies device-readable bytes starting <paramref name="offset"/> bytes into the readable part into
    /// <paramref name="destination"/>. Returns how many bytes were copied (fewer at the end of the readable part).
    /// </summary>
    public int Read(long offset, Span<byte> destination)
    {
        int readableEnd = _firstWritable < 0 ? _count : _firstWritable;
        int done = 0;
        long skip = offset;
        for (int i = 0; i < readableEnd && done < destination.Length; i++)
        {
            var s = SegmentAt(i);
            if (skip >= s.Length)
            {
                skip -= s.Length;
                continue;
            }

            int n = (int)Math.Min(s.Length - skip, destination.Length - done);
            if (!_memory.TryRead(new GuestAddress(s.Address + (ulong)skip), destination.Slice(done, n)))
            {
                return done;
            }

            done += n;
            skip = 0;
        }

        return done;
    }

    /// <summary>
    /// Copies <paramref name="source"/> into the device-writable buffers starting <paramref name="offset"/> bytes
    /// into the writable part. Returns how many bytes were written (fewer at the end of the writable part, or
    /// when a buffer turned out not to be writable RAM).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is negative.</exception>
    public int Write(long offset, ReadOnlySpan<byte> source)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (_firstWritable < 0)
        {
            return 0;
        }

        int done = 0;
        long skip = offset;
        for (int i = _firstWritable; i < _count && done < source.Length; i++)
        {
            var s = SegmentAt(i);
            if (skip >= s.Length)
            {
                skip -= s.Length;
                continue;
            }

            int n = (int)Math.Min(s.Length - skip, source.Length - done);
            if (!_memory.TryWrite(new GuestAddress(s.Address + (ulong)skip), source.Slice(done, n)))
            {
                return done;
            }

            done += n;
            skip = 0;
        }

        return done;
    }

    /// <summary>
    /// Buffer <paramref name="index"/> of the chain (device-readable buffers first, in chain order): its guest address,
    /// length and whether the device may write it. Lets a device hand guest memory to the host without a copy (take a
    /// span with <see cref="IGuestMemory.TryGetSpan"/>, marking written ranges with <c>forWrite</c>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not below <see cref="DescriptorCount"/>.</exception>
    public (GuestAddress Address, uint Length, bool Writable) GetBuffer(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, _count);
        var s = SegmentAt(index);
        return (new GuestAddress(s.Address), s.Length, _firstWritable >= 0 && index >= _firstWritable);
    }

    private Segment SegmentAt(int index) => index < InlineSegments ? _inline[index] : _segments![index];

    private readonly record struct Segment(ulong Address, uint Length);

    [System.Runtime.CompilerServices.InlineArray(InlineSegments)]
    private struct InlineSegmentArray
    {
        private Segment _first;
    }
}
