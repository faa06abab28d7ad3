using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;
using Virt.Network;

namespace Virt.Cli;

/// <summary>
/// A stand-in for a guest NIC on a <see cref="UserModeNetwork"/>: it sends the frames a guest would (a DNS query to the
/// network's forwarder, a TCP SYN) and reads the answers, so <c>virt net check</c> sees exactly what a guest would see
/// under the same options and policy, without booting one. It answers ARP for its address and ignores everything else.
/// </summary>
internal sealed class ProbeGuest : IAsyncDisposable
{
    private const int EthernetHeader = 14;
    private const int Ipv4Header = 20;
    private const ushort EtherTypeIpv4 = 0x0800;
    private const ushort EtherTypeArp = 0x0806;
    private static readonly MacAddress GuestMac = MacAddress.Parse("52:54:00:12:34:56");

    private readonly Channel<byte[]> _frames = Channel.CreateUnbounded<byte[]>();
    private readonly uint _address;
    private readonly uint _gateway;
    private readonly uint _dns;
    private readonly MacAddress _gatewayMac;
    private ushort _nextPort = 40000;
    private ushort _ipId = 1;

    public ProbeGuest(UserModeNetworkOptions options)
    {
        Network = new UserModeNetwork(options);
        _address = ToUInt32(options.FirstGuestAddress);
        _gateway = ToUInt32(options.Gateway);
        _dns = ToUInt32(options.Dns);
        _gatewayMac = options.GatewayMac;
        // Called with the network's lock held: only queue the frame; the probe reads the queue on its own thread.
        Network.Attach(frame => _frames.Writer.TryWrite(frame.ToArray()));
    }

    public UserModeNetwork Network { get; }

    public IPAddress Address => ToAddress(_address);

    /// <summary>Asks the network's DNS forwarder for the IPv4 addresses of <paramref name="name"/>, as a guest resolver would.</summary>
    /// <returns>The addresses (empty when the name has none), or null when no answer came in <paramref name="timeout"/>.</returns>
    public async Task<(IPAddress[]? Addresses, string Detail)> ResolveAsync(string name, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ushort port = _nextPort++;
        ushort id = (ushort)Random.Shared.Next(1, 65536);
        var query = new List<byte>();
        query.AddRange([(byte)(id >> 8), (byte)id, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // recursion desired, one question
        foreach (string label in name.TrimEnd('.').Split('.'))
        {
            byte[] bytes = Encoding.ASCII.GetBytes(label);
            if (bytes.Length is 0 or > 63)
            {
                return ([], $"'{name}' is not a host name");
            }

            query.Add((byte)bytes.Length);
            query.AddRange(bytes);
        }

        query.AddRange([0, 0, 1, 0, 1]); // root, type A, class IN
        await SendAsync(Udp(_dns, port, 53, [.. query]), cancellationToken).ConfigureAwait(false);
        byte[]? answer = await ReceiveAsync(
            payload => Transport(payload, ProtocolType.Udp, _dns, 53, port) is { Length: >= 12 } udp && BinaryPrimitives.ReadUInt16BigEndian(udp) == id ? udp : null,
            timeout, cancellationToken).ConfigureAwait(false);
        if (answer is null)
        {
            return (null, "no answer from the DNS forwarder");
        }

        return ParseAnswer(answer);
    }

    /// <summary>Opens a TCP connection from the guest to <paramref name="destination"/>:<paramref name="port"/> (SYN, then a reset once answered).</summary>
    public async Task<TcpProbe> ConnectAsync(IPAddress destination, int port, TimeSpan timeout, CancellationToken cancellationToken)
    {
        uint target = ToUInt32(destination);
        ushort source = _nextPort++;
        uint seq = (uint)Random.Shared.Next();
        await SendAsync(Tcp(target, source, (ushort)port, seq, 0, 0x02), cancellationToken).ConfigureAwait(false); // SYN
        byte flags = await ReceiveAsync(
            payload => Transport(payload, ProtocolType.Tcp, target, (ushort)port, source) is { Length: >= 20 } tcp ? (byte?)tcp[13] : null,
            timeout, cancellationToken).ConfigureAwait(false) ?? 0;
        if ((flags & 0x12) == 0x12)
        {
            await SendAsync(Tcp(target, source, (ushort)port, seq + 1, 0, 0x04), cancellationToken).ConfigureAwait(false); // RST: done
            return TcpProbe.Connected;
        }

        return (flags & 0x04) != 0 ? TcpProbe.Reset : TcpProbe.NoAnswer;
    }

    public ValueTask DisposeAsync() => Network.DisposeAsync();

    private static (IPAddress[]? Addresses, string Detail) ParseAnswer(byte[] m)
    {
        int rcode = m[3] & 0x0F;
        if (rcode != 0)
        {
            return ([], rcode == 3 ? "no such name (NXDOMAIN)" : $"the DNS forwarder answered with error code {rcode}");
        }

        int questions = BinaryPrimitives.ReadUInt16BigEndian(m.AsSpan(4));
        int answers = BinaryPrimitives.ReadUInt16BigEndian(m.AsSpan(6));
        int o = 12;
        for (int i = 0; i < questions; i++)
        {
            o = SkipName(m, o) + 4;
        }

        var addresses = new List<IPAddress>();
        for (int i = 0; i < answers && o >= 0 && o < m.Length; i++)
        {
            o = SkipName(m, o);
            if (o < 0 || o + 10 > m.Length)
            {
                break;
            }

            ushort type = BinaryPrimitives.ReadUInt16BigEndian(m.AsSpan(o));
            int length = BinaryPrimitives.ReadUInt16BigEndian(m.AsSpan(o + 8));
            o += 10;
            if (o + length > m.Length)
            {
                break;
            }

            if (type == 1 && length == 4)
            {
                addresses.Add(new IPAddress(m.AsSpan(o, 4)));
            }

            o += length;
        }

        return ([.. addresses], addresses.Count == 0 ? "the name has no IPv4 address" : "");
    }

    /// <summary>The offset after a (possibly compressed) name at <paramref name="o"/>, or -1 when it runs past the end.</summary>
    private static int SkipName(byte[] m, int o)
    {
        while (o >= 0 && o < m.Length)
        {
            byte length = m[o];
            if (length == 0)
            {
                return o + 1;
            }

            if ((length & 0xC0) == 0xC0)
            {
                return o + 2;
            }

            o += 1 + length;
        }

        return -1;
    }

    /// <summary>Waits for a frame that <paramref name="match"/> accepts, answering ARP meanwhile; null after <paramref name="timeout"/>.</summary>
    private async Task<T?> ReceiveAsync<T>(Func<byte[], T?> match, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(timeout);
        try
        {
            while (true)
            {
                byte[] frame = await _frames.Reader.ReadAsync(cts.Token).ConfigureAwait(false);
                if (frame.Length >= EthernetHeader + 28 && BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) == EtherTypeArp)
                {
                    await AnswerArpAsync(frame, cancellationToken).ConfigureAwait(false);
                    continue;
                }

                if (match(frame) is { } result)
                {
                    return result;
                }
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return default;
        }
    }

    private async Task AnswerArpAsync(byte[] frame, CancellationToken cancellationToken)
    {
        var arp = frame.AsSpan(EthernetHeader);
        if (BinaryPrimitives.ReadUInt16BigEndian(arp[6..]) != 1 || BinaryPrimitives.ReadUInt32BigEndian(arp[24..]) != _address)
        {
            return; // not a request for this address
        }

        byte[] reply = new byte[EthernetHeader + 28];
        arp[8..14].CopyTo(reply); // to the sender's hardware address
        GuestMac.CopyTo(reply.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(12), EtherTypeArp);
        var r = reply.AsSpan(EthernetHeader);
        arp[..6].CopyTo(r);
        BinaryPrimitives.WriteUInt16BigEndian(r[6..], 2); // reply
        GuestMac.CopyTo(r[8..]);
        BinaryPrimitives.WriteUInt32BigEndian(r[14..], _address);
        arp[8..18].CopyTo(r[18..]); // the asker's hardware and protocol address
        await SendAsync(reply, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The transport payload of an IPv4 frame from <paramref name="from"/>:<paramref name="fromPort"/> to this guest's <paramref name="toPort"/>, or null.</summary>
    private byte[]? Transport(byte[] frame, ProtocolType protocol, uint from, ushort fromPort, ushort toPort)
    {
        if (frame.Length < EthernetHeader + Ipv4Header + 8 || BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) != EtherTypeIpv4)
        {
            return null;
        }

        var ip = frame.AsSpan(EthernetHeader);
        int headerLength = (ip[0] & 0x0F) * 4;
        int total = BinaryPrimitives.ReadUInt16BigEndian(ip[2..]);
        if (ip[9] != (byte)protocol || headerLength < Ipv4Header || total > ip.Length || total < headerLength + 8
            || BinaryPrimitives.ReadUInt32BigEndian(ip[12..]) != from || BinaryPrimitives.ReadUInt32BigEndian(ip[16..]) != _address)
        {
            return null;
        }

        var segment = ip[headerLength..total];
        if (BinaryPrimitives.ReadUInt16BigEndian(segment) != fromPort || BinaryPrimitives.ReadUInt16BigEndian(segment[2..]) != toPort)
        {
            return null;
        }

        return (protocol == ProtocolType.Udp ? segment[8..] : segment).ToArray();
    }

    private byte[] Udp(uint destination, ushort sourcePort, ushort destinationPort, byte[] payload)
    {
        byte[] frame = Ipv4(destination, ProtocolType.Udp, 8 + payload.Length, out int start);
        var udp = frame.AsSpan(start);
        BinaryPrimitives.WriteUInt16BigEndian(udp, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[2..], destinationPort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[4..], (ushort)udp.Length);
        payload.CopyTo(udp[8..]);
        ushort sum = TransportChecksum(destination, ProtocolType.Udp, udp);
        BinaryPrimitives.WriteUInt16BigEndian(udp[6..], sum == 0 ? (ushort)0xFFFF : sum);
        return frame;
    }

    private byte[] Tcp(uint destination, ushort sourcePort, ushort destinationPort, uint seq, uint ack, byte flags)
    {
        byte[] frame = Ipv4(destination, ProtocolType.Tcp, 20, out int start);
        var tcp = frame.AsSpan(start);
        BinaryPrimitives.WriteUInt16BigEndian(tcp, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[2..], destinationPort);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[4..], seq);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[8..], ack);
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        BinaryPrimitives.WriteUInt16BigEndian(tcp[14..], 65535);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], TransportChecksum(destination, ProtocolType.Tcp, tcp));
        return frame;
    }

    private byte[] Ipv4(uint destination, ProtocolType protocol, int payloadLength, out int payloadStart)
    {
        byte[] frame = new byte[EthernetHeader + Ipv4Header + payloadLength];
        _gatewayMac.CopyTo(frame);
        GuestMac.CopyTo(frame.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(12), EtherTypeIpv4);
        var ip = frame.AsSpan(EthernetHeader);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(Ipv4Header + payloadLength));
        BinaryPrimitives.WriteUInt16BigEndian(ip[4..], _ipId++);
        BinaryPrimitives.WriteUInt16BigEndian(ip[6..], 0x4000); // don't fragment
        ip[8] = 64;
        ip[9] = (byte)protocol;
        BinaryPrimitives.WriteUInt32BigEndian(ip[12..], _address);
        BinaryPrimitives.WriteUInt32BigEndian(ip[16..], destination);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Fold(Sum(ip[..Ipv4Header], 0)));
        payloadStart = EthernetHeader + Ipv4Header;
        return frame;
    }

    private ushort TransportChecksum(uint destination, ProtocolType protocol, ReadOnlySpan<byte> segment)
    {
        uint sum = (_address >> 16) + (_address & 0xFFFF) + (destination >> 16) + (destination & 0xFFFF) + (uint)protocol + (uint)segment.Length;
        return Fold(Sum(segment, sum));
    }

    private static uint Sum(ReadOnlySpan<byte> data, uint sum)
    {
        ulong total = sum;
        for (int i = 0; i + 1 < data.Length; i += 2)
        {
            total += BinaryPrimitives.ReadUInt16BigEndian(data[i..]);
        }

        if ((data.Length & 1) != 0)
        {
            total += (uint)data[^1] << 8;
        }

        while (total >> 16 != 0)
        {
            total = (total & 0xFFFF) + (total >> 16);
        }

        return (uint)total;
    }

    private static ushort Fold(uint sum) => (ushort)~sum;

    private ValueTask SendAsync(byte[] frame, CancellationToken cancellationToken) => Network.SendAsync(frame, cancellationToken);

    internal static uint ToUInt32(IPAddress address) => BinaryPrimitives.ReadUInt32BigEndian(address.GetAddressBytes());

    private static IPAddress ToAddress(uint value)
    {
        byte[] bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return new IPAddress(bytes);
    }
}

/// <summary>How the network answered a guest's TCP SYN.</summary>
internal enum TcpProbe
{
    /// <summary>SYN-ACK: the host side connected.</summary>
    Connected,

    /// <summary>RST: refused by the policy, a limit, or the destination.</summary>
    Reset,

    /// <summary>Nothing within the time allowed.</summary>
    NoAnswer,
}
