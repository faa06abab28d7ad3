using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// Power cuts during metadata updates: every write the qcow2 code sends to the file is recorded with the syncs
/// between them; an image is rebuilt as a disk could have left it at a random cut (everything before the last
/// completed sync, plus any subset of the writes after it, some torn at a sector boundary) and handed to
/// <c>qemu-img check</c>, which must find no corruption (leaked clusters are allowed: they waste space only).
/// </summary>
public sealed class Qcow2CrashTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private sealed class RecordingStore(MemoryImageStore inner) : ImageStore
    {
        public List<(long Offset, byte[] Data)?> Log { get; } = [];

        public override long Length => inner.Length;

        public override void Read(long offset, Span<byte> destination) => inner.Read(offset, destination);

        public override void Write(long offset, ReadOnlySpan<byte> source)
        {
            Log.Add((offset, source.ToArray()));
            inner.Write(offset, source);
        }

        /// <summary>A sync is a null entry in the log.</summary>
        public override void Flush() => Log.Add(null);
    }

    [Theory]
    [InlineData(512, false, false)]
    [InlineData(4096, true, false)]
    [InlineData(65536, false, false)]
    [InlineData(16384, true, true)]
    public async Task Cut_at_any_point_of_a_metadata_update_leaves_an_image_qemu_img_check_accepts(int clusterSize, bool backing, bool extendedL2)
    {
        QemuImg.Require();
        using var dir = new TempDir();
        const long size = 12 << 20;
        var initial = new MemoryImageStore([], limit: 256L << 20);
        Qcow2Format.Create(initial, size, System.Numerics.BitOperations.Log2((uint)clusterSize), backing ? "base.raw" : null, backing ? "raw" : null, extendedL2);
        byte[] start = initial.Contents.ToArray();
        if (backing)
        {
            var baseBytes = new byte[size];
            new Random(2).NextBytes(baseBytes);
            await File.WriteAllBytesAsync(dir.File("base.raw"), baseBytes, Ct);
        }

        // The workload: allocating writes (small and large, enough to move the refcount table with small
        // clusters), rewrites, zeroes and discards, with guest flushes in between.
        var recorder = new RecordingStore(new MemoryImageStore(start.ToArray(), limit: 256L << 20));
        var disk = Qcow2BlockBackend.OpenStore(recorder, dir.File("disk.qcow2"), readOnly: false);
        var random = new Random(clusterSize);
        for (int op = 0; op < 80; op++)
        {
            int length = random.Next(4) == 0 ? 1 << 20 : random.Next(1, 64) * 512;
            long offset = random.NextInt64((size - length) / 512) * 512;
            switch (random.Next(6))
            {
                case 0:
                    await disk.DiscardAsync(offset, length, Ct);
                    break;
                case 1:
                    await disk.WriteZeroesAsync(offset, length, Ct);
                    break;
                default:
                    var data = new byte[length];
                    random.NextBytes(data);
                    await disk.WriteAsync(offset, data, Ct);
                    break;
            }

            if (random.Next(3) == 0)
            {
                await disk.FlushAsync(Ct);
            }
        }

        await disk.DisposeAsync();
        var log = recorder.Log;
        Assert.Contains(null, log);

        string path = dir.File("disk.qcow2");
        var cuts = new Random(clusterSize * 3);
        int checkedCuts = 0, leaky = 0;
        for (int trial = 0; trial < 40; trial++)
        {
            int cut = trial == 0 ? log.Count : cuts.Next(log.Count + 1);
            int lastSync = log.FindLastIndex(Math.Max(0, cut - 1), Math.Max(0, cut), e => e is null);
            var image = new MemoryImageStore(start.ToArray(), limit: 256L << 20);
            for (int i = 0; i < cut; i++)
            {
                if (log[i] is not var (offset, data))
                {
                    continue;
                }

                if (i < lastSync)
                {
                    image.Write(offset, data);
                }
                else if (cuts.Next(2) == 0)
                {
                    // After the last sync: this write may or may not have reached the disk, or only its first sectors.
                    int keep = cuts.Next(3) == 0 ? cuts.Next(data.Length / 512 + 1) * 512 : data.Length;
                    image.Write(offset, data.AsSpan(0, Math.Min(keep, data.Length)));
                }
            }

            await File.WriteAllBytesAsync(path, image.Contents.ToArray(), Ct);
            var (code, output) = QemuImg.Check(path);
            Assert.True(code is 0 or 3, $"cut at write {cut} of {log.Count} (last sync at {lastSync}): qemu-img check exited with {code}: {output}");
            if (trial == 0)
            {
                Assert.True(code == 0, $"the complete run left an image with faults: {output}");
            }

            leaky += code == 3 ? 1 : 0;
            checkedCuts++;

            // The library opens what the cut left and reads every byte of it.
            await using var reopened = Qcow2BlockBackend.Open(path, readOnly: true);
            var all = new byte[reopened.Capacity];
            await reopened.ReadAsync(0, all, Ct);
        }

        Assert.Equal(40, checkedCuts);
        Assert.True(leaky < checkedCuts, "every cut leaked clusters, even the complete run");
    }
}
