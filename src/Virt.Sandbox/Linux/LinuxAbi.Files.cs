using System.Buffers.Binary;
using System.Text;

namespace Virt.Sandbox.Linux;

// The descriptor table and the in-memory file system: open, close, dup, fcntl, lseek, stat, getdents, readlink, access, getcwd, ioctl, fsync.
internal sealed partial class LinuxAbi
{
    private const int AtFdCwd = -100;

    private bool ValidFd(int fd) => fd >= 0 && fd < MaxFds && _state.Fds[fd] is not null;

    private string? ResolvePath(int dirfd, ulong pathPointer, out long error)
    {
        error = 0;
        string? path = ReadString(pathPointer);
        if (path is null)
        {
            error = -Errno.EFAULT;
            return null;
        }

        if (path.Length == 0)
        {
            error = -Errno.ENOENT;
            return null;
        }

        string cwd = "/";
        if (!path.StartsWith('/') && dirfd != AtFdCwd)
        {
            if (!ValidFd(dirfd))
            {
                error = -Errno.EBADF;
                return null;
            }

            if (_state.Fds[dirfd]!.Kind != FdKind.Directory)
            {
                error = -Errno.ENOTDIR;
                return null;
            }

            cwd = _state.Fds[dirfd]!.Path;
        }

        return VirtualFileSystem.Normalize(cwd, path);
    }

    private long OpenAt(int dirfd, ulong pathPointer, int flags)
    {
        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        var o = (OpenFlags)flags;
        FileDescription desc;
        if (_state.Vfs.IsDirectory(path))
        {
            if ((o & OpenFlags.AccessMask) != OpenFlags.ReadOnly)
            {
                return -Errno.EISDIR;
            }

            desc = new FileDescription(FdKind.Directory, path, o);
        }
        else if (_state.Vfs.GetFile(path) is { } file)
        {
            if ((o & OpenFlags.AccessMask) != OpenFlags.ReadOnly && !file.Writable)
            {
                return -Errno.EACCES;
            }

            if ((o & OpenFlags.Directory) != 0)
            {
                return -Errno.ENOTDIR;
            }

            if ((o & OpenFlags.Truncate) != 0 && file.Writable)
            {
                file.Length = 0;
            }

            desc = new FileDescription(FdKind.File, path, o);
        }
        else if (path == "/proc/self/exe" || path == _config.ExecutablePath)
        {
            return -Errno.EACCES;
        }
        else
        {
            return (o & OpenFlags.Create) != 0 ? -Errno.EROFS : -Errno.ENOENT;
        }

        int fd = LowestFreeFd(0);
        if (fd < 0)
        {
            return -Errno.EMFILE;
        }

        _state.Fds[fd] = desc;
        return fd;
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

        _state.Fds[fd] = null;
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

        _state.Fds[t] = _state.Fds[fd]!.Share();
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

        const int FDupfd = 0, FGetfd = 1, FSetfd = 2, FGetfl = 3, FSetfl = 4, FDupfdCloexec = 1030;
        return cmd switch
        {
            FDupfd or FDupfdCloexec => arg >= MaxFds ? -Errno.EINVAL : DupFrom(fd, (int)arg),
            FGetfd => 0,
            FSetfd => 0,
            FGetfl => (long)(_state.Fds[fd]!.Flags & (OpenFlags.AccessMask | OpenFlags.Append)),
            FSetfl => 0,
            _ => -Errno.EINVAL,
        };
    }

    private long DupFrom(int fd, int from)
    {
        int t = LowestFreeFd(from);
        if (t < 0)
        {
            return -Errno.EMFILE;
        }

        _state.Fds[t] = _state.Fds[fd]!.Share();
        return t;
    }

    private long Lseek(int fd, long offset, int whence)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        if (f.Kind is FdKind.Stdin or FdKind.Stdout or FdKind.Stderr)
        {
            return -Errno.ESPIPE;
        }

        long size = f.Kind == FdKind.File ? _state.Vfs.GetFile(f.Path)!.Length : 0;
        long basePos = whence switch { 0 => 0, 1 => f.Position, 2 => size, _ => long.MinValue };
        if (basePos == long.MinValue)
        {
            return -Errno.EINVAL;
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
        if (f.Kind != FdKind.Directory)
        {
            return -Errno.ENOTDIR;
        }

        var entries = new List<(string Name, bool IsDir, ulong Inode)> { (".", true, 1), ("..", true, 1) };
        entries.AddRange(_state.Vfs.List(f.Path));
        int cap = (int)Math.Min(count, (ulong)_scratch.Length);
        int used = 0;
        while (f.Position < entries.Count)
        {
            var (name, isDir, inode) = entries[(int)f.Position];
            byte[] nameBytes = Encoding.UTF8.GetBytes(name);
            int reclen = (19 + nameBytes.Length + 1 + 7) & ~7;
            if (used + reclen > cap)
            {
                break;
            }

            var rec = _scratch.AsSpan(used, reclen);
            rec.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(rec, inode);
            BinaryPrimitives.WriteInt64LittleEndian(rec[8..], f.Position + 1);
            BinaryPrimitives.WriteUInt16LittleEndian(rec[16..], (ushort)reclen);
            rec[18] = isDir ? (byte)4 : (byte)8; // DT_DIR, DT_REG
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
        return f.Kind switch
        {
            FdKind.File => WriteStat(statPointer, _state.Vfs.GetFile(f.Path)!),
            FdKind.Directory => WriteStat(statPointer, null),
            _ => WriteStatRaw(statPointer, 0x1000 | 0x180, 0, (ulong)(10 + fd)), // S_IFIFO, rw-------: stdio are pipes
        };
    }

    private long StatPath(int dirfd, ulong pathPointer, ulong statPointer, int flags)
    {
        const int AtEmptyPath = 0x1000;
        if ((flags & AtEmptyPath) != 0 && ReadString(pathPointer) == "")
        {
            return Fstat(dirfd, statPointer);
        }

        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        if (_state.Vfs.GetFile(path) is { } file)
        {
            return WriteStat(statPointer, file);
        }

        return _state.Vfs.IsDirectory(path) ? WriteStat(statPointer, null) : -Errno.ENOENT;
    }

    private long WriteStat(ulong pointer, VfsFile? file) => file is null
        ? WriteStatRaw(pointer, 0x4000 | 0x16D, 4096, 2) // S_IFDIR r-xr-xr-x
        : WriteStatRaw(pointer, 0x8000 | (file.Writable ? 0x1A4u : 0x124u), file.Length, file.Inode); // S_IFREG

    /// <summary>Writes a <c>struct stat</c> (x86-64 layout, 144 bytes).</summary>
    private long WriteStatRaw(ulong pointer, uint mode, long size, ulong inode)
    {
        Span<byte> st = stackalloc byte[144];
        st.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(st, 0x56); // st_dev
        BinaryPrimitives.WriteUInt64LittleEndian(st[8..], inode);
        BinaryPrimitives.WriteUInt64LittleEndian(st[16..], 1); // st_nlink
        BinaryPrimitives.WriteUInt32LittleEndian(st[24..], mode);
        BinaryPrimitives.WriteUInt32LittleEndian(st[28..], (uint)HostUid);
        BinaryPrimitives.WriteUInt32LittleEndian(st[32..], (uint)HostUid);
        BinaryPrimitives.WriteInt64LittleEndian(st[48..], size);
        BinaryPrimitives.WriteInt64LittleEndian(st[56..], 4096); // st_blksize
        BinaryPrimitives.WriteInt64LittleEndian(st[64..], (size + 511) / 512);
        return WriteUser(pointer, st) ? 0 : -Errno.EFAULT;
    }

    private long ReadLink(int dirfd, ulong pathPointer, ulong buffer, ulong size)
    {
        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        if (path != "/proc/self/exe")
        {
            return _state.Vfs.GetFile(path) is not null || _state.Vfs.IsDirectory(path) ? -Errno.EINVAL : -Errno.ENOENT;
        }

        if ((long)size <= 0)
        {
            return -Errno.EINVAL;
        }

        byte[] target = Encoding.UTF8.GetBytes(_config.ExecutablePath);
        int n = (int)Math.Min((ulong)target.Length, size);
        return WriteUser(buffer, target.AsSpan(0, n)) ? n : -Errno.EFAULT;
    }

    private long Access(int dirfd, ulong pathPointer)
    {
        string? path = ResolvePath(dirfd, pathPointer, out long error);
        if (path is null)
        {
            return error;
        }

        return _state.Vfs.GetFile(path) is not null || _state.Vfs.IsDirectory(path) ? 0 : -Errno.ENOENT;
    }

    private long Getcwd(ulong buffer, ulong size)
    {
        if (size < 2)
        {
            return -Errno.ERANGE;
        }

        return WriteUser(buffer, "/\0"u8) ? 2 : -Errno.EFAULT;
    }

    /// <summary>No descriptor is a terminal (stdin, stdout and stderr are pipes), so every request fails as on a pipe.</summary>
    private long Ioctl(int fd) => ValidFd(fd) ? -Errno.ENOTTY : -Errno.EBADF;

    /// <summary><c>fsync</c> and <c>fdatasync</c>: files live in host memory, so there is nothing to flush.</summary>
    private long Fsync(int fd) => ValidFd(fd) ? 0 : -Errno.EBADF;
}
