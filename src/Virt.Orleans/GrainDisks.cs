using System.Diagnostics.CodeAnalysis;
using Virt.Storage;

namespace Virt.Orleans;

/// <summary>
/// One disk of a VM grain: the image named in the spec (the base) plus a copy-on-write layer file next to it that
/// takes the guest's writes since the last snapshot. The device sees this object; the layer under it is swapped at
/// each snapshot while the VM is paused.
/// </summary>
/// <remarks>
/// Layer files are named <c>&lt;image&gt;.g&lt;generation&gt;.cow</c>. The base only ever holds the disk as it was at a
/// snapshot (or a stop): a save commits the layer into the base after the grain's state names the new snapshot
/// and that layer's generation, so a silo that dies at any point leaves a base that the next activation can bring
/// to the snapshot's disk by replaying (committing again) the named layer and deleting every other one.
/// </remarks>
internal sealed class GrainDisk : IBlockBackend
{
    private CopyOnWriteOverlay? _layer;

    private GrainDisk(string basePath, long capacity)
    {
        BasePath = basePath;
        Capacity = capacity;
    }

    public string BasePath { get; }

    public long Capacity { get; }

    public bool IsReadOnly => false;

    /// <summary>The generation of the attached layer; 0 when detached.</summary>
    public long Generation { get; private set; }

    public static string LayerPath(string basePath, long generation) => $"{basePath}.g{generation}.cow";

    /// <summary>A disk over <paramref name="basePath"/> with no layer attached yet (its size read from the image).</summary>
    /// <exception cref="DiskImageException">The image is missing or unreadable.</exception>
    public static async Task<GrainDisk> DescribeAsync(string basePath)
    {
        if (!File.Exists(basePath))
        {
            throw new DiskImageException(basePath, DiskImageError.NotFound,
                $"The disk image '{basePath}' does not exist on this silo. Disks must be on storage every silo mounts under the same path.");
        }

        var image = DiskImage.Open(basePath, readOnly: true);
        await using (image.ConfigureAwait(false))
        {
            return new GrainDisk(basePath, image.Capacity);
        }
    }

    /// <summary>
    /// Brings the base to the disk of the last snapshot: commits layer <paramref name="pending"/> if it is still there
    /// (a save or stop that did not finish), then deletes every layer file of the image (writes after that snapshot).
    /// </summary>
    public async Task RecoverAsync(long pending, CancellationToken cancellationToken)
    {
        string layerPath = LayerPath(BasePath, pending);
        if (pending > 0 && File.Exists(layerPath))
        {
            var layer = CopyOnWriteOverlay.Open(layerPath);
            await using (layer.ConfigureAwait(false))
            {
                await layer.CommitAsync(cancellationToken).ConfigureAwait(false);
            }
        }

        string directory = Path.GetDirectoryName(Path.GetFullPath(BasePath))!;
        string prefix = Path.GetFileName(BasePath) + ".g";
        foreach (string file in Directory.EnumerateFiles(directory, prefix + "*.cow"))
        {
            string middle = Path.GetFileName(file)[prefix.Length..^".cow".Length];
            if (long.TryParse(middle, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out _))
            {
                File.Delete(file);
            }
        }
    }

    /// <summary>Attaches layer <paramref name="generation"/>: opens its file, creating an empty one over the base if there is none.</summary>
    public Task AttachAsync(long generation)
    {
        string path = LayerPath(BasePath, generation);
        if (!File.Exists(path))
        {
            DiskImage.CreateOverlay(path, BasePath);
        }

        var layer = CopyOnWriteOverlay.Open(path);
        if (Interlocked.Exchange(ref _layer, layer) is { } previous)
        {
            layer.DisposeAsync().AsTask().GetAwaiter().GetResult();
            Volatile.Write(ref _layer, previous);
            throw new InvalidOperationException($"The disk '{BasePath}' already has layer {Generation} attached.");
        }

        Generation = generation;
        return Task.CompletedTask;
    }

    /// <summary>Closes the attached layer (flushing it); the file stays for whoever attaches it next.</summary>
    public async Task DetachAsync()
    {
        if (Interlocked.Exchange(ref _layer, null) is { } layer)
        {
            Generation = 0;
            await layer.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Commits the attached layer into the base and removes it; with <paramref name="next"/> above 0 a new empty layer
    /// of that generation takes the guest's writes from here on. Call it with the VM paused and its devices quiesced.
    /// </summary>
    public async Task CommitAsync(long next, CancellationToken cancellationToken)
    {
        var layer = Volatile.Read(ref _layer) ?? throw new InvalidOperationException($"The disk '{BasePath}' has no layer attached.");
        await layer.CommitAsync(cancellationToken).ConfigureAwait(false);
        await DetachAsync().ConfigureAwait(false);
        File.Delete(layer.Path);
        if (next > 0)
        {
            await AttachAsync(next).ConfigureAwait(false);
        }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Layer.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        Layer.WriteAsync(offset, buffer, cancellationToken);

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        Volatile.Read(ref _layer) is { } layer ? layer.FlushAsync(cancellationToken) : ValueTask.CompletedTask;

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Layer.DiscardAsync(offset, length, cancellationToken);

    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Layer.WriteZeroesAsync(offset, length, cancellationToken);

    public ValueTask DisposeAsync() => new(DetachAsync());

    private CopyOnWriteOverlay Layer => Volatile.Read(ref _layer)
        ?? throw new IOException($"The disk '{BasePath}' is not attached on this silo yet (the VM is between silos).");
}

/// <summary>The disks of one VM grain's machine, in the spec's order (see <see cref="GrainDisk"/>).</summary>
[SuppressMessage("Reliability", "CA2007:Consider calling ConfigureAwait on the awaited task", Justification = "Called from grain code, which continues on the grain's scheduler.")]
internal sealed class GrainDiskSet
{
    private GrainDiskSet(IReadOnlyList<GrainDisk> disks) => Disks = disks;

    public static GrainDiskSet Empty { get; } = new([]);

    public IReadOnlyList<GrainDisk> Disks { get; }

    /// <summary>The spec's disks, detached (for a machine received by live migration, until its grain claims it).</summary>
    public static async Task<GrainDiskSet> DescribeAsync(VirtualMachineSpec spec)
    {
        if (spec.Disks.Length == 0)
        {
            return Empty;
        }

        var disks = new List<GrainDisk>(spec.Disks.Length);
        foreach (string path in spec.Disks)
        {
            disks.Add(await GrainDisk.DescribeAsync(path));
        }

        return new GrainDiskSet(disks);
    }

    /// <summary>The spec's disks brought to the snapshot of generation <paramref name="pending"/> and attached to a fresh layer after it.</summary>
    public static async Task<GrainDiskSet> OpenAsync(VirtualMachineSpec spec, long pending, CancellationToken cancellationToken)
    {
        var set = await DescribeAsync(spec);
        try
        {
            foreach (var disk in set.Disks)
            {
                await disk.RecoverAsync(pending, cancellationToken);
                await disk.AttachAsync(pending + 1);
            }
        }
        catch
        {
            await set.DetachAsync();
            throw;
        }

        return set;
    }

    public async Task AttachAsync(long generation)
    {
        foreach (var disk in Disks)
        {
            await disk.AttachAsync(generation);
        }
    }

    public async Task DetachAsync()
    {
        foreach (var disk in Disks)
        {
            await disk.DetachAsync();
        }
    }

    /// <summary>Commits every disk's layer into its base; with <paramref name="next"/> above 0 attaches new layers of that generation.</summary>
    public async Task CommitAsync(long next, CancellationToken cancellationToken)
    {
        foreach (var disk in Disks)
        {
            await disk.CommitAsync(next, cancellationToken);
        }
    }
}
