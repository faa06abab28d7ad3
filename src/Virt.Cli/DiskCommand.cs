using System.CommandLine;
using System.Globalization;
using Virt.Storage;

namespace Virt.Cli;

/// <summary><c>virt disk create|overlay|info|convert</c>: disk images in the formats Virt.Storage reads (raw, qcow2, overlay).</summary>
internal static class DiskCommand
{
    private const int CopyChunk = 1 << 20;

    public static Command Create()
    {
        var command = new Command("disk", "Create, inspect and convert disk images (raw, qcow2, and Virt.Storage's copy-on-write overlay).");
        command.Subcommands.Add(CreateCommand());
        command.Subcommands.Add(OverlayCommand());
        command.Subcommands.Add(InfoCommand());
        command.Subcommands.Add(ConvertCommand());
        return command;
    }

    private static Command CreateCommand()
    {
        var path = new Argument<string>("path") { Description = "The new image." };
        var size = new Option<string?>("--size", "-s") { Description = "Virtual size: bytes, or with K, M, G or T (1024-based), e.g. 10G. Optional with --backing (the backing image's size)." };
        var format = new Option<string>("--format", "-f") { Description = "raw or qcow2.", DefaultValueFactory = _ => "raw" };
        format.AcceptOnlyFromAmong("raw", "qcow2");
        var backing = new Option<string?>("--backing", "-b") { Description = "qcow2 only: the backing image (raw or qcow2), read until a cluster is written." };
        var force = new Option<bool>("--force") { Description = "Replace an existing file." };
        var extendedL2 = new Option<bool>("--extended-l2") { Description = "qcow2 only: 32 subclusters per cluster, so a small write into an overlay copies a subcluster, not a cluster (qemu-img's extended_l2=on)." };
        var command = new Command("create", "Create a sparse raw image or an empty qcow2 image.") { path, size, format, backing, force, extendedL2 };
        command.SetAction(result => Guard(() =>
        {
            string? sizeText = result.GetValue(size);
            string? backingPath = result.GetValue(backing);
            if (sizeText is null && backingPath is null)
            {
                throw new ArgumentException("Give the image's size with --size (e.g. --size 1G).");
            }

            long bytes = sizeText is null ? 0 : ParseSize(sizeText);
            var diskFormat = result.GetValue(format) == "qcow2" ? DiskFormat.Qcow2 : DiskFormat.Raw;
            string target = result.GetValue(path)!;
            DiskImage.Create(target, bytes, diskFormat, backingPath, result.GetValue(force), extendedL2: result.GetValue(extendedL2));
            Console.WriteLine($"created {target}: {diskFormat.ToString().ToLowerInvariant()}, {Describe(CapacityOf(target))}");
        }));
        return command;
    }

    private static Command OverlayCommand()
    {
        var overlay = new Argument<string>("overlay") { Description = "The new overlay file." };
        var baseImage = new Argument<string>("base") { Description = "The image it reads from until written (raw or qcow2); never written." };
        var force = new Option<bool>("--force") { Description = "Replace an existing overlay." };
        var command = new Command("overlay", "Create a copy-on-write overlay over a base image: writes go to the overlay, the base stays as it is.") { overlay, baseImage, force };
        command.SetAction(result => Guard(() =>
        {
            string target = result.GetValue(overlay)!;
            DiskImage.CreateOverlay(target, result.GetValue(baseImage)!, result.GetValue(force));
            Console.WriteLine($"created {target}: overlay over {Path.GetFullPath(result.GetValue(baseImage)!)}, {Describe(CapacityOf(target))}");
        }));
        return command;
    }

    private static Command InfoCommand()
    {
        var path = new Argument<string>("path") { Description = "The image." };
        var command = new Command("info", "Print an image's format, virtual size, size on disk and backing file.") { path };
        command.SetAction(result => Guard(() => Info(result.GetValue(path)!, Console.Out)));
        return command;
    }

    private static Command ConvertCommand()
    {
        var source = new Argument<string>("source") { Description = "The image to read (any format, with its backing chain)." };
        var destination = new Argument<string>("destination") { Description = "The new image." };
        var format = new Option<string>("--format", "-f") { Description = "Format of the new image: raw or qcow2 (a standalone image, no backing file).", DefaultValueFactory = _ => "raw" };
        format.AcceptOnlyFromAmong("raw", "qcow2");
        var force = new Option<bool>("--force") { Description = "Replace an existing destination." };
        var command = new Command("convert", "Copy an image into a new standalone raw or qcow2 image; zero ranges stay unallocated.") { source, destination, format, force };
        command.SetAction((result, ct) => GuardAsync(() => ConvertAsync(result.GetValue(source)!, result.GetValue(destination)!,
            result.GetValue(format) == "qcow2" ? DiskFormat.Qcow2 : DiskFormat.Raw, result.GetValue(force), ct)));
        return command;
    }

    internal static void Info(string path, TextWriter output)
    {
        var format = DiskImage.DetectFormat(path);
        output.WriteLine($"image:        {Path.GetFullPath(path)}");
        output.WriteLine($"format:       {format.ToString().ToLowerInvariant()}");
        switch (format)
        {
            case DiskFormat.Qcow2:
                var qcow2 = DiskImage.OpenQcow2(path, readOnly: true);
                try
                {
                    output.WriteLine($"virtual size: {Describe(qcow2.Capacity)}");
                    output.WriteLine($"version:      {qcow2.Version}");
                    output.WriteLine($"cluster size: {qcow2.ClusterSize}");
                    if (qcow2.HasExtendedL2)
                    {
                        output.WriteLine($"subclusters:  32 of {qcow2.ClusterSize / 32} bytes (extended L2 entries)");
                    }
                    if (qcow2.BackingPath is { } backing)
                    {
                        output.WriteLine($"backing file: {backing} ({qcow2.BackingFormat ?? "format not recorded"})");
                    }

                    if (qcow2.Snapshots.Count > 0)
                    {
                        output.WriteLine($"snapshots:    {qcow2.Snapshots.Count}");
                    }
                }
                finally
                {
                    qcow2.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }

                break;
            case DiskFormat.Overlay:
                var overlay = DiskImage.OpenOverlay(path);
                try
                {
                    output.WriteLine($"virtual size: {Describe(overlay.Capacity)}");
                    output.WriteLine($"backing file: {overlay.BasePath}");
                    output.WriteLine($"written:      {overlay.AllocatedClusters} clusters of {CopyOnWriteOverlay.DefaultClusterSize} bytes");
                }
                finally
                {
                    overlay.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }

                break;
            default:
                output.WriteLine($"virtual size: {Describe(new FileInfo(path).Length)}");
                break;
        }

        output.WriteLine($"file size:    {Describe(new FileInfo(path).Length)}");
    }

    internal static async Task ConvertAsync(string source, string destination, DiskFormat format, bool overwrite, CancellationToken cancellationToken)
    {
        var input = DiskImage.Open(source, readOnly: DiskImage.DetectFormat(source) != DiskFormat.Overlay);
        await using (input.ConfigureAwait(false))
        {
            long capacity = input.Capacity;
            DiskImage.Create(destination, capacity, format, overwrite: overwrite);
            var output = DiskImage.Open(destination);
            await using (output.ConfigureAwait(false))
            {
                var buffer = new byte[CopyChunk];
                long copied = 0;
                for (long offset = 0; offset < capacity; offset += CopyChunk)
                {
                    int length = (int)Math.Min(CopyChunk, capacity - offset);
                    var chunk = buffer.AsMemory(0, length);
                    await input.ReadAsync(offset, chunk, cancellationToken).ConfigureAwait(false);
                    if (chunk.Span.ContainsAnyExcept((byte)0))
                    {
                        // A new image reads as zeroes, so only ranges holding data are written: the copy stays sparse.
                        await output.WriteAsync(offset, chunk, cancellationToken).ConfigureAwait(false);
                        copied += length;
                    }
                }

                await output.FlushAsync(cancellationToken).ConfigureAwait(false);
                Console.WriteLine($"converted {source} to {destination}: {format.ToString().ToLowerInvariant()}, {Describe(capacity)}, {Describe(copied)} of data");
            }
        }
    }

    /// <summary>Parses a size: plain bytes, or a number with K, M, G or T (powers of 1024), optionally followed by B or iB.</summary>
    internal static long ParseSize(string text)
    {
        string t = text.Trim();
        if (t.EndsWith("iB", StringComparison.OrdinalIgnoreCase))
        {
            t = t[..^2];
        }
        else if (t.Length > 1 && (t[^1] is 'B' or 'b') && char.IsLetter(t[^2]))
        {
            t = t[..^1];
        }

        int shift = t.Length == 0 ? 0 : char.ToUpperInvariant(t[^1]) switch
        {
            'K' => 10,
            'M' => 20,
            'G' => 30,
            'T' => 40,
            _ => 0,
        };
        string number = shift == 0 ? t : t[..^1];
        if (!long.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out long value) || value <= 0 || value > long.MaxValue >> shift)
        {
            throw new ArgumentException($"'{text}' is not a size: give bytes or a number with K, M, G or T, e.g. 512M or 10G.");
        }

        return value << shift;
    }

    private static string Describe(long bytes)
    {
        string[] units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        int unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return unit == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes} bytes")
            : string.Create(CultureInfo.InvariantCulture, $"{value:0.##} {units[unit]} ({bytes} bytes)");
    }

    private static long CapacityOf(string path)
    {
        var image = DiskImage.Open(path, readOnly: DiskImage.DetectFormat(path) != DiskFormat.Overlay);
        try
        {
            return image.Capacity;
        }
        finally
        {
            image.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    private static int Guard(Action action)
    {
        try
        {
            action();
            return 0;
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"virt disk: {e.Message}");
            return 2;
        }
    }

    private static async Task<int> GuardAsync(Func<Task> action)
    {
        try
        {
            await action().ConfigureAwait(false);
            return 0;
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"virt disk: {e.Message}");
            return 2;
        }
    }
}
