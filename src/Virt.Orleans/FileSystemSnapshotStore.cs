using System.Globalization;
using System.Text;

namespace Virt.Orleans;

/// <summary>
/// Keeps snapshots as files in one directory: on one host, or on a file system every silo mounts (NFS, SMB, a
/// cluster file system). Each snapshot is a new file (<c>name.generation.snap</c>), written under a temporary name
/// and renamed when complete; references are file names relative to the directory.
/// </summary>
public sealed class FileSystemSnapshotStore : ISnapshotStore
{
    private const string Extension = ".snap";

    /// <summary>Creates the store over <paramref name="directory"/> (created if missing).</summary>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is empty.</exception>
    public FileSystemSnapshotStore(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        Directory = Path.GetFullPath(directory);
        System.IO.Directory.CreateDirectory(Directory);
    }

    /// <summary>The directory that holds the snapshots.</summary>
    public string Directory { get; }

    /// <inheritdoc />
    public async Task<string> SaveAsync(string vmName, Func<Stream, CancellationToken, Task> write, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(vmName);
        ArgumentNullException.ThrowIfNull(write);
        string reference = string.Create(CultureInfo.InvariantCulture, $"{FileSafe(vmName)}.{DateTime.UtcNow:yyyyMMddHHmmssfff}-{Guid.NewGuid():N}{Extension}");
        string path = Path.Combine(Directory, reference);
        string partial = path + ".partial";
        try
        {
            var stream = new FileStream(partial, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16, FileOptions.Asynchronous);
            await using (stream.ConfigureAwait(false))
            {
                await write(stream, cancellationToken).ConfigureAwait(false);
                await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
                stream.Flush(flushToDisk: true);
            }

            File.Move(partial, path);
            return reference;
        }
        catch
        {
            File.Delete(partial);
            throw;
        }
    }

    /// <inheritdoc />
    public Task<string> GetLocalPathAsync(string reference, CancellationToken cancellationToken = default)
    {
        string path = Resolve(reference);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"The snapshot store in '{Directory}' has no snapshot '{reference}'; it was deleted, or the silos do not share this directory.", path);
        }

        return Task.FromResult(path);
    }

    /// <inheritdoc />
    public Task DeleteAsync(string reference, CancellationToken cancellationToken = default)
    {
        string path = Resolve(reference);
        try
        {
            // Unlinking leaves a VM that maps this file running: its pages stay until it unmaps them.
            File.Delete(path);
        }
        catch (IOException)
        {
            // Windows refuses to delete a file that a restored VM maps: the file is left behind for a clean-up of the directory.
        }
        catch (UnauthorizedAccessException)
        {
        }

        return Task.CompletedTask;
    }

    /// <summary>Maps a reference to its file, refusing anything that is not a plain snapshot file name in the directory.</summary>
    private string Resolve(string reference)
    {
        ArgumentException.ThrowIfNullOrEmpty(reference);
        if (reference.IndexOfAny(['/', '\\']) >= 0 || reference.StartsWith('.') || !reference.EndsWith(Extension, StringComparison.Ordinal))
        {
            throw new ArgumentException($"'{reference}' is not a snapshot reference of this store (a file name ending in {Extension}).", nameof(reference));
        }

        return Path.Combine(Directory, reference);
    }

    /// <summary>The VM's name with every character a file name may not hold replaced, and bounded in length.</summary>
    private static string FileSafe(string name)
    {
        var sb = new StringBuilder(Math.Min(name.Length, 64));
        foreach (char c in name.AsSpan(0, Math.Min(name.Length, 64)))
        {
            sb.Append(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '_');
        }

        return sb.ToString();
    }
}
