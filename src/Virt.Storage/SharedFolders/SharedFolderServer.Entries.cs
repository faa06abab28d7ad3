using System.Runtime.InteropServices;
using static Virt.Storage.Interop.FileSystem;

namespace Virt.Storage.SharedFolders;

/// <summary>Names and attributes: LOOKUP, GETATTR, SETATTR, READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME(2), LINK, STATFS.</summary>
internal sealed partial class SharedFolderServer
{
    /// <summary>Permission bits a new file may get: no set-user-ID, set-group-ID or sticky bit.</summary>
    private const uint FilePermissions = 0x1FF;

    /// <summary>Permission bits a new directory may get: the sticky bit, but no set-user-ID or set-group-ID bit.</summary>
    private const uint DirectoryPermissions = 0x3FF;

    private int Lookup(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        int error = ParentAndName(in h, ref body, out var parent, out var name);
        if (error == 0)
        {
            error = ReplySpace(reply, Fuse.EntryOutSize);
        }

        if (error != 0)
        {
            return Error(reply, h.Unique, error);
        }

        error = LookupEntry(parent!.Fd, name, out var entry);
        return error != 0 ? Error(reply, h.Unique, error) : Reply(reply, h.Unique, in entry);
    }

    /// <summary>Finds <paramref name="name"/> in the directory <paramref name="directoryFd"/> without following it, and counts a lookup.</summary>
    private unsafe int LookupEntry(int directoryFd, ReadOnlySpan<byte> name, out FuseEntryOut entry)
    {
        entry = default;
        byte* path = stackalloc byte[Fuse.NameMax + 1];
        CopyName(name, path);
        int fd = OpenAt(directoryFd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
        if (fd < 0)
        {
            return LastError();
        }

        return EntryForFd(fd, out entry);
    }

    /// <summary>Interns the O_PATH descriptor <paramref name="fd"/> (taking ownership) and describes it.</summary>
    private int EntryForFd(int fd, out FuseEntryOut entry)
    {
        entry = default;
        if (StatFd(fd, out var st) != 0)
        {
            int error = LastError();
            _ = Close(fd);
            return error;
        }

        var inode = Intern(fd, st, out int internError);
        if (inode is null)
        {
            return internError;
        }

        entry = ToEntry(inode, st);
        return 0;
    }

    private int GetAttr(in FuseInHeader h, Span<byte> reply)
    {
        var inode = Find(h.NodeId);
        if (inode is null)
        {
            return Error(reply, h.Unique, Fuse.ESTALE);
        }

        return AttrReply(inode, h.Unique, reply);
    }

    private static int AttrReply(Inode inode, ulong unique, Span<byte> reply)
    {
        if (StatFd(inode.Fd, out var st) != 0)
        {
            return Error(reply, unique, LastError());
        }

        var output = new FuseAttrOut { AttrValid = ValiditySeconds, Attr = ToAttr(st) };
        return Reply(reply, unique, in output);
    }

    private unsafe int SetAttr(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        var inode = Find(h.NodeId);
        if (inode is null)
        {
            return Error(reply, h.Unique, Fuse.ESTALE);
        }

        if (!FuseMessageParser.TryTake(ref body, out FuseSetAttrIn set))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        bool openable = inode.Type is S_IFREG or S_IFDIR;
        byte* name = stackalloc byte[16];
        FdName(inode.Fd, new Span<byte>(name, 16));

        // The guest sees every file as uid 0 / gid 0 and can only "change" the owner to that.
        if (((set.Valid & Fuse.SetAttrUid) != 0 && set.Uid != 0) || ((set.Valid & Fuse.SetAttrGid) != 0 && set.Gid != 0))
        {
            return Error(reply, h.Unique, Fuse.EPERM);
        }

        if ((set.Valid & Fuse.SetAttrMode) != 0)
        {
            if (!openable)
            {
                return Error(reply, h.Unique, Fuse.EOPNOTSUPP);
            }

            uint mode = set.Mode & (inode.IsDirectory ? DirectoryPermissions : FilePermissions);
            if (FchmodAt(_procSelfFd, name, mode, 0) != 0)
            {
                return Error(reply, h.Unique, LastError());
            }
        }

        if ((set.Valid & Fuse.SetAttrSize) != 0)
        {
            int error = Truncate(inode, set);
            if (error != 0)
            {
                return Error(reply, h.Unique, error);
            }
        }

        if ((set.Valid & (Fuse.SetAttrAtime | Fuse.SetAttrMtime | Fuse.SetAttrAtimeNow | Fuse.SetAttrMtimeNow)) != 0)
        {
            if (!openable)
            {
                return Error(reply, h.Unique, Fuse.EOPNOTSUPP);
            }

            Timespec* times = stackalloc Timespec[2];
            times[0] = TimeOf(set.Valid, Fuse.SetAttrAtime, Fuse.SetAttrAtimeNow, set.Atime, set.AtimeNsec);
            times[1] = TimeOf(set.Valid, Fuse.SetAttrMtime, Fuse.SetAttrMtimeNow, set.Mtime, set.MtimeNsec);
            if (UtimensAt(_procSelfFd, name, times, 0) != 0)
            {
                return Error(reply, h.Unique, LastError());
            }
        }

        return AttrReply(inode, h.Unique, reply);
    }

    private static Timespec TimeOf(uint valid, uint setBit, uint nowBit, ulong seconds, uint nanoseconds)
    {
        if ((valid & nowBit) != 0)
        {
            return new Timespec { Nanoseconds = UTIME_NOW };
        }

        if ((valid & setBit) != 0)
        {
            return new Timespec { Seconds = (long)seconds, Nanoseconds = nanoseconds };
        }

        return new Timespec { Nanoseconds = UTIME_OMIT };
    }

    private int Truncate(Inode inode, in FuseSetAttrIn set)
    {
        if (inode.Type != S_IFREG)
        {
            return inode.IsDirectory ? Fuse.EISDIR : Fuse.EINVAL;
        }

        if (set.Size > long.MaxValue)
        {
            return Fuse.EINVAL;
        }

        if ((set.Valid & Fuse.SetAttrFh) != 0 && _handles.TryGetValue(set.Fh, out var handle) && !handle.IsDirectory && handle.IsWritable)
        {
            return Ftruncate(handle.Fd, (long)set.Size) == 0 ? 0 : LastError();
        }

        int fd = Reopen(inode, O_WRONLY);
        if (fd < 0)
        {
            return LastError();
        }

        int error = Ftruncate(fd, (long)set.Size) == 0 ? 0 : LastError();
        _ = Close(fd);
        return error;
    }

    private unsafe int ReadLink(in FuseInHeader h, Span<byte> reply)
    {
        var inode = Find(h.NodeId);
        if (inode is null)
        {
            return Error(reply, h.Unique, Fuse.ESTALE);
        }

        if (inode.Type != S_IFLNK)
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        byte empty = 0;
        nint length;
        fixed (byte* buffer = _scratch)
        {
            length = ReadlinkAt(inode.Fd, &empty, buffer, Fuse.PathMax + 1);
        }

        if (length < 0)
        {
            return Error(reply, h.Unique, LastError());
        }

        if (reply.Length < Fuse.OutHeaderSize + (int)length)
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        _scratch.AsSpan(0, (int)length).CopyTo(reply[Fuse.OutHeaderSize..]);
        return Complete(reply, h.Unique, (int)length);
    }

    private unsafe int Symlink(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        int error = ParentAndName(in h, ref body, out var parent, out var name, last: false);
        if (error == 0)
        {
            error = FuseMessageParser.TakeLinkTarget(ref body, out var target);
            if (error == 0)
            {
                error = ReplySpace(reply, Fuse.EntryOutSize);
            }

            if (error == 0)
            {
                byte* path = stackalloc byte[Fuse.NameMax + 1];
                byte* link = stackalloc byte[Fuse.PathMax + 1];
                CopyName(name, path);
                CopyName(target, link);
                error = SymlinkAt(link, parent!.Fd, path) == 0 ? 0 : LastError();
            }
        }

        return error != 0 ? Error(reply, h.Unique, error) : EntryReply(parent!, name, h.Unique, reply);
    }

    private unsafe int MkNod(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseMkNodIn mknod))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        int error = ParentAndName(in h, ref body, out var parent, out var name);
        if (error == 0)
        {
            error = ReplySpace(reply, Fuse.EntryOutSize);
        }

        // Only regular files: device nodes, FIFOs and sockets on the host are refused.
        if (error == 0 && (mknod.Mode & S_IFMT) is not (S_IFREG or 0))
        {
            error = Fuse.EPERM;
        }

        if (error == 0)
        {
            byte* path = stackalloc byte[Fuse.NameMax + 1];
            CopyName(name, path);
            int fd = OpenAt(parent!.Fd, path, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, mknod.Mode & ~mknod.Umask & FilePermissions);
            error = fd < 0 ? LastError() : 0;
            if (fd >= 0)
            {
                _ = Close(fd);
            }
        }

        return error != 0 ? Error(reply, h.Unique, error) : EntryReply(parent!, name, h.Unique, reply);
    }

    private unsafe int MkDir(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseMkDirIn mkdir))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        int error = ParentAndName(in h, ref body, out var parent, out var name);
        if (error == 0)
        {
            error = ReplySpace(reply, Fuse.EntryOutSize);
        }

        if (error == 0)
        {
            byte* path = stackalloc byte[Fuse.NameMax + 1];
            CopyName(name, path);
            error = MkdirAt(parent!.Fd, path, mkdir.Mode & ~mkdir.Umask & DirectoryPermissions) == 0 ? 0 : LastError();
        }

        return error != 0 ? Error(reply, h.Unique, error) : EntryReply(parent!, name, h.Unique, reply);
    }

    private int EntryReply(Inode parent, ReadOnlySpan<byte> name, ulong unique, Span<byte> reply)
    {
        int error = LookupEntry(parent.Fd, name, out var entry);
        return error != 0 ? Error(reply, unique, error) : Reply(reply, unique, in entry);
    }

    private unsafe int Remove(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply, int flags)
    {
        int error = ParentAndName(in h, ref body, out var parent, out var name);
        if (error == 0)
        {
            byte* path = stackalloc byte[Fuse.NameMax + 1];
            CopyName(name, path);
            error = UnlinkAt(parent!.Fd, path, flags) == 0 ? 0 : LastError();
        }

        return error != 0 ? Error(reply, h.Unique, error) : Empty(reply, h.Unique);
    }

    private unsafe int Rename(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply, bool withFlags)
    {
        ulong newDir;
        uint flags = 0;
        if (withFlags)
        {
            if (!FuseMessageParser.TryTake(ref body, out FuseRename2In rename2))
            {
                return Error(reply, h.Unique, Fuse.EINVAL);
            }

            (newDir, flags) = (rename2.NewDir, rename2.Flags);
        }
        else
        {
            if (!FuseMessageParser.TryTake(ref body, out FuseRenameIn rename))
            {
                return Error(reply, h.Unique, Fuse.EINVAL);
            }

            newDir = rename.NewDir;
        }

        // RENAME_WHITEOUT (overlayfs' business) and unknown bits are refused.
        if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) != 0)
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        int error = ParentAndName(in h, ref body, out var oldParent, out var oldName, last: false);
        ReadOnlySpan<byte> newName = default;
        if (error == 0)
        {
            error = FuseMessageParser.TakeName(ref body, out newName);
        }

        var newParent = Find(newDir);
        if (error == 0 && newParent is null)
        {
            error = Fuse.ESTALE;
        }
        else if (error == 0 && !newParent!.IsDirectory)
        {
            error = Fuse.ENOTDIR;
        }

        if (error == 0)
        {
            byte* from = stackalloc byte[Fuse.NameMax + 1];
            byte* to = stackalloc byte[Fuse.NameMax + 1];
            CopyName(oldName, from);
            CopyName(newName, to);
            error = RenameAt2(oldParent!.Fd, from, newParent!.Fd, to, flags) == 0 ? 0 : LastError();
        }

        return error != 0 ? Error(reply, h.Unique, error) : Empty(reply, h.Unique);
    }

    private unsafe int Link(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseLinkIn link))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        int error = ParentAndName(in h, ref body, out var parent, out var name);
        if (error == 0)
        {
            error = ReplySpace(reply, Fuse.EntryOutSize);
        }

        // Only inodes the guest reached inside the share have node ids, so nothing outside can be linked in.
        var target = Find(link.OldNodeId);
        if (error == 0 && target is null)
        {
            error = Fuse.ESTALE;
        }
        else if (error == 0 && target!.IsDirectory)
        {
            error = Fuse.EPERM;
        }

        if (error == 0)
        {
            byte* from = stackalloc byte[16];
            byte* to = stackalloc byte[Fuse.NameMax + 1];
            FdName(target!.Fd, new Span<byte>(from, 16));
            CopyName(name, to);

            // /proc/self/fd/N with AT_SYMLINK_FOLLOW resolves to the inode behind the descriptor itself (a symbolic
            // link stays a link), as linkat(2) documents for O_PATH and O_TMPFILE descriptors.
            error = LinkAt(_procSelfFd, from, parent!.Fd, to, AT_SYMLINK_FOLLOW) == 0 ? 0 : LastError();
        }

        return error != 0 ? Error(reply, h.Unique, error) : EntryReply(parent!, name, h.Unique, reply);
    }

    private unsafe int StatFs(in FuseInHeader h, Span<byte> reply)
    {
        var inode = Find(h.NodeId) ?? _root;
        StatVfs vfs;
        if (Fstatvfs(inode.Fd, &vfs) != 0)
        {
            return Error(reply, h.Unique, LastError());
        }

        var output = new FuseStatfsOut
        {
            Blocks = vfs.Blocks,
            BlocksFree = vfs.BlocksFree,
            BlocksAvailable = IsReadOnly ? 0 : vfs.BlocksAvailable,
            Files = vfs.Files,
            FilesFree = vfs.FilesFree,
            BlockSize = (uint)Math.Min(vfs.BlockSize, uint.MaxValue),
            NameLength = Fuse.NameMax,
            FragmentSize = (uint)Math.Min(vfs.FragmentSize, uint.MaxValue),
        };
        return Reply(reply, h.Unique, in output);
    }

    /// <summary>The directory the request's node id names and the entry name that follows in the body.</summary>
    private int ParentAndName(in FuseInHeader h, scoped ref ReadOnlySpan<byte> body, out Inode? parent, out ReadOnlySpan<byte> name, bool last = true)
    {
        name = default;
        parent = Find(h.NodeId);
        if (parent is null)
        {
            return Fuse.ESTALE;
        }

        if (!parent.IsDirectory)
        {
            return Fuse.ENOTDIR;
        }

        return FuseMessageParser.TakeName(ref body, out name, last);
    }

    private static int ReplySpace(Span<byte> reply, int payload) => reply.Length >= Fuse.OutHeaderSize + payload ? 0 : Fuse.EINVAL;

    /// <summary>Copies a validated name (no NUL inside) to <paramref name="destination"/> with a terminating NUL.</summary>
    private static unsafe void CopyName(ReadOnlySpan<byte> name, byte* destination)
    {
        name.CopyTo(new Span<byte>(destination, name.Length));
        destination[name.Length] = 0;
    }
}
