using System.Diagnostics;
using System.Globalization;
using Virt.Storage;

namespace Virt.Benchmarks.Virtio;

/// <summary>
/// The first 4 KiB writes into a fresh qcow2 overlay over a 256 MiB raw base, one per cluster at random clusters
/// (each must copy the rest of its cluster, or with extended L2 entries only the rest of its subclusters, from the
/// base): time and image bytes for standard L2 entries (the baseline) and extended ones, measured alternately in
/// one run on tmpfs.
/// </summary>
internal static class OverlayCow
{
    private const long BaseSize = 256L << 20;
    private const int ClusterSize = 65536;
    private const int WriteSize = 4096;

    public static async Task RunAsync(int writes, int rounds)
    {
        string dir = Path.Combine("/dev/shm", $"virt-cow-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string basePath = Path.Combine(dir, "base.raw");
            DiskImage.CreateRaw(basePath, BaseSize);
            await using (var raw = DiskImage.Open(basePath))
            {
                var chunk = new byte[1 << 20];
                new Random(1).NextBytes(chunk);
                for (long o = 0; o < BaseSize; o += chunk.Length)
                {
                    await raw.WriteAsync(o, chunk);
                }
            }

            var random = new Random(2);
            long[] offsets = [.. Enumerable.Range(0, (int)(BaseSize / ClusterSize)).OrderBy(_ => random.Next()).Take(writes)
                .Select(c => ((long)c * ClusterSize) + (random.Next(ClusterSize / WriteSize) * WriteSize))];
            var data = new byte[WriteSize];
            random.NextBytes(data);
            var times = new Dictionary<bool, List<double>> { [false] = [], [true] = [] };
            var bytes = new Dictionary<bool, long>();
            for (int round = 0; round < rounds; round++)
            {
                foreach (bool extended in new[] { false, true })
                {
                    string top = Path.Combine(dir, $"top-{extended}.qcow2");
                    DiskImage.Create(top, 0, DiskFormat.Qcow2, backing: "base.raw", overwrite: true, clusterSize: ClusterSize, extendedL2: extended);
                    var watch = Stopwatch.StartNew();
                    await using (var disk = DiskImage.Open(top))
                    {
                        foreach (long offset in offsets)
                        {
                            await disk.WriteAsync(offset, data);
                        }

                        await disk.FlushAsync();
                    }

                    times[extended].Add(watch.Elapsed.TotalMilliseconds);
                    bytes[extended] = AllocatedKiB(top);
                }
            }

            double standard = Median(times[false]), withSubclusters = Median(times[true]);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{writes} first writes of 4 KiB into a fresh overlay (64 KiB clusters), median of {rounds} rounds:"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  standard L2: {standard:F1} ms ({standard * 1000 / writes:F1} us per write), {bytes[false]} KiB on disk"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  extended L2: {withSubclusters:F1} ms ({withSubclusters * 1000 / writes:F1} us per write), {bytes[true]} KiB on disk"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  time ratio extended/standard: {withSubclusters / standard:F2}"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The file's allocated size (du), not its length: the images are sparse.</summary>
    private static long AllocatedKiB(string path)
    {
        var info = new ProcessStartInfo("du", $"-k \"{path}\"") { RedirectStandardOutput = true, UseShellExecute = false };
        using var du = Process.Start(info) ?? throw new InvalidOperationException("du did not start.");
        string output = du.StandardOutput.ReadToEnd();
        du.WaitForExit();
        return long.Parse(output.Split('\t')[0], CultureInfo.InvariantCulture);
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
