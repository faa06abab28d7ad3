namespace Virt.Sandbox.Linux;

/// <summary>A node of the sandbox's file tree: a file, a directory, a symbolic link or a device.</summary>
internal abstract class VfsNode(ulong inode, uint permissions)
{
    public ulong Inode { get; } = inode;

    /// <summary>Permission bits (the low 12 bits of <c>st_mode</c>).</summary>
    public uint Permissions { get; set; } = permissions;

    /// <summary>Modification time in nanoseconds since the epoch.</summary>
    public long ModifiedNanoseconds { get; set; }

    /// <summary>The <c>S_IF*</c> bits of <c>st_mode</c>.</summary>
    public abstract uint TypeBits { get; }

    /// <summary>The <c>d_type</c> of a directory entry.</summary>
    public abstract byte DirectoryEntryType { get; }

    /// <summary>A copy for a snapshot; nodes already copied come from <paramref name="map"/>.</summary>
    public abstract VfsNode CloneInto(Dictionary<object, object> map);
}

/// <summary>
/// A regular file: a host grant (read-only unless granted writable), a file the program made, or a file of a granted host
/// directory (read-only, its bytes read from the host when it is first opened).
/// </summary>
internal sealed class VfsFile(ulong inode, byte[] content, bool writable, uint permissions) : VfsNode(inode, permissions)
{
    private byte[] _content = content;

    /// <summary>A file of a granted host directory: its bytes come from <paramref name="tree"/> on first use.</summary>
    public VfsFile(ulong inode, HostTree tree, string hostRelative, long length, uint permissions)
        : this(inode, [], false, permissions)
    {
        Host = (tree, hostRelative);
        Length = length;
    }

    /// <summary>Where a host file's bytes come from, until they are read (null for every other file).</summary>
    public (HostTree Tree, string Relative)? Host { get; private set; }

    /// <summary>The bytes (a host file reads them now; one that cannot be read is empty).</summary>
    public byte[] Content
    {
        get
        {
            if (Host is not null && Load() < 0)
            {
                Length = 0;
            }

            return _content;
        }

        set => _content = value;
    }

    public long Length { get; set; } = content.Length;

    /// <summary>Whether the program may change the bytes (false for read-only grants).</summary>
    public bool Writable { get; } = writable;

    public override uint TypeBits => 0x8000;

    public override byte DirectoryEntryType => 8;

    /// <summary>Reads a host file's bytes if not done yet; 0, or a negative errno (see <see cref="HostTree.Read"/>).</summary>
    public long Load()
    {
        if (Host is not { } host)
        {
            return 0;
        }

        long e = host.Tree.Read(host.Relative, Length, out var bytes);
        if (e < 0)
        {
            return e;
        }

        _content = bytes;
        Length = bytes.Length;
        Host = null;
        return 0;
    }

    public override VfsNode CloneInto(Dictionary<object, object> map)
    {
        if (map.TryGetValue(this, out var done))
        {
            return (VfsNode)done;
        }

        // A read-only grant never changes: the copy shares its bytes (or its host source).
        var copy = new VfsFile(Inode, Writable ? _content.AsSpan(0, (int)Length).ToArray() : _content, Writable, Permissions) { Length = Length, ModifiedNanoseconds = ModifiedNanoseconds, Host = Host };
        map[this] = copy;
        return copy;
    }
}

/// <summary>
/// A directory; <see cref="Parent"/> and <see cref="Name"/> give its path (the root is its own parent). A directory of a
/// granted host directory lists the host's entries into <see cref="Children"/> when it is first used; entries the sandbox
/// put there before win over the host's.
/// </summary>
internal sealed class VfsDirectory(ulong inode, uint permissions) : VfsNode(inode, permissions)
{
    private readonly SortedDictionary<string, VfsNode> _children = new(StringComparer.Ordinal);

    /// <summary>The host directory still to list into <see cref="Children"/>, or null (listed, or not a host directory).</summary>
    public (HostTree Tree, string Relative)? Host { get; set; }

    public SortedDictionary<string, VfsNode> Children
    {
        get
        {
            if (Host is { } host)
            {
                Host = null;
                Populate(host.Tree, host.Relative);
            }

            return _children;
        }
    }

    public VfsDirectory? Parent { get; set; }

    public string Name { get; set; } = "";

    /// <summary>Whether the directory is part of what the host granted (the program cannot remove or rename it).</summary>
    public bool Fixed { get; set; }

    public override uint TypeBits => 0x4000;

    public override byte DirectoryEntryType => 4;

    /// <summary>The absolute path of this directory.</summary>
    public string Path
    {
        get
        {
            var parts = new List<string>();
            for (var d = this; d.Parent is not null && d.Parent != d; d = d.Parent)
            {
                parts.Add(d.Name);
            }

            parts.Reverse();
            return "/" + string.Join('/', parts);
        }
    }

    /// <summary>Fills the children from a host listing: directories stay unlisted until used, files unread until opened.</summary>
    private void Populate(HostTree tree, string relative)
    {
        foreach (var e in tree.List(relative))
        {
            string childRelative = relative.Length == 0 ? e.Name : relative + "/" + e.Name;
            VfsNode node = e.Kind switch
            {
                HostEntryKind.Directory => new VfsDirectory(e.Inode, e.Permissions & 0x16D) { Parent = this, Name = e.Name, Fixed = true, Host = (tree, childRelative) },
                HostEntryKind.Symlink => new VfsSymlink(e.Inode, e.LinkTarget!),
                _ => new VfsFile(e.Inode, tree, childRelative, e.Length, e.Permissions & 0x16D),
            };
            node.ModifiedNanoseconds = e.ModifiedNanoseconds;
            _children.TryAdd(e.Name, node);
        }
    }

    public override VfsNode CloneInto(Dictionary<object, object> map)
    {
        if (map.TryGetValue(this, out var done))
        {
            return (VfsNode)done;
        }

        var copy = new VfsDirectory(Inode, Permissions) { Name = Name, Fixed = Fixed, ModifiedNanoseconds = ModifiedNanoseconds, Host = Host };
        map[this] = copy;
        copy.Parent = Parent is null ? null : Parent == this ? copy : (VfsDirectory)Parent.CloneInto(map);
        foreach (var (name, child) in _children)
        {
            copy._children[name] = child.CloneInto(map);
        }

        return copy;
    }
}

/// <summary>A symbolic link.</summary>
internal sealed class VfsSymlink(ulong inode, string target) : VfsNode(inode, 0x1FF)
{
    public string Target { get; } = target;

    public override uint TypeBits => 0xA000;

    public override byte DirectoryEntryType => 10;

    public override VfsNode CloneInto(Dictionary<object, object> map)
    {
        if (!map.TryGetValue(this, out var done))
        {
            done = new VfsSymlink(Inode, Target) { ModifiedNanoseconds = ModifiedNanoseconds };
            map[this] = done;
        }

        return (VfsNode)done;
    }
}

/// <summary>What a character device does.</summary>
internal enum DeviceKind
{
    /// <summary><c>/dev/null</c>: reads end at once, writes vanish.</summary>
    Null,

    /// <summary><c>/dev/zero</c>: reads give zeros, writes vanish.</summary>
    Zero,

    /// <summary><c>/dev/urandom</c> and <c>/dev/random</c>: reads give random bytes.</summary>
    Random,

    /// <summary><c>/dev/full</c>: reads give zeros, writes fail with ENOSPC.</summary>
    Full,
}

/// <summary>A character device under <c>/dev</c>.</summary>
internal sealed class VfsDevice(ulong inode, DeviceKind kind) : VfsNode(inode, 0x1B6)
{
    public DeviceKind Kind { get; } = kind;

    public override uint TypeBits => 0x2000;

    public override byte DirectoryEntryType => 2;

    public override VfsNode CloneInto(Dictionary<object, object> map) => this; // stateless
}

/// <summary>
/// The sandbox's file tree, in host memory only: the host's grants (read-only unless granted writable) and their
/// parent directories, <c>/dev</c>, <c>/tmp</c>, and whatever the program creates in a run, which counts against a
/// byte and an entry limit. Nothing here ever touches the host file system.
/// </summary>
internal sealed class VirtualFileSystem
{
    /// <summary>How many symbolic links one lookup follows before it fails with ELOOP (Linux's limit).</summary>
    private const int MaxSymlinks = 40;

    private ulong _nextInode;

    private VirtualFileSystem(VfsDirectory root, ulong nextInode, long maxBytes, int maxEntries)
    {
        Root = root;
        _nextInode = nextInode;
        MaxBytes = maxBytes;
        MaxEntries = maxEntries;
    }

    public VirtualFileSystem(IEnumerable<(string Path, byte[] Content, bool Writable)> files, byte[] executable, string executablePath, IEnumerable<string> aliases, long maxBytes, int maxEntries)
        : this([], files, executable, executablePath, aliases, maxBytes, maxEntries)
    {
    }

    /// <summary>
    /// The tree: the granted host directories (<paramref name="hostDirectories"/>, read-only, listed lazily), then the
    /// granted files over them, the executable, its aliases, and the sandbox's own <c>/dev</c>, <c>/tmp</c> and
    /// <c>/proc/self</c>, which take the place of any host directory of those names (the host's <c>/sys</c> is left out).
    /// </summary>
    public VirtualFileSystem(IEnumerable<(HostTree Tree, string GuestPath)> hostDirectories, IEnumerable<(string Path, byte[] Content, bool Writable)> files, byte[] executable, string executablePath, IEnumerable<string> aliases, long maxBytes, int maxEntries)
        : this(new VfsDirectory(2, 0x1ED) { Fixed = true }, 100, maxBytes, maxEntries)
    {
        Root.Parent = Root;
        // A host root comes first, so that directories granted below it replace what it lists there.
        foreach (var (tree, guestPath) in hostDirectories.OrderBy(h => Normalize("/", h.GuestPath) == "/" ? 0 : 1))
        {
            string p = Normalize("/", guestPath) ?? throw new ArgumentException($"'{guestPath}' is not a usable guest path.", nameof(hostDirectories));
            if (p == "/")
            {
                Root.Host = (tree, "");
                foreach (string own in new[] { "dev", "tmp", "proc", "sys" })
                {
                    Root.Children.Remove(own);
                }

                continue;
            }

            var dir = FixedDirectory(Parent(p));
            dir.Children[LastName(p)] = new VfsDirectory(_nextInode++, 0x16D) { Parent = dir, Name = LastName(p), Fixed = true, Host = (tree, "") };
        }

        foreach (var (path, content, writable) in files)
        {
            string p = Normalize("/", path) ?? throw new ArgumentException($"'{path}' is not a usable guest path.", nameof(files));
            var dir = FixedDirectory(Parent(p));
            dir.Children[LastName(p)] = new VfsFile(_nextInode++, (byte[])content.Clone(), writable, writable ? 0x1A4u : 0x124u);
        }

        // The executable itself, read-only and executable: execve of it (or of a link to it) starts a fresh image. A file
        // of a granted host directory at that path (or where a link there leads) is the executable.
        string exe = Normalize("/", executablePath) ?? "/bin/program";
        string exeTarget = executablePath;
        if (Lookup(Root, exe, followLast: true, out var found, out _, out _) == 0 && found is VfsFile hostExecutable)
        {
            Executable = hostExecutable;
            exeTarget = RealPath(exe) ?? executablePath; // /proc/self/exe names the file, as Linux's does
        }
        else
        {
            var exeDir = FixedDirectory(Parent(exe));
            if (!exeDir.Children.TryGetValue(LastName(exe), out var existing) || existing is not VfsFile)
            {
                existing = new VfsFile(_nextInode++, executable, false, 0x16D);
                exeDir.Children[LastName(exe)] = existing;
            }

            Executable = (VfsFile)existing;
        }

        foreach (var alias in aliases)
        {
            string a = Normalize("/", alias) ?? throw new ArgumentException($"'{alias}' is not a usable guest path.", nameof(aliases));
            FixedDirectory(Parent(a)).Children.TryAdd(LastName(a), new VfsSymlink(_nextInode++, exe));
        }

        var dev = FixedDirectory("/dev");
        dev.Children.TryAdd("null", new VfsDevice(_nextInode++, DeviceKind.Null));
        dev.Children.TryAdd("zero", new VfsDevice(_nextInode++, DeviceKind.Zero));
        dev.Children.TryAdd("full", new VfsDevice(_nextInode++, DeviceKind.Full));
        dev.Children.TryAdd("urandom", new VfsDevice(_nextInode++, DeviceKind.Random));
        dev.Children.TryAdd("random", new VfsDevice(_nextInode++, DeviceKind.Random));
        FixedDirectory("/tmp").Permissions = 0x3FF; // drwxrwxrwt
        var self = FixedDirectory("/proc/self");
        self.Children["exe"] = new VfsSymlink(_nextInode++, exeTarget);
        self.Children["maps"] = new VfsFile(_nextInode++, [], false, 0x124);
        self.Children["status"] = new VfsFile(_nextInode++, [], false, 0x124);
        self.Children["cmdline"] = new VfsFile(_nextInode++, [], false, 0x124);
    }

    public VfsDirectory Root { get; }

    /// <summary>The sandbox's executable (the file <c>execve</c> accepts).</summary>
    public VfsFile Executable { get; private set; } = null!;

    /// <summary>The most bytes the program's writable files may hold together.</summary>
    public long MaxBytes { get; }

    /// <summary>The most files, directories and links the program may create.</summary>
    public int MaxEntries { get; }

    /// <summary>Bytes held by writable files now.</summary>
    public long UsedBytes { get; set; }

    /// <summary>Entries the program created and still holds.</summary>
    public int UsedEntries { get; set; }

    public ulong NewInode() => _nextInode++;

    /// <summary>A deep copy (for snapshots); <paramref name="map"/> receives the node copies, so open descriptions can follow them.</summary>
    public VirtualFileSystem Clone(Dictionary<object, object> map) =>
        new((VfsDirectory)Root.CloneInto(map), _nextInode, MaxBytes, MaxEntries) { UsedBytes = UsedBytes, UsedEntries = UsedEntries, Executable = (VfsFile)Executable.CloneInto(map) };

    private VfsDirectory FixedDirectory(string path)
    {
        var dir = Root;
        foreach (var part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (!dir.Children.TryGetValue(part, out var child))
            {
                child = new VfsDirectory(_nextInode++, 0x16D) { Parent = dir, Name = part, Fixed = true };
                dir.Children[part] = child;
            }

            dir = child as VfsDirectory ?? throw new ArgumentException($"'{path}' is granted both as a file and as a directory.", nameof(path));
        }

        return dir;
    }

    /// <summary>
    /// Looks up <paramref name="path"/> from <paramref name="start"/> (the root for an absolute path). Returns 0 and the
    /// node (null when only the last component is missing, with its would-be parent and name), or a negative errno.
    /// </summary>
    public long Lookup(VfsDirectory start, string path, bool followLast, out VfsNode? node, out VfsDirectory parent, out string name)
    {
        int links = 0;
        return Walk(start, path, followLast, ref links, out node, out parent, out name);
    }

    private long Walk(VfsDirectory start, string path, bool followLast, ref int links, out VfsNode? node, out VfsDirectory parent, out string name)
    {
        node = null;
        parent = start;
        name = "";
        if (path.Length == 0)
        {
            return -Errno.ENOENT;
        }

        var dir = path.StartsWith('/') ? Root : start;
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0)
        {
            node = dir;
            parent = dir.Parent ?? dir;
            name = ".";
            return 0;
        }

        for (int i = 0; i < parts.Length; i++)
        {
            string part = parts[i];
            bool last = i == parts.Length - 1;
            if (part.Length > 255)
            {
                return -Errno.ENAMETOOLONG;
            }

            VfsNode? child = part switch
            {
                "." => dir,
                ".." => dir.Parent ?? dir,
                _ => dir.Children.GetValueOrDefault(part),
            };
            if (child is VfsSymlink link && (!last || followLast))
            {
                if (++links > MaxSymlinks)
                {
                    return -Errno.ELOOP;
                }

                long e = Walk(dir, link.Target, true, ref links, out child, out _, out _);
                if (e < 0)
                {
                    return e;
                }
            }

            if (last)
            {
                node = child;
                parent = dir;
                name = part;
                if (child is null && path.EndsWith('/'))
                {
                    // "name/" names a directory: a missing one is still creatable by mkdir.
                    return 0;
                }

                return child is not null && child is not VfsDirectory && path.EndsWith('/') ? -Errno.ENOTDIR : 0;
            }

            if (child is null)
            {
                return -Errno.ENOENT;
            }

            if (child is not VfsDirectory next)
            {
                return -Errno.ENOTDIR;
            }

            dir = next;
        }

        return 0;
    }

    /// <summary>The path of what <paramref name="path"/> names with every symbolic link resolved, or null when it does not resolve.</summary>
    private string? RealPath(string path)
    {
        for (int links = 0; links <= MaxSymlinks; links++)
        {
            if (Lookup(Root, path, followLast: false, out var node, out var parent, out string name) < 0 || node is null)
            {
                return null;
            }

            string here = Normalize(parent.Path, name)!;
            if (node is not VfsSymlink link)
            {
                return here;
            }

            path = Normalize(parent.Path, link.Target)!;
        }

        return null;
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

    private static string LastName(string path) => path[(path.LastIndexOf('/') + 1)..];
}
