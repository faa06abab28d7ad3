using System.Buffers.Binary;
using System.Net;
using Virt.Network;

namespace Virt.Sdk.Tests;

/// <summary>
/// A peer on a virtual network that answers ARP requests for its address and ICMP echo requests sent to
/// it, as a host on the segment would. It counts what it answered so tests can check both directions.
/// </summary>
internal sealed class PingResponder : IAsyncDisposable
{
    private const ushort EtherTypeArp = 0x0806;
    private const ushort EtherTypeIpv4 = 0x0800;
    private readonly VirtualNetworkPort _port;
    private readonly byte[] _ip;
    private readonly byte[] _mac;
    private int _arpReplies;
    private int _echoReplies;

    public PingResponder(VirtualNetwork network, IPAddress address, MacAddress mac)
    {
        _ip = address.GetAddressBytes();
        _mac = mac.ToArray();
        _port = network.Attach("ping-responder");
        _port.Attach(Receive);
    }

    public int ArpReplies => Volatile.Read(ref _arpReplies);

    public int EchoReplies => Volatile.Read(ref _echoReplies);

    public ValueTask DisposeAsync() => _port.DisposeAsync();

    private bool Receive(ReadOnlyMemory<byte> frame)
    {
        var f = frame.Span;
        if (f.Length < 14)
        {
            return true;
        }

        byte[]? reply = BinaryPrimitives.ReadUInt16BigEndian(f[12..]) switch
        {
            EtherTypeArp => ArpReply(f),
            EtherTypeIpv4 => EchoReply(f),
            _ => null,
        };
        if (reply != null)
        {
            // The switch calls receivers on its own thread: answer from another one.
            _ = Task.Run(async () => await _port.SendAsync(reply).ConfigureAwait(false));
        }

        return true;
    }

    private byte[]? ArpReply(ReadOnlySpan<byte> f)
    {
        // Ethernet/IPv4 ARP request (htype 1, ptype 0x0800, hlen 6, plen 4, op 1) for our address.
        var arp = f[14..];
        if (arp.Length < 28 || BinaryPrimitives.ReadUInt16BigEndian(arp) != 1 || BinaryPrimitives.ReadUInt16BigEndian(arp[2..]) != EtherTypeIpv4
            || arp[4] != 6 || arp[5] != 4 || BinaryPrimitives.ReadUInt16BigEndian(arp[6..]) != 1 || !arp.Slice(24, 4).SequenceEqual(_ip))
        {
            return null;
        }

        var r = new byte[42];
        arp.Slice(8, 6).CopyTo(r);                      // to the sender
        _mac.CopyTo(r, 6);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(12), EtherTypeArp);
        f.Slice(14, 6).CopyTo(r.AsSpan(14));            // htype, ptype, hlen, plen
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(20), 2);
        _mac.CopyTo(r, 22);                             // sender hardware address: us
        _ip.CopyTo(r, 28);                              // sender protocol address: us
        arp.Slice(8, 10).CopyTo(r.AsSpan(32));          // target: the requester's MAC and IP
        Interlocked.Increment(ref _arpReplies);
        return r;
    }

    private byte[]? EchoReply(ReadOnlySpan<byte> f)
    {
        var ip = f[14..];
        if (ip.Length < 20 || (ip[0] >> 4) != 4)
        {
            return null;
        }

        int headerLength = (ip[0] & 0xF) * 4;
        int totalLength = BinaryPrimitives.ReadUInt16BigEndian(ip[2..]);
        if (headerLength < 20 || totalLength < headerLength + 8 || totalLength > ip.Length || ip[9] != 1 || !ip.Slice(16, 4).SequenceEqual(_ip)
            || ip[headerLength] != 8 || !f[..6].SequenceEqual(_mac))
        {
            return null;
        }

        var r = new byte[14 + totalLength];
        f.Slice(6, 6).CopyTo(r);
        _mac.CopyTo(r, 6);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(12), EtherTypeIpv4);
        var rip = r.AsSpan(14, totalLength);
        ip[..totalLength].CopyTo(rip);
        ip.Slice(12, 4).CopyTo(rip[16..]);              // destination: the requester
        _ip.CopyTo(rip[12..]);                           // source: us
        rip[8] = 64;
        rip[10] = rip[11] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(rip[10..], Checksum(rip[..headerLength]));
        var icmp = rip[headerLength..];
        icmp[0] = 0;                                     // echo reply; identifier, sequence and data stay
        icmp[2] = icmp[3] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(icmp[2..], Checksum(icmp));
        Interlocked.Increment(ref _echoReplies);
        return r;
    }

    private static ushort Checksum(ReadOnlySpan<byte> data)
    {
        uint sum = 0;
        for (int i = 0; i + 1 < data.Length; i += 2)
        {
            sum += BinaryPrimitives.ReadUInt16BigEndian(data[i..]);
        }

        if ((data.Length & 1) != 0)
        {
            sum += (uint)data[^1] << 8;
        }

        while (sum > 0xFFFF)
        {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }

        return (ushort)~sum;
    }
}
