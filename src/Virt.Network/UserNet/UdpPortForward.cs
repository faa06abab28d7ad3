using System.Net;
using System.Net.Sockets;
using Virt.Network.UserNet;

namespace Virt.Network;

/// <summary>
/// A host UDP port forwarded to a guest port by <see cref="UserModeNetwork.ForwardUdp"/>. Disposing it closes the
/// host socket and forgets its senders.
/// </summary>
public sealed class UdpPortForward : IAsyncDisposable
{
    private readonly UserModeNetwork _network;
    private readonly Socket _socket;
    private Task? _receiving;
    private long _forwarded;
    private int _disposed;

    internal UdpPortForward(UserModeNetwork network, Socket socket, IPAddress guestAddress, ForwardTarget target, ushort guestPort)
    {
        _network = network;
        _socket = socket;
        GuestAddress = guestAddress;
        Target = target;
        GuestPort = guestPort;
        HostEndPoint = (IPEndPoint)socket.LocalEndPoint!;
    }

    /// <summary>Where the host receives (with the port the system chose when 0 was asked for).</summary>
    public IPEndPoint HostEndPoint { get; }

    /// <summary>
    /// The guest's address datagrams go to, as the forward was made: the address named, <see cref="IPAddress.IPv6Any"/>
    /// for the guest's IPv6 address, or (none named) <see cref="UserModeNetworkOptions.FirstGuestAddress"/>, which
    /// gives way to the guest's IPv6 address while the guest does not use IPv4 (see <see cref="UserModeNetwork.ForwardTcp"/>).
    /// </summary>
    public IPAddress GuestAddress { get; }

    /// <summary>The guest's port datagrams go to.</summary>
    public int GuestPort { get; }

    /// <summary>Datagrams sent on to the guest so far.</summary>
    public long DatagramsForwarded => Interlocked.Read(ref _forwarded);

    internal ForwardTarget Target { get; }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _socket.Dispose();
        if (_receiving is not null)
        {
            await _receiving.ConfigureAwait(false);
        }

        _network.Locked(() => _network.RemoveUdpForward(this));
    }

    internal void Start() => _receiving = ReceiveLoopAsync();

    internal void CountForwarded() => Interlocked.Increment(ref _forwarded);

    /// <summary>Sends the guest's reply to a host sender; a full buffer or a closed socket loses it, as UDP allows.</summary>
    internal void SendToClient(IPEndPoint client, ReadOnlySpan<byte> payload)
    {
        try
        {
            _socket.SendTo(payload, SocketFlags.None, client);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Lost, as a datagram may be.
        }
    }

    private async Task ReceiveLoopAsync()
    {
        var buffer = new byte[ushort.MaxValue];
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
                continue; // an ICMP error for an earlier reply
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }

            var from = (IPEndPoint)result.RemoteEndPoint;
            int n = result.ReceivedBytes;
            _network.Locked(() => _network.OnForwardDatagram(this, from, buffer.AsSpan(0, n)));
        }
    }
}

/// <summary>One host sender of a UDP forward and the gateway port that stands for it inside.</summary>
internal sealed class UdpForwardPeer(UdpPortForward forward, IPEndPoint client, ushort gatewayPort)
{
    public UdpPortForward Forward { get; } = forward;

    public IPEndPoint Client { get; } = client;

    public ushort GatewayPort { get; } = gatewayPort;

    /// <summary>The guest address (IPv4-mapped for IPv4) this sender's last datagram went to: replies must come from it.</summary>
    public UInt128 GuestIp { get; set; }

    public long LastUsed { get; set; } = Environment.TickCount64;
}
