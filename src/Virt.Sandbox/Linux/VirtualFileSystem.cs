namespace Virt.Sandbox.Linux;

/// <summary>A file the host granted: its bytes (a private copy) and whether the program may change them.</summary>
internal sealed class VfsFile(string path, byte[] content, bool writable, ulong inode)
{
    public string Path { get; } = path;

    public byte[] Content { get; set; } = content;

    public long Length { get; set; } = content.Length;

    public bool Writable { get; } = writable;

    public ulong Inode { get; } = inode;

    public VfsFile Clone() => new(Path, (byte[])Content.Clone(), Writable, Inode) { Length = Length };
}

/// <summary>
/// The only files a sandboxed program can see: the ones the host granted, in memory. Directories
/// exist implicitly as the parents of granted files. Nothing here ever touches the host file system.
/// </summary>
internal sealed class VirtualFileSystem
{
    private readonly Dictionary<string, VfsFile> _files;
    private readonly SortedSet<string> _directories;

    public VirtualFileSystem(IEnumerable<(string Path, byte[] Content, bool Writable)> files)
    {
        _files = new(StringComparer.Ordinal);
        _directories = new(StringComparer.Ordinal) { "/" };
        ulong inode = 100;
        foreach (var (path, content, writable) in files)
        {
            string p = Normalize("/", path) ?? throw new ArgumentException($"'{path}' is not a usable guest path.", nameof(files));
            _files[p] = new VfsFile(p, (byte[])content.Clone(), writable, inode++);
            for (string d = Parent(p); d != "/"; d = Parent(d))
            {
                _directories.Add(d);
            }
        }
    }

    private VirtualFileSystem(Dictionary<string, VfsFile> files, SortedSet<string> directories)
    {
        _files = files;
        _directories = directories;
    }

    /// <summary>A deep copy (for snapshots: writable files change during a run).</summary>
    public VirtualFileSystem Clone() =>
        new(_files.ToDictionary(kv => kv.Key, kv => kv.Value.Writable ? kv.Value.Clone() : kv.Value, StringComparer.Ordinal), _directories);

    public VfsFile? GetFile(string path) => _files.GetValueOrDefault(path);

    public bool IsDirectory(string path) => _directories.Contains(path);

    /// <summary>Names directly inside <paramref name="directory"/>, with whether each is a directory.</summary>
    public List<(string Name, bool IsDirectory, ulong Inode)> List(string directory)
    {
        var result = new List<(string, bool, ulong)>();
        string prefix = directory == "/" ? "/" : directory + "/";
        foreach (var d in _directories)
        {
            if (d != directory && d.StartsWith(prefix, StringComparison.Ordinal) && !d[prefix.Length..].Contains('/', StringComparison.Ordinal))
            {
                result.Add((d[prefix.Length..], true, (ulong)(uint)d.GetHashCode(StringComparison.Ordinal)));
            }
        }

        foreach (var f in _files.Values)
        {
            if (f.Path.StartsWith(prefix, StringComparison.Ordinal) && !f.Path[prefix.Length..].Contains('/', StringComparison.Ordinal))
            {
                result.Add((f.Path[prefix.Length..], false, f.Inode));
            }
        }

        return result;
    }

    /// <summary>Resolves <paramref name="path"/> against <paramref name="cwd"/>, folding <c>.</c>, <c>..</c> and repeated slashes; null for an empty path.</summary>
    public static string? Normalize(string cwd, string path)
    {
        if (string.IsNullOrEmpty(path) || path.Contains('\0', StringComparison.Ordinal))
        {
            return null;
        }

        var parts = new List<string>();
        string full = path.StartsWith('/') ? path : cwd.TrimEnd('/') + "/" + path;
        foreach (var part in full.Split('/'))
        {
            if (part.Length == 0 || part == ".")
            {
                continue;
            }

            if (part == "..")
            {
                if (parts.Count > 0)
                {
                    parts.RemoveAt(parts.Count - 1);
                }

                continue;
            }

            parts.Add(part);
        }

        return "/" + string.Join('/', parts);
    }

    private static string Parent(string path)
    {
        int i = path.LastIndexOf('/');
        return i <= 0 ? "/" : path[..i];
    }
}
