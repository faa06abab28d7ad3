using System.Buffers.Binary;

namespace Virt.Network.UserNet;

/// <summary>What became of a fragment given to the <see cref="Ipv4Reassembler"/>.</summary>
internal enum FragmentResult
{
    /// <summary>Kept; the datagram is not complete yet.</summary>
    Held,

    /// <summary>The datagram is complete (returned whole).</summary>
    Complete,

    /// <summary>Refused: malformed, overlapping, past a limit, or part of a datagram already thrown away.</summary>
    Dropped,
}

/// <summary>
/// Puts fragmented IPv4 datagrams (RFC 791) and IPv6 packets (RFC 8200 4.5) from the guest back together, with
/// bounded memory shared by both: at most
/// <see cref="MaxDatagrams"/> datagrams in progress, <see cref="MaxBufferedBytes"/> bytes held in all, 64 fragments
/// per datagram, and <see cref="TimeoutMs"/> to complete each. Any overlap between fragments other than an exact
/// duplicate throws the whole datagram away, and its later fragments too until the timeout, so overlapping
/// fragments can never rewrite a header or payload the checks already saw (the attack of RFC 1858 and RFC 3128).
/// Runs under the stack's lock.
/// </summary>
internal sealed class Ipv4Reassembler
{
    public const int MaxDatagrams = 64;
    public const int MaxBufferedBytes = 1024 * 1024;
    public const int MaxFragments = 64;
    public const long TimeoutMs = 15_000;

    /// <summary>Largest datagram payload: the total length field's 65535 minus a 20-byte header.</summary>
    private const int MaxPayload = 65535 - Proto.Ipv4Header;

    /// <summary>Largest reassembled IPv6 payload: what the payload length field can say.</summary>
    private const int MaxPayload6 = 65535;

    /// <summary>Keyed by addresses (IPv4 ones IPv4-mapped), protocol (0 for IPv6, whose key has none) and identification.</summary>
    private readonly Dictionary<(UInt128 Source, UInt128 Destination, byte Protocol, uint Id), Pending> _pending = [];
    private int _buffered;

    /// <summary>Bytes held in unfinished datagrams now.</summary>
    public int BufferedBytes => _buffered;

    /// <summary>Datagrams in progress (or thrown away and still remembered) now.</summary>
    public int PendingDatagrams => _pending.Count;

    /// <summary>Datagrams completed.</summary>
    public long Reassembled { get; private set; }

    /// <summary>Datagrams thrown away: overlaps, inconsistent lengths, limits, timeouts.</summary>
    public long Discarded { get; private set; }

    /// <summary>
    /// Adds one fragment. On <see cref="FragmentResult.Complete"/>, <paramref name="datagram"/> holds the whole
    /// datagram as an IPv4 packet (a 20-byte header without options or fragment fields, then the payload).
    /// </summary>
    public FragmentResult Add(in Ipv4Packet fragment, long now, out byte[]? datagram) =>
        Add((Ip6.Mapped(fragment.Source), Ip6.Mapped(fragment.Destination), fragment.Protocol, fragment.Identification),
            fragment.FragmentOffset, fragment.MoreFragments, fragment.Payload, v6: false, fragment.Protocol, now, out datagram);

    /// <summary>
    /// Adds one IPv6 fragment (a packet with a fragment header). On <see cref="FragmentResult.Complete"/>,
    /// <paramref name="packet"/> holds the whole packet as IPv6: a 40-byte header whose next header is the first
    /// fragment's, then the fragmentable part (which may start with further extension headers, parsed again).
    /// </summary>
    public FragmentResult Add(in Ipv6Packet fragment, long now, out byte[]? packet) =>
        Add((fragment.Source, fragment.Destination, 0, fragment.Identification),
            fragment.FragmentOffset, fragment.MoreFragments, fragment.Payload, v6: true, fragment.Protocol, now, out packet);

    private FragmentResult Add((UInt128, UInt128, byte, uint) key, int offset, bool moreFragments, ReadOnlySpan<byte> data, bool v6, byte protocol, long now, out byte[]? datagram)
    {
        datagram = null;
        int end = offset + data.Length;
        _pending.TryGetValue(key, out var p);
        if (p is not null && now >= p.Deadline)
        {
            Remove(key, p, discarded: !p.Poisoned);
            p = null;
        }

        if (p is { Poisoned: true })
        {
            return FragmentResult.Dropped;
        }

        // Every fragment but the last carries a multiple of 8 bytes; none is empty or reaches past 65535.
        if (data.IsEmpty || end > (v6 ? MaxPayload6 : MaxPayload) || (moreFragments && (data.Length & 7) != 0))
        {
            if (p is not null)
            {
                Poison(p);
            }

            return FragmentResult.Dropped;
        }

        if (p is null)
        {
            if (_pending.Count >= MaxDatagrams)
            {
                Expire(now);
            }

            if (_pending.Count >= MaxDatagrams || _buffered + data.Length > MaxBufferedBytes)
            {
                Discarded++;
                return FragmentResult.Dropped;
            }

            p = new Pending { Deadline = now + TimeoutMs };
            _pending[key] = p;
        }

        switch (Check(p, offset, data, moreFragments))
        {
            case FragmentResult.Held:
                return FragmentResult.Held; // an exact duplicate (the network repeated it): nothing changes
            case FragmentResult.Dropped:
                Poison(p);
                return FragmentResult.Dropped;
        }

        if (!moreFragments)
        {
            p.Total = end;
        }

        if (offset == 0)
        {
            p.Protocol = protocol; // IPv6: the first fragment's next header is the packet's (RFC 8200 4.5)
        }

        p.Fragments.Add((offset, data.ToArray()));
        p.Bytes += data.Length;
        _buffered += data.Length;
        if (p.Total < 0 || p.Bytes != p.Total)
        {
            return FragmentResult.Held; // fragments never overlap, so the datagram is whole when their sizes add up
        }

        datagram = v6 ? Build6(p, key.Item1, key.Item2) : Build(p, key);
        Remove(key, p, discarded: false);
        Reassembled++;
        return FragmentResult.Complete;
    }

    /// <summary>Forgets datagrams past their deadline (unfinished ones count as discarded).</summary>
    public void Expire(long now)
    {
        foreach (var (key, p) in _pending.Where(e => now >= e.Value.Deadline).ToList())
        {
            Remove(key, p, discarded: !p.Poisoned);
        }
    }

    /// <summary>
    /// Whether a new piece fits the datagram: <see cref="FragmentResult.Complete"/> when it may be added,
    /// <see cref="FragmentResult.Held"/> for an exact duplicate, <see cref="FragmentResult.Dropped"/> for an overlap,
    /// a length that contradicts the others, or a limit.
    /// </summary>
    private FragmentResult Check(Pending p, int offset, ReadOnlySpan<byte> data, bool more)
    {
        int end = offset + data.Length;
        foreach (var (o, bytes) in p.Fragments)
        {
            if (o < end && offset < o + bytes.Length)
            {
                return o == offset && data.SequenceEqual(bytes) ? FragmentResult.Held : FragmentResult.Dropped;
            }
        }

        bool lengthConflict = more
            ? p.Total >= 0 && end >= p.Total
            : (p.Total >= 0 && p.Total != end) || p.Fragments.Exists(f => f.Offset + f.Data.Length > end);
        return lengthConflict || p.Fragments.Count >= MaxFragments || _buffered + data.Length > MaxBufferedBytes
            ? FragmentResult.Dropped
            : FragmentResult.Complete;
    }

    private static byte[] Build6(Pending p, UInt128 source, UInt128 destination)
    {
        var whole = new byte[Proto.Ipv6Header + p.Total];
        whole[0] = 0x60;
        BinaryPrimitives.WriteUInt16BigEndian(whole.AsSpan(4), (ushort)p.Total);
        whole[6] = p.Protocol;
        whole[7] = 64;
        Ip6.Write(whole.AsSpan(8), source);
        Ip6.Write(whole.AsSpan(24), destination);
        foreach (var (o, bytes) in p.Fragments)
        {
            bytes.CopyTo(whole, Proto.Ipv6Header + o);
        }

        return whole;
    }

    private static byte[] Build(Pending p, (UInt128 Source, UInt128 Destination, byte Protocol, uint Id) key)
    {
        var whole = new byte[Proto.Ipv4Header + p.Total];
        whole[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(whole.AsSpan(2), (ushort)whole.Length);
        BinaryPrimitives.WriteUInt16BigEndian(whole.AsSpan(4), (ushort)key.Id);
        whole[8] = 64;
        whole[9] = key.Protocol;
        Ip4.Write(whole.AsSpan(12), Ip6.V4(key.Source));
        Ip4.Write(whole.AsSpan(16), Ip6.V4(key.Destination));
        BinaryPrimitives.WriteUInt16BigEndian(whole.AsSpan(10), Checksum.Fold(Checksum.Add(whole.AsSpan(0, Proto.Ipv4Header))));
        foreach (var (o, bytes) in p.Fragments)
        {
            bytes.CopyTo(whole, Proto.Ipv4Header + o);
        }

        return whole;
    }

    /// <summary>Throws the datagram's fragments away and remembers its key until the deadline, so later fragments are refused too.</summary>
    private void Poison(Pending p)
    {
        _buffered -= p.Bytes;
        p.Bytes = 0;
        p.Fragments.Clear();
        p.Poisoned = true;
        Discarded++;
    }

    private void Remove((UInt128, UInt128, byte, uint) key, Pending p, bool discarded)
    {
        _buffered -= p.Bytes;
        _pending.Remove(key);
        if (discarded)
        {
            Discarded++;
        }
    }

    private sealed class Pending
    {
        public List<(int Offset, byte[] Data)> Fragments { get; } = [];

        public int Total { get; set; } = -1;

        public int Bytes { get; set; }

        public long Deadline { get; init; }

        public bool Poisoned { get; set; }

        /// <summary>IPv6: the next header of the first fragment (offset 0), once it came.</summary>
        public byte Protocol { get; set; }
    }
}
