using System.Buffers.Binary;
using System.Text;

namespace Virt.Sandbox.Linux;

// The descriptor table and the in-memory file system: open, close, dup, fcntl, lseek, stat, getdents, readlink, access, getcwd, chdir, ioctl, fsync.
internal sealed partial class LinuxAbi
{
    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const int AtRemoveDir = 0x200;
    private const int AtEmptyPath = 0x1000;

    private bool ValidFd(int fd) => fd >= 0 && fd < MaxFds && _state.Fds[fd] is not null;

    /// <summary>The directory a relative path starts from: the working directory or <paramref name="dirfd"/>'s directory.</summary>
    private long StartDirectory(int dirfd, out VfsDirectory start)
    {
        start = _state.Cwd;
        if (dirfd == AtFdCwd)
        {
            return 0;
        }

        if (!ValidFd(dirfd))
        {
            return -Errno.EBADF;
        }

        if (_state.Fds[dirfd]!.Node is not VfsDirectory d)
        {
            return -Errno.ENOTDIR;
        }

        start = d;
        return 0;
    }

    /// <summary>Reads the path at <paramref name="pathPointer"/> and looks it up (see <see cref="VirtualFileSystem.Lookup"/>).</summary>
    private long Resolve(int dirfd, ulong pathPointer, bool followLast, out VfsNode? node, out VfsDirectory parent, out string name)
    {
        node = null;
        parent = _state.Vfs.Root;
        name = "";
        string? path = ReadString(pathPointer);
        if (path is null)
        {
            return -Errno.EFAULT;
        }

        if (path.Length == 0)
        {
            return -Errno.ENOENT;
        }

        long e = path.StartsWith('/') ? 0 : StartDirectory(dirfd, out parent);
        if (e < 0)
        {
            return e;
        }

        return _state.Vfs.Lookup(path.StartsWith('/') ? _state.Vfs.Root : parent, path, followLast, out node, out parent, out name);
    }

    /// <summary>Counts one more entry the program made; false (ENOSPC) past the limit.</summary>
    private bool TakeEntry()
    {
        if (_state.Vfs.UsedEntries >= _state.Vfs.MaxEntries)
        {
            return false;
        }

        _state.Vfs.UsedEntries++;
        return true;
    }

    private void ReleaseNode(VfsNode node)
    {
        _state.Vfs.UsedEntries = Math.Max(0, _state.Vfs.UsedEntries - 1);
        if (node is VfsFile { Writable: true } f && !IsOpen(f) && !IsLinked(f))
        {
            _state.Vfs.UsedBytes -= f.Content.Length;
        }
    }

    private bool IsOpen(VfsNode node)
    {
        foreach (var d in _state.Fds)
        {
            if (d is not null && d.Node == node)
            {
                return true;
            }
        }

        return false;
    }

    private bool IsLinked(VfsNode node)
    {
        var stack = new Stack<VfsDirectory>();
        stack.Push(_state.Vfs.Root);
        while (stack.Count > 0)
        {
            foreach (var child in stack.Pop().Children.Values)
            {
                if (child == node)
                {
                    return true;
                }

                if (child is VfsDirectory d)
                {
                    stack.Push(d);
                }
            }
        }

        return false;
    }

    private long Now() => RealtimeNanoseconds();

    private long OpenAt(int dirfd, ulong pathPointer, int flags, uint mode)
    {
        var o = (OpenFlags)flags;
        bool create = (o & OpenFlags.Create) != 0;
        bool exclusive = create && (o & OpenFlags.Exclusive) != 0;
        bool tmpFile = (o & OpenFlags.TmpFile) != 0;
        long e = Resolve(dirfd, pathPointer, followLast: !exclusive && (o & OpenFlags.NoFollow) == 0, out var node, out var parent, out string name);
        if (e < 0)
        {
            return e;
        }

        var access = o & OpenFlags.AccessMask;
        if (tmpFile)
        {
            // O_TMPFILE: an unnamed file in the directory the path names.
            if (node is not VfsDirectory || access == OpenFlags.ReadOnly)
            {
                return node is null ? -Errno.ENOENT : -Errno.EINVAL;
            }

            if (!TakeEntry())
            {
                return -Errno.ENOSPC;
            }

            var unnamed = new VfsFile(_state.Vfs.NewInode(), [], true, mode & 0xFFF & ~(uint)_state.Umask) { ModifiedNanoseconds = Now() };
            return Install(new FileDescription(FdKind.File, o & ~OpenFlags.TmpFile) { Node = unnamed }, o);
        }

        if (node is null)
        {
            if (!create)
            {
                return -Errno.ENOENT;
            }

            if (!TakeEntry())
            {
                return -Errno.ENOSPC;
            }

            node = new VfsFile(_state.Vfs.NewInode(), [], true, mode & 0xFFF & ~(uint)_state.Umask) { ModifiedNanoseconds = Now() };
            parent.Children[name] = node;
            parent.ModifiedNanoseconds = Now();
        }
        else if (exclusive)
        {
            return -Errno.EEXIST;
        }

        return OpenNode(node, parent, name, o);
    }

    /// <summary>Opens an existing node (or one <see cref="OpenAt"/> just made) with flags <paramref name="o"/>.</summary>
    private long OpenNode(VfsNode node, VfsDirectory parent, string name, OpenFlags o)
    {
        var access = o & OpenFlags.AccessMask;
        bool create = (o & OpenFlags.Create) != 0;
        switch (node)
        {
            case VfsSymlink:
                return -Errno.ELOOP;
            case VfsDirectory:
                if (access != OpenFlags.ReadOnly || create)
                {
                    return -Errno.EISDIR;
                }

                return Install(new FileDescription(FdKind.Directory, o) { Node = node }, o);
            case VfsDevice:
                return (o & OpenFlags.Directory) != 0 ? -Errno.ENOTDIR : Install(new FileDescription(FdKind.Device, o) { Node = node }, o);
        }

        var file = (VfsFile)node;
        if ((o & OpenFlags.Directory) != 0)
        {
            return -Errno.ENOTDIR;
        }

        long loaded = file.Load(); // a file of a granted host directory: its bytes are read now, once
        if (loaded < 0)
        {
            return loaded;
        }

        if (access != OpenFlags.ReadOnly && !file.Writable)
        {
            return -Errno.EACCES;
        }

        if (parent.Path == "/proc/self" && ProcFile(name) is { } generated)
        {
            file = generated;
        }
        else if ((o & OpenFlags.Truncate) != 0 && file.Writable && access != OpenFlags.ReadOnly)
        {
            SetLength(file, 0);
        }

        return Install(new FileDescription(FdKind.File, o) { Node = file }, o);
    }

    /// <summary>Puts <paramref name="description"/> at the lowest free descriptor.</summary>
    private long Install(FileDescription description, OpenFlags flags, int from = 0)
    {
        int fd = LowestFreeFd(from);
        if (fd < 0)
        {
            return -Errno.EMFILE;
        }

        _state.Fds[fd] = description;
        _state.CloseOnExec[fd] = (flags & OpenFlags.CloseOnExec) != 0;
        return fd;
    }

    /// <summary>Changes a writable file's length, keeping the byte count of the file system; false (ENOSPC) past its limit.</summary>
    private bool SetLength(VfsFile file, long length)
    {
        long grow = Math.Max(0, length - file.Content.Length);
        if (grow > 0 && _state.Vfs.UsedBytes + grow > _state.Vfs.MaxBytes)
        {
            return false;
        }

        if (length > file.Content.Length)
        {
            var grown = new byte[length];
            file.Content.AsSpan(0, (int)file.Length).CopyTo(grown);
            file.Content = grown;
            _state.Vfs.UsedBytes += grow;
        }
        else if (length < file.Length)
        {
            file.Content.AsSpan((int)length, (int)(file.Length - length)).Clear();
        }

        file.Length = length;
        file.ModifiedNanoseconds = Now();
        return true;
    }

    private int LowestFreeFd(int from)
    {
        for (int i = Math.Max(from, 0); i < MaxFds; i++)
        {
            if (_state.Fds[i] is null)
            {
                return i;
            }
        }

        return -1;
    }

    private long Close(int fd)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var description = _state.Fds[fd]!;
        _state.Fds[fd] = null;
        _state.CloseOnExec[fd] = false;
        if (description.Node is VfsFile { Writable: true } f && !IsOpen(f) && !IsLinked(f))
        {
            // The last descriptor of an unlinked file: its bytes are free again.
            _state.Vfs.UsedBytes -= f.Content.Length;
        }

        DescriptorsChanged();
        return 0;
    }

    private long Dup(int fd, int target, int flags)
    {
        if (!ValidFd(fd) || target >= MaxFds || (target < 0 && target != -1))
        {
            return -Errno.EBADF;
        }

        if ((flags & ~(int)OpenFlags.CloseOnExec) != 0)
        {
            return -Errno.EINVAL;
        }

        int t = target >= 0 ? target : LowestFreeFd(0);
        if (t < 0)
        {
            return -Errno.EMFILE;
        }

        _state.Fds[t] = _state.Fds[fd];
        _state.CloseOnExec[t] = (flags & (int)OpenFlags.CloseOnExec) != 0;
        DescriptorsChanged();
        return t;
    }

    private long Dup2(ulong fd, ulong target) => fd == target ? (ValidFd((int)fd) ? (long)fd : -Errno.EBADF) : Dup((int)fd, (int)target, 0);

    private long Dup3(ulong fd, ulong target, ulong flags) => fd == target ? -Errno.EINVAL : Dup((int)fd, (int)target, (int)flags);

    private long Fcntl(int fd, int cmd, ulong arg)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        const int FDupfd = 0, FGetfd = 1, FSetfd = 2, FGetfl = 3, FSetfl = 4, FGetlk = 5, FSetlk = 6, FSetlkw = 7, FDupfdCloexec = 1030,
            FGetPipeSize = 1032, FSetPipeSize = 1031, FAddSeals = 1033, FGetSeals = 1034;
        var f = _state.Fds[fd]!;
        switch (cmd)
        {
            case FDupfd or FDupfdCloexec:
                if (arg >= MaxFds)
                {
                    return -Errno.EINVAL;
                }

                return Install(f, cmd == FDupfdCloexec ? OpenFlags.CloseOnExec : 0, (int)arg);
            case FGetfd:
                return _state.CloseOnExec[fd] ? 1 : 0;
            case FSetfd:
                _state.CloseOnExec[fd] = (arg & 1) != 0;
                return 0;
            case FGetfl:
                return (long)(f.Flags & (OpenFlags.AccessMask | OpenFlags.Append | OpenFlags.NonBlock)) | (f.Kind == FdKind.Directory ? (long)OpenFlags.Directory : 0);
            case FSetfl:
                f.Flags = (f.Flags & ~(OpenFlags.Append | OpenFlags.NonBlock)) | ((OpenFlags)(int)arg & (OpenFlags.Append | OpenFlags.NonBlock));
                return 0;
            case FGetlk:
            {
                // No other process holds a lock: l_type becomes F_UNLCK.
                Span<byte> type = stackalloc byte[2];
                BinaryPrimitives.WriteInt16LittleEndian(type, 2);
                return WriteUser(arg, type) ? 0 : -Errno.EFAULT;
            }

            case FSetlk or FSetlkw:
                return 0; // one process: every lock is granted
            case FGetPipeSize:
                return f.Pipe is null ? -Errno.EBADF : PipeBuffer.Capacity;
            case FSetPipeSize:
                return f.Pipe is null ? -Errno.EBADF : PipeBuffer.Capacity;
            case FAddSeals or FGetSeals:
                return -Errno.EINVAL;
            default:
                return -Errno.EINVAL;
        }
    }

    private long Lseek(int fd, long offset, int whence)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        if (f.Kind is not (FdKind.File or FdKind.Directory or FdKind.Device))
        {
            return -Errno.ESPIPE;
        }

        if (f.Kind == FdKind.Device)
        {
            f.Position = 0;
            return 0;
        }

        long size = f.Node is VfsFile file ? file.Length : 0;
        const int SeekSet = 0, SeekCur = 1, SeekEnd = 2, SeekData = 3, SeekHole = 4;
        long basePos = whence switch { SeekSet => 0, SeekCur => f.Position, SeekEnd => size, SeekData or SeekHole => 0, _ => long.MinValue };
        if (basePos == long.MinValue)
        {
            return -Errno.EINVAL;
        }

        if (whence is SeekData or SeekHole)
        {
            if (offset < 0 || offset >= size)
            {
                return -Errno.ENXIO;
            }

            f.Position = whence == SeekData ? offset : size;
            return f.Position;
        }

        long pos = basePos + offset;
        if (pos < 0 || (offset > 0 && pos < basePos))
        {
            return -Errno.EINVAL;
        }

        f.Position = pos;
        return pos;
    }

    private long Getdents(int fd, ulong buffer, ulong count)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        if (f.Node is not VfsDirectory dir)
        {
            return -Errno.ENOTDIR;
        }

        var entries = new List<(string Name, VfsNode Node)>(dir.Children.Count + 2) { (".", dir), ("..", dir.Parent ?? dir) };
        foreach (var (n, node) in dir.Children)
        {
            entries.Add((n, node));
        }

        int cap = (int)Math.Min(count, (ulong)_scratch.Length);
        int used = 0;
        while (f.Position < entries.Count)
        {
            var (name, node) = entries[(int)f.Position];
            byte[] nameBytes = Encoding.UTF8.GetBytes(name);
            int reclen = (19 + nameBytes.Length + 1 + 7) & ~7;
            if (used + reclen > cap)
            {
                break;
            }

            var rec = _scratch.AsSpan(used, reclen);
            rec.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(rec, node.Inode);
            BinaryPrimitives.WriteInt64LittleEndian(rec[8..], f.Position + 1);
            BinaryPrimitives.WriteUInt16LittleEndian(rec[16..], (ushort)reclen);
            rec[18] = node.DirectoryEntryType;
            nameBytes.CopyTo(rec[19..]);
            used += reclen;
            f.Position++;
        }

        if (used == 0 && f.Position < entries.Count)
        {
            return -Errno.EINVAL;
        }

        return WriteUser(buffer, _scratch.AsSpan(0, used)) ? used : -Errno.EFAULT;
    }

    private long Fstat(int fd, ulong statPointer)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        return f.Node is { } node
            ? WriteStat(statPointer, node)
            : WriteStatRaw(statPointer, 0x1000 | 0x180, f.Pipe?.Count ?? 0, (ulong)(10 + fd), 1, 0, 0); // S_IFIFO, rw-------: stdio and pipes
    }

    private long StatPath(int dirfd, ulong pathPointer, ulong statPointer, int flags)
    {
        if ((flags & AtEmptyPath) != 0 && ReadString(pathPointer) == "")
        {
            return dirfd == AtFdCwd ? WriteStat(statPointer, _state.Cwd) : Fstat(dirfd, statPointer);
        }

        long e = Resolve(dirfd, pathPointer, (flags & AtSymlinkNoFollow) == 0, out var node, out _, out _);
        if (e < 0)
        {
            return e;
        }

        return node is null ? -Errno.ENOENT : WriteStat(statPointer, node);
    }

    private long WriteStat(ulong pointer, VfsNode node)
    {
        long size = node switch
        {
            VfsFile f => f.Length,
            VfsDirectory => 4096,
            VfsSymlink l => Encoding.UTF8.GetByteCount(l.Target),
            _ => 0,
        };
        // A host directory not listed yet says 2 rather than being listed just for its link count.
        uint nlink = node is VfsDirectory d ? d.Host is null ? 2u + (uint)d.Children.Values.Count(c => c is VfsDirectory) : 2u : 1u;
        ulong rdev = node is VfsDevice dev ? dev.Kind switch { DeviceKind.Null => 0x103UL, DeviceKind.Zero => 0x105UL, DeviceKind.Full => 0x107UL, _ => 0x109UL } : 0UL;
        return WriteStatRaw(pointer, node.TypeBits | node.Permissions, size, node.Inode, nlink, rdev, node.ModifiedNanoseconds);
    }

    /// <summary>Writes a <c>struct stat</c> (x86-64 layout, 144 bytes).</summary>
    private long WriteStatRaw(ulong pointer, uint mode, long size, ulong inode, uint nlink, ulong rdev, long modifiedNs)
    {
        Span<byte> st = stackalloc byte[144];
        st.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(st, 0x56); // st_dev
        BinaryPrimitives.WriteUInt64LittleEndian(st[8..], inode);
        BinaryPrimitives.WriteUInt64LittleEndian(st[16..], nlink);
        BinaryPrimitives.WriteUInt32LittleEndian(st[24..], mode);
        BinaryPrimitives.WriteUInt32LittleEndian(st[28..], (uint)HostUid);
        BinaryPrimitives.WriteUInt32LittleEndian(st[32..], (uint)HostUid);
        BinaryPrimitives.WriteUInt64LittleEndian(st[40..], rdev);
        BinaryPrimitives.WriteInt64LittleEndian(st[48..], size);
        BinaryPrimitives.WriteInt64LittleEndian(st[56..], 4096); // st_blksize
        BinaryPrimitives.WriteInt64LittleEndian(st[64..], (size + 511) / 512);
        for (int t = 0; t < 3; t++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(st[(72 + (t * 16))..], modifiedNs / 1_000_000_000);
            BinaryPrimitives.WriteInt64LittleEndian(st[(80 + (t * 16))..], modifiedNs % 1_000_000_000);
        }

        return WriteUser(pointer, st) ? 0 : -Errno.EFAULT;
    }

    private long ReadLink(int dirfd, ulong pathPointer, ulong buffer, ulong size)
    {
        long e = Resolve(dirfd, pathPointer, followLast: false, out var node, out _, out _);
        if (e < 0)
        {
            return e;
        }

        if (node is not VfsSymlink link)
        {
            return node is null ? -Errno.ENOENT : -Errno.EINVAL;
        }

        if ((long)size <= 0)
        {
            return -Errno.EINVAL;
        }

        byte[] target = Encoding.UTF8.GetBytes(link.Target);
        int n = (int)Math.Min((ulong)target.Length, size);
        return WriteUser(buffer, target.AsSpan(0, n)) ? n : -Errno.EFAULT;
    }

    private long Access(int dirfd, ulong pathPointer, int mode, int flags)
    {
        long e = Resolve(dirfd, pathPointer, (flags & AtSymlinkNoFollow) == 0, out var node, out _, out _);
        if (e < 0)
        {
            return e;
        }

        if (node is null)
        {
            return -Errno.ENOENT;
        }

        const int WOk = 2, XOk = 1;
        if ((mode & WOk) != 0 && node is VfsFile { Writable: false })
        {
            return -Errno.EACCES;
        }

        return (mode & XOk) != 0 && (node.Permissions & 0x49) == 0 ? -Errno.EACCES : 0;
    }

    private long Getcwd(ulong buffer, ulong size)
    {
        byte[] path = Encoding.UTF8.GetBytes(_state.Cwd.Path + "\0");
        if (size < (ulong)path.Length)
        {
            return -Errno.ERANGE;
        }

        return WriteUser(buffer, path) ? path.Length : -Errno.EFAULT;
    }

    private long Chdir(ulong pathPointer)
    {
        long e = Resolve(AtFdCwd, pathPointer, followLast: true, out var node, out _, out _);
        if (e < 0)
        {
            return e;
        }

        if (node is not VfsDirectory dir)
        {
            return node is null ? -Errno.ENOENT : -Errno.ENOTDIR;
        }

        _state.Cwd = dir;
        return 0;
    }

    private long Fchdir(int fd)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        if (_state.Fds[fd]!.Node is not VfsDirectory dir)
        {
            return -Errno.ENOTDIR;
        }

        _state.Cwd = dir;
        return 0;
    }

    /// <summary>No descriptor is a terminal (stdin, stdout and stderr are pipes), so every request fails as on a pipe, except FIONREAD and FIONBIO.</summary>
    private long Ioctl(int fd, ulong request, ulong arg)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        const ulong Fionread = 0x541B, Fionbio = 0x5421, Fioclex = 0x5451, Fionclex = 0x5450;
        var f = _state.Fds[fd]!;
        switch (request)
        {
            case Fionread:
            {
                long available = f.Kind switch
                {
                    FdKind.Stdin => _stdin.Length - _stdinPosition,
                    FdKind.PipeRead => f.Pipe!.Count,
                    FdKind.File => Math.Max(0, ((VfsFile)f.Node!).Length - f.Position),
                    _ => -1,
                };
                if (available < 0)
                {
                    return -Errno.ENOTTY;
                }

                Span<byte> v = stackalloc byte[4];
                BinaryPrimitives.WriteInt32LittleEndian(v, (int)Math.Min(available, int.MaxValue));
                return WriteUser(arg, v) ? 0 : -Errno.EFAULT;
            }

            case Fionbio:
            {
                Span<byte> v = stackalloc byte[4];
                if (!ReadUser(arg, v))
                {
                    return -Errno.EFAULT;
                }

                f.Flags = BinaryPrimitives.ReadInt32LittleEndian(v) != 0 ? f.Flags | OpenFlags.NonBlock : f.Flags & ~OpenFlags.NonBlock;
                return 0;
            }

            case Fioclex or Fionclex:
                _state.CloseOnExec[fd] = request == Fioclex;
                return 0;
            default:
                return -Errno.ENOTTY;
        }
    }

    /// <summary><c>fsync</c> and <c>fdatasync</c>: files live in host memory, so there is nothing to flush.</summary>
    private long Fsync(int fd) => ValidFd(fd) ? 0 : -Errno.EBADF;
}
