namespace Virt.Network.UserNet;

/// <summary>A bounded FIFO of bytes (a ring that grows up to its capacity), one direction of a TCP connection.</summary>
internal sealed class ByteQueue(int capacity)
{
    private byte[] _ring = new byte[Math.Min(capacity, 16 * 1024)];
    private int _head;

    public int Capacity { get; } = capacity;

    public int Count { get; private set; }

    public int Free => Capacity - Count;

    /// <summary>Appends as much of <paramref name="data"/> as fits; returns how much.</summary>
    public int Write(ReadOnlySpan<byte> data)
    {
        int n = Math.Min(data.Length, Free);
        if (Count + n > _ring.Length)
        {
            Grow(Count + n);
        }

        int tail = (_head + Count) % _ring.Length;
        int first = Math.Min(n, _ring.Length - tail);
        data[..first].CopyTo(_ring.AsSpan(tail));
        data[first..n].CopyTo(_ring);
        Count += n;
        return n;
    }

    /// <summary>Copies bytes from <paramref name="offset"/> into <paramref name="destination"/> without removing them; returns how many.</summary>
    public int Peek(int offset, Span<byte> destination)
    {
        if (offset < 0 || offset >= Count)
        {
            return 0;
        }

        int n = Math.Min(destination.Length, Count - offset);
        int start = (_head + offset) % _ring.Length;
        int first = Math.Min(n, _ring.Length - start);
        _ring.AsSpan(start, first).CopyTo(destination);
        _ring.AsSpan(0, n - first).CopyTo(destination[first..]);
        return n;
    }

    /// <summary>Removes up to <paramref name="count"/> bytes from the front.</summary>
    public void Discard(int count)
    {
        count = Math.Clamp(count, 0, Count);
        _head = (_head + count) % _ring.Length;
        Count -= count;
        if (Count == 0)
        {
            _head = 0;
        }
    }

    private void Grow(int needed)
    {
        int size = _ring.Length;
        while (size < needed)
        {
            size = Math.Min(size * 2, Capacity);
        }

        var bigger = new byte[size];
        Peek(0, bigger.AsSpan(0, Count));
        _ring = bigger;
        _head = 0;
    }
}

/// <summary>
/// A one-waiter wake-up for a pump task: <see cref="Set"/> (under the stack's lock) never runs the waiter inline,
/// and a set before the wait is remembered.
/// </summary>
internal sealed class AsyncSignal
{
    private readonly Lock _sync = new();
    private TaskCompletionSource? _waiter;
    private bool _set;

    public Task WaitAsync()
    {
        lock (_sync)
        {
            if (_set)
            {
                _set = false;
                return Task.CompletedTask;
            }

            _waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _waiter.Task;
        }
    }

    public void Set()
    {
        TaskCompletionSource? waiter;
        lock (_sync)
        {
            waiter = _waiter;
            _waiter = null;
            _set = waiter is null;
        }

        waiter?.TrySetResult();
    }
}
