using System.Runtime.InteropServices;
using System.Text;
using static Virt.Storage.Interop.FileSystem;

namespace Virt.Storage.SharedFolders;

/// <summary>
/// The host side of a shared folder: answers FUSE requests (as the Linux virtiofs driver sends them) against one host
/// directory, confined to it.
/// </summary>
/// <remarks>
/// <para>
/// Confinement: the guest names files only by node ids this server handed out, and each node id stands for an
/// <c>O_PATH</c> descriptor opened with <c>O_NOFOLLOW</c> relative to its parent's descriptor, starting from the
/// share's root. Every name the guest sends is one path component (no <c>/</c>, not <c>.</c> or <c>..</c>, at most
/// 255 bytes, no NUL), resolved with an *at() call relative to a held descriptor, never as a path string, so no
/// name climbs out and no symbolic link is ever followed by the host. Files are opened again from their own
/// descriptor through <c>/proc/self/fd</c>, which lands on that exact inode; only regular files and directories can
/// be opened. A hard link can only be made to an inode reached inside the share. Node ids the server did not hand
/// out (forged handles) are refused with ESTALE.
/// </para>
/// <para>
/// Owners: the guest sees every file owned by uid 0 and gid 0; files are created with the host process's uid and
/// gid; changing the owner to anything else is refused (EPERM); set-user-ID and set-group-ID bits are never set.
/// </para>
/// <para>Threading: <see cref="Handle"/> may be called from several threads; requests are served one at a time.</para>
/// </remarks>
internal sealed partial class SharedFolderServer : IDisposable
{
    /// <summary>The root directory's node id (FUSE_ROOT_ID).</summary>
    public const ulong RootNodeId = 1;

    /// <summary>Most inodes the guest may hold at once (each is a host descriptor).</summary>
    public const int MaxInodes = 65536;

    /// <summary>Most files and directories the guest may hold open at once.</summary>
    public const int MaxHandles = 16384;

    /// <summary>How long the guest may cache names and attributes: one second, so host-side changes show soon.</summary>
    private const ulong ValiditySeconds = 1;

    private readonly Lock _sync = new();
    private readonly Dictionary<ulong, Inode> _inodes = [];
    private readonly Dictionary<(ulong Device, ulong Ino), Inode> _byIdentity = [];
    private readonly Dictionary<ulong, OpenHandle> _handles = [];
    private readonly byte[] _scratch = new byte[64 * 1024];
    private readonly int _procSelfFd;
    private readonly Inode _root;
    private ulong _nextNodeId = RootNodeId + 1;
    private ulong _nextHandle = 1;
    private uint _negotiatedFlags;
    private bool _disposed;

    /// <summary>Opens the share's root.</summary>
    /// <exception cref="PlatformNotSupportedException">The host is not Linux.</exception>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="IOException">The directory or /proc/self/fd cannot be opened.</exception>
    public unsafe SharedFolderServer(string hostPath, bool readOnly)
    {
        ArgumentException.ThrowIfNullOrEmpty(hostPath);
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("Shared folders need a Linux host: every name is resolved with openat(2) relative to descriptors held open, and files are reopened through /proc/self/fd.");
        }

        HostPath = Path.GetFullPath(hostPath);
        if (!Directory.Exists(HostPath))
        {
            throw new DirectoryNotFoundException($"The shared folder '{HostPath}' does not exist or is not a directory; create it or pass another path.");
        }

        IsReadOnly = readOnly;
        _procSelfFd = OpenPath("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
        int rootFd;
        try
        {
            rootFd = OpenPath(HostPath, O_PATH | O_DIRECTORY | O_CLOEXEC);
        }
        catch
        {
            _ = Close(_procSelfFd);
            throw;
        }

        if (StatFd(rootFd, out var st) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            _ = Close(rootFd);
            _ = Close(_procSelfFd);
            throw new IOException($"Cannot read the attributes of the shared folder '{HostPath}' (errno {errno}).");
        }

        _root = new Inode(RootNodeId, rootFd, DeviceOf(st), st.Ino, S_IFDIR) { Lookups = 1 };
        _inodes.Add(RootNodeId, _root);
        _byIdentity.Add((_root.Device, _root.Ino), _root);
    }

    /// <summary>The shared directory's full host path.</summary>
    public string HostPath { get; }

    /// <summary>Whether every write is refused with EROFS.</summary>
    public bool IsReadOnly { get; }

    /// <summary>Inodes held for the guest, the root included (for tests and diagnostics).</summary>
    public int InodeCount
    {
        get
        {
            lock (_sync)
            {
                return _inodes.Count;
            }
        }
    }

    /// <summary>Open file and directory handles (for tests and diagnostics).</summary>
    public int HandleCount
    {
        get
        {
            lock (_sync)
            {
                return _handles.Count;
            }
        }
    }

    /// <summary>
    /// Serves one request: <paramref name="message"/> is the request as the guest wrote it (header and arguments),
    /// <paramref name="reply"/> the space the guest gave for the answer. Returns the bytes of the answer written
    /// (0 for FORGET and BATCH_FORGET, which have none, or when the guest gave no room for a reply header).
    /// Never throws for anything in the message.
    /// </summary>
    public int Handle(ReadOnlySpan<byte> message, Span<byte> reply)
    {
        int error = FuseMessageParser.Parse(message, out var header, out var body);
        if (error != 0)
        {
            return Error(reply, header.Unique, error);
        }

        lock (_sync)
        {
            if (_disposed)
            {
                return Error(reply, header.Unique, Fuse.EIO);
            }

            return Dispatch(in header, body, reply);
        }
    }

    /// <summary>Forgets every inode but the root and closes every handle: the driver reset the device, or sent DESTROY.</summary>
    public void Reset()
    {
        lock (_sync)
        {
            ReleaseAll();
        }
    }

    /// <summary>Closes every descriptor, the root's included.</summary>
    public void Dispose()
    {
        lock (_sync)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            ReleaseAll();
            _ = Close(_root.Fd);
            _ = Close(_procSelfFd);
            _inodes.Clear();
            _byIdentity.Clear();
        }
    }

    private int Dispatch(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        var opcode = (FuseOpcode)h.Opcode;
        if (IsReadOnly && IsWrite(opcode))
        {
            return Error(reply, h.Unique, Fuse.EROFS);
        }

        return opcode switch
        {
            FuseOpcode.Init => Init(in h, body, reply),
            FuseOpcode.Destroy => Destroy(in h, reply),
            FuseOpcode.Lookup => Lookup(in h, body, reply),
            FuseOpcode.Forget => Forget(in h, body),
            FuseOpcode.BatchForget => BatchForget(body),
            FuseOpcode.GetAttr => GetAttr(in h, reply),
            FuseOpcode.SetAttr => SetAttr(in h, body, reply),
            FuseOpcode.ReadLink => ReadLink(in h, reply),
            FuseOpcode.Symlink => Symlink(in h, body, reply),
            FuseOpcode.MkNod => MkNod(in h, body, reply),
            FuseOpcode.MkDir => MkDir(in h, body, reply),
            FuseOpcode.Unlink => Remove(in h, body, reply, 0),
            FuseOpcode.RmDir => Remove(in h, body, reply, AT_REMOVEDIR),
            FuseOpcode.Rename => Rename(in h, body, reply, withFlags: false),
            FuseOpcode.Rename2 => Rename(in h, body, reply, withFlags: true),
            FuseOpcode.Link => Link(in h, body, reply),
            FuseOpcode.Open => Open(in h, body, reply, directory: false),
            FuseOpcode.OpenDir => Open(in h, body, reply, directory: true),
            FuseOpcode.Create => Create(in h, body, reply),
            FuseOpcode.Read => Read(in h, body, reply),
            FuseOpcode.Write => Write(in h, body, reply),
            FuseOpcode.ReadDir => ReadDir(in h, body, reply, plus: false),
            FuseOpcode.ReadDirPlus => ReadDir(in h, body, reply, plus: true),
            FuseOpcode.Release => Release(in h, body, reply, directory: false),
            FuseOpcode.ReleaseDir => Release(in h, body, reply, directory: true),
            FuseOpcode.Flush => Flush(in h, body, reply),
            FuseOpcode.Fsync => Fsync(in h, body, reply, directory: false),
            FuseOpcode.FsyncDir => Fsync(in h, body, reply, directory: true),
            FuseOpcode.StatFs => StatFs(in h, reply),
            FuseOpcode.Lseek => Lseek(in h, body, reply),
            _ => Error(reply, h.Unique, Fuse.ENOSYS),
        };
    }

    /// <summary>Requests that change the share (OPEN and CREATE decide by their flags, checked where they are served).</summary>
    private static bool IsWrite(FuseOpcode opcode) => opcode is FuseOpcode.SetAttr or FuseOpcode.Symlink or FuseOpcode.MkNod
        or FuseOpcode.MkDir or FuseOpcode.Unlink or FuseOpcode.RmDir or FuseOpcode.Rename or FuseOpcode.Rename2
        or FuseOpcode.Link or FuseOpcode.Write or FuseOpcode.Create or FuseOpcode.Fallocate or FuseOpcode.SetXattr
        or FuseOpcode.RemoveXattr or FuseOpcode.CopyFileRange or FuseOpcode.TmpFile;

    private int Init(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseInitIn init))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (init.Major < Fuse.KernelMajor)
        {
            return Error(reply, h.Unique, Fuse.EPROTO);
        }

        var output = new FuseInitOut { Major = Fuse.KernelMajor };
        if (init.Major > Fuse.KernelMajor)
        {
            // The kernel sends INIT again with our major version (fuse.h, "INIT request/reply flags").
            return Reply(reply, h.Unique, in output, Fuse.InitOutCompatSize);
        }

        _negotiatedFlags = init.Flags & (Fuse.InitAsyncRead | Fuse.InitBigWrites | Fuse.InitDoReadDirPlus | Fuse.InitParallelDirOps | Fuse.InitMaxPages);
        output.Minor = Fuse.KernelMinor;
        output.MaxReadahead = init.MaxReadahead;
        output.Flags = _negotiatedFlags;
        output.MaxBackground = 16;
        output.CongestionThreshold = 12;
        output.MaxWrite = Fuse.MaxWrite;
        output.TimeGranularity = 1;
        output.MaxPages = Fuse.MaxPages;
        return Reply(reply, h.Unique, in output, init.Minor < Fuse.MinorWithFullInitOut ? Fuse.InitOutCompatSize : Fuse.InitOutSize);
    }

    private int Destroy(in FuseInHeader h, Span<byte> reply)
    {
        ReleaseAll();
        return Empty(reply, h.Unique);
    }

    private int Forget(in FuseInHeader h, ReadOnlySpan<byte> body)
    {
        if (FuseMessageParser.TryTake(ref body, out FuseForgetIn forget))
        {
            ForgetOne(h.NodeId, forget.Nlookup);
        }

        return 0;
    }

    private int BatchForget(ReadOnlySpan<byte> body)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseBatchForgetIn batch))
        {
            return 0;
        }

        for (uint i = 0; i < batch.Count && FuseMessageParser.TryTake(ref body, out FuseForgetOne one); i++)
        {
            ForgetOne(one.NodeId, one.Nlookup);
        }

        return 0;
    }

    private void ForgetOne(ulong nodeId, ulong count)
    {
        if (nodeId == RootNodeId || !_inodes.TryGetValue(nodeId, out var inode))
        {
            return;
        }

        inode.Lookups = count >= inode.Lookups ? 0 : inode.Lookups - count;
        if (inode.Lookups == 0)
        {
            _inodes.Remove(nodeId);
            _byIdentity.Remove((inode.Device, inode.Ino));
            _ = Close(inode.Fd);
        }
    }

    private void ReleaseAll()
    {
        foreach (var handle in _handles.Values)
        {
            _ = Close(handle.Fd);
        }

        _handles.Clear();
        foreach (var inode in _inodes.Values)
        {
            if (inode != _root)
            {
                _ = Close(inode.Fd);
            }
        }

        _inodes.Clear();
        _byIdentity.Clear();
        if (!_disposed)
        {
            _inodes.Add(RootNodeId, _root);
            _byIdentity.Add((_root.Device, _root.Ino), _root);
        }
    }

    private Inode? Find(ulong nodeId) => _inodes.TryGetValue(nodeId, out var inode) ? inode : null;

    /// <summary>Registers the inode behind <paramref name="fd"/> (or counts one more lookup of it); takes ownership of the descriptor.</summary>
    private Inode? Intern(int fd, in Statx st, out int error)
    {
        error = 0;
        var key = (DeviceOf(st), st.Ino);
        if (_byIdentity.TryGetValue(key, out var existing))
        {
            _ = Close(fd);
            existing.Lookups++;
            return existing;
        }

        if (_inodes.Count >= MaxInodes)
        {
            _ = Close(fd);
            error = Fuse.ENFILE;
            return null;
        }

        var inode = new Inode(_nextNodeId++, fd, key.Item1, st.Ino, st.Mode & S_IFMT) { Lookups = 1 };
        _inodes.Add(inode.NodeId, inode);
        _byIdentity.Add(key, inode);
        return inode;
    }

    private static FuseAttr ToAttr(in Statx st) => new()
    {
        Ino = st.Ino,
        Size = st.Size,
        Blocks = st.Blocks,
        Atime = (ulong)st.Atime.Seconds,
        AtimeNsec = st.Atime.Nanoseconds,
        Mtime = (ulong)st.Mtime.Seconds,
        MtimeNsec = st.Mtime.Nanoseconds,
        Ctime = (ulong)st.Ctime.Seconds,
        CtimeNsec = st.Ctime.Nanoseconds,
        Mode = st.Mode,
        Nlink = st.Nlink,
        // Owner policy: the guest sees every file as its root's (docs/devices.md, "Shared folders").
        Uid = 0,
        Gid = 0,
        Rdev = (st.RdevMinor & 0xFF) | ((st.RdevMajor & 0xFFF) << 8) | ((st.RdevMinor & ~0xFFu) << 12),
        BlockSize = st.BlockSize,
    };

    private static FuseEntryOut ToEntry(Inode inode, in Statx st) => new()
    {
        NodeId = inode.NodeId,
        EntryValid = ValiditySeconds,
        AttrValid = ValiditySeconds,
        Attr = ToAttr(st),
    };

    private static ulong DeviceOf(in Statx st) => ((ulong)st.DevMajor << 32) | st.DevMinor;

    private static unsafe int StatFd(int fd, out Statx st)
    {
        Statx buffer;
        byte empty = 0;
        int result = StatxAt(fd, &empty, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &buffer);
        st = buffer;
        return result;
    }

    private static unsafe int OpenPath(string path, int flags)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = bytes)
        {
            int fd = OpenAt(AT_FDCWD, p, flags, 0);
            if (fd < 0)
            {
                throw new IOException($"Cannot open '{path}' (errno {Marshal.GetLastPInvokeError()}).");
            }

            return fd;
        }
    }

    /// <summary>Writes the decimal <paramref name="fd"/> and a NUL: its name in /proc/self/fd.</summary>
    private static void FdName(int fd, Span<byte> destination)
    {
        fd.TryFormat(destination, out int written, provider: System.Globalization.CultureInfo.InvariantCulture);
        destination[written] = 0;
    }

    /// <summary>Opens the inode behind <paramref name="inode"/> again through its /proc/self/fd magic link, which resolves to that inode and no other.</summary>
    private unsafe int Reopen(Inode inode, int flags)
    {
        byte* name = stackalloc byte[16];
        FdName(inode.Fd, new Span<byte>(name, 16));
        return OpenAt(_procSelfFd, name, flags | O_CLOEXEC | O_NOCTTY, 0);
    }

    private static int LastError()
    {
        int errno = Marshal.GetLastPInvokeError();
        return errno > 0 ? errno : Fuse.EIO;
    }

    private static int Error(Span<byte> reply, ulong unique, int errno)
    {
        if (reply.Length < Fuse.OutHeaderSize)
        {
            return 0;
        }

        var header = new FuseOutHeader { Length = Fuse.OutHeaderSize, Error = -errno, Unique = unique };
        MemoryMarshal.Write(reply, in header);
        return Fuse.OutHeaderSize;
    }

    private static int Empty(Span<byte> reply, ulong unique) => Complete(reply, unique, 0);

    /// <summary>Writes the success header for a payload of <paramref name="payloadLength"/> bytes already written after it.</summary>
    private static int Complete(Span<byte> reply, ulong unique, int payloadLength)
    {
        if (reply.Length < Fuse.OutHeaderSize + payloadLength)
        {
            return Error(reply, unique, Fuse.EINVAL);
        }

        var header = new FuseOutHeader { Length = (uint)(Fuse.OutHeaderSize + payloadLength), Unique = unique };
        MemoryMarshal.Write(reply, in header);
        return Fuse.OutHeaderSize + payloadLength;
    }

    private static int Reply<T>(Span<byte> reply, ulong unique, in T value, int size = -1)
        where T : unmanaged
    {
        int length = size < 0 ? System.Runtime.CompilerServices.Unsafe.SizeOf<T>() : size;
        if (reply.Length < Fuse.OutHeaderSize + length)
        {
            return Error(reply, unique, Fuse.EINVAL);
        }

        Span<byte> whole = stackalloc byte[System.Runtime.CompilerServices.Unsafe.SizeOf<T>()];
        MemoryMarshal.Write(whole, in value);
        whole[..length].CopyTo(reply[Fuse.OutHeaderSize..]);
        return Complete(reply, unique, length);
    }

    /// <summary>A file-system object the guest holds a node id for.</summary>
    private sealed class Inode(ulong nodeId, int fd, ulong device, ulong ino, uint type)
    {
        public ulong NodeId { get; } = nodeId;

        /// <summary>The O_PATH descriptor that stands for the object; closed when the guest forgets it.</summary>
        public int Fd { get; } = fd;

        public ulong Device { get; } = device;

        public ulong Ino { get; } = ino;

        /// <summary>The S_IFMT bits, which never change for an inode.</summary>
        public uint Type { get; } = type;

        public ulong Lookups { get; set; }

        public bool IsDirectory => Type == S_IFDIR;
    }

    /// <summary>An open file or directory (a FUSE file handle).</summary>
    private sealed class OpenHandle(int fd, bool directory, bool writable)
    {
        public int Fd { get; } = fd;

        public bool IsDirectory { get; } = directory;

        public bool IsWritable { get; } = writable;
    }
}
