namespace Virt.Orleans;

/// <summary>
/// The serial console's output as the grain keeps it: the last <c>capacity</c> bytes in a ring, with offsets counted
/// from the VM's creation so callers can read on where they left off. Written by the VM's serial thread, read by the
/// grain; a waiter learns of every write.
/// </summary>
internal sealed class ConsoleBuffer : Stream
{
    private readonly Lock _sync = new();
    private readonly byte[] _ring;
    private long _end;
    private int _count;
    private TaskCompletionSource _written = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Creates the buffer holding <paramref name="tail"/>, the last bytes before offset <paramref name="end"/>.</summary>
    public ConsoleBuffer(int capacity, ReadOnlySpan<byte> tail, long end)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _ring = new byte[capacity];
        if (tail.Length > capacity)
        {
            tail = tail[^capacity..];
        }

        _end = Math.Max(end, tail.Length) - tail.Length;
        Append(tail);
    }

    /// <summary>The offset after the last byte written.</summary>
    public long End
    {
        get
        {
            lock (_sync)
            {
                return _end;
            }
        }
    }

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        TaskCompletionSource written;
        lock (_sync)
        {
            Append(buffer);
            written = _written;
            _written = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        written.TrySetResult();
    }

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>Bytes from <paramref name="offset"/> on (at most <paramref name="maxBytes"/>); what left the ring is skipped and counted as dropped.</summary>
    public ConsoleOutput Read(long offset, int maxBytes)
    {
        lock (_sync)
        {
            long first = _end - _count;
            long from = Math.Clamp(offset, first, _end);
            int length = (int)Math.Min(_end - from, maxBytes);
            var data = new byte[length];
            CopyOut(from, data);
            return new ConsoleOutput { Offset = from, Data = data, Dropped = Math.Max(0, first - Math.Max(offset, 0)) };
        }
    }

    /// <summary>All bytes the ring holds, for the grain's state.</summary>
    public (byte[] Tail, long End) Snapshot()
    {
        lock (_sync)
        {
            var data = new byte[_count];
            CopyOut(_end - _count, data);
            return (data, _end);
        }
    }

    /// <summary>A task that completes at the next write.</summary>
    public Task NextWrite
    {
        get
        {
            lock (_sync)
            {
                return _written.Task;
            }
        }
    }

    /// <summary>The offset just after the first occurrence of <paramref name="text"/> at or after <paramref name="offset"/>, or -1.</summary>
    public long Find(ReadOnlySpan<byte> text, long offset)
    {
        lock (_sync)
        {
            long first = Math.Max(offset, _end - _count);
            if (_end - first < text.Length)
            {
                return -1;
            }

            var data = new byte[_end - first];
            CopyOut(first, data);
            int at = data.AsSpan().IndexOf(text);
            return at < 0 ? -1 : first + at + text.Length;
        }
    }

    private void Append(ReadOnlySpan<byte> data)
    {
        if (data.Length >= _ring.Length)
        {
            _end += data.Length - _ring.Length;
            data = data[^_ring.Length..];
        }

        int at = (int)(_end % _ring.Length);
        int first = Math.Min(data.Length, _ring.Length - at);
        data[..first].CopyTo(_ring.AsSpan(at));
        data[first..].CopyTo(_ring);
        _end += data.Length;
        _count = Math.Min(_count + data.Length, _ring.Length);
    }

    private void CopyOut(long from, Span<byte> destination)
    {
        int at = (int)(from % _ring.Length);
        int first = Math.Min(destination.Length, _ring.Length - at);
        _ring.AsSpan(at, first).CopyTo(destination);
        _ring.AsSpan(0, destination.Length - first).CopyTo(destination[first..]);
    }
}
