namespace Virt.Devices.Virtio;

/// <summary>Where a vsock connection is in its life.</summary>
internal enum VsockConnectionState
{
    /// <summary>The host sent (or will send) REQUEST and waits for RESPONSE.</summary>
    Connecting,

    /// <summary>Both sides may send.</summary>
    Established,

    /// <summary>The host closed its stream: SHUTDOWN goes (or went) to the guest, which answers with RST or SHUTDOWN.</summary>
    Closing,

    /// <summary>Gone from the connection table; the host stream drains what was received and then ends.</summary>
    Closed,
}

/// <summary>
/// One vsock stream connection between a host port and a guest port: the state, the bytes received from the guest
/// and not yet read by the host, the bytes the host wrote and not yet sent, and both sides' credit (virtio 1.2,
/// section 5.10.6.3). Every field is guarded by the owning <see cref="VsockMultiplexer"/>'s lock.
/// </summary>
internal sealed class VsockConnection
{
    private readonly Queue<byte[]> _received = new();
    private readonly Queue<byte[]> _toSend = new();
    private int _receivedOffset;
    private int _toSendOffset;

    public VsockConnection(uint localPort, uint peerPort, VsockConnectionState state)
    {
        LocalPort = localPort;
        PeerPort = peerPort;
        State = state;
    }

    /// <summary>The host's port.</summary>
    public uint LocalPort { get; }

    /// <summary>The guest's port.</summary>
    public uint PeerPort { get; }

    public VsockConnectionState State { get; set; }

    /// <summary>Completed when the guest answers a host REQUEST (faulted when it refuses).</summary>
    public TaskCompletionSource Connected { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Pulsed when bytes arrive, the guest stops sending, or the connection ends.</summary>
    public AsyncGate Readable { get; } = new();

    /// <summary>Pulsed when send-buffer room appears or the connection can no longer send.</summary>
    public AsyncGate Writable { get; } = new();

    /// <summary>Bytes received from the guest and not yet read by the host.</summary>
    public int ReceivedBytes { get; private set; }

    /// <summary>Bytes the host read (our fwd_cnt).</summary>
    public uint ForwardCount { get; private set; }

    /// <summary>The fwd_cnt last told to the guest.</summary>
    public uint ReportedForwardCount { get; set; }

    /// <summary>Bytes the host wrote and the device has not sent yet.</summary>
    public int BytesToSend { get; private set; }

    /// <summary>Bytes sent to the guest (tx_cnt).</summary>
    public uint SentCount { get; private set; }

    /// <summary>The guest's receive buffer size (its buf_alloc).</summary>
    public uint PeerBufferAllocation { get; set; }

    /// <summary>Bytes the guest has consumed (its fwd_cnt).</summary>
    public uint PeerForwardCount { get; set; }

    /// <summary>How many more bytes the guest can take now.</summary>
    public uint PeerCredit
    {
        get
        {
            uint inFlight = SentCount - PeerForwardCount;
            return inFlight >= PeerBufferAllocation ? 0 : PeerBufferAllocation - inFlight;
        }
    }

    /// <summary>The guest said it sends no more (SHUTDOWN with SEND).</summary>
    public bool PeerDoneSending { get; set; }

    /// <summary>The guest said it receives no more (SHUTDOWN with RECEIVE).</summary>
    public bool PeerDoneReceiving { get; set; }

    /// <summary>The host said it writes no more (a SHUTDOWN with SEND is due or sent).</summary>
    public bool HostDoneSending { get; set; }

    /// <summary>Why the connection was aborted, or null while it was not.</summary>
    public string? ResetReason { get; set; }

    public bool PendingRequest { get; set; }

    public bool PendingResponse { get; set; }

    public bool PendingCreditUpdate { get; set; }

    /// <summary>A CREDIT_REQUEST was sent since the guest last gave credit.</summary>
    public bool CreditRequested { get; set; }

    /// <summary>SHUTDOWN flags still to send once the data before them has gone.</summary>
    public uint PendingShutdown { get; set; }

    /// <summary>In the multiplexer's ready queue.</summary>
    public bool Scheduled { get; set; }

    /// <summary>Keeps a copy of a payload the guest sent.</summary>
    public void Receive(ReadOnlySpan<byte> payload)
    {
        if (payload.IsEmpty)
        {
            return;
        }

        _received.Enqueue(payload.ToArray());
        ReceivedBytes += payload.Length;
    }

    /// <summary>Moves received bytes into <paramref name="destination"/>; advances fwd_cnt.</summary>
    public int TakeReceived(Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length && _received.TryPeek(out var chunk))
        {
            int n = Math.Min(chunk.Length - _receivedOffset, destination.Length - done);
            chunk.AsSpan(_receivedOffset, n).CopyTo(destination[done..]);
            done += n;
            _receivedOffset += n;
            if (_receivedOffset == chunk.Length)
            {
                _received.Dequeue();
                _receivedOffset = 0;
            }
        }

        ReceivedBytes -= done;
        ForwardCount += (uint)done;
        return done;
    }

    /// <summary>Forgets received bytes nobody will read, crediting them as consumed.</summary>
    public void DiscardReceived()
    {
        ForwardCount += (uint)ReceivedBytes;
        ReceivedBytes = 0;
        _received.Clear();
        _receivedOffset = 0;
    }

    /// <summary>Queues a copy of bytes the host wrote.</summary>
    public void QueueToSend(ReadOnlySpan<byte> data)
    {
        _toSend.Enqueue(data.ToArray());
        BytesToSend += data.Length;
    }

    /// <summary>Moves queued host bytes into <paramref name="destination"/>; advances tx_cnt.</summary>
    public int TakeToSend(Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length && _toSend.TryPeek(out var chunk))
        {
            int n = Math.Min(chunk.Length - _toSendOffset, destination.Length - done);
            chunk.AsSpan(_toSendOffset, n).CopyTo(destination[done..]);
            done += n;
            _toSendOffset += n;
            if (_toSendOffset == chunk.Length)
            {
                _toSend.Dequeue();
                _toSendOffset = 0;
            }
        }

        BytesToSend -= done;
        SentCount += (uint)done;
        return done;
    }

    /// <summary>Forgets bytes the host wrote that can no longer be sent.</summary>
    public void DiscardToSend()
    {
        BytesToSend = 0;
        _toSend.Clear();
        _toSendOffset = 0;
    }
}

/// <summary>
/// A wake-up for tasks waiting on state guarded by a lock: take <see cref="WaitTask"/> under the lock after finding
/// nothing to do, await it outside; <see cref="Pulse"/> (under the lock) wakes every waiter. Not thread-safe by itself.
/// </summary>
internal sealed class AsyncGate
{
    private TaskCompletionSource _waiters = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _taken;

    /// <summary>Completes at the next <see cref="Pulse"/>.</summary>
    public Task WaitTask
    {
        get
        {
            _taken = true;
            return _waiters.Task;
        }
    }

    /// <summary>Wakes every task waiting on <see cref="WaitTask"/>.</summary>
    public void Pulse()
    {
        if (!_taken)
        {
            return;
        }

        var waiters = _waiters;
        _waiters = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _taken = false;
        waiters.TrySetResult();
    }
}
