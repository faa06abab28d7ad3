using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

// Changes to the file tree: mkdir, rmdir, unlink, rename, symlink, link, truncate, chmod, chown, utimensat, statfs; /proc/self's generated files.
internal sealed partial class LinuxAbi
{
    private long Mkdir(int dirfd, ulong pathPointer, uint mode)
    {
        long e = Resolve(dirfd, pathPointer, followLast: false, out var node, out var parent, out string name);
        if (e < 0)
        {
            return e;
        }

        if (node is not null)
        {
            return -Errno.EEXIST;
        }

        if (!TakeEntry())
        {
            return -Errno.ENOSPC;
        }

        parent.Children[name] = new VfsDirectory(_state.Vfs.NewInode(), mode & 0xFFF & ~(uint)_state.Umask) { Parent = parent, Name = name, ModifiedNanoseconds = Now() };
        parent.ModifiedNanoseconds = Now();
        return 0;
    }

    private long Unlink(int dirfd, ulong pathPointer, int flags)
    {
        if ((flags & ~AtRemoveDir) != 0)
        {
            return -Errno.EINVAL;
        }

        long e = Resolve(dirfd, pathPointer, followLast: false, out var node, out var parent, out string name);
        if (e < 0)
        {
            return e;
        }

        if (node is null)
        {
            return -Errno.ENOENT;
        }

        if ((flags & AtRemoveDir) != 0)
        {
            if (node is not VfsDirectory dir)
            {
                return -Errno.ENOTDIR;
            }

            if (name == ".")
            {
                return -Errno.EINVAL;
            }

            if (dir.Children.Count > 0)
            {
                return -Errno.ENOTEMPTY;
            }

            if (dir.Fixed || dir == _state.Vfs.Root)
            {
                return -Errno.EBUSY;
            }
        }
        else if (node is VfsDirectory)
        {
            return -Errno.EISDIR;
        }

        if (node is VfsFile { Writable: false } || node is VfsDevice || (node is VfsSymlink && parent.Path == "/proc/self"))
        {
            return -Errno.EROFS; // what the host granted read-only stays
        }

        parent.Children.Remove(name);
        parent.ModifiedNanoseconds = Now();
        if (node is VfsDirectory removed)
        {
            removed.Parent = null;
        }

        ReleaseNode(node);
        return 0;
    }

    private long Rename(int olddirfd, ulong oldPointer, int newdirfd, ulong newPointer, int flags)
    {
        const int NoReplace = 1, Exchange = 2;
        if ((flags & ~(NoReplace | Exchange)) != 0 || flags == (NoReplace | Exchange))
        {
            return -Errno.EINVAL;
        }

        long e = Resolve(olddirfd, oldPointer, followLast: false, out var node, out var oldParent, out string oldName);
        if (e < 0)
        {
            return e;
        }

        if (node is null)
        {
            return -Errno.ENOENT;
        }

        e = Resolve(newdirfd, newPointer, followLast: false, out var existing, out var newParent, out string newName);
        if (e < 0)
        {
            return e;
        }

        if (oldName is "." or ".." || newName is "." or "..")
        {
            return -Errno.EBUSY;
        }

        if (IsFixed(node) || (existing is not null && IsFixed(existing)))
        {
            return -Errno.EROFS;
        }

        if (node == existing)
        {
            return 0;
        }

        if (node is VfsDirectory movedDir && IsWithin(newParent, movedDir))
        {
            return -Errno.EINVAL; // a directory cannot move into itself
        }

        if (existing is not null)
        {
            if ((flags & NoReplace) != 0)
            {
                return -Errno.EEXIST;
            }

            if ((flags & Exchange) != 0)
            {
                oldParent.Children[oldName] = existing;
                newParent.Children[newName] = node;
                MoveDirectory(existing, oldParent, oldName);
                MoveDirectory(node, newParent, newName);
                return 0;
            }

            if (existing is VfsDirectory ed)
            {
                if (node is not VfsDirectory)
                {
                    return -Errno.EISDIR;
                }

                if (ed.Children.Count > 0)
                {
                    return -Errno.ENOTEMPTY;
                }
            }
            else if (node is VfsDirectory)
            {
                return -Errno.ENOTDIR;
            }
        }
        else if ((flags & Exchange) != 0)
        {
            return -Errno.ENOENT;
        }

        oldParent.Children.Remove(oldName);
        newParent.Children[newName] = node;
        MoveDirectory(node, newParent, newName);
        oldParent.ModifiedNanoseconds = newParent.ModifiedNanoseconds = Now();
        if (existing is not null)
        {
            ReleaseNode(existing);
        }

        return 0;
    }

    private static bool IsWithin(VfsDirectory directory, VfsDirectory ancestor)
    {
        for (var d = directory; d is not null && d.Parent != d; d = d.Parent)
        {
            if (d == ancestor)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>What the host granted and the program may not move or replace: read-only files, devices, granted directories.</summary>
    private static bool IsFixed(VfsNode node) => node is VfsFile { Writable: false } or VfsDevice or VfsDirectory { Fixed: true };

    private static void MoveDirectory(VfsNode node, VfsDirectory parent, string name)
    {
        if (node is VfsDirectory d)
        {
            d.Parent = parent;
            d.Name = name;
        }
    }

    private long Symlink(ulong targetPointer, int dirfd, ulong pathPointer)
    {
        string? target = ReadString(targetPointer);
        if (target is null)
        {
            return -Errno.EFAULT;
        }

        if (target.Length == 0)
        {
            return -Errno.ENOENT;
        }

        long e = Resolve(dirfd, pathPointer, followLast: false, out var node, out var parent, out string name);
        if (e < 0)
        {
            return e;
        }

        if (node is not null)
        {
            return -Errno.EEXIST;
        }

        if (!TakeEntry())
        {
            return -Errno.ENOSPC;
        }

        parent.Children[name] = new VfsSymlink(_state.Vfs.NewInode(), target) { ModifiedNanoseconds = Now() };
        return 0;
    }

    private long Link(int olddirfd, ulong oldPointer, int newdirfd, ulong newPointer, int flags)
    {
        const int AtSymlinkFollow = 0x400;
        long e = Resolve(olddirfd, oldPointer, (flags & AtSymlinkFollow) != 0, out var node, out _, out _);
        if (e < 0)
        {
            return e;
        }

        if (node is null)
        {
            return -Errno.ENOENT;
        }

        if (node is VfsDirectory)
        {
            return -Errno.EPERM;
        }

        e = Resolve(newdirfd, newPointer, followLast: false, out var existing, out var parent, out string name);
        if (e < 0)
        {
            return e;
        }

        if (existing is not null)
        {
            return -Errno.EEXIST;
        }

        if (!TakeEntry())
        {
            return -Errno.ENOSPC;
        }

        parent.Children[name] = node;
        return 0;
    }

    private long Truncate(ulong pathPointer, long length)
    {
        long e = Resolve(AtFdCwd, pathPointer, followLast: true, out var node, out _, out _);
        if (e < 0)
        {
            return e;
        }

        return node switch
        {
            null => -Errno.ENOENT,
            VfsDirectory => -Errno.EISDIR,
            VfsFile { Writable: false } => -Errno.EACCES,
            VfsFile f => Resize(f, length),
            _ => -Errno.EINVAL,
        };
    }

    private long Ftruncate(int fd, long length)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var d = _state.Fds[fd]!;
        if (d.Node is not VfsFile { Writable: true } f || (d.Flags & OpenFlags.AccessMask) == OpenFlags.ReadOnly)
        {
            return -Errno.EINVAL;
        }

        return Resize(f, length);
    }

    private long Resize(VfsFile file, long length)
    {
        if (length < 0)
        {
            return -Errno.EINVAL;
        }

        if (length > _config.MaxFileBytes)
        {
            return -Errno.EFBIG;
        }

        return SetLength(file, length) ? 0 : -Errno.ENOSPC;
    }

    private long Fallocate(int fd, long offset, long length)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        if (offset < 0 || length <= 0)
        {
            return -Errno.EINVAL;
        }

        var d = _state.Fds[fd]!;
        if (d.Node is not VfsFile { Writable: true } f || (d.Flags & OpenFlags.AccessMask) == OpenFlags.ReadOnly)
        {
            return -Errno.EBADF;
        }

        return offset + length <= f.Length ? 0 : Resize(f, offset + length);
    }

    private long Chmod(int dirfd, ulong pathPointer, uint mode)
    {
        long e = Resolve(dirfd, pathPointer, followLast: true, out var node, out _, out _);
        return e < 0 ? e : node is null ? -Errno.ENOENT : SetMode(node, mode);
    }

    private long Fchmod(int fd, uint mode) =>
        !ValidFd(fd) ? -Errno.EBADF : _state.Fds[fd]!.Node is { } node ? SetMode(node, mode) : 0;

    private static long SetMode(VfsNode node, uint mode)
    {
        if (node is VfsFile { Writable: false } or VfsDevice or VfsDirectory { Fixed: true })
        {
            return -Errno.EROFS;
        }

        node.Permissions = mode & 0xFFF;
        return 0;
    }

    /// <summary><c>chown</c> family: the program owns everything as uid and gid 1000 and cannot give anything away.</summary>
    private long Chown(int dirfd, ulong pathPointer, ulong uid, ulong gid, int flags)
    {
        if (pathPointer != 0 || dirfd == AtFdCwd)
        {
            long e = Resolve(dirfd, pathPointer, (flags & AtSymlinkNoFollow) == 0, out var node, out _, out _);
            if (e < 0 && !((flags & AtEmptyPath) != 0 && ValidFd(dirfd)))
            {
                return e;
            }

            if (e == 0 && node is null)
            {
                return -Errno.ENOENT;
            }
        }
        else if (!ValidFd(dirfd))
        {
            return -Errno.EBADF;
        }

        return Owner(uid) && Owner(gid) ? 0 : -Errno.EPERM;

        static bool Owner(ulong id) => (uint)id is uint.MaxValue or (uint)HostUid;
    }

    private long Utimensat(int dirfd, ulong pathPointer, ulong times, int flags)
    {
        VfsNode? node;
        if (pathPointer == 0)
        {
            if (!ValidFd(dirfd))
            {
                return -Errno.EBADF;
            }

            node = _state.Fds[dirfd]!.Node;
        }
        else
        {
            long e = Resolve(dirfd, pathPointer, (flags & AtSymlinkNoFollow) == 0, out node, out _, out _);
            if (e < 0)
            {
                return e;
            }

            if (node is null)
            {
                return -Errno.ENOENT;
            }
        }

        if (node is null)
        {
            return 0;
        }

        long ns = Now();
        if (times != 0)
        {
            // The second timespec is the modification time; UTIME_NOW and UTIME_OMIT are tv_nsec values.
            if (!ReadU64(times + 16, out ulong s) || !ReadU64(times + 24, out ulong n))
            {
                return -Errno.EFAULT;
            }

            const ulong UtimeNow = (1UL << 30) - 1, UtimeOmit = (1UL << 30) - 2;
            if (n == UtimeOmit)
            {
                return 0;
            }

            if (n != UtimeNow)
            {
                if (n >= 1_000_000_000)
                {
                    return -Errno.EINVAL;
                }

                ns = ((long)s * 1_000_000_000) + (long)n;
            }
        }

        if (node is VfsFile { Writable: false } or VfsDevice)
        {
            return -Errno.EROFS;
        }

        node.ModifiedNanoseconds = ns;
        return 0;
    }

    /// <summary><c>statfs</c>/<c>fstatfs</c>: a tmpfs sized by the file-system limits.</summary>
    private long Statfs(ulong buffer)
    {
        Span<byte> s = stackalloc byte[120];
        s.Clear();
        long blocks = _state.Vfs.MaxBytes / 4096, free = Math.Max(0, (_state.Vfs.MaxBytes - _state.Vfs.UsedBytes) / 4096);
        BinaryPrimitives.WriteInt64LittleEndian(s, 0x01021994); // TMPFS_MAGIC
        BinaryPrimitives.WriteInt64LittleEndian(s[8..], 4096);
        BinaryPrimitives.WriteInt64LittleEndian(s[16..], blocks);
        BinaryPrimitives.WriteInt64LittleEndian(s[24..], free);
        BinaryPrimitives.WriteInt64LittleEndian(s[32..], free);
        BinaryPrimitives.WriteInt64LittleEndian(s[40..], _state.Vfs.MaxEntries);
        BinaryPrimitives.WriteInt64LittleEndian(s[48..], Math.Max(0, _state.Vfs.MaxEntries - _state.Vfs.UsedEntries));
        BinaryPrimitives.WriteInt64LittleEndian(s[64..], 255);
        BinaryPrimitives.WriteInt64LittleEndian(s[72..], 4096);
        return WriteUser(buffer, s) ? 0 : -Errno.EFAULT;
    }

    private long StatfsPath(ulong pathPointer, ulong buffer)
    {
        long e = Resolve(AtFdCwd, pathPointer, followLast: true, out var node, out _, out _);
        return e < 0 ? e : node is null ? -Errno.ENOENT : Statfs(buffer);
    }

    private long Fstatfs(int fd, ulong buffer) => ValidFd(fd) ? Statfs(buffer) : -Errno.EBADF;

    /// <summary>The contents of <c>/proc/self/NAME</c>, made when it is opened; null for a name without generated contents.</summary>
    private VfsFile? ProcFile(string name)
    {
        string? text = name switch
        {
            "maps" => ProcMaps(),
            "status" => ProcStatus(),
            "cmdline" => string.Join('\0', [_config.ExecutablePath, .. _config.Arguments]) + "\0",
            _ => null,
        };
        return text is null ? null : new VfsFile(_state.Vfs.NewInode(), Encoding.UTF8.GetBytes(text), false, 0x124);
    }

    private string ProcMaps()
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        foreach (var (start, end, flags, name) in _space.Regions())
        {
            string perms = $"{((flags & PageFlags.User) != 0 ? 'r' : '-')}{((flags & PageFlags.Writable) != 0 ? 'w' : '-')}{((flags & PageFlags.NoExecute) == 0 ? 'x' : '-')}p";
            sb.Append(inv, $"{start:x8}-{end:x8} {perms} 00000000 00:00 0");
            if (name.Length > 0)
            {
                sb.Append(' ', 10).Append(name);
            }

            sb.Append('\n');
        }

        return sb.ToString();
    }

    private string ProcStatus()
    {
        var inv = CultureInfo.InvariantCulture;
        string name = _config.ExecutablePath[(_config.ExecutablePath.LastIndexOf('/') + 1)..];
        long vmKb = (long)(((ulong)_arena.PeakPages + _space.StackPages) * GuestLayout.PageSize / 1024);
        return string.Create(inv,
            $"Name:\t{(name.Length > 15 ? name[..15] : name)}\nUmask:\t{_state.Umask:o4}\nState:\tR (running)\nTgid:\t{ProcessId}\nNgid:\t0\nPid:\t{ProcessId}\nPPid:\t0\n" +
            $"TracerPid:\t0\nUid:\t{HostUid}\t{HostUid}\t{HostUid}\t{HostUid}\nGid:\t{HostUid}\t{HostUid}\t{HostUid}\t{HostUid}\nFDSize:\t{MaxFds}\nGroups:\t{HostUid}\n" +
            $"VmPeak:\t{vmKb,8} kB\nVmSize:\t{vmKb,8} kB\nVmRSS:\t{vmKb,8} kB\nThreads:\t{ThreadCount}\nSigQ:\t0/0\nSigPnd:\t0000000000000000\n" +
            $"Cpus_allowed:\t1\nCpus_allowed_list:\t0\nvoluntary_ctxt_switches:\t0\nnonvoluntary_ctxt_switches:\t0\n");
    }
}
