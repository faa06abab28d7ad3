using System.Buffers;

namespace Virt.Sandbox.Linux;

// Data through descriptors: read, pread64, write, readv, writev over stdin, stdout, stderr and granted files.
internal sealed partial class LinuxAbi
{
    private long Read(int fd, ulong buffer, ulong count, long offset)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        int want = (int)Math.Min(count, MaxIoChunk);
        switch (f.Kind)
        {
            case FdKind.Stdin:
            {
                if (offset >= 0)
                {
                    return -Errno.ESPIPE;
                }

                int n = Math.Min(want, _stdin.Length - _stdinPosition);
                if (!WriteUser(buffer, _stdin.Span.Slice(_stdinPosition, n)))
                {
                    return -Errno.EFAULT;
                }

                _stdinPosition += n;
                return n;
            }

            case FdKind.File:
            {
                if ((f.Flags & OpenFlags.AccessMask) == OpenFlags.WriteOnly)
                {
                    return -Errno.EBADF;
                }

                var file = _state.Vfs.GetFile(f.Path)!;
                long pos = offset >= 0 ? offset : f.Position;
                if (pos >= file.Length)
                {
                    return 0;
                }

                int n = (int)Math.Min(want, file.Length - pos);
                if (!WriteUser(buffer, file.Content.AsSpan((int)pos, n)))
                {
                    return -Errno.EFAULT;
                }

                if (offset < 0)
                {
                    f.Position = pos + n;
                }

                return n;
            }

            case FdKind.Directory:
                return -Errno.EISDIR;
            default:
                return -Errno.EBADF;
        }
    }

    private long Pread(int fd, ulong buffer, ulong count, long offset) => offset < 0 ? -Errno.EINVAL : Read(fd, buffer, count, offset);

    private long Write(int fd, ulong buffer, ulong count)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        int want = (int)Math.Min(count, MaxIoChunk);
        switch (f.Kind)
        {
            case FdKind.Stdout:
            case FdKind.Stderr:
            {
                long room = _config.MaxOutputBytes - _stdout.WrittenCount - _stderr.WrittenCount;
                int n = (int)Math.Min(want, Math.Max(room, 0));
                var target = f.Kind == FdKind.Stdout ? _stdout : _stderr;
                int done = 0;
                while (done < n)
                {
                    int c = Math.Min(n - done, _scratch.Length);
                    if (!ReadUser(buffer + (ulong)done, _scratch.AsSpan(0, c)))
                    {
                        return done > 0 ? done : -Errno.EFAULT;
                    }

                    target.Write(_scratch.AsSpan(0, c));
                    done += c;
                }

                if (n < want)
                {
                    Stop = new StopRequest(SandboxStatus.OutputLimitExceeded, -1, null, $"Output reached the limit of {_config.MaxOutputBytes} bytes.");
                }

                return n;
            }

            case FdKind.File:
            {
                var file = _state.Vfs.GetFile(f.Path)!;
                if (!file.Writable || (f.Flags & OpenFlags.AccessMask) == OpenFlags.ReadOnly)
                {
                    return -Errno.EBADF;
                }

                long pos = (f.Flags & OpenFlags.Append) != 0 ? file.Length : f.Position;
                if (pos + want > _config.MaxFileBytes)
                {
                    return -Errno.EFBIG;
                }

                var data = new byte[want];
                if (!ReadUser(buffer, data))
                {
                    return -Errno.EFAULT;
                }

                if (pos + want > file.Content.Length)
                {
                    var grown = new byte[Math.Max(pos + want, file.Content.Length * 2L)];
                    file.Content.AsSpan(0, (int)file.Length).CopyTo(grown);
                    file.Content = grown;
                }

                data.CopyTo(file.Content, pos);
                file.Length = Math.Max(file.Length, pos + want);
                f.Position = pos + want;
                return want;
            }

            default:
                return -Errno.EBADF;
        }
    }

    private long Vectored(int fd, ulong iov, ulong count, bool write)
    {
        if (count > 1024)
        {
            return -Errno.EINVAL;
        }

        long total = 0;
        for (ulong i = 0; i < count; i++)
        {
            if (!ReadU64(iov + (i * 16), out ulong b) || !ReadU64(iov + (i * 16) + 8, out ulong len))
            {
                return total > 0 ? total : -Errno.EFAULT;
            }

            if (len == 0)
            {
                continue;
            }

            long n = write ? Write(fd, b, len) : Read(fd, b, len, -1);
            if (n < 0)
            {
                return total > 0 ? total : n;
            }

            total += n;
            if ((ulong)n < len || Stop is not null)
            {
                break;
            }
        }

        return total;
    }
}
