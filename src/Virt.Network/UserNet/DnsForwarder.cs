using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Virt.Network.UserNet;

/// <summary>
/// The DNS forwarder at the network's DNS addresses (IPv4 and IPv6). With an upstream server it relays each query as
/// it is and the answer back; without one it answers A and AAAA queries from the host's resolver (<see cref="Dns"/>),
/// other types with an empty answer. At most <see cref="MaxPending"/> queries are in flight; each gets 5 seconds.
/// </summary>
internal sealed class DnsForwarder(UserModeNetwork net, IPEndPoint? upstream, uint gateway, UInt128? gateway6, bool loopbackIsGateway) : IDisposable
{
    public const ushort Port = 53;
    public const int MaxPending = 32;
    private const int HeaderSize = 12;
    private const ushort TypeA = 1;
    private const ushort TypeAaaa = 28;
    private const ushort ClassIn = 1;
    private const int MaxAnswers = 16;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);

    private readonly CancellationTokenSource _closing = new();
    private readonly HashSet<Task> _inFlight = [];
    private int _pending;

    /// <summary>Starts answering <paramref name="query"/> (under the stack's lock); false when too many are in flight.</summary>
    public bool Handle(ReadOnlySpan<byte> query, UInt128 guestIp, ushort guestPort, UInt128 server)
    {
        if (query.Length < HeaderSize || _pending >= MaxPending || (query[2] & 0x80) != 0)
        {
            return false; // too short, too many, or a response rather than a query
        }

        _pending++;
        byte[] copy = query.ToArray();
        var task = upstream is null ? ResolveAsync(copy, guestIp, guestPort, server) : ForwardAsync(copy, guestIp, guestPort, server);
        if (!task.IsCompleted)
        {
            _inFlight.Add(task);
            _ = task.ContinueWith(t => net.Locked(() => _inFlight.Remove(t)), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        }

        return true;
    }

    /// <summary>Cancels the queries in flight (under the stack's lock); the returned task ends when their sockets are closed.</summary>
    public Task CloseAsync()
    {
        _closing.Cancel();
        return Task.WhenAll(_inFlight);
    }

    /// <inheritdoc />
    public void Dispose() => _closing.Dispose();

    private async Task ForwardAsync(byte[] query, UInt128 guestIp, ushort guestPort, UInt128 server)
    {
        byte[]? answer = null;
        var socket = new Socket(upstream!.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        net.Locked(() => net.CountSocket(+1));
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_closing.Token);
            timeout.CancelAfter(Timeout);
            await socket.ConnectAsync(upstream, timeout.Token).ConfigureAwait(false);
            await socket.SendAsync(query, SocketFlags.None, timeout.Token).ConfigureAwait(false);
            var buffer = new byte[Proto.MaxDatagram];
            while (answer is null)
            {
                int n = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token).ConfigureAwait(false);
                if (n >= HeaderSize && buffer[0] == query[0] && buffer[1] == query[1])
                {
                    answer = buffer[..n];
                }
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // No answer: the guest's resolver retries or gives up, as with a lost datagram.
        }
        finally
        {
            socket.Dispose();
            net.Locked(() => net.CountSocket(-1));
        }

        Finish(answer, guestIp, guestPort, server);
    }

    private async Task ResolveAsync(byte[] query, UInt128 guestIp, ushort guestPort, UInt128 server)
    {
        byte[]? answer = null;
        if (TryReadQuestion(query, out string? name, out ushort type, out ushort qclass, out int questionEnd))
        {
            IPAddress[] addresses = [];
            byte rcode = 0;
            if (type is TypeA or TypeAaaa && qclass == ClassIn)
            {
                try
                {
                    using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_closing.Token);
                    timeout.CancelAfter(Timeout);
                    var family = type == TypeA ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
                    addresses = await Dns.GetHostAddressesAsync(name, family, timeout.Token).ConfigureAwait(false);
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException or ArgumentException)
                {
                    rcode = 3; // NXDOMAIN
                }
            }

            answer = BuildAnswer(query.AsSpan(0, questionEnd), rcode, addresses, type);
        }
        else if (query.Length >= HeaderSize)
        {
            answer = BuildAnswer(query.AsSpan(0, HeaderSize), 4, [], 0); // NOTIMP: not one plain question
        }

        Finish(answer, guestIp, guestPort, server);
    }

    private void Finish(byte[]? answer, UInt128 guestIp, ushort guestPort, UInt128 server) => net.Locked(() =>
    {
        _pending--;
        if (answer is not null && answer.Length <= (Ip6.IsMapped(guestIp) ? Proto.MaxDatagram : Proto.MaxDatagram6))
        {
            net.CountDnsQuery();
            net.SendUdpToGuest(server, Port, guestIp, guestPort, answer);
        }
    });

    /// <summary>Reads the single question of a standard query: labels of 1 to 63 bytes (no compression), a name of at most 255 bytes.</summary>
    internal static bool TryReadQuestion(ReadOnlySpan<byte> q, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? name, out ushort type, out ushort qclass, out int end)
    {
        name = null;
        type = qclass = 0;
        end = 0;
        if (q.Length < HeaderSize || ((q[2] >> 3) & 0xF) != 0 || BinaryPrimitives.ReadUInt16BigEndian(q[4..]) != 1)
        {
            return false;
        }

        var text = new StringBuilder();
        int o = HeaderSize;
        while (true)
        {
            if (o >= q.Length)
            {
                return false;
            }

            int length = q[o++];
            if (length == 0)
            {
                break;
            }

            if (length > 63 || o + length > q.Length || o - HeaderSize + length > 255)
            {
                return false; // a compression pointer, an overlong label, or a label past the end
            }

            if (text.Length > 0)
            {
                text.Append('.');
            }

            foreach (byte b in q.Slice(o, length))
            {
                if (b is < 0x21 or > 0x7E)
                {
                    return false;
                }

                text.Append((char)b);
            }

            o += length;
        }

        if (o + 4 > q.Length || text.Length == 0)
        {
            return false;
        }

        type = BinaryPrimitives.ReadUInt16BigEndian(q[o..]);
        qclass = BinaryPrimitives.ReadUInt16BigEndian(q[(o + 2)..]);
        end = o + 4;
        name = text.ToString();
        return true;
    }

    private byte[] BuildAnswer(ReadOnlySpan<byte> queryUpToQuestion, byte rcode, IPAddress[] addresses, ushort type)
    {
        var family = type == TypeAaaa ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork;
        int size = family == AddressFamily.InterNetwork ? 4 : 16;
        var records = addresses.Where(a => a.AddressFamily == family && !(a.IsIPv6LinkLocal || a.IsIPv6Multicast)).Take(MaxAnswers).ToArray();
        var r = new byte[queryUpToQuestion.Length + (records.Length * (12 + size))];
        queryUpToQuestion.CopyTo(r);
        bool hasQuestion = queryUpToQuestion.Length > HeaderSize;
        r[2] = (byte)(0x80 | (r[2] & 0x79));  // QR, the query's opcode and RD
        r[3] = (byte)(0x80 | rcode);          // RA
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(4), (ushort)(hasQuestion ? 1 : 0));
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(6), (ushort)records.Length);
        BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(8), 0); // no authority or additional records
        int o = queryUpToQuestion.Length;
        foreach (var address in records)
        {
            BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(o), 0xC00C); // the question's name
            BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(o + 2), type);
            BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(o + 4), ClassIn);
            BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(o + 6), 60);
            BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(o + 10), (ushort)size);
            if (size == 4)
            {
                uint value = Ip4.From(address, nameof(addresses));
                Ip4.Write(r.AsSpan(o + 12), loopbackIsGateway && (value >> 24) == 127 ? gateway : value); // the host's loopback is the gateway inside
            }
            else
            {
                UInt128 value = Ip6.From(address);
                Ip6.Write(r.AsSpan(o + 12), loopbackIsGateway && gateway6 is UInt128 g6 && IPAddress.IsLoopback(address) ? g6 : value);
            }

            o += 12 + size;
        }

        return r;
    }
}
