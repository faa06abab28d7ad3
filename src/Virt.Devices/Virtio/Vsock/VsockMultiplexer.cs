namespace Virt.Devices.Virtio;

/// <summary>
/// The connection state machine of the virtio-vsock device (virtio 1.2, section 5.10.6), apart from the queues: it
/// takes packets the driver sent (already checked by <see cref="VsockPacketParser"/>), produces the packets for the
/// guest's receive buffers, and serves the host's streams and listeners.
/// </summary>
/// <remarks>
/// <para>
/// One lock guards everything. Packets for the guest are produced on demand, when the device holds a receive buffer:
/// RST answers to packets without a connection first (a bounded queue), then the connections with something to send
/// in turn (control packets, data within the guest's credit, SHUTDOWN after the data). Every packet carries the
/// connection's buf_alloc and fwd_cnt.
/// </para>
/// <para>
/// Flow control: the guest may have at most <see cref="BufferAllocation"/> bytes unread by the host on a connection;
/// a packet beyond that credit aborts the connection (RST, logged). The host's writes wait while
/// <see cref="SendBufferLimit"/> bytes are queued; queued bytes go to the guest only within the credit it
/// advertised.
/// </para>
/// <para>Failures: nothing the guest sends throws; refused packets are reported through the refusal callback.</para>
/// </remarks>
internal sealed class VsockMultiplexer
{
    /// <summary>Our receive buffer per connection (buf_alloc).</summary>
    public const uint BufferAllocation = 256 * 1024;

    /// <summary>Host bytes queued per connection before writes wait.</summary>
    public const int SendBufferLimit = 256 * 1024;

    /// <summary>Connections at once; requests beyond are refused.</summary>
    public const int MaxConnections = 4096;

    /// <summary>Connections waiting for AcceptAsync per listener; requests beyond are refused.</summary>
    public const int MaxBacklog = 128;

    /// <summary>RST answers waiting for a receive buffer; more are dropped.</summary>
    public const int MaxPendingResets = 1024;

    private const uint FirstEphemeralPort = 49152;

    private readonly Lock _sync = new();
    private readonly Dictionary<(uint Local, uint Peer), VsockConnection> _connections = [];
    private readonly Dictionary<uint, VsockListener> _listeners = [];
    private readonly Queue<VsockHeader> _resets = new();
    private readonly Queue<VsockConnection> _ready = new();
    private readonly Action<string> _refused;
    private readonly TimeSpan _linger;
    private Action _wake = static () => { };
    private uint _nextPort = FirstEphemeralPort;

    /// <summary>Creates the state machine for guest <paramref name="guestCid"/>.</summary>
    /// <param name="guestCid">The guest's context id.</param>
    /// <param name="refused">Receives the reason for every packet refused or connection aborted because of the guest.</param>
    /// <param name="linger">How long a connection the host closed waits for the guest's answer before it is reset.</param>
    public VsockMultiplexer(ulong guestCid, Action<string> refused, TimeSpan? linger = null)
    {
        GuestCid = guestCid;
        _refused = refused;
        _linger = linger ?? TimeSpan.FromSeconds(10);
    }

    /// <summary>The guest's context id.</summary>
    public ulong GuestCid { get; }

    /// <summary>Connections in the table.</summary>
    public int ConnectionCount
    {
        get
        {
            lock (_sync)
            {
                return _connections.Count;
            }
        }
    }

    /// <summary>Whether a packet waits for a guest receive buffer.</summary>
    public bool HasPacketForGuest
    {
        get
        {
            lock (_sync)
            {
                return _resets.Count > 0 || _ready.Count > 0;
            }
        }
    }

    /// <summary>Sets what runs when a packet for the guest becomes ready (kicks the receive worker). Never blocks.</summary>
    public void SetWake(Action wake) => Volatile.Write(ref _wake, wake);

    // ---- Packets from the guest ----

    /// <summary>Handles one driver packet: <paramref name="parsed"/> comes from <see cref="VsockPacketParser.Parse"/>.</summary>
    public void HandleFromGuest(in VsockParseResult parsed, ReadOnlySpan<byte> payload)
    {
        lock (_sync)
        {
            switch (parsed.Verdict)
            {
                case VsockVerdict.Drop:
                    _refused($"dropped a packet: {parsed.Reason}");
                    break;
                case VsockVerdict.Reset:
                    _refused($"reset: {parsed.Reason}");
                    AbortLocked(parsed.Header, parsed.Reason!);
                    break;
                default:
                    DispatchLocked(parsed.Header, payload);
                    break;
            }
        }
    }

    private void DispatchLocked(in VsockHeader h, ReadOnlySpan<byte> payload)
    {
        if (!_connections.TryGetValue((h.DestinationPort, h.SourcePort), out var c))
        {
            if (h.Op == VsockProtocol.OpRequest)
            {
                AcceptRequestLocked(h);
            }
            else if (h.Op != VsockProtocol.OpRst)
            {
                _refused($"{VsockProtocol.OpName(h.Op)} from guest port {h.SourcePort} to host port {h.DestinationPort} has no connection; answered with RST");
                QueueResetLocked(h);
            }

            return;
        }

        if (c.State == VsockConnectionState.Connecting && h.Op is not (VsockProtocol.OpResponse or VsockProtocol.OpRst))
        {
            ResetLocked(c, $"{VsockProtocol.OpName(h.Op)} on a connection still waiting for RESPONSE");
            return;
        }

        UpdatePeerCreditLocked(c, h);
        switch (h.Op)
        {
            case VsockProtocol.OpRequest:
                ResetLocked(c, $"a second REQUEST for the open connection from guest port {h.SourcePort}");
                break;
            case VsockProtocol.OpResponse:
                OnResponseLocked(c);
                break;
            case VsockProtocol.OpRst:
                OnPeerResetLocked(c);
                break;
            case VsockProtocol.OpShutdown:
                OnShutdownLocked(c, h.Flags);
                break;
            case VsockProtocol.OpRw:
                OnDataLocked(c, payload);
                break;
            case VsockProtocol.OpCreditRequest:
                c.PendingCreditUpdate = true;
                ScheduleLocked(c);
                break;
            default:
                // CREDIT_UPDATE: the credit fields were taken above.
                break;
        }

        // Any packet may have brought credit for data that waits.
        ScheduleLocked(c);
    }

    private void AcceptRequestLocked(in VsockHeader h)
    {
        if (!_listeners.TryGetValue(h.DestinationPort, out var listener))
        {
            // Not a guest error: a connection to a port nobody listens on is refused, as TCP would.
            QueueResetLocked(h);
            return;
        }

        string? refusal = _connections.Count >= MaxConnections ? $"the device already has {MaxConnections} connections"
            : listener.Backlog.Count >= MaxBacklog ? $"{MaxBacklog} connections already wait to be accepted on host port {h.DestinationPort}"
            : null;
        if (refusal is not null)
        {
            _refused($"REQUEST from guest port {h.SourcePort} refused: {refusal}");
            QueueResetLocked(h);
            return;
        }

        var c = new VsockConnection(h.DestinationPort, h.SourcePort, VsockConnectionState.Established)
        {
            PeerBufferAllocation = h.BufferAllocation,
            PeerForwardCount = h.ForwardCount,
            PendingResponse = true,
        };
        _connections.Add((c.LocalPort, c.PeerPort), c);
        ScheduleLocked(c);
        listener.Backlog.Enqueue(c);
        listener.Arrived.Pulse();
    }

    private void UpdatePeerCreditLocked(VsockConnection c, in VsockHeader h)
    {
        // fwd_cnt may only move forward, and never past what was sent (unsigned distances, as the counters wrap).
        uint outstanding = c.SentCount - c.PeerForwardCount;
        uint advance = h.ForwardCount - c.PeerForwardCount;
        if (advance > outstanding)
        {
            _refused($"guest port {c.PeerPort} reported fwd_cnt {h.ForwardCount}, outside [{c.PeerForwardCount}, {c.SentCount}]; credit update ignored");
            return;
        }

        uint before = c.PeerCredit;
        c.PeerForwardCount = h.ForwardCount;
        c.PeerBufferAllocation = h.BufferAllocation;
        if (c.PeerCredit > before)
        {
            c.CreditRequested = false;
        }
    }

    private void OnResponseLocked(VsockConnection c)
    {
        if (c.State != VsockConnectionState.Connecting)
        {
            ResetLocked(c, "RESPONSE on a connection that was not being opened");
            return;
        }

        c.State = VsockConnectionState.Established;
        c.Connected.TrySetResult();
        ScheduleLocked(c);
    }

    private void OnPeerResetLocked(VsockConnection c)
    {
        RemoveLocked(c);
        if (!c.PeerDoneSending)
        {
            c.ResetReason = c.Connected.Task.IsCompleted
                ? "the guest reset the connection"
                : $"the guest refused the connection to vsock port {c.PeerPort}: no program listens there";
        }

        c.PeerDoneSending = true;
        c.PeerDoneReceiving = true;
        WakeLocked(c);
    }

    private void OnShutdownLocked(VsockConnection c, uint flags)
    {
        if ((flags & VsockProtocol.ShutdownSend) != 0)
        {
            c.PeerDoneSending = true;
        }

        if ((flags & VsockProtocol.ShutdownReceive) != 0)
        {
            c.PeerDoneReceiving = true;
            c.DiscardToSend();
        }

        if ((c.PeerDoneSending && c.PeerDoneReceiving) || c.State == VsockConnectionState.Closing)
        {
            // The guest closed (or answered our close): it waits for an RST to finish. Data received stays readable.
            RemoveLocked(c);
            QueueResetLocked(c);
        }

        WakeLocked(c);
        ScheduleLocked(c);
    }

    private void OnDataLocked(VsockConnection c, ReadOnlySpan<byte> payload)
    {
        if (c.State == VsockConnectionState.Closing)
        {
            // The host closed its stream and the guest has not seen the SHUTDOWN yet: nobody reads this.
            c.Receive(payload);
            c.DiscardReceived();
            return;
        }

        if (c.PeerDoneSending)
        {
            ResetLocked(c, $"guest port {c.PeerPort} sent data after it shut down sending");
            return;
        }

        if ((long)c.ReceivedBytes + payload.Length > BufferAllocation)
        {
            ResetLocked(c, $"guest port {c.PeerPort} overran its credit: {payload.Length} byte(s) on top of {c.ReceivedBytes} unread, buf_alloc {BufferAllocation}");
            return;
        }

        c.Receive(payload);
        c.Readable.Pulse();
    }

    /// <summary>Answers a packet the parser refused with RST and aborts its connection, if it has one.</summary>
    private void AbortLocked(in VsockHeader h, string reason)
    {
        if (_connections.TryGetValue((h.DestinationPort, h.SourcePort), out var c))
        {
            ResetLocked(c, reason);
        }
        else if (h.Op != VsockProtocol.OpRst)
        {
            QueueResetLocked(h);
        }
    }

    // ---- Packets for the guest ----

    /// <summary>
    /// Writes the next packet for the guest (header and payload) into <paramref name="buffer"/>, whose length is the
    /// room in the guest's receive buffer (at least <see cref="VsockHeader.Size"/>). Returns false when nothing waits.
    /// </summary>
    public bool TryTakePacketForGuest(Span<byte> buffer, out int length)
    {
        length = 0;
        if (buffer.Length < VsockHeader.Size)
        {
            return false;
        }

        lock (_sync)
        {
            if (_resets.TryDequeue(out var reset))
            {
                reset.Write(buffer);
                length = VsockHeader.Size;
                return true;
            }

            while (_ready.TryDequeue(out var c))
            {
                c.Scheduled = false;
                if (TryBuildLocked(c, buffer, out length))
                {
                    ScheduleLocked(c);
                    return true;
                }
            }

            return false;
        }
    }

    private bool TryBuildLocked(VsockConnection c, Span<byte> buffer, out int length)
    {
        length = VsockHeader.Size;
        if (c.State == VsockConnectionState.Closed)
        {
            return false;
        }

        if (c.PendingRequest)
        {
            c.PendingRequest = false;
            WriteHeaderLocked(c, buffer, VsockProtocol.OpRequest, 0, 0);
            return true;
        }

        if (c.PendingResponse)
        {
            c.PendingResponse = false;
            WriteHeaderLocked(c, buffer, VsockProtocol.OpResponse, 0, 0);
            return true;
        }

        if (c.BytesToSend > 0 && !c.PeerDoneReceiving)
        {
            if (c.PeerCredit > 0)
            {
                return TryBuildDataLocked(c, buffer, out length);
            }

            if (!c.CreditRequested)
            {
                // The guest's buffer is full: ask for an update in case one was lost.
                c.CreditRequested = true;
                WriteHeaderLocked(c, buffer, VsockProtocol.OpCreditRequest, 0, 0);
                return true;
            }
        }

        if (c.PendingShutdown != 0 && (c.BytesToSend == 0 || c.PeerDoneReceiving))
        {
            uint flags = c.PendingShutdown;
            c.PendingShutdown = 0;
            WriteHeaderLocked(c, buffer, VsockProtocol.OpShutdown, 0, flags);
            return true;
        }

        if (c.PendingCreditUpdate)
        {
            WriteHeaderLocked(c, buffer, VsockProtocol.OpCreditUpdate, 0, 0);
            return true;
        }

        return false;
    }

    private bool TryBuildDataLocked(VsockConnection c, Span<byte> buffer, out int length)
    {
        int room = Math.Min(buffer.Length - VsockHeader.Size, VsockProtocol.MaxPayload);
        int n = (int)Math.Min(Math.Min((uint)c.BytesToSend, c.PeerCredit), (uint)room);
        n = c.TakeToSend(buffer.Slice(VsockHeader.Size, n));
        WriteHeaderLocked(c, buffer, VsockProtocol.OpRw, (uint)n, 0);
        length = VsockHeader.Size + n;
        c.Writable.Pulse();
        return true;
    }

    private void WriteHeaderLocked(VsockConnection c, Span<byte> buffer, ushort op, uint length, uint flags)
    {
        new VsockHeader(VsockProtocol.HostCid, GuestCid, c.LocalPort, c.PeerPort, length, VsockProtocol.TypeStream, op, flags, BufferAllocation, c.ForwardCount)
            .Write(buffer);
        c.ReportedForwardCount = c.ForwardCount;
        c.PendingCreditUpdate = false;
    }

    private static bool HasWorkLocked(VsockConnection c) =>
        c.State != VsockConnectionState.Closed
        && (c.PendingRequest || c.PendingResponse || c.PendingCreditUpdate
            || (c.PendingShutdown != 0 && (c.BytesToSend == 0 || c.PeerDoneReceiving))
            || (c.BytesToSend > 0 && !c.PeerDoneReceiving && (c.PeerCredit > 0 || !c.CreditRequested)));

    private void ScheduleLocked(VsockConnection c)
    {
        if (!c.Scheduled && HasWorkLocked(c))
        {
            c.Scheduled = true;
            _ready.Enqueue(c);
            Volatile.Read(ref _wake)();
        }
    }

    private void QueueResetLocked(in VsockHeader to)
    {
        if (_resets.Count >= MaxPendingResets)
        {
            _refused($"RST for guest port {to.SourcePort} dropped: {MaxPendingResets} answers already wait for receive buffers");
            return;
        }

        _resets.Enqueue(new VsockHeader(VsockProtocol.HostCid, GuestCid, to.DestinationPort, to.SourcePort, 0, VsockProtocol.TypeStream, VsockProtocol.OpRst, 0, 0, 0));
        Volatile.Read(ref _wake)();
    }

    private void QueueResetLocked(VsockConnection c) =>
        QueueResetLocked(new VsockHeader(GuestCid, VsockProtocol.HostCid, c.PeerPort, c.LocalPort, 0, VsockProtocol.TypeStream, VsockProtocol.OpRst, 0, 0, 0));

    /// <summary>Aborts <paramref name="c"/> because of the guest: logged, RST sent, host stream fails.</summary>
    private void ResetLocked(VsockConnection c, string reason)
    {
        _refused($"connection host port {c.LocalPort} <-> guest port {c.PeerPort} reset: {reason}");
        RemoveLocked(c);
        QueueResetLocked(c);
        c.ResetReason ??= $"the connection was reset: {reason}";
        c.PeerDoneSending = true;
        c.PeerDoneReceiving = true;
        WakeLocked(c);
    }

    private void RemoveLocked(VsockConnection c)
    {
        if (c.State != VsockConnectionState.Closed)
        {
            _connections.Remove((c.LocalPort, c.PeerPort));
            c.State = VsockConnectionState.Closed;
        }
    }

    private static void WakeLocked(VsockConnection c)
    {
        if (c.ResetReason is { } reason && !c.Connected.Task.IsCompleted)
        {
            c.Connected.TrySetException(new IOException(reason));
        }

        c.Readable.Pulse();
        c.Writable.Pulse();
    }

    // ---- The host side ----

    /// <summary>Starts listening on host port <paramref name="port"/>.</summary>
    public VsockListener Listen(uint port)
    {
        lock (_sync)
        {
            if (_listeners.ContainsKey(port))
            {
                throw new InvalidOperationException($"Host vsock port {port} already has a listener; dispose it first or pick another port.");
            }

            var listener = new VsockListener(this, port);
            _listeners.Add(port, listener);
            return listener;
        }
    }

    internal void StopListening(VsockListener listener)
    {
        lock (_sync)
        {
            if (_listeners.TryGetValue(listener.Port, out var current) && ReferenceEquals(current, listener))
            {
                _listeners.Remove(listener.Port);
            }

            listener.Stopped = true;
            while (listener.Backlog.TryDequeue(out var c))
            {
                RemoveLocked(c);
                QueueResetLocked(c);
            }

            listener.Arrived.Pulse();
        }
    }

    internal async ValueTask<VsockStream> AcceptAsync(VsockListener listener, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_sync)
            {
                ObjectDisposedException.ThrowIf(listener.Stopped, listener);
                while (listener.Backlog.TryDequeue(out var c))
                {
                    if (c.State != VsockConnectionState.Closed || c.ReceivedBytes > 0)
                    {
                        return new VsockStream(this, c);
                    }
                }

                wait = listener.Arrived.WaitTask;
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Opens a connection to guest port <paramref name="port"/>; completes when the guest accepts it.</summary>
    public async Task<VsockStream> ConnectAsync(uint port, CancellationToken cancellationToken)
    {
        VsockConnection c;
        lock (_sync)
        {
            if (_connections.Count >= MaxConnections)
            {
                throw new IOException($"The vsock device already has {MaxConnections} connections; dispose some streams first.");
            }

            uint local = _nextPort;
            while (_connections.ContainsKey((local, port)) || _listeners.ContainsKey(local))
            {
                local = local == uint.MaxValue - 1 ? FirstEphemeralPort : local + 1;
            }

            _nextPort = local == uint.MaxValue - 1 ? FirstEphemeralPort : local + 1;
            c = new VsockConnection(local, port, VsockConnectionState.Connecting) { PendingRequest = true };
            _connections.Add((local, port), c);
            ScheduleLocked(c);
        }

        try
        {
            await c.Connected.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            lock (_sync)
            {
                if (c.State != VsockConnectionState.Closed)
                {
                    bool requestSent = !c.PendingRequest;
                    RemoveLocked(c);
                    if (requestSent)
                    {
                        QueueResetLocked(c);
                    }
                }
            }

            throw;
        }

        return new VsockStream(this, c);
    }

    internal async ValueTask<int> ReadAsync(VsockConnection c, Memory<byte> destination, CancellationToken cancellationToken)
    {
        if (destination.IsEmpty)
        {
            return 0;
        }

        while (true)
        {
            Task wait;
            lock (_sync)
            {
                if (c.ReceivedBytes > 0)
                {
                    int n = c.TakeReceived(destination.Span);
                    if (c.State != VsockConnectionState.Closed && c.ForwardCount - c.ReportedForwardCount >= BufferAllocation / 2)
                    {
                        c.PendingCreditUpdate = true;
                        ScheduleLocked(c);
                    }

                    return n;
                }

                if (c.ResetReason is { } reason)
                {
                    throw new IOException(reason);
                }

                if (c.PeerDoneSending)
                {
                    return 0;
                }

                wait = c.Readable.WaitTask;
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    internal async ValueTask WriteAsync(VsockConnection c, ReadOnlyMemory<byte> source, CancellationToken cancellationToken)
    {
        while (!source.IsEmpty)
        {
            Task wait;
            lock (_sync)
            {
                ThrowIfCannotSendLocked(c);
                int room = SendBufferLimit - c.BytesToSend;
                if (room > 0)
                {
                    int n = Math.Min(room, source.Length);
                    c.QueueToSend(source.Span[..n]);
                    source = source[n..];
                    ScheduleLocked(c);
                    continue;
                }

                wait = c.Writable.WaitTask;
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private static void ThrowIfCannotSendLocked(VsockConnection c)
    {
        if (c.ResetReason is { } reason)
        {
            throw new IOException(reason);
        }

        if (c.HostDoneSending)
        {
            throw new InvalidOperationException("Writes on this vsock stream were completed (CompleteWrites or Dispose); no more data can be sent.");
        }

        if (c.PeerDoneReceiving || c.State == VsockConnectionState.Closed)
        {
            throw new IOException($"The guest no longer receives on vsock port {c.PeerPort} (it shut the connection down).");
        }
    }

    /// <summary>Waits until every byte the host wrote was handed to the guest (or the connection ended).</summary>
    internal async ValueTask FlushAsync(VsockConnection c, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_sync)
            {
                if (c.BytesToSend == 0 || c.State == VsockConnectionState.Closed || c.PeerDoneReceiving)
                {
                    return;
                }

                wait = c.Writable.WaitTask;
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The host writes no more: SHUTDOWN(SEND) follows the queued data.</summary>
    internal void CompleteWrites(VsockConnection c)
    {
        lock (_sync)
        {
            if (c.HostDoneSending || c.State == VsockConnectionState.Closed)
            {
                return;
            }

            c.HostDoneSending = true;
            c.PendingShutdown |= VsockProtocol.ShutdownSend;
            ScheduleLocked(c);
        }
    }

    /// <summary>The host closed its stream: queued data, then SHUTDOWN(both); RST after the linger time without an answer.</summary>
    internal void Close(VsockConnection c)
    {
        lock (_sync)
        {
            c.HostDoneSending = true;
            if (c.State is VsockConnectionState.Closed or VsockConnectionState.Closing)
            {
                return;
            }

            c.State = VsockConnectionState.Closing;
            c.DiscardReceived();
            c.PendingShutdown = VsockProtocol.ShutdownBoth;
            ScheduleLocked(c);
        }

        _ = LingerAsync(c);
    }

    private async Task LingerAsync(VsockConnection c)
    {
        await Task.Delay(_linger).ConfigureAwait(false);
        lock (_sync)
        {
            if (c.State == VsockConnectionState.Closing)
            {
                RemoveLocked(c);
                QueueResetLocked(c);
            }
        }
    }

    /// <summary>The driver reset the device: every connection ends; listeners stay.</summary>
    public void ResetAll()
    {
        lock (_sync)
        {
            foreach (var c in _connections.Values.ToArray())
            {
                RemoveLocked(c);
                c.ResetReason ??= "the guest reset its vsock device";
                c.PeerDoneSending = true;
                c.PeerDoneReceiving = true;
                WakeLocked(c);
            }

            foreach (var l in _listeners.Values)
            {
                l.Backlog.Clear();
            }

            _resets.Clear();
            _ready.Clear();
        }
    }
}
