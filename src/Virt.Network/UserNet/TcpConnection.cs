using System.Buffers;
using System.Net;
using System.Net.Sockets;

namespace Virt.Network.UserNet;

/// <summary>
/// The four addresses of a TCP connection as the guest sees it: its own end and the remote end (IPv4 addresses
/// as IPv4-mapped, see <see cref="Ip6"/>).
/// </summary>
internal readonly record struct TcpKey(UInt128 GuestIp, ushort GuestPort, UInt128 RemoteIp, ushort RemotePort)
{
    public bool IsIpv6 => !Ip6.IsMapped(GuestIp);

    /// <summary>Largest payload per segment to the guest over this connection's IP version.</summary>
    public int MaxSegment => IsIpv6 ? Proto.MaxSegment6 : Proto.MaxSegment;
}

/// <summary>Where a connection's handshake is; closing is tracked by the FIN flags beside it.</summary>
internal enum TcpPhase
{
    /// <summary>The guest sent SYN; the host socket is connecting (outbound).</summary>
    Connecting,

    /// <summary>The host connected and the SYN-ACK went to the guest; waiting for its ACK (outbound).</summary>
    SynReceived,

    /// <summary>A host client connected to a forward; our SYN went to the guest (inbound).</summary>
    SynSent,

    /// <summary>Both ends synchronized; data flows, each direction closes on its own FIN (half close).</summary>
    Established,

    /// <summary>Both directions closed; kept a while to answer retransmitted FINs.</summary>
    TimeWait,

    /// <summary>Gone: removed from the table, host socket closed.</summary>
    Closed,
}

/// <summary>
/// One TCP connection between the guest and a host socket. The guest side is a TCP endpoint run here (sequence
/// numbers, windows, retransmission, FIN/RST); the host side is an ordinary <see cref="Socket"/> moved by two pump
/// tasks. Every method except the pumps runs under the stack's lock.
/// </summary>
internal sealed class TcpConnection
{
    private const int InitialRto = 500;  // ms; the guest may be an interpreted VM, slow to answer
    private const int MaxRto = 30_000;
    private const int MaxRetransmissions = 10;
    private const int TimeWaitMs = 2_000;
    private const int ReadChunk = 64 * 1024; // per socket read or write of a pump (pooled while the pump runs)
    private const int WireReadChunk = 16 * 1024; // per socket read for a guest that takes only wire-size segments

    /// <summary>
    /// Within a NIC's batch of guest frames, data is acknowledged once this much is unacknowledged, else when the batch
    /// ends (delayed ACK, RFC 9293 3.8.6.3: the batch's end comes long before the 500 ms bound; a 64 KiB segment
    /// from a segmentation offload is acknowledged at once).
    /// </summary>
    private const int DelayedAckBytes = 64 * 1024;

    private readonly UserModeNetwork _net;
    private readonly Socket _socket;
    private readonly ByteQueue _toGuest;
    private readonly ByteQueue _toHost;
    private readonly AsyncSignal _readRoom = new();
    private readonly AsyncSignal _writeWork = new();
    private readonly uint _iss;
    private uint _sndUna;
    private uint _sndNxt;
    private uint _sndMax;
    private uint _dataSeq;   // sequence number of _toGuest's first byte
    private int _sndWnd;
    private uint _rcvNxt;
    private int _mss = 536;  // RFC 1122 default until the guest's SYN says otherwise
    private int _advertised;  // bytes of window last advertised (before scaling)
    private int _sndShift;    // the guest's window scale: its window fields are shifted left by this
    private int _rcvShift;    // ours: our window fields are the free space shifted right by this
    private readonly int _ourShift;
    private bool _scalingAgreed;
    private bool _guestFin;
    private bool _hostEof;
    private bool _finSent;
    private bool _finAcked;
    private bool _hostShutdown;
    private uint _finSeq;
    private long _timerDue;  // Environment.TickCount64 deadline of the retransmission, connect or time-wait timer; 0 for none
    private int _rto = InitialRto;
    private int _retransmissions;
    private long _bytes;
    private uint _ackSent;    // the acknowledgment number the last segment to the guest carried
    private bool _ackDelayed; // waiting in the stack's list for the NIC's batch to end

    private TcpConnection(UserModeNetwork net, TcpKey key, Socket socket, TcpPhase phase)
    {
        _net = net;
        Key = key;
        _socket = socket;
        Phase = phase;
        _toGuest = new ByteQueue(net.Options.TcpBufferSize);
        _toHost = new ByteQueue(net.Options.TcpBufferSize);
        _iss = (uint)Random.Shared.Next();
        _sndUna = _sndNxt = _sndMax = _iss;
        _dataSeq = _iss + 1;
        _ourShift = ShiftFor(net.Options.TcpBufferSize);
    }

    public TcpKey Key { get; }

    public TcpPhase Phase { get; private set; }

    /// <summary>Outbound: the guest's SYN. <see cref="Connect"/> starts the host connect; the SYN-ACK goes out once it succeeds.</summary>
    public static TcpConnection Outbound(UserModeNetwork net, TcpKey key, in TcpSegment syn, AddressFamily family)
    {
        var socket = new Socket(family, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var c = new TcpConnection(net, key, socket, TcpPhase.Connecting);
        c._rcvNxt = syn.Sequence + 1;
        c.TakeSynOptions(syn); // our SYN-ACK carries the window scale option exactly when the guest's SYN did
        c._timerDue = Environment.TickCount64 + (long)net.Options.TcpConnectTimeout.TotalMilliseconds;
        return c;
    }

    /// <summary>Starts connecting the host socket (after the connection is in the stack's table: a refusal may come back at once).</summary>
    public void Connect(IPEndPoint hostEndPoint) => _ = ConnectAsync(hostEndPoint);

    /// <summary>Inbound: a host client connected to a forward; sends our SYN to the guest.</summary>
    public static TcpConnection Inbound(UserModeNetwork net, TcpKey key, Socket accepted)
    {
        accepted.NoDelay = true;
        var c = new TcpConnection(net, key, accepted, TcpPhase.SynSent);
        c._sndNxt = c._sndMax = c._iss + 1;
        c.SendSyn();
        c._timerDue = Environment.TickCount64 + InitialRto;
        return c;
    }

    /// <summary>A segment from the guest for this connection.</summary>
    public void OnSegment(in TcpSegment s)
    {
        if (s.Has(TcpSegment.Rst))
        {
            OnReset(s);
            return;
        }

        switch (Phase)
        {
            case TcpPhase.Connecting:
                return; // a retransmitted SYN while the host connects: the SYN-ACK follows the connect

            case TcpPhase.SynSent:
                OnSynAck(s);
                return;

            case TcpPhase.SynReceived when s.Has(TcpSegment.Syn):
                if (s.Sequence + 1 == _rcvNxt)
                {
                    SendSynAck(); // the guest did not get our SYN-ACK
                }

                return;

            case TcpPhase.Closed:
                return;
        }

        if (s.Has(TcpSegment.Syn))
        {
            SendAck(); // a SYN in a synchronized connection: challenge ACK (RFC 5961), nothing changes
            return;
        }

        if (!s.Has(TcpSegment.Ack))
        {
            return;
        }

        if (!OnAck(s))
        {
            return;
        }

        OnData(s);
        if (Phase != TcpPhase.Closed)
        {
            SendPending();
            CheckDone();
        }
    }

    /// <summary>The timer: retransmission, zero-window probes, connect and time-wait expiry.</summary>
    public void OnTick(long now)
    {
        if (_timerDue == 0 || now < _timerDue)
        {
            return;
        }

        switch (Phase)
        {
            case TcpPhase.Connecting:
                Abort(sendReset: true);
                return;
            case TcpPhase.TimeWait:
                Close(reset: false);
                return;
        }

        if (++_retransmissions > MaxRetransmissions)
        {
            Abort(sendReset: true);
            return;
        }

        _rto = Math.Min(_rto * 2, MaxRto);
        _timerDue = now + _rto;
        switch (Phase)
        {
            case TcpPhase.SynSent:
                SendSyn();
                return;
            case TcpPhase.SynReceived:
                SendSynAck();
                return;
        }

        if (_sndMax != _sndUna)
        {
            // Go back to the oldest unacknowledged byte (no SACK): everything after it is sent again as the window allows.
            _sndNxt = _sndUna;
            if (_finSent && !_finAcked)
            {
                _finSent = false;
            }

            _net.CountRetransmitTimeout(probe: _sndWnd == 0);
            SendPending(probe: _sndWnd == 0);
        }
        else if (_sndWnd == 0 && _toGuest.Count > (int)(_sndNxt - _dataSeq))
        {
            _net.CountRetransmitTimeout(probe: true);
            SendPending(probe: true); // the guest's window is shut: probe with one byte
        }
        else
        {
            _timerDue = 0;
        }
    }

    /// <summary>Closes the connection from the host side (the stack is disposing): RST to the guest, host socket closed.</summary>
    public void Abort(bool sendReset)
    {
        if (Phase == TcpPhase.Closed)
        {
            return;
        }

        if (sendReset && Phase != TcpPhase.Connecting)
        {
            Emit(TcpSegment.Rst | TcpSegment.Ack, _sndNxt, []);
        }
        else if (sendReset)
        {
            _net.SendReset(Key, 0, _rcvNxt, withAck: true); // connect failed or timed out: refuse the guest's SYN
        }

        Close(reset: true);
    }

    /// <summary>
    /// Takes the guest's SYN options: its MSS, and window scaling (RFC 7323), which is on only when both SYNs carry
    /// the option (the stack's SYN to a forwarded guest always does; its SYN-ACK does when the guest's SYN did). The
    /// window of a SYN is never scaled. SACK-permitted and timestamps are not echoed, so the guest sends neither SACK
    /// blocks nor timestamps (any it sends anyway are skipped as options).
    /// </summary>
    private void TakeSynOptions(in TcpSegment syn)
    {
        _mss = syn.Mss == 0 ? 536 : Math.Clamp((int)syn.Mss, 64, Key.MaxSegment);
        _sndWnd = syn.Window;
        bool scaling = syn.WindowScale >= 0;
        _scalingAgreed = scaling;
        _sndShift = scaling ? syn.WindowScale : 0;
        _rcvShift = scaling ? _ourShift : 0;
    }

    /// <summary>The smallest shift that lets a 16-bit window field cover <paramref name="bufferSize"/> bytes.</summary>
    private static int ShiftFor(int bufferSize)
    {
        int shift = 0;
        while ((bufferSize >> shift) > ushort.MaxValue && shift < 14)
        {
            shift++;
        }

        return shift;
    }

    private async Task ConnectAsync(IPEndPoint endPoint)
    {
        bool ok;
        try
        {
            await _socket.ConnectAsync(endPoint).ConfigureAwait(false);
            ok = true;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            ok = false;
        }

        _net.Locked(() =>
        {
            if (Phase != TcpPhase.Connecting)
            {
                return;
            }

            if (!ok)
            {
                Abort(sendReset: true);
                return;
            }

            Phase = TcpPhase.SynReceived;
            _sndNxt = _sndMax = _iss + 1;
            _rto = InitialRto;
            _timerDue = Environment.TickCount64 + _rto;
            SendSynAck();
        });
    }

    private void OnSynAck(in TcpSegment s)
    {
        if (!s.Has(TcpSegment.Syn) || !s.Has(TcpSegment.Ack))
        {
            return;
        }

        if (s.Acknowledgment != _iss + 1)
        {
            _net.SendReset(Key, s.Acknowledgment, 0, withAck: false); // RFC 793: a bad ACK in SYN-SENT gets a reset and is otherwise ignored
            return;
        }

        _rcvNxt = s.Sequence + 1;
        TakeSynOptions(s); // our SYN always offers window scaling
        _sndUna = _iss + 1;
        Establish();
        SendAck();
    }

    private void Establish()
    {
        Phase = TcpPhase.Established;
        _retransmissions = 0;
        _rto = InitialRto;
        _timerDue = 0;
        _ = ReadPumpAsync();
        _ = WritePumpAsync();
    }

    private void OnReset(in TcpSegment s)
    {
        // RFC 5961: only a reset at the expected sequence number (or, before we know it, acknowledging our SYN) counts.
        bool acceptable = Phase switch
        {
            TcpPhase.SynSent => s.Has(TcpSegment.Ack) && s.Acknowledgment == _iss + 1,
            TcpPhase.Connecting or TcpPhase.SynReceived => s.Sequence == _rcvNxt || s.Sequence + 1 == _rcvNxt,
            _ => s.Sequence == _rcvNxt,
        };
        if (acceptable)
        {
            Close(reset: true);
        }
        else if (Phase is TcpPhase.Established or TcpPhase.TimeWait && SeqBetween(s.Sequence, _rcvNxt, _rcvNxt + (uint)Window()))
        {
            SendAck(); // in the window but not exact: challenge ACK
        }
    }

    /// <summary>Processes the acknowledgment and window; false when the segment is to be dropped.</summary>
    private bool OnAck(in TcpSegment s)
    {
        uint ack = s.Acknowledgment;
        if (SeqGreater(ack, _sndMax))
        {
            SendAck(); // acknowledges something never sent
            return false;
        }

        if (Phase == TcpPhase.SynReceived)
        {
            if (ack != _iss + 1)
            {
                _net.SendReset(Key, ack, 0, withAck: false);
                return false;
            }

            _sndUna = _iss + 1;
            Establish();
        }

        if (SeqGreater(ack, _sndUna))
        {
            int acked = (int)Math.Min(ack - _dataSeq, (uint)_toGuest.Count);
            if (ack - _dataSeq <= int.MaxValue && acked > 0)
            {
                _toGuest.Discard(acked);
                _dataSeq += (uint)acked;
                _readRoom.Set();
            }

            if (_finSent && ack == _finSeq + 1)
            {
                _finAcked = true;
            }

            _sndUna = ack;
            if (SeqGreater(ack, _sndNxt))
            {
                _sndNxt = ack;
            }

            _retransmissions = 0;
            _rto = InitialRto;
            _timerDue = _sndUna == _sndMax ? 0 : Environment.TickCount64 + _rto;
        }

        _sndWnd = s.Window << _sndShift;
        return true;
    }

    private void OnData(in TcpSegment s)
    {
        var data = s.Payload;
        bool fin = s.Has(TcpSegment.Fin);
        if (data.IsEmpty && !fin)
        {
            return;
        }

        int skip = (int)(_rcvNxt - s.Sequence);
        if (skip < 0 || skip > data.Length || _guestFin)
        {
            // Out of order (no reassembly: the guest sends it again), entirely old, or after the guest's FIN.
            SendAck();
            return;
        }

        data = data[skip..];
        if (!Account(data.Length))
        {
            return;
        }

        int accepted = _toHost.Write(data);
        _rcvNxt += (uint)accepted;
        if (accepted > 0)
        {
            _writeWork.Set();
        }

        bool finNow = fin && accepted == data.Length;
        if (finNow)
        {
            _rcvNxt++;
            _guestFin = true;
            _writeWork.Set(); // the pump shuts the host socket's send side once the data is written
        }

        if (finNow || accepted < data.Length || !_net.Batched || (int)(_rcvNxt - _ackSent) >= DelayedAckBytes)
        {
            SendAck(); // a FIN, a full buffer, a frame on its own, or enough data: acknowledged now
        }
        else if (!_ackDelayed)
        {
            _ackDelayed = true;
            _net.DelayAck(this);
        }
    }

    /// <summary>The NIC's batch ended (or the timer ticked): the acknowledgment held back goes out unless a segment carried it already.</summary>
    public void SendDelayedAck()
    {
        _ackDelayed = false;
        if (Phase is TcpPhase.Established or TcpPhase.TimeWait && _ackSent != _rcvNxt)
        {
            SendAck();
        }
    }

    /// <summary>Counts bytes against the connection's and the network's limits; resets the connection when one is exceeded.</summary>
    private bool Account(int bytes)
    {
        _bytes += bytes;
        if ((_net.Options.MaxBytesPerConnection is long max && _bytes > max) || !_net.AccountBytes(bytes))
        {
            _net.CountLimitRefusal();
            Abort(sendReset: true);
            return false;
        }

        return true;
    }

    /// <summary>Sends what the guest's window allows, then our FIN once the host's data is all out.</summary>
    private void SendPending(bool probe = false)
    {
        if (Phase != TcpPhase.Established)
        {
            return;
        }

        int limit = _net.SegmentLimit(Key, _mss);
        while (true)
        {
            int offset = (int)(_sndNxt - _dataSeq);
            int unsent = _toGuest.Count - offset;
            int window = Math.Max(_sndWnd, probe ? 1 : 0) - (int)(_sndNxt - _sndUna);
            if (unsent <= 0 || window <= 0 || offset < 0)
            {
                break;
            }

            int n = Math.Min(Math.Min(unsent, window), limit);
            _advertised = Window();
            _ackSent = _rcvNxt;
            _net.EmitData(Key, _sndNxt, _rcvNxt, TcpSegment.Ack | TcpSegment.Psh, (ushort)(_advertised >> _rcvShift), _toGuest, offset, n, _mss);
            _net.CountBytesToGuest(n);
            Advance((uint)n);
            probe = false;
        }

        if (_hostEof && !_finSent && (int)(_sndNxt - _dataSeq) == _toGuest.Count)
        {
            _finSeq = _sndNxt;
            _finSent = true;
            Emit(TcpSegment.Fin | TcpSegment.Ack, _sndNxt, []);
            Advance(1);
        }
    }

    private void Advance(uint count)
    {
        _sndNxt += count;
        if (SeqGreater(_sndNxt, _sndMax))
        {
            _sndMax = _sndNxt;
        }

        if (_timerDue == 0)
        {
            _timerDue = Environment.TickCount64 + _rto;
        }
    }

    /// <summary>Both directions closed: the guest's FIN reached the host, ours was acknowledged.</summary>
    private void CheckDone()
    {
        if (Phase == TcpPhase.Established && _guestFin && _hostShutdown && _finAcked)
        {
            Phase = TcpPhase.TimeWait;
            _timerDue = Environment.TickCount64 + TimeWaitMs;
            _net.ReleaseSocket(_socket, reset: false);
        }
    }

    private void Close(bool reset)
    {
        if (Phase == TcpPhase.Closed)
        {
            return;
        }

        bool socketOpen = Phase != TcpPhase.TimeWait;
        Phase = TcpPhase.Closed;
        _timerDue = 0;
        _net.Remove(this);
        if (socketOpen)
        {
            _net.ReleaseSocket(_socket, reset);
        }

        _readRoom.Set();
        _writeWork.Set();
    }

    private async Task ReadPumpAsync()
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ReadChunk);
        try
        {
            await ReadLoopAsync(buffer).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task WritePumpAsync()
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ReadChunk);
        try
        {
            await WriteLoopAsync(buffer).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task ReadLoopAsync(byte[] buffer)
    {
        while (true)
        {
            int room = 0;
            _net.Locked(() => room = Phase == TcpPhase.Established && !_hostEof ? _toGuest.Free : -1);
            if (room < 0)
            {
                return;
            }

            // A guest taking 64 KiB segments gets reads of one such segment; one taking wire-size frames gets smaller
            // bursts. Either way a read asks for whole segments of the guest's MSS, so a stream the host sends in bulk
            // reaches the guest in full segments only, with no short one at the end of every read (sender-side silly
            // window avoidance, RFC 1122 4.2.3.4: a short segment costs the guest as much as a full one). A read that
            // returns less is sent as it is: nothing waits for more (the host socket has no Nagle delay either).
            int limit = _net.SegmentLimit(Key, _mss);
            int chunk = limit > _mss ? Math.Min(limit, ReadChunk) : Math.Max(WireReadChunk / _mss, 1) * _mss;
            if (room < Math.Min(chunk, _toGuest.Capacity / 4))
            {
                // Wait until a good part of the buffer is free: reading each acknowledged segment's worth on its own
                // would cost a socket read and a pass through the stack per segment.
                await _readRoom.WaitAsync().ConfigureAwait(false);
                continue;
            }

            int n;
            try
            {
                int want = Math.Min(room, chunk);
                n = await _socket.ReceiveAsync(buffer.AsMemory(0, want >= _mss ? want / _mss * _mss : want), SocketFlags.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                _net.Locked(() => Abort(sendReset: true));
                return;
            }

            _net.Locked(() =>
            {
                if (Phase != TcpPhase.Established)
                {
                    return;
                }

                if (n == 0)
                {
                    _hostEof = true;
                }
                else if (Account(n))
                {
                    _toGuest.Write(buffer.AsSpan(0, n));
                }

                SendPending();
                CheckDone();
            });
            if (n == 0)
            {
                return;
            }
        }
    }

    private async Task WriteLoopAsync(byte[] buffer)
    {
        while (true)
        {
            await _writeWork.WaitAsync().ConfigureAwait(false);
            while (true)
            {
                int n = 0;
                bool shutdown = false;
                bool stop = false;
                _net.Locked(() =>
                {
                    stop = Phase != TcpPhase.Established;
                    n = stop ? 0 : _toHost.Peek(0, buffer);
                    shutdown = !stop && n == 0 && _guestFin && !_hostShutdown;
                });
                if (stop)
                {
                    return;
                }

                if (shutdown)
                {
                    try
                    {
                        _socket.Shutdown(SocketShutdown.Send);
                    }
                    catch (Exception e) when (e is SocketException or ObjectDisposedException)
                    {
                        // The host side went away; the read pump reports it.
                    }

                    _net.Locked(() =>
                    {
                        _hostShutdown = true;
                        CheckDone();
                    });
                    return;
                }

                if (n == 0)
                {
                    break;
                }

                try
                {
                    await _socket.SendAsync(buffer.AsMemory(0, n), SocketFlags.None).ConfigureAwait(false);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    _net.Locked(() => Abort(sendReset: true));
                    return;
                }

                _net.Locked(() =>
                {
                    _toHost.Discard(n);
                    _net.CountBytesToHost(n);
                    if (Phase == TcpPhase.Established && Window() >= _advertised + (2 * _mss))
                    {
                        SendAck(); // window update: the guest may have stopped on a full window
                    }
                });
            }
        }
    }

    /// <summary>The receive window in bytes: the free buffer, rounded down to what the scaled 16-bit field can say.</summary>
    private int Window() => Math.Min(_toHost.Free, ushort.MaxValue << _rcvShift) >> _rcvShift << _rcvShift;

    /// <summary>The window of a SYN (never scaled).</summary>
    private ushort SynWindow() => (ushort)Math.Min(_toHost.Free, ushort.MaxValue);

    private void SendAck() => Emit(TcpSegment.Ack, _sndNxt, []);

    private void SendSyn() => _net.Emit(Key, _iss, 0, TcpSegment.Syn, SynWindow(), [], (ushort)Key.MaxSegment, _ourShift);

    private void SendSynAck() =>
        _net.Emit(Key, _iss, _rcvNxt, TcpSegment.Syn | TcpSegment.Ack, SynWindow(), [], (ushort)Key.MaxSegment, _scalingAgreed ? _ourShift : -1);

    private void Emit(byte flags, uint sequence, ReadOnlySpan<byte> payload)
    {
        _advertised = Window();
        _ackSent = _rcvNxt;
        _net.Emit(Key, sequence, _rcvNxt, flags, (ushort)(_advertised >> _rcvShift), payload, 0);
    }

    private static bool SeqGreater(uint a, uint b) => (int)(a - b) > 0;

    private static bool SeqBetween(uint x, uint low, uint high) => (int)(x - low) >= 0 && (int)(high - x) > 0;
}
