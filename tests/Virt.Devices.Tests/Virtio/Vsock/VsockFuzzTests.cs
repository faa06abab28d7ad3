using System.Buffers.Binary;
using Virt.Devices.Virtio;
using Xunit;

namespace Virt.Devices.Tests.Virtio.Vsock;

/// <summary>
/// A million packets of guest-controlled bytes through the vsock packet parser and the connection state machine:
/// nothing throws, every packet produced for the guest is well formed, and the tables stay bounded.
/// </summary>
public sealed class VsockFuzzTests
{
    [Fact]
    public async Task A_million_random_packets_are_parsed_and_handled_without_throwing()
    {
        const ulong GuestCid = 3;
        int refusals = 0;
        var mux = new VsockMultiplexer(GuestCid, _ => refusals++, TimeSpan.FromMilliseconds(1));
        var listeners = new[] { mux.Listen(1), mux.Listen(2) };
        var random = new Random(20260);
        byte[] packet = new byte[VsockHeader.Size + 256];
        byte[] output = new byte[VsockHeader.Size + 4096];
        var streams = new List<VsockStream>();
        int produced = 0;

        for (int i = 0; i < 1_000_000; i++)
        {
            Fill(random, packet);
            long readable = random.Next(8) == 0 ? random.Next(0, packet.Length + 1) : VsockHeader.Size + (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(packet.AsSpan(24)), 256u);
            var parsed = VsockPacketParser.Parse(packet.AsSpan(0, (int)Math.Min(readable, VsockHeader.Size)), readable, GuestCid);
            int payload = parsed.Verdict == VsockVerdict.Accept ? (int)parsed.Header.Length : 0;
            mux.HandleFromGuest(parsed, packet.AsSpan(VsockHeader.Size, payload));

            if (random.Next(4) == 0)
            {
                int room = random.Next(VsockHeader.Size - 4, output.Length + 1);
                if (mux.TryTakePacketForGuest(output.AsSpan(0, room), out int length))
                {
                    produced++;
                    CheckProduced(output.AsSpan(0, length), room, GuestCid);
                }
            }

            if (i % 50_000 == 0)
            {
                await ServeHostSideAsync(mux, listeners, streams, random);
            }
        }

        Assert.True(refusals > 0);
        Assert.True(produced > 10_000, $"only {produced} packets for the guest");
        Assert.True(mux.ConnectionCount <= VsockMultiplexer.MaxConnections);
        foreach (var s in streams)
        {
            await s.DisposeAsync();
        }
    }

    /// <summary>Biased towards valid values so that the state machine gets past the parser.</summary>
    private static void Fill(Random random, byte[] packet)
    {
        random.NextBytes(packet);
        var p = packet.AsSpan();
        if (random.Next(10) > 0)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(p, random.Next(20) == 0 ? (ulong)random.NextInt64() : 3);
            BinaryPrimitives.WriteUInt64LittleEndian(p[8..], random.Next(20) == 0 ? (ulong)random.NextInt64() : 2);
            BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)random.Next(6));
            BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)random.Next(4));
            BinaryPrimitives.WriteUInt32LittleEndian(p[24..], random.Next(3) == 0 ? 0 : (uint)random.Next(300));
            BinaryPrimitives.WriteUInt16LittleEndian(p[28..], (ushort)(random.Next(20) == 0 ? random.Next(4) : 1));
            BinaryPrimitives.WriteUInt16LittleEndian(p[30..], (ushort)random.Next(9));
            BinaryPrimitives.WriteUInt32LittleEndian(p[32..], (uint)random.Next(5));
            BinaryPrimitives.WriteUInt32LittleEndian(p[36..], (uint)random.Next(3) switch { 0 => 0, 1 => 512, _ => uint.MaxValue });
            BinaryPrimitives.WriteUInt32LittleEndian(p[40..], (uint)random.Next(3) switch { 0 => 0, 1 => 64, _ => (uint)random.Next() });
        }
    }

    private static void CheckProduced(ReadOnlySpan<byte> bytes, int room, ulong guestCid)
    {
        Assert.True(bytes.Length >= VsockHeader.Size && bytes.Length <= room);
        var h = VsockHeader.Read(bytes);
        Assert.Equal(VsockProtocol.HostCid, h.SourceCid);
        Assert.Equal(guestCid, h.DestinationCid);
        Assert.Equal(VsockProtocol.TypeStream, h.Type);
        Assert.InRange(h.Op, VsockProtocol.OpRequest, VsockProtocol.OpCreditRequest);
        Assert.Equal(bytes.Length - VsockHeader.Size, (int)h.Length);
    }

    /// <summary>Accepts what waits, reads and writes a little, closes some streams.</summary>
    private static async Task ServeHostSideAsync(VsockMultiplexer mux, VsockListener[] listeners, List<VsockStream> streams, Random random)
    {
        using var none = new CancellationTokenSource();
        await none.CancelAsync();
        foreach (var l in listeners)
        {
            while (true)
            {
                var accept = l.AcceptAsync(none.Token);
                if (!accept.IsCompletedSuccessfully)
                {
                    break;
                }

                streams.Add(accept.Result);
            }
        }

        foreach (var s in streams.ToArray())
        {
            try
            {
                var read = s.ReadAsync(new byte[512], none.Token);
                if (read.IsCompleted)
                {
                    _ = read.IsCompletedSuccessfully ? read.Result : 0;
                }

                var write = s.WriteAsync(new byte[random.Next(1, 2000)], none.Token);
                _ = write.IsCompleted;
            }
            catch (Exception e) when (e is IOException or InvalidOperationException or OperationCanceledException)
            {
                // A connection the guest ended.
            }

            if (random.Next(3) == 0)
            {
                await s.DisposeAsync();
                streams.Remove(s);
            }
        }

        Assert.True(mux.ConnectionCount <= VsockMultiplexer.MaxConnections);
    }
}
