using System.Runtime.InteropServices;
using static Virt.Storage.Interop.FileSystem;

namespace Virt.Storage.SharedFolders;

/// <summary>Open files and directories: OPEN, OPENDIR, CREATE, READ, WRITE, READDIR(PLUS), RELEASE(DIR), FLUSH, FSYNC(DIR), LSEEK.</summary>
internal sealed partial class SharedFolderServer
{
    // The guest's open(2) flags (x86-64 Linux values) this server passes on; everything else is dropped. O_APPEND is
    // dropped too: the driver computes the offset of an appending write itself and pwrite(2) must honour it.
    private const uint GuestAccessMode = 3;
    private const uint GuestCreateExclusive = 0x80;
    private const uint GuestTruncate = 0x200;
    private const uint GuestSync = 0x101000;

    private int Open(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply, bool directory)
    {
        var inode = Find(h.NodeId);
        if (inode is null)
        {
            return Error(reply, h.Unique, Fuse.ESTALE);
        }

        if (!FuseMessageParser.TryTake(ref body, out FuseOpenIn open))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        int error = ReplySpace(reply, Fuse.OpenOutSize);
        if (error == 0 && _handles.Count >= MaxHandles)
        {
            error = Fuse.ENFILE;
        }

        int flags = 0;
        if (error == 0)
        {
            if (directory)
            {
                error = inode.IsDirectory ? 0 : Fuse.ENOTDIR;
                flags = O_RDONLY | O_DIRECTORY;
            }
            else
            {
                // Only regular files: opening a FIFO could block the server, a device node would reach host hardware,
                // and a symbolic link is never followed.
                error = inode.Type == S_IFREG ? 0 : inode.IsDirectory ? Fuse.EISDIR : inode.Type == S_IFLNK ? Fuse.ELOOP : Fuse.EACCES;
                if (error == 0)
                {
                    error = FileFlags(open.Flags, out flags);
                }
            }
        }

        if (error != 0)
        {
            return Error(reply, h.Unique, error);
        }

        int fd = Reopen(inode, flags);
        if (fd < 0)
        {
            return Error(reply, h.Unique, LastError());
        }

        var output = new FuseOpenOut { Fh = AddHandle(fd, directory, (flags & O_ACCMODE) != O_RDONLY) };
        return Reply(reply, h.Unique, in output);
    }

    /// <summary>The host flags for the guest's open flags; EROFS for writing on a read-only share, EINVAL for a bad access mode.</summary>
    private int FileFlags(uint guest, out int flags)
    {
        flags = 0;
        uint access = guest & GuestAccessMode;
        if (access == GuestAccessMode)
        {
            return Fuse.EINVAL;
        }

        if (IsReadOnly && (access != 0 || (guest & GuestTruncate) != 0))
        {
            return Fuse.EROFS;
        }

        flags = (int)access;
        if ((guest & GuestTruncate) != 0)
        {
            flags |= O_TRUNC;
        }

        if ((guest & GuestSync) == GuestSync)
        {
            flags |= O_SYNC;
        }
        else if ((guest & O_DSYNC) != 0)
        {
            flags |= O_DSYNC;
        }

        return 0;
    }

    private ulong AddHandle(int fd, bool directory, bool writable)
    {
        ulong id = _nextHandle++;
        _handles.Add(id, new OpenHandle(fd, directory, writable));
        return id;
    }

    private unsafe int Create(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseCreateIn create))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        int error = ParentAndName(in h, ref body, out var parent, out var name);
        if (error == 0)
        {
            error = ReplySpace(reply, Fuse.EntryOutSize + Fuse.OpenOutSize);
        }

        if (error == 0 && _handles.Count >= MaxHandles)
        {
            error = Fuse.ENFILE;
        }

        int flags = 0;
        if (error == 0)
        {
            error = FileFlags(create.Flags, out flags);
        }

        if (error != 0)
        {
            return Error(reply, h.Unique, error);
        }

        // O_NOFOLLOW: an existing symbolic link of that name is refused (ELOOP), never followed.
        flags |= O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY;
        if ((create.Flags & GuestCreateExclusive) != 0)
        {
            flags |= O_EXCL;
        }

        byte* path = stackalloc byte[Fuse.NameMax + 1];
        CopyName(name, path);
        int fd = OpenAt(parent!.Fd, path, flags, create.Mode & ~create.Umask & FilePermissions);
        if (fd < 0)
        {
            return Error(reply, h.Unique, LastError());
        }

        // The node id comes from the descriptor just opened, so it is the file created, whatever happens to the name.
        byte* self = stackalloc byte[16];
        FdName(fd, new Span<byte>(self, 16));
        int pathFd = OpenAt(_procSelfFd, self, O_PATH | O_CLOEXEC, 0);
        if (pathFd < 0)
        {
            error = LastError();
            _ = Close(fd);
            return Error(reply, h.Unique, error);
        }

        error = EntryForFd(pathFd, out var entry);
        if (error != 0)
        {
            _ = Close(fd);
            return Error(reply, h.Unique, error);
        }

        var open = new FuseOpenOut { Fh = AddHandle(fd, directory: false, (flags & O_ACCMODE) != O_RDONLY) };
        MemoryMarshal.Write(reply[Fuse.OutHeaderSize..], in entry);
        MemoryMarshal.Write(reply[(Fuse.OutHeaderSize + Fuse.EntryOutSize)..], in open);
        return Complete(reply, h.Unique, Fuse.EntryOutSize + Fuse.OpenOutSize);
    }

    private unsafe int Read(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseIoIn read))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (!_handles.TryGetValue(read.Fh, out var handle) || handle.IsDirectory)
        {
            return Error(reply, h.Unique, Fuse.EBADF);
        }

        if (read.Offset > long.MaxValue || reply.Length < Fuse.OutHeaderSize)
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        int size = (int)Math.Min(Math.Min(read.Size, (uint)Fuse.MaxRead), (uint)(reply.Length - Fuse.OutHeaderSize));
        var data = reply.Slice(Fuse.OutHeaderSize, size);
        int done = 0;
        fixed (byte* p = data)
        {
            while (done < size)
            {
                nint n = Pread(handle.Fd, p + done, size - done, (long)read.Offset + done);
                if (n < 0)
                {
                    return Error(reply, h.Unique, LastError());
                }

                if (n == 0)
                {
                    break;
                }

                done += (int)n;
            }
        }

        return Complete(reply, h.Unique, done);
    }

    private unsafe int Write(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseIoIn write))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (!_handles.TryGetValue(write.Fh, out var handle) || handle.IsDirectory || !handle.IsWritable)
        {
            return Error(reply, h.Unique, Fuse.EBADF);
        }

        if (write.Size > (uint)body.Length || write.Size > Fuse.MaxWrite || write.Offset > long.MaxValue)
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        var data = body[..(int)write.Size];
        int done = 0;
        fixed (byte* p = data)
        {
            while (done < data.Length)
            {
                nint n = Pwrite(handle.Fd, p + done, data.Length - done, (long)write.Offset + done);
                if (n < 0)
                {
                    if (done > 0)
                    {
                        break;
                    }

                    return Error(reply, h.Unique, LastError());
                }

                if (n == 0)
                {
                    break;
                }

                done += (int)n;
            }
        }

        var output = new FuseWriteOut { Size = (uint)done };
        return Reply(reply, h.Unique, in output);
    }

    private unsafe int ReadDir(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply, bool plus)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseIoIn read))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (!_handles.TryGetValue(read.Fh, out var handle) || !handle.IsDirectory)
        {
            return Error(reply, h.Unique, Fuse.EBADF);
        }

        if (read.Offset > long.MaxValue || reply.Length < Fuse.OutHeaderSize)
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (Interop.FileSystem.Lseek(handle.Fd, (long)read.Offset, SEEK_SET) < 0)
        {
            return Error(reply, h.Unique, LastError());
        }

        int space = (int)Math.Min(Math.Min(read.Size, (uint)Fuse.MaxRead), (uint)(reply.Length - Fuse.OutHeaderSize));
        nint got;
        fixed (byte* buffer = _scratch)
        {
            got = Getdents64(handle.Fd, buffer, Math.Min(_scratch.Length, Math.Max(space, 512)));
        }

        if (got < 0)
        {
            return Error(reply, h.Unique, LastError());
        }

        var output = reply.Slice(Fuse.OutHeaderSize, space);
        int written = 0;
        var entries = _scratch.AsSpan(0, (int)got);
        while (entries.Length >= 19)
        {
            // struct linux_dirent64: d_ino, d_off, d_reclen, d_type, d_name (NUL-terminated).
            ulong ino = MemoryMarshal.Read<ulong>(entries);
            ulong offset = MemoryMarshal.Read<ulong>(entries[8..]);
            int recordLength = MemoryMarshal.Read<ushort>(entries[16..]);
            byte type = entries[18];
            if (recordLength < 20 || recordLength > entries.Length)
            {
                break;
            }

            var nameField = entries[19..recordLength];
            int nameLength = nameField.IndexOf((byte)0);
            var name = nameLength < 0 ? nameField : nameField[..nameLength];
            entries = entries[recordLength..];

            int direntLength = (Fuse.DirentHeaderSize + name.Length + 7) & ~7;
            int needed = direntLength + (plus ? Fuse.EntryOutSize : 0);
            if (written + needed > output.Length)
            {
                break;
            }

            var record = output.Slice(written, needed);
            record.Clear();
            if (plus)
            {
                var entry = default(FuseEntryOut);
                bool dots = name.SequenceEqual("."u8) || name.SequenceEqual(".."u8);
                if (!dots && LookupEntry(handle.Fd, name, out entry) != 0)
                {
                    // Gone since getdents: node id 0 tells the driver there are no attributes for it.
                    entry = default;
                }

                MemoryMarshal.Write(record, in entry);
                record = record[Fuse.EntryOutSize..];
            }

            MemoryMarshal.Write(record, in ino);
            MemoryMarshal.Write(record[8..], in offset);
            MemoryMarshal.Write(record[16..], (uint)name.Length);
            MemoryMarshal.Write(record[20..], (uint)type);
            name.CopyTo(record[Fuse.DirentHeaderSize..]);
            written += needed;
        }

        return Complete(reply, h.Unique, written);
    }

    private int Release(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply, bool directory)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseReleaseIn release))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (!_handles.TryGetValue(release.Fh, out var handle) || handle.IsDirectory != directory)
        {
            return Error(reply, h.Unique, Fuse.EBADF);
        }

        _handles.Remove(release.Fh);
        _ = Close(handle.Fd);
        return Empty(reply, h.Unique);
    }

    private int Flush(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        // Writes go straight to the host file (pwrite), so there is nothing buffered to flush.
        if (!FuseMessageParser.TryTake(ref body, out FuseReleaseIn flush))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        return _handles.ContainsKey(flush.Fh) ? Empty(reply, h.Unique) : Error(reply, h.Unique, Fuse.EBADF);
    }

    private int Fsync(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply, bool directory)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseFsyncIn fsync))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (!_handles.TryGetValue(fsync.Fh, out var handle) || handle.IsDirectory != directory)
        {
            return Error(reply, h.Unique, Fuse.EBADF);
        }

        int result = (fsync.FsyncFlags & Fuse.FsyncDataOnly) != 0 ? Fdatasync(handle.Fd) : Interop.FileSystem.Fsync(handle.Fd);
        return result == 0 ? Empty(reply, h.Unique) : Error(reply, h.Unique, LastError());
    }

    private int Lseek(in FuseInHeader h, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (!FuseMessageParser.TryTake(ref body, out FuseLseekIn seek))
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        if (!_handles.TryGetValue(seek.Fh, out var handle) || handle.IsDirectory)
        {
            return Error(reply, h.Unique, Fuse.EBADF);
        }

        // SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA, SEEK_HOLE.
        if (seek.Whence > 4 || seek.Offset > long.MaxValue)
        {
            return Error(reply, h.Unique, Fuse.EINVAL);
        }

        long position = Interop.FileSystem.Lseek(handle.Fd, (long)seek.Offset, (int)seek.Whence);
        if (position < 0)
        {
            return Error(reply, h.Unique, LastError());
        }

        ulong result = (ulong)position;
        return Reply(reply, h.Unique, in result);
    }
}
