using System.Net;
using System.Net.Sockets;

namespace Virt.Network.UserNet;

/// <summary>
/// The host socket behind one guest UDP source port. Datagrams from the guest go out through it; datagrams come
/// back only from endpoints the guest sent to (address- and port-restricted, as a NAT filters).
/// </summary>
internal sealed class UdpFlow : IDisposable
{
    private const int MaxPeers = 64;

    private readonly UserModeNetwork _net;
    private readonly Socket _socket;
    private readonly HashSet<IPEndPoint> _peers = [];
    private bool _closed;

    public UdpFlow(UserModeNetwork net, UInt128 guestIp, ushort guestPort)
    {
        _net = net;
        GuestIp = guestIp;
        GuestPort = guestPort;
        bool v6 = !Ip6.IsMapped(guestIp);
        _socket = new Socket(v6 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { Blocking = false };
        _socket.Bind(new IPEndPoint(v6 ? IPAddress.IPv6Any : IPAddress.Any, 0));
        LastUsed = Environment.TickCount64;
        _ = ReceivePumpAsync();
    }

    /// <summary>The guest's address (IPv4 as IPv4-mapped).</summary>
    public UInt128 GuestIp { get; }

    public ushort GuestPort { get; }

    public long LastUsed { get; private set; }

    /// <summary>Sends one datagram to the host-side <paramref name="to"/> (under the stack's lock); a full socket buffer drops it.</summary>
    public void Send(IPEndPoint to, ReadOnlySpan<byte> payload)
    {
        LastUsed = Environment.TickCount64;
        if (_peers.Count < MaxPeers || _peers.Contains(to))
        {
            _peers.Add(to);
        }

        try
        {
            _socket.SendTo(payload, SocketFlags.None, to);
        }
        catch (SocketException)
        {
            // A full send buffer or an unreachable destination: the datagram is lost, as UDP allows.
        }
    }

    public void Dispose()
    {
        if (!_closed)
        {
            _closed = true;
            _socket.Dispose();
        }
    }

    private async Task ReceivePumpAsync()
    {
        var buffer = new byte[Proto.MaxDatagram];
        EndPoint any = new IPEndPoint(_socket.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
        while (true)
        {
            SocketReceiveFromResult result;
            try
            {
                result = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, any).ConfigureAwait(false);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.MessageSize)
            {
                continue; // an ICMP error for an earlier datagram, or one larger than the guest's MTU
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }

            var from = (IPEndPoint)result.RemoteEndPoint;
            int n = result.ReceivedBytes;
            _net.Locked(() =>
            {
                if (!_closed && _peers.Contains(from))
                {
                    LastUsed = Environment.TickCount64;
                    _net.DeliverUdpFromHost(this, from, buffer.AsSpan(0, n));
                }
            });
        }
    }
}
