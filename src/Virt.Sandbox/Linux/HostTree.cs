using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace Virt.Sandbox.Linux;

/// <summary>What kind of host file system entry a <see cref="HostEntry"/> is.</summary>
internal enum HostEntryKind
{
    /// <summary>A regular file: its bytes are readable.</summary>
    File,

    /// <summary>A directory: listed on first use.</summary>
    Directory,

    /// <summary>A symbolic link: the sandbox resolves its target inside its own file tree, never on the host.</summary>
    Symlink,
}

/// <summary>One entry of a host directory as the sandbox sees it: the name, kind, size, permission bits, modification time and the link target.</summary>
internal sealed record HostEntry(string Name, HostEntryKind Kind, long Length, uint Permissions, long ModifiedNanoseconds, string? LinkTarget, ulong Inode);

/// <summary>
/// A host directory granted read-only to sandboxes (<see cref="SandboxBuilder.WithHostDirectory"/>). It lists directories
/// and reads files on first use and keeps what it read, so every sandbox built from one configuration (and every snapshot
/// of one) shares a single copy. Only names that came out of a listing of a directory inside the grant are ever joined to
/// a host path: a guest path never reaches the host, <c>..</c> and symbolic links are resolved in the sandbox's own tree,
/// so nothing outside the granted directory is reachable. Devices, FIFOs and sockets are left out (opening a FIFO could
/// block the host). Thread-safe.
/// </summary>
internal sealed partial class HostTree
{
    /// <summary>The largest host file a sandbox may read (a bigger one fails to open with EFBIG).</summary>
    public const long MaxFileBytes = 512L << 20;

    /// <summary>The most bytes of host files one tree keeps in memory (past it, opening another file fails with ENOMEM).</summary>
    public const long MaxCachedBytes = 2L << 30;

    private readonly ConcurrentDictionary<string, HostEntry[]> _listings = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Lazy<byte[]?>> _contents = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, ulong> _inodes = new(StringComparer.Ordinal);
    private long _cachedBytes;
    private long _nextInode = 1L << 32;

    /// <summary>Grants <paramref name="hostDirectory"/> (resolved once, here, to its full path).</summary>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    public HostTree(string hostDirectory)
    {
        string full = Path.GetFullPath(hostDirectory);
        if (!Directory.Exists(full))
        {
            throw new DirectoryNotFoundException($"The host directory '{hostDirectory}' does not exist.");
        }

        HostPath = full;
    }

    /// <summary>The granted host directory (a full path).</summary>
    public string HostPath { get; }

    /// <summary>The entries of the host directory at <paramref name="relative"/> ("" for the granted directory), listed once.</summary>
    public HostEntry[] List(string relative) => _listings.GetOrAdd(relative, r => ListNow(Join(r)));

    /// <summary>
    /// The bytes of the host file at <paramref name="relative"/>, read once; or a negative errno: <c>EFBIG</c> past
    /// <see cref="MaxFileBytes"/>, <c>ENOMEM</c> past <see cref="MaxCachedBytes"/>, <c>EIO</c> when the file cannot be
    /// read (or is no longer a regular file).
    /// </summary>
    public long Read(string relative, long expectedLength, out byte[] content)
    {
        content = [];
        if (expectedLength > MaxFileBytes)
        {
            return -Errno.EFBIG;
        }

        if (!_contents.TryGetValue(relative, out var lazy))
        {
            if (Interlocked.Add(ref _cachedBytes, expectedLength) > MaxCachedBytes)
            {
                Interlocked.Add(ref _cachedBytes, -expectedLength);
                return -Errno.ENOMEM;
            }

            lazy = _contents.GetOrAdd(relative, r => new Lazy<byte[]?>(() => ReadNow(Join(r))));
        }

        var bytes = lazy.Value;
        if (bytes is null)
        {
            return -Errno.EIO;
        }

        content = bytes;
        return 0;
    }

    private string Join(string relative) => relative.Length == 0 ? HostPath : Path.Join(HostPath, relative);

    private HostEntry[] ListNow(string directory)
    {
        var entries = new List<HostEntry>();
        IEnumerable<FileSystemInfo> infos;
        try
        {
            infos = new DirectoryInfo(directory).EnumerateFileSystemInfos("*", new EnumerationOptions
            {
                AttributesToSkip = 0,
                IgnoreInaccessible = true,
                RecurseSubdirectories = false,
                ReturnSpecialDirectories = false,
            }).ToList();
        }
        catch (IOException)
        {
            return [];
        }
        catch (UnauthorizedAccessException)
        {
            return [];
        }

        foreach (var info in infos)
        {
            string name = info.Name;
            if (name.Length is 0 or > 255 || name.Contains('\uFFFD', StringComparison.Ordinal) || name.Contains('/', StringComparison.Ordinal) || name is "." or "..")
            {
                continue; // not a name that round-trips to the host as UTF-8
            }

            if (Describe(info) is { } entry)
            {
                entries.Add(entry);
            }
        }

        return [.. entries];
    }

    private HostEntry? Describe(FileSystemInfo info)
    {
        try
        {
            long mtime = (info.LastWriteTimeUtc - DateTime.UnixEpoch).Ticks * 100;
            uint mode = OperatingSystem.IsWindows() ? 0x1EDu : (uint)info.UnixFileMode & 0xFFF;
            ulong inode = _inodes.GetOrAdd(info.FullName, _ => (ulong)Interlocked.Increment(ref _nextInode));
            if (info.LinkTarget is { } target)
            {
                return target.Length is > 0 and < 4096 ? new HostEntry(info.Name, HostEntryKind.Symlink, target.Length, 0x1FF, mtime, target, inode) : null;
            }

            if (info is DirectoryInfo)
            {
                return new HostEntry(info.Name, HostEntryKind.Directory, 4096, mode, mtime, null, inode);
            }

            return IsRegularFile(info.FullName) ? new HostEntry(info.Name, HostEntryKind.File, ((FileInfo)info).Length, mode, mtime, null, inode) : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static byte[]? ReadNow(string path)
    {
        // Checked again just before the open: a FIFO put in the file's place since the listing would block the open.
        if (!IsRegularFile(path))
        {
            return null;
        }

        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1, FileOptions.None);
            long length = stream.Length;
            if (length > MaxFileBytes)
            {
                return null;
            }

            var bytes = new byte[length];
            stream.ReadExactly(bytes);
            return bytes;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Whether <paramref name="path"/> is a regular file, not following a final symbolic link (Linux: <c>statx</c>).</summary>
    private static bool IsRegularFile(string path)
    {
        if (!OperatingSystem.IsLinux())
        {
            // Elsewhere .NET tells files from directories and links only; Windows has no FIFOs or devices in a directory.
            return File.Exists(path) && new FileInfo(path).LinkTarget is null;
        }

        var buffer = new byte[256];
        const int AtFdCwd = -100, AtSymlinkNoFollow = 0x100;
        const uint StatxType = 1;
        if (Interop.Statx(AtFdCwd, path, AtSymlinkNoFollow, StatxType, buffer) != 0)
        {
            return false;
        }

        ushort mode = BitConverter.ToUInt16(buffer, 28); // struct statx: stx_mode
        return (mode & 0xF000) == 0x8000; // S_IFREG
    }

    private static partial class Interop
    {
        [LibraryImport("libc", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
        internal static partial int Statx(int dirfd, string path, int flags, uint mask, [Out] byte[] buffer);
    }
}
