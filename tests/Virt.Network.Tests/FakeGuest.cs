using System.Buffers.Binary;
using System.Net;
using Virt.Network.UserNet;

namespace Virt.Network.Tests;

/// <summary>A TCP segment the stack sent to the guest, copied out of its frame.</summary>
internal sealed record Seg(uint SourceIp, ushort SourcePort, uint DestinationIp, ushort DestinationPort, uint Seq, uint Ack, byte Flags, ushort Window, ushort Mss, byte[] Payload)
{
    public bool Has(byte flag) => (Flags & flag) != 0;
}

/// <summary>
/// Plays the guest for a <see cref="UserModeNetwork"/>: builds its frames (with the stack's own frame builder, so
/// checksums are right) and collects what the stack sends back, for tests to take by predicate.
/// </summary>
internal sealed class FakeGuest : IAsyncDisposable
{
    public static readonly MacAddress Mac = MacAddress.Parse("02:00:00:00:00:15");
    public static readonly uint Ip = Ip4.From(IPAddress.Parse("10.0.2.15"), "ip");
    public static readonly uint Gateway = Ip4.From(IPAddress.Parse("10.0.2.2"), "ip");
    public static readonly uint Dns = Ip4.From(IPAddress.Parse("10.0.2.3"), "ip");

    private readonly List<byte[]> _frames = [];
    private int _nextPort = 40000;

    public FakeGuest(UserModeNetworkOptions? options = null)
    {
        Net = new UserModeNetwork(options);
        Net.Attach(f =>
        {
            lock (_frames)
            {
                if (DropIncoming?.Invoke(f.Span) != true)
                {
                    _frames.Add(f.ToArray());
                    Monitor.PulseAll(_frames);
                }
            }

            return true;
        });
    }

    public UserModeNetwork Net { get; }

    public MacAddress GatewayMac => Net.Options.GatewayMac;

    /// <summary>When set, frames it returns true for are lost on the way to the guest.</summary>
    public Func<ReadOnlySpan<byte>, bool>? DropIncoming { get; set; }

    public ushort NextPort() => (ushort)Interlocked.Increment(ref _nextPort);

    public void Send(byte[] frame) => Net.SendAsync(frame).AsTask().GetAwaiter().GetResult();

    /// <summary>Announces the guest's address to the stack (an ARP request for the gateway) and eats the reply.</summary>
    public void Announce()
    {
        Send(FrameBuilder.Arp(MacAddress.Broadcast, Mac, 1, Mac, Ip, default, Gateway));
        Take(f => BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(12)) == 0x0806);
    }

    public void SendUdp(uint destination, ushort sourcePort, ushort destinationPort, byte[] payload, uint? source = null, MacAddress? to = null) =>
        Send(FrameBuilder.Udp(to ?? GatewayMac, Mac, source ?? Ip, sourcePort, destination, destinationPort, payload));

    public void SendTcp(uint destination, ushort sourcePort, ushort destinationPort, uint seq, uint ack, byte flags, byte[]? payload = null, ushort window = 65535, ushort mss = 0) =>
        Send(FrameBuilder.Tcp(GatewayMac, Mac, Ip, sourcePort, destination, destinationPort, seq, ack, flags, window, payload ?? [], mss));

    /// <summary>Takes (removes) the first frame that matches, waiting up to <paramref name="timeout"/> (10 s by default).</summary>
    public byte[] Take(Func<byte[], bool> match, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        lock (_frames)
        {
            while (true)
            {
                int i = _frames.FindIndex(f => match(f));
                if (i >= 0)
                {
                    var f = _frames[i];
                    _frames.RemoveAt(i);
                    return f;
                }

                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero)
                {
                    throw new TimeoutException($"No matching frame from the stack; {_frames.Count} others queued. {Net.Statistics}");
                }

                Monitor.Wait(_frames, left);
            }
        }
    }

    public bool TryTake(Func<byte[], bool> match, TimeSpan timeout, out byte[]? frame)
    {
        try
        {
            frame = Take(match, timeout);
            return true;
        }
        catch (TimeoutException)
        {
            frame = null;
            return false;
        }
    }

    public Seg TakeTcp(Func<Seg, bool> match, TimeSpan? timeout = null)
    {
        var f = Take(f => ParseTcp(f) is { } s && match(s), timeout);
        return ParseTcp(f)!;
    }

    public (uint Source, ushort SourcePort, ushort DestinationPort, byte[] Payload) TakeUdp(ushort guestPort, TimeSpan? timeout = null)
    {
        var f = Take(f => ParseUdp(f) is { } u && u.DestinationPort == guestPort, timeout);
        return ParseUdp(f)!.Value;
    }

    public static Seg? ParseTcp(byte[] frame)
    {
        if (frame.Length < 14 || BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) != 0x0800
            || !Ipv4Packet.TryParse(frame.AsSpan(14), out var ip) || ip.Protocol != 6 || !TcpSegment.TryParse(ip, out var s))
        {
            return null;
        }

        return new Seg(ip.Source, s.SourcePort, ip.Destination, s.DestinationPort, s.Sequence, s.Acknowledgment, s.Flags, s.Window, s.Mss, s.Payload.ToArray());
    }

    public static (uint Source, ushort SourcePort, ushort DestinationPort, byte[] Payload)? ParseUdp(byte[] frame)
    {
        if (frame.Length < 14 || BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) != 0x0800
            || !Ipv4Packet.TryParse(frame.AsSpan(14), out var ip) || ip.Protocol != 17 || !UdpDatagram.TryParse(ip, out var u))
        {
            return null;
        }

        return (ip.Source, u.SourcePort, u.DestinationPort, u.Payload.ToArray());
    }

    /// <summary>Waits until <paramref name="condition"/> holds (polling the stack's counters), up to 15 s.</summary>
    public void WaitUntil(Func<UserModeNetworkStatistics, bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (!condition(Net.Statistics))
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"Timed out waiting until {what}: {Net.Statistics}");
            }

            Thread.Sleep(10);
        }
    }

    public ValueTask DisposeAsync() => Net.DisposeAsync();
}

/// <summary>The guest's end of one TCP connection: a minimal endpoint that sends within the stack's window and acknowledges in-order data.</summary>
internal sealed class GuestTcp(FakeGuest guest, ushort localPort, uint remoteIp, ushort remotePort)
{
    private uint _sndNxt = 1_000_000;
    private uint _rcvNxt;
    private uint _peerAck;
    private int _peerWindow;

    public ushort LocalPort { get; } = localPort;

    public uint RemoteIp { get; private set; } = remoteIp;

    public ushort RemotePort { get; private set; } = remotePort;

    public bool FinReceived { get; private set; }

    public bool ResetReceived { get; private set; }

    public MemoryStream Received { get; } = new();

    /// <summary>Active open: SYN, the stack's SYN-ACK, ACK. Returns the SYN-ACK (or the RST the stack answered with).</summary>
    public Seg Connect()
    {
        guest.SendTcp(RemoteIp, LocalPort, RemotePort, _sndNxt, 0, TcpSegment.Syn, mss: 1460);
        var s = Next();
        if (s.Has(TcpSegment.Rst))
        {
            ResetReceived = true;
            return s;
        }

        _sndNxt++;
        _rcvNxt = s.Seq + 1;
        _peerAck = s.Ack;
        _peerWindow = s.Window;
        Ack();
        return s;
    }

    /// <summary>Passive open: waits for the stack's SYN to <see cref="LocalPort"/>, answers SYN-ACK, waits for the ACK.</summary>
    public static GuestTcp Accept(FakeGuest guest, ushort port, TimeSpan? timeout = null)
    {
        var syn = guest.TakeTcp(s => s.DestinationPort == port && s.Has(TcpSegment.Syn) && !s.Has(TcpSegment.Ack), timeout);
        var c = new GuestTcp(guest, port, syn.SourceIp, syn.SourcePort) { _rcvNxt = syn.Seq + 1 };
        guest.SendTcp(c.RemoteIp, port, c.RemotePort, c._sndNxt, c._rcvNxt, TcpSegment.Syn | TcpSegment.Ack, mss: 1460);
        c._sndNxt++;
        var ack = c.Next();
        c._peerAck = ack.Ack;
        c._peerWindow = ack.Window;
        c.Absorb(ack);
        return c;
    }

    public void Send(byte[] data)
    {
        for (int o = 0; o < data.Length && !ResetReceived;)
        {
            while ((int)(_sndNxt - _peerAck) >= _peerWindow && !ResetReceived)
            {
                Absorb(Next()); // wait for the stack to acknowledge or open its window
            }

            int n = Math.Min(Math.Min(1460, data.Length - o), _peerWindow - (int)(_sndNxt - _peerAck));
            guest.SendTcp(RemoteIp, LocalPort, RemotePort, _sndNxt, _rcvNxt, TcpSegment.Ack | TcpSegment.Psh, data[o..(o + n)]);
            _sndNxt += (uint)n;
            o += n;
        }
    }

    public void Fin()
    {
        guest.SendTcp(RemoteIp, LocalPort, RemotePort, _sndNxt, _rcvNxt, TcpSegment.Fin | TcpSegment.Ack);
        _sndNxt++;
    }

    public void Reset() => guest.SendTcp(RemoteIp, LocalPort, RemotePort, _sndNxt, 0, TcpSegment.Rst);

    /// <summary>Reads until the stack's FIN (or a reset); returns all data.</summary>
    public byte[] ReceiveToEnd(TimeSpan? timeout = null)
    {
        while (!FinReceived && !ResetReceived)
        {
            Absorb(Next(timeout));
        }

        return Received.ToArray();
    }

    /// <summary>Waits until everything sent (and the FIN, if sent) is acknowledged.</summary>
    public void WaitAcked()
    {
        while (_peerAck != _sndNxt && !ResetReceived)
        {
            Absorb(Next());
        }
    }

    public Seg Next(TimeSpan? timeout = null) =>
        guest.TakeTcp(s => s.DestinationPort == LocalPort && s.SourcePort == RemotePort && s.SourceIp == RemoteIp, timeout);

    public void Absorb(Seg s)
    {
        if (s.Has(TcpSegment.Rst))
        {
            ResetReceived = true;
            return;
        }

        if (s.Has(TcpSegment.Ack) && (int)(s.Ack - _peerAck) >= 0)
        {
            _peerAck = s.Ack;
            _peerWindow = s.Window;
        }

        bool advance = false;
        if (s.Payload.Length > 0 && s.Seq == _rcvNxt)
        {
            Received.Write(s.Payload);
            _rcvNxt += (uint)s.Payload.Length;
            advance = true;
        }

        if (s.Has(TcpSegment.Fin) && s.Seq + (uint)s.Payload.Length == _rcvNxt)
        {
            _rcvNxt++;
            FinReceived = true;
            advance = true;
        }

        if (advance || s.Payload.Length > 0)
        {
            Ack();
        }
    }

    private void Ack() => guest.SendTcp(RemoteIp, LocalPort, RemotePort, _sndNxt, _rcvNxt, TcpSegment.Ack);
}
