using System.Buffers.Binary;

namespace Virt.Network.UserNet;

/// <summary>
/// The DHCP server (RFC 2131) of the user-mode network: hands each guest MAC address a fixed address from the
/// subnet, with the gateway as router and the DNS forwarder as name server. Leases never expire early: the table
/// is bounded by the subnet.
/// </summary>
internal sealed class DhcpServer(uint network, uint mask, uint gateway, uint dns, uint firstGuest, uint leaseSeconds)
{
    public const ushort ServerPort = 67;
    public const ushort ClientPort = 68;

    private const int BootpFixed = 236;
    private const uint MagicCookie = 0x6382_5363;
    private const byte Discover = 1;
    private const byte Offer = 2;
    private const byte Request = 3;
    private const byte Decline = 4;
    private const byte AckType = 5;
    private const byte Nak = 6;
    private const byte Inform = 8;
    private const byte OptionMask = 1;
    private const byte OptionRouter = 3;
    private const byte OptionDns = 6;
    private const byte OptionRequestedIp = 50;
    private const byte OptionLeaseTime = 51;
    private const byte OptionMessageType = 53;
    private const byte OptionServerId = 54;
    private const byte OptionEnd = 255;

    private readonly Dictionary<MacAddress, uint> _leases = [];
    private uint _next = firstGuest;

    /// <summary>Addresses handed out, by MAC.</summary>
    public IReadOnlyDictionary<MacAddress, uint> Leases => _leases;

    /// <summary>Answers one client message; null when it gets no answer (malformed, not for us, subnet full).</summary>
    public byte[]? Handle(ReadOnlySpan<byte> message, out bool acked)
    {
        acked = false;
        if (message.Length < BootpFixed + 4 || message[0] != 1 || message[1] != 1 || message[2] != 6
            || BinaryPrimitives.ReadUInt32BigEndian(message[BootpFixed..]) != MagicCookie)
        {
            return null;
        }

        if (!TryReadOptions(message[(BootpFixed + 4)..], out byte type, out uint requested, out uint serverId))
        {
            return null;
        }

        var mac = MacAddress.FromBytes(message.Slice(28, 6));
        if (mac.IsMulticast)
        {
            return null;
        }

        uint ciaddr = Ip4.Read(message[12..]);
        switch (type)
        {
            case Discover:
                return Lease(mac) is uint offered ? Reply(message, Offer, offered) : null;

            case Request:
                if (serverId != 0 && serverId != gateway)
                {
                    return null; // the client chose another server
                }

                uint wanted = requested != 0 ? requested : ciaddr;
                if (Lease(mac) is not uint address || (wanted != 0 && wanted != address))
                {
                    return Reply(message, Nak, 0);
                }

                acked = true;
                return Reply(message, AckType, address);

            case Inform:
                return Reply(message, AckType, 0);

            case Decline:
            default:
                return null;
        }
    }

    private static bool TryReadOptions(ReadOnlySpan<byte> options, out byte type, out uint requested, out uint serverId)
    {
        type = 0;
        requested = serverId = 0;
        while (!options.IsEmpty && options[0] != OptionEnd)
        {
            if (options[0] == 0)
            {
                options = options[1..]; // pad
                continue;
            }

            if (options.Length < 2 || 2 + options[1] > options.Length)
            {
                return false;
            }

            var value = options.Slice(2, options[1]);
            switch (options[0])
            {
                case OptionMessageType when value.Length == 1:
                    type = value[0];
                    break;
                case OptionRequestedIp when value.Length == 4:
                    requested = Ip4.Read(value);
                    break;
                case OptionServerId when value.Length == 4:
                    serverId = Ip4.Read(value);
                    break;
            }

            options = options[(2 + options[1])..];
        }

        return true;
    }

    private uint? Lease(MacAddress mac)
    {
        if (_leases.TryGetValue(mac, out uint address))
        {
            return address;
        }

        while ((_next & mask) == network && _next != (network | ~mask))
        {
            uint candidate = _next++;
            if (candidate != gateway && candidate != dns)
            {
                _leases[mac] = candidate;
                return candidate;
            }
        }

        return null; // the subnet is exhausted
    }

    private byte[] Reply(ReadOnlySpan<byte> request, byte type, uint yiaddr)
    {
        var r = new byte[BootpFixed + 4 + 64];
        r[0] = 2; // BOOTREPLY
        r[1] = 1;
        r[2] = 6;
        request.Slice(4, 4).CopyTo(r.AsSpan(4));    // xid
        request.Slice(10, 2).CopyTo(r.AsSpan(10));  // flags
        if (type != Nak)
        {
            request.Slice(12, 4).CopyTo(r.AsSpan(12)); // ciaddr
        }

        Ip4.Write(r.AsSpan(16), yiaddr);
        Ip4.Write(r.AsSpan(20), gateway);             // siaddr
        request.Slice(28, 16).CopyTo(r.AsSpan(28));  // chaddr
        BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(BootpFixed), MagicCookie);
        int o = BootpFixed + 4;
        r[o++] = OptionMessageType;
        r[o++] = 1;
        r[o++] = type;
        o = Address(r, o, OptionServerId, gateway);
        if (type != Nak)
        {
            if (yiaddr != 0)
            {
                r[o++] = OptionLeaseTime;
                r[o++] = 4;
                BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(o), leaseSeconds);
                o += 4;
            }

            o = Address(r, o, OptionMask, mask);
            o = Address(r, o, OptionRouter, gateway);
            o = Address(r, o, OptionDns, dns);
        }

        r[o++] = OptionEnd;
        return r[..Math.Max(o, 300)]; // BOOTP minimum message size
    }

    private static int Address(byte[] r, int o, byte option, uint value)
    {
        r[o] = option;
        r[o + 1] = 4;
        Ip4.Write(r.AsSpan(o + 2), value);
        return o + 6;
    }
}
