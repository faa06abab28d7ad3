using System.Buffers.Binary;
using System.Collections.Concurrent;
using Virt.Network;
using Virt.Network.UserNet;

namespace Virt.Benchmarks.Network;

/// <summary>
/// The guest's side of TCP played at the frame level for the user-mode network benchmarks: frames from the stack
/// land in a queue (as in a NIC's receive ring) and the calling thread answers them (as a vCPU would), so the stack
/// and the guest run on different threads. It offers window scaling (shift 7), sends within the stack's window,
/// acknowledges every segment, and goes back to the oldest unacknowledged byte when nothing comes for 200 ms.
/// Frames go to the stack as a virtio-net device hands them over: one batch per burst, then the batch's end.
/// With <c>offload</c> it behaves as a guest that negotiated checksum and segmentation offloads: it sends 64 KiB
/// segments (44 times 1460 bytes) with partial checksums, and takes the stack's large segments.
/// </summary>
internal sealed class FrameTcpGuest : IDisposable
{
    public static readonly MacAddress Mac = MacAddress.Parse("02:00:00:00:00:15");
    public const uint Ip = 0x0A00020F;      // 10.0.2.15
    public const uint Gateway = 0x0A000202; // 10.0.2.2
    private const int Segment = 1460;
    private const int OurShift = 7;
    private static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(200);
    private static readonly TimeSpan GiveUp = TimeSpan.FromSeconds(30);

    private readonly BlockingCollection<byte[]> _inbox = [];
    private readonly UserModeNetwork _net;
    private readonly IOffloadNetworkBackend _nic;
    private readonly bool _offload;
    private readonly int _sendSize;
    private readonly byte[] _chunk;
    private readonly byte[] _frame = new byte[65536 + 14];
    private ushort _nextPort = 20000;

    public FrameTcpGuest(UserModeNetwork net, bool offload = false)
    {
        _net = net;
        _nic = net;
        _offload = offload;
        _sendSize = offload ? 44 * Segment : Segment;
        _chunk = new byte[_sendSize];
        if (offload)
        {
            _nic.AttachOffload((f, in _) =>
            {
                _inbox.Add(f.ToArray());
                return true;
            }, NetworkOffloads.Checksum | NetworkOffloads.Tcp4Segmentation | NetworkOffloads.Tcp6Segmentation);
        }
        else
        {
            net.Attach(f =>
            {
                _inbox.Add(f.ToArray());
                return true;
            });
        }

        new Random(1).NextBytes(_chunk);
        Send(FrameBuilder.Arp(MacAddress.Broadcast, Mac, 1, Mac, Ip, default, Gateway)); // the stack learns the guest's MAC
    }

    /// <summary>Opens a connection to the gateway's <paramref name="port"/> (the host's loopback), sends <paramref name="bytes"/>, closes it.</summary>
    public void Upload(ushort port, long bytes)
    {
        var c = Connect(port);
        uint end = c.Nxt + (uint)bytes;
        var quietSince = DateTime.UtcNow;
        while (c.Una != end)
        {
            while (c.Nxt != end && (long)(c.Nxt - c.Una) + Segment <= c.Window)
            {
                int n = (int)Math.Min(Math.Min(_sendSize, end - c.Nxt), c.Window - (c.Nxt - c.Una));
                SendData(c, _chunk.AsSpan(0, n));
                c.Nxt += (uint)n;
            }

            _nic.EndOfBatch();

            if (!TryNext(c.LocalPort, Quiet, out var s))
            {
                c.Nxt = c.Una; // nothing for a while: a segment was lost, send again from the oldest unacknowledged byte
                if (DateTime.UtcNow - quietSince > GiveUp)
                {
                    throw new TimeoutException("The stack stopped acknowledging.");
                }

                continue;
            }

            quietSince = DateTime.UtcNow;
            Absorb(c, s);
        }

        Close(c);
    }

    /// <summary>Connects to the gateway's <paramref name="port"/> and resets the connection once it is up: one connection set-up.</summary>
    public void ConnectAndReset(ushort port)
    {
        var c = Connect(port);
        Send(Segment4(c, c.Nxt, TcpSegment.Rst, []));
    }

    /// <summary>Accepts the forward's connection to <paramref name="guestPort"/> and receives <paramref name="bytes"/>, then closes.</summary>
    public void Download(ushort guestPort, long bytes)
    {
        var syn = Take(s => s.DestinationPort == guestPort && s.Flags == TcpSegment.Syn);
        var c = new Conn { LocalPort = guestPort, RemotePort = syn.SourcePort, Una = 5001, Nxt = 5001, RcvNxt = syn.Sequence + 1, Shift = syn.WindowScale >= 0 ? syn.WindowScale : 0 };
        Send(FrameBuilder.Tcp(_net.Options.GatewayMac, Mac, Ip, guestPort, Gateway, c.RemotePort, 5000, c.RcvNxt, TcpSegment.Syn | TcpSegment.Ack, 65535, [], 1460, OurShift));
        long received = 0;
        while (received < bytes)
        {
            var s = Next(guestPort);
            if (s.SourcePort != c.RemotePort)
            {
                continue;
            }

            if (s.PayloadLength > 0 && s.Sequence == c.RcvNxt)
            {
                c.RcvNxt += (uint)s.PayloadLength;
                received += s.PayloadLength;
            }

            if ((s.Flags & TcpSegment.Fin) != 0 && s.Sequence + (uint)s.PayloadLength == c.RcvNxt)
            {
                c.RcvNxt++;
                c.FinReceived = true;
            }

            if (s.PayloadLength > 0 || c.FinReceived)
            {
                Send(Segment4(c, c.Nxt, TcpSegment.Ack, []));
                _nic.EndOfBatch();
            }
        }

        Close(c);
    }

    public void Dispose() => _inbox.Dispose();

    private Conn Connect(ushort port)
    {
        var c = new Conn { LocalPort = _nextPort++, RemotePort = port, Una = 1001, Nxt = 1001 };
        if (_nextPort > 60000)
        {
            _nextPort = 20000;
        }

        Send(FrameBuilder.Tcp(_net.Options.GatewayMac, Mac, Ip, c.LocalPort, Gateway, port, 1000, 0, TcpSegment.Syn, 65535, [], 1460, OurShift));
        var s = Next(c.LocalPort);
        if ((s.Flags & (TcpSegment.Syn | TcpSegment.Ack)) != (TcpSegment.Syn | TcpSegment.Ack))
        {
            throw new InvalidOperationException($"The stack answered the SYN with flags {s.Flags:x}.");
        }

        c.RcvNxt = s.Sequence + 1;
        c.Shift = s.WindowScale >= 0 ? s.WindowScale : 0;
        c.Window = s.Window;
        Send(Segment4(c, c.Nxt, TcpSegment.Ack, []));
        return c;
    }

    /// <summary>Sends our FIN, then waits for the stack's FIN (the host closed its side) and acknowledges it.</summary>
    private void Close(Conn c)
    {
        Send(Segment4(c, c.Nxt, TcpSegment.Fin | TcpSegment.Ack, []));
        c.Nxt++;
        while (!c.FinReceived)
        {
            var s = Next(c.LocalPort);
            if ((s.Flags & TcpSegment.Rst) != 0)
            {
                return;
            }

            if (s.PayloadLength > 0 && s.Sequence == c.RcvNxt)
            {
                c.RcvNxt += (uint)s.PayloadLength;
            }

            if ((s.Flags & TcpSegment.Fin) != 0 && s.Sequence + (uint)s.PayloadLength == c.RcvNxt)
            {
                c.RcvNxt++;
                c.FinReceived = true;
                Send(Segment4(c, c.Nxt, TcpSegment.Ack, []));
            }
        }
    }

    private static void Absorb(Conn c, in Parsed s)
    {
        if ((s.Flags & TcpSegment.Rst) != 0)
        {
            throw new InvalidOperationException("The stack reset the connection.");
        }

        if ((s.Flags & TcpSegment.Ack) != 0 && (int)(s.Acknowledgment - c.Una) >= 0)
        {
            c.Una = s.Acknowledgment;
            c.Window = (long)s.Window << c.Shift;
            if ((int)(c.Nxt - c.Una) < 0)
            {
                c.Nxt = c.Una;
            }
        }
    }

    private byte[] Segment4(Conn c, uint seq, byte flags, ReadOnlySpan<byte> payload) =>
        FrameBuilder.Tcp(_net.Options.GatewayMac, Mac, Ip, c.LocalPort, Gateway, c.RemotePort, seq, c.RcvNxt, flags, 65535, payload);

    private void Send(byte[] frame) => _nic.Send(frame, FrameOffload.None);

    /// <summary>
    /// A data segment: complete, or with the offloads built as a guest with them builds it, in one buffer reused for
    /// every segment, the checksum left partial (never computed) and, past one MSS, a segmentation offload.
    /// </summary>
    private void SendData(Conn c, ReadOnlySpan<byte> payload)
    {
        if (!_offload)
        {
            Send(Segment4(c, c.Nxt, TcpSegment.Ack | TcpSegment.Psh, payload));
            return;
        }

        const int TcpAt = 34;
        int length = TcpAt + 20 + payload.Length;
        var frame = _frame.AsSpan(0, length);
        FrameBuilder.WriteIpv4(frame, _net.Options.GatewayMac, Mac, Ip, Gateway, Proto.Tcp, 20 + payload.Length);
        FrameBuilder.WriteTcpHeader(frame[TcpAt..], c.LocalPort, c.RemotePort, c.Nxt, c.RcvNxt, TcpSegment.Ack | TcpSegment.Psh, 65535);
        payload.CopyTo(frame[(TcpAt + 20)..]);
        BinaryPrimitives.WriteUInt16BigEndian(frame[(TcpAt + 16)..], (ushort)~Checksum.Fold(Checksum.PseudoHeader(Ip, Gateway, Proto.Tcp, 20 + payload.Length)));
        byte gso = payload.Length > Segment ? FrameOffload.GsoTcp4 : FrameOffload.GsoNone;
        _nic.Send(frame, new FrameOffload(FrameOffload.NeedsChecksum, gso, TcpAt + 20, gso == 0 ? (ushort)0 : (ushort)Segment, TcpAt, 16));
    }

    private Parsed Next(ushort localPort) =>
        TryNext(localPort, GiveUp, out var s) ? s : throw new TimeoutException($"No segment for port {localPort} from the stack.");

    private Parsed Take(Func<Parsed, bool> match)
    {
        var deadline = DateTime.UtcNow + GiveUp;
        while (DateTime.UtcNow < deadline)
        {
            if (_inbox.TryTake(out var f, Quiet) && Parse(f, out var s) && match(s))
            {
                return s;
            }
        }

        throw new TimeoutException("No matching segment from the stack.");
    }

    private bool TryNext(ushort localPort, TimeSpan timeout, out Parsed segment)
    {
        var deadline = DateTime.UtcNow + timeout;
        segment = default;
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero || !_inbox.TryTake(out var f, left))
            {
                return false;
            }

            if (Parse(f, out segment) && segment.DestinationPort == localPort)
            {
                return true;
            }
        }
    }

    private static bool Parse(byte[] f, out Parsed parsed)
    {
        parsed = default;
        if (f.Length < 54 || f[23] != Proto.Tcp || !Ipv4Packet.TryParse(f.AsSpan(14), out var ip) || !TcpSegment.TryParse(ip, out var s, checksumTrusted: true))
        {
            return false;
        }

        parsed = new Parsed(s.SourcePort, s.DestinationPort, s.Sequence, s.Acknowledgment, s.Flags, s.Window, s.WindowScale, s.Payload.Length);
        return true;
    }

    private readonly record struct Parsed(ushort SourcePort, ushort DestinationPort, uint Sequence, uint Acknowledgment, byte Flags, ushort Window, int WindowScale, int PayloadLength);

    private sealed class Conn
    {
        public ushort LocalPort { get; init; }

        public ushort RemotePort { get; init; }

        public uint Una { get; set; }

        public uint Nxt { get; set; }

        public uint RcvNxt { get; set; }

        public int Shift { get; set; }

        public long Window { get; set; }

        public bool FinReceived { get; set; }
    }
}
