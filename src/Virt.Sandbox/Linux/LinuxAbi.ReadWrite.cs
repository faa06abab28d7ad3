using System.Buffers;

namespace Virt.Sandbox.Linux;

// Data through descriptors: read, write, pread64, pwrite64, readv, writev, sendfile over stdin, stdout, stderr, files, devices, pipes and eventfds.
internal sealed partial class LinuxAbi
{
    private byte[]? _io;

    /// <summary>A host buffer for one transfer of up to <see cref="MaxIoChunk"/> bytes.</summary>
    private Span<byte> IoBuffer(ulong count)
    {
        int n = (int)Math.Min(count, MaxIoChunk);
        if (n <= _scratch.Length)
        {
            return _scratch.AsSpan(0, n);
        }

        _io ??= new byte[MaxIoChunk];
        return _io.AsSpan(0, n);
    }

    private long Read(int fd, ulong buffer, ulong count, long offset)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        if (offset >= 0 && f.Kind is not (FdKind.File or FdKind.Device))
        {
            return -Errno.ESPIPE;
        }

        var data = IoBuffer(count);
        long n = ReadInto(f, data, offset);
        if (n <= 0)
        {
            return n;
        }

        return WriteUser(buffer, data[..(int)n]) ? n : -Errno.EFAULT;
    }

    /// <summary>Reads from <paramref name="f"/> into a host buffer: bytes read, 0 at the end, -errno, or <see cref="Blocked"/>.</summary>
    private long ReadInto(FileDescription f, Span<byte> destination, long offset)
    {
        if ((f.Flags & OpenFlags.AccessMask) == OpenFlags.WriteOnly && f.Kind is FdKind.File or FdKind.Device)
        {
            return -Errno.EBADF;
        }

        switch (f.Kind)
        {
            case FdKind.Stdin:
            {
                int n = Math.Min(destination.Length, _stdin.Length - _stdinPosition);
                _stdin.Span.Slice(_stdinPosition, n).CopyTo(destination);
                _stdinPosition += n;
                return n;
            }

            case FdKind.File:
            {
                var file = (VfsFile)f.Node!;
                long pos = offset >= 0 ? offset : f.Position;
                if (pos >= file.Length || destination.IsEmpty)
                {
                    return 0;
                }

                int n = (int)Math.Min(destination.Length, file.Length - pos);
                file.Content.AsSpan((int)pos, n).CopyTo(destination);
                if (offset < 0)
                {
                    f.Position = pos + n;
                }

                return n;
            }

            case FdKind.Device:
                switch (((VfsDevice)f.Node!).Kind)
                {
                    case DeviceKind.Null:
                        return 0;
                    case DeviceKind.Random:
                        FillRandom(destination);
                        return destination.Length;
                    default:
                        destination.Clear();
                        return destination.Length;
                }

            case FdKind.PipeRead:
                return ReadPipe(f, destination);
            case FdKind.EventFd:
                return ReadEventFd(f, destination);
            case FdKind.SignalFd:
                return ReadSignalFd(f, destination);
            case FdKind.Directory:
                return -Errno.EISDIR;
            case FdKind.Epoll:
                return -Errno.EINVAL;
            default:
                return -Errno.EBADF;
        }
    }

    private long Pread(int fd, ulong buffer, ulong count, long offset) => offset < 0 ? -Errno.EINVAL : Read(fd, buffer, count, offset);

    private long Pwrite(int fd, ulong buffer, ulong count, long offset) => offset < 0 ? -Errno.EINVAL : Write(fd, buffer, count, offset);

    private long Write(int fd, ulong buffer, ulong count, long offset = -1)
    {
        if (!ValidFd(fd))
        {
            return -Errno.EBADF;
        }

        var f = _state.Fds[fd]!;
        if (offset >= 0 && f.Kind is not (FdKind.File or FdKind.Device))
        {
            return -Errno.ESPIPE;
        }

        var data = IoBuffer(count);
        if (!ReadUser(buffer, data))
        {
            return -Errno.EFAULT;
        }

        return WriteFrom(f, data, offset);
    }

    /// <summary>Writes a host buffer to <paramref name="f"/>: bytes written, -errno, or <see cref="Blocked"/>.</summary>
    private long WriteFrom(FileDescription f, ReadOnlySpan<byte> data, long offset)
    {
        if ((f.Flags & OpenFlags.AccessMask) == OpenFlags.ReadOnly && f.Kind is FdKind.File or FdKind.Device)
        {
            return -Errno.EBADF;
        }

        switch (f.Kind)
        {
            case FdKind.Stdout:
            case FdKind.Stderr:
            {
                long room = _config.MaxOutputBytes - _stdout.WrittenCount - _stderr.WrittenCount;
                int n = (int)Math.Min(data.Length, Math.Max(room, 0));
                (f.Kind == FdKind.Stdout ? _stdout : _stderr).Write(data[..n]);
                if (n < data.Length)
                {
                    Stop = new StopRequest(SandboxStatus.OutputLimitExceeded, -1, null, $"Output reached the limit of {_config.MaxOutputBytes} bytes.");
                }

                return n;
            }

            case FdKind.File:
                return WriteFile(f, data, offset);
            case FdKind.Device:
                return ((VfsDevice)f.Node!).Kind == DeviceKind.Full ? -Errno.ENOSPC : data.Length;
            case FdKind.PipeWrite:
                return WritePipe(f, data);
            case FdKind.EventFd:
                return WriteEventFd(f, data);
            default:
                return -Errno.EBADF;
        }
    }

    private long ReadPipe(FileDescription f, Span<byte> destination)
    {
        var pipe = f.Pipe!;
        if (pipe.Count == 0)
        {
            if (!HasPipeEnd(pipe, FdKind.PipeWrite) || destination.IsEmpty)
            {
                return 0;
            }

            return (f.Flags & OpenFlags.NonBlock) != 0 ? -Errno.EAGAIN : Block(long.MaxValue);
        }

        int n = pipe.Peek(destination);
        pipe.Consume(n);

        // Room was made: a writer that waits for it (the pipe was full) tries again.
        DescriptorsChanged();
        return n;
    }

    private long ReadEventFd(FileDescription f, Span<byte> destination)
    {
        var counter = f.Counter!;
        if (destination.Length < 8)
        {
            return -Errno.EINVAL;
        }

        if (counter.Value == 0)
        {
            return (f.Flags & OpenFlags.NonBlock) != 0 ? -Errno.EAGAIN : Block(long.MaxValue);
        }

        ulong value = counter.Semaphore ? 1 : counter.Value;
        counter.Value -= value;
        DescriptorsChanged();
        BitConverter.TryWriteBytes(destination, value);
        return 8;
    }

    private long WriteFile(FileDescription f, ReadOnlySpan<byte> data, long offset)
    {
        var file = (VfsFile)f.Node!;
        if (!file.Writable)
        {
            return -Errno.EBADF;
        }

        long pos = offset >= 0 ? offset : (f.Flags & OpenFlags.Append) != 0 ? file.Length : f.Position;
        long end = pos + data.Length;
        if (end > _config.MaxFileBytes)
        {
            return -Errno.EFBIG;
        }

        if (end > file.Content.Length)
        {
            // Grow by doubling, charged to the file system's byte limit.
            long capacity = Math.Min(Math.Max(end, file.Content.Length * 2L), _config.MaxFileBytes);
            long grow = capacity - file.Content.Length;
            if (_state.Vfs.UsedBytes + grow > _state.Vfs.MaxBytes)
            {
                capacity = end;
                grow = capacity - file.Content.Length;
                if (_state.Vfs.UsedBytes + grow > _state.Vfs.MaxBytes)
                {
                    return -Errno.ENOSPC;
                }
            }

            var grown = new byte[capacity];
            file.Content.AsSpan(0, (int)file.Length).CopyTo(grown);
            file.Content = grown;
            _state.Vfs.UsedBytes += grow;
        }

        if (pos > file.Length)
        {
            file.Content.AsSpan((int)file.Length, (int)(pos - file.Length)).Clear();
        }

        data.CopyTo(file.Content.AsSpan((int)pos));
        file.Length = Math.Max(file.Length, end);
        file.ModifiedNanoseconds = Now();
        if (offset < 0)
        {
            f.Position = end;
        }

        return data.Length;
    }

    private long WritePipe(FileDescription f, ReadOnlySpan<byte> data)
    {
        var pipe = f.Pipe!;
        if (!HasPipeEnd(pipe, FdKind.PipeRead))
        {
            return BrokenPipe();
        }

        if (data.IsEmpty)
        {
            return 0;
        }

        int n = pipe.Write(data);
        if (n == 0)
        {
            return (f.Flags & OpenFlags.NonBlock) != 0 ? -Errno.EAGAIN : Block(long.MaxValue);
        }

        DescriptorsChanged();
        return n;
    }

    private long WriteEventFd(FileDescription f, ReadOnlySpan<byte> data)
    {
        if (data.Length < 8)
        {
            return -Errno.EINVAL;
        }

        ulong add = BitConverter.ToUInt64(data);
        if (add == ulong.MaxValue)
        {
            return -Errno.EINVAL;
        }

        var counter = f.Counter!;
        if (counter.Value + add >= ulong.MaxValue || counter.Value + add < counter.Value)
        {
            return (f.Flags & OpenFlags.NonBlock) != 0 ? -Errno.EAGAIN : Block(long.MaxValue);
        }

        counter.Value += add;
        DescriptorsChanged();
        return 8;
    }

    /// <summary>A write to a pipe nobody reads: SIGPIPE, which ends the program unless it ignores or handles it, and EPIPE.</summary>
    private long BrokenPipe()
    {
        const int Sigpipe = 13;
        RaiseSignal(Sigpipe);
        return -Errno.EPIPE;
    }

    private long Vectored(int fd, ulong iov, ulong count, bool write, long offset = -1)
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

            long at = offset < 0 ? -1 : offset + total;
            long n = write ? Write(fd, b, len, at) : Read(fd, b, len, at);
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

    /// <summary><c>sendfile</c>: one chunk from <paramref name="inFd"/> (at <c>*offset</c> when given) to <paramref name="outFd"/>.</summary>
    private long Sendfile(int outFd, int inFd, ulong offsetPointer, ulong count)
    {
        if (!ValidFd(outFd) || !ValidFd(inFd))
        {
            return -Errno.EBADF;
        }

        var input = _state.Fds[inFd]!;
        long offset = -1;
        if (offsetPointer != 0)
        {
            if (!ReadU64(offsetPointer, out ulong o))
            {
                return -Errno.EFAULT;
            }

            if ((long)o < 0)
            {
                return -Errno.EINVAL;
            }

            if (input.Kind is not (FdKind.File or FdKind.Device))
            {
                return -Errno.ESPIPE;
            }

            offset = (long)o;
        }

        var data = IoBuffer(count);
        long n = ReadInto(input, data, offset);
        if (n <= 0)
        {
            return n;
        }

        long written = WriteFrom(_state.Fds[outFd]!, data[..(int)n], -1);
        if (written < 0)
        {
            return written;
        }

        if (offset >= 0)
        {
            return WriteU64(offsetPointer, (ulong)(offset + written)) ? written : -Errno.EFAULT;
        }

        if (written < n && input.Kind == FdKind.File)
        {
            input.Position -= n - written;
        }

        return written;
    }
}
