using System.Text.RegularExpressions;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>
/// Hostile images: a million corrupted qcow2 images (mutated in memory) each open and serve I/O or fail with a
/// <see cref="DiskImageException"/> that names the damaged field; none makes the parser read past the end of the
/// image, write outside it, or allocate in proportion to a table size the image claims.
/// </summary>
public sealed partial class Qcow2FuzzTests
{
    /// <summary>
    /// Corrupted images per run: 1,000,000 (VIRT_QCOW2_FUZZ_ITERATIONS sets another count, e.g. 10000000 for a longer
    /// search). Each iteration seeds its own generator from its index, so a count gives the same images on any machine.
    /// </summary>
    private static readonly int Iterations =
        int.TryParse(Environment.GetEnvironmentVariable("VIRT_QCOW2_FUZZ_ITERATIONS"), out int count) && count > 0 ? count : 1_000_000;

    /// <summary>Field names the parser's messages use.</summary>
    [GeneratedRegex("magic|version|cluster_bits|header_length|refcount_order|compression_type|incompatible_features|crypt_method|size|l1_size|l1_table_offset|refcount_table_clusters|refcount_table_offset|header extension|backing file format extension|backing_file|nb_snapshots|snapshots_offset|snapshot table|snapshot id|snapshot name|L1 entry|L2 entry|L2 bitmap|refcount table entry|refcount table|refcount|compressed cluster|header is cut short|has no room")]
    private static partial Regex FieldName();

    /// <summary>The fields a run of 1,000,000 mutated images names in its refusals (the other names the parser uses are not reached by mutation).</summary>
    private static readonly string[] ReachedFields =
    [
        "magic", "version", "cluster_bits", "header_length", "refcount_order", "compression_type", "incompatible_features",
        "crypt_method", "size", "l1_size", "l1_table_offset", "refcount_table_clusters", "refcount_table_offset",
        "header extension", "backing file format extension", "backing_file", "nb_snapshots", "snapshots_offset",
        "snapshot table", "L1 entry", "L2 entry", "L2 bitmap", "refcount table entry", "compressed cluster", "header is cut short",
    ];

    private static byte[][] Seeds()
    {
        var seeds = new List<byte[]>();
        // Extended L2 entries (subclusters) need clusters of 16 KiB at least.
        foreach (var (clusterSize, backing, extended) in new[] { (512, (string?)null, false), (2048, null, false), (512, "base.raw", false), (16384, null, true), (16384, "base.raw", true) })
        {
            var store = new MemoryImageStore([]);
            Qcow2Format.Create(store, 128 << 10, System.Numerics.BitOperations.Log2((uint)clusterSize), backing, backing is null ? null : "raw", extended);
            var image = Qcow2BlockBackend.OpenStore(store, "seed.qcow2", readOnly: false);
            var random = new Random(clusterSize);
            var data = new byte[2048];
            for (int i = 0; i < 8; i++)
            {
                random.NextBytes(data);
                image.WriteAsync(random.Next((128 << 10) / 512 - 8) * 512L, data.AsMemory(0, random.Next(1, 4) * 512), TestContext.Current.CancellationToken).AsTask().GetAwaiter().GetResult();
            }

            image.WriteZeroesAsync(64 << 10, 8192, TestContext.Current.CancellationToken).AsTask().GetAwaiter().GetResult();
            image.FlushAsync(TestContext.Current.CancellationToken).AsTask().GetAwaiter().GetResult();
            seeds.Add(store.Contents.ToArray());
        }

        // Compressed clusters (zlib and zstd) come from qemu-img: the library itself never writes them.
        if (QemuImg.Available)
        {
            using var dir = new TempDir();
            var text = new byte[128 << 10];
            for (int i = 0; i < text.Length; i++)
            {
                text[i] = (byte)('a' + ((i / 5) % 26));
            }

            File.WriteAllBytes(dir.File("text.raw"), text);
            foreach (string type in new[] { "zlib", "zstd" })
            {
                QemuImg.Run($"convert -f raw -O qcow2 -c -o cluster_size=4096,compression_type={type} \"{dir.File("text.raw")}\" \"{dir.File(type)}\"");
                seeds.Add(File.ReadAllBytes(dir.File(type)));
            }
        }

        return [.. seeds];
    }

    [Fact]
    public void Corrupted_images_open_or_fail_naming_the_field_without_touching_anything_outside_the_image()
    {
        var seeds = Seeds();

        int opened = 0, refused = 0;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var named = new System.Collections.Concurrent.ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        int workers = Math.Max(2, Environment.ProcessorCount);
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, worker =>
        {
            var buffer = new byte[1 << 20];
            int localOpened = 0, localRefused = 0;
            var localNamed = new Dictionary<string, int>(StringComparer.Ordinal);
            for (int i = worker; i < Iterations && failures.IsEmpty; i += workers)
            {
                var random = new Random(1000 + i);
                byte[] seed = seeds[i % seeds.Length];
                int imageLength = Mutate(seed, buffer, random);
                long before = GC.GetAllocatedBytesForCurrentThread();
                var store = new MemoryImageStore(buffer, imageLength, limit: imageLength + (2 << 20));
                try
                {
                    bool readOnly = random.Next(2) == 0;
                    var disk = Qcow2BlockBackend.OpenStore(store, "fuzz.qcow2", readOnly);
                    store.PastEndAllowance = disk.ClusterSize;
                    Exercise(disk, random, readOnly);
                    localOpened++;
                }
                catch (DiskImageException e) when (FieldName().Match(e.Message) is { Success: true } field)
                {
                    localRefused++;
                    localNamed[field.Value] = localNamed.GetValueOrDefault(field.Value) + 1;
                }
                catch (Exception e)
                {
                    failures.Enqueue($"iteration {i}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
                }

                long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                if (allocated > (8L << 20) + (64L * imageLength))
                {
                    failures.Enqueue($"iteration {i}: allocated {allocated} bytes for an image of {imageLength}");
                }

                if (store.ReadsPastEnd > 0)
                {
                    failures.Enqueue($"iteration {i}: {store.ReadsPastEnd} read(s) started past the end of the image: {store.LastPastEnd}");
                }
            }

            Interlocked.Add(ref opened, localOpened);
            Interlocked.Add(ref refused, localRefused);
            foreach (var (name, count) in localNamed)
            {
                named.AddOrUpdate(name, count, (_, sum) => sum + count);
            }
        });

        TestContext.Current.TestOutputHelper?.WriteLine("refusals by field: " + string.Join(", ", named.OrderByDescending(f => f.Value).Select(f => $"{f.Key} {f.Value}")));

        Assert.True(failures.IsEmpty, string.Join("\n", failures.Take(5)));
        Assert.Equal(Iterations, opened + refused);

        // The run reaches every check the mutations can reach: each field a run of 1,000,000 named is named again (the
        // rarest, "L2 bitmap" and "snapshot table", about ten times in a million), so a change that stops the mutations
        // reaching a check fails here.
        var missing = ReachedFields.Where(f => !named.ContainsKey(f)).ToList();
        Assert.True(missing.Count == 0, $"no image was refused naming {string.Join(", ", missing)}; refusals by field: "
            + string.Join(", ", named.OrderByDescending(f => f.Value).Select(f => $"{f.Key} {f.Value}")));

        // Both outcomes occur: the mutations reach past the header checks and the checks refuse damage.
        Assert.True(opened > Iterations / 20, $"only {opened} images opened");
        Assert.True(refused > Iterations / 20, $"only {refused} images were refused");
    }

    private static void Exercise(Qcow2BlockBackend disk, Random random, bool readOnly)
    {
        var buffer = new byte[8192];
        long capacity = disk.Capacity;
        for (int j = 0; j < 3; j++)
        {
            int length = random.Next(1, 17) * 512;
            long offset = random.NextInt64(Math.Max(1, (capacity - length) / 512)) * 512;
            if (offset + length > capacity)
            {
                continue;
            }

            bool write = !readOnly && disk.ClusterSize <= 65536;
            if (write && random.Next(3) == 0)
            {
                disk.WriteAsync(offset, buffer.AsMemory(0, length)).AsTask().GetAwaiter().GetResult();
            }
            else if (write && random.Next(4) == 0)
            {
                disk.DiscardAsync(offset, length).AsTask().GetAwaiter().GetResult();
            }
            else
            {
                disk.ReadAsync(offset, buffer.AsMemory(0, length)).AsTask().GetAwaiter().GetResult();
            }
        }

        disk.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    private static readonly ulong[] Interesting =
    [
        0, 1, 7, 8, 9, 21, 22, 63, 64, 511, 512, 513, 4096, 65536, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff,
        0x1_0000_0000, 0x00ff_ffff_ffff_fe00, 0x8000_0000_0000_0000, 0xc000_0000_0000_0000, ulong.MaxValue,
    ];

    /// <summary>Copies <paramref name="seed"/> (perhaps cut short) into <paramref name="buffer"/> and damages it; returns its length.</summary>
    private static int Mutate(byte[] seed, byte[] buffer, Random random)
    {
        int length = seed.Length;
        if (random.Next(20) == 0)
        {
            length = random.Next(0, seed.Length);
        }

        seed.AsSpan(0, length).CopyTo(buffer);
        var image = buffer.AsSpan(0, length);
        if (image.Length == 0)
        {
            return 0;
        }

        int mutations = random.Next(1, 5);
        for (int m = 0; m < mutations; m++)
        {
            // Mostly the header and first clusters (where the tables start), sometimes anywhere.
            int span = random.Next(3) switch { 0 => Math.Min(112, image.Length), 1 => Math.Min(8192, image.Length), _ => image.Length };
            int at = random.Next(span);
            switch (random.Next(4))
            {
                case 0:
                    image[at] ^= (byte)(1 << random.Next(8));
                    break;
                case 1:
                    image[at] = (byte)random.Next(256);
                    break;
                case 2:
                    // A big-endian field set to an edge value, aligned like the header's fields.
                    int size = random.Next(2) == 0 ? 4 : 8;
                    at &= ~(size - 1);
                    if (at + size <= image.Length)
                    {
                        ulong value = Interesting[random.Next(Interesting.Length)];
                        for (int b = 0; b < size; b++)
                        {
                            image[at + b] = (byte)(value >> (8 * (size - 1 - b)));
                        }
                    }

                    break;
                default:
                    int n = Math.Min(random.Next(1, 64), image.Length - at);
                    random.NextBytes(image.Slice(at, n));
                    break;
            }
        }

        return length;
    }
}
