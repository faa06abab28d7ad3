using System.Buffers.Binary;
using Virt.Memory;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>The zero-copy path (guest buffers straight to preadv/pwritev) and several requests in flight.</summary>
public sealed class BlockFastPathTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Formats() => new() { "raw", "qcow2" };

    [Theory]
    [MemberData(nameof(Formats))]
    public async Task Batch_of_scattered_reads_and_writes_with_a_flush_between_completes_in_order_with_the_right_bytes(string format)
    {
        using var dir = new TempDir();
        string path = dir.File("disk." + format);
        DiskImage.Create(path, 4 << 20, format == "raw" ? DiskFormat.Raw : DiskFormat.Qcow2, clusterSize: 4096);
        var model = new byte[4 << 20];
        await using var backend = DiskImage.Open(path);
        using var rig = new BlockRig(backend);
        var random = new Random(5);

        // Round 1 writes (each request's data split over three buffers of odd sizes), round 2 reads them back;
        // each round is published at once so the device takes the requests together, with a FLUSH in the middle.
        var reads = new List<(GuestAddress[] Parts, int[] Sizes, long Offset, int Length)>();
        for (int round = 0; round < 2; round++)
        {
            rig.Driver.ResetAllocations();
            var statuses = new List<GuestAddress>();
            var heads = new List<uint>();
            reads.Clear();
            for (int r = 0; r < 10; r++)
            {
                int length = random.Next(1, 40) * 512;
                long offset = random.Next((4 << 20) / 512 - 40) * 512L;
                if (round == 1)
                {
                    offset = r * 65536L;
                    length = 40 * 512;
                }

                var header = rig.Driver.Allocate(16);
                var h = new byte[16];
                BinaryPrimitives.WriteUInt32LittleEndian(h, r == 5 ? 4u : round == 0 ? 1u : 0u);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), (ulong)(offset / 512));
                rig.Memory.Write(header, h);
                var status = rig.Driver.Allocate(1);
                rig.Memory.Write(status, (byte)0xff);
                statuses.Add(status);
                if (r == 5)
                {
                    heads.Add(rig.Queue.AddChain((header, 16, false), (status, 1, true)));
                    continue;
                }

                int a = length / 3, b = length / 3 + 17;
                var parts = new[] { rig.Driver.Allocate((uint)a), rig.Driver.Allocate((uint)b), rig.Driver.Allocate((uint)(length - a - b)) };
                if (round == 0)
                {
                    var data = new byte[length];
                    random.NextBytes(data);
                    rig.Memory.Write(parts[0], data.AsSpan(0, a));
                    rig.Memory.Write(parts[1], data.AsSpan(a, b));
                    rig.Memory.Write(parts[2], data.AsSpan(a + b));
                    data.CopyTo(model, offset);
                    heads.Add(rig.Queue.AddChain((header, 16, false), (parts[0], (uint)a, false), (parts[1], (uint)b, false), (parts[2], (uint)(length - a - b), false), (status, 1, true)));
                }
                else
                {
                    reads.Add((parts, [a, b, length - a - b], offset, length));
                    heads.Add(rig.Queue.AddChain((header, 16, false), (parts[0], (uint)a, true), (parts[1], (uint)b, true), (parts[2], (uint)(length - a - b), true), (status, 1, true)));
                }
            }

            rig.Driver.Notify(0);
            var order = new List<uint>();
            for (int r = 0; r < 10; r++)
            {
                order.Add(rig.Queue.WaitUsed().Id);
            }

            Assert.Equal(heads, order);
            Assert.All(statuses, s => Assert.Equal(0, rig.Memory.Read<byte>(s)));
        }

        Assert.Equal(9, reads.Count);
        foreach (var (parts, sizes, offset, length) in reads)
        {
            var read = new byte[length];
            rig.Memory.Read(parts[0], read.AsSpan(0, sizes[0]));
            rig.Memory.Read(parts[1], read.AsSpan(sizes[0], sizes[1]));
            rig.Memory.Read(parts[2], read.AsSpan(sizes[0] + sizes[1]));
            Assert.Equal(model.AsSpan((int)offset, length).ToArray(), read);
        }

        var all = new byte[model.Length];
        await backend.ReadAsync(0, all, Ct);
        Assert.Equal(model, all);
    }
}
