namespace Virt.Sandbox.Linux;

// What the sandbox answers: every supported system call bound to its handler; any other number is ENOSYS.
internal sealed partial class LinuxAbi
{
    /// <summary>
    /// The system calls the sandbox answers, one row each, grouped by the file that holds their handlers (the part
    /// gVisor's <c>linux64.go</c> plays). A row binds a number to a handler and says which argument registers the
    /// handler reads and as what; a number without a row is <c>ENOSYS</c>, counted by name. A lookup indexes an
    /// array, so dispatch costs a bounds check and a delegate call and allocates nothing.
    /// </summary>
    internal static class SyscallTable
    {
        /// <summary>A handler: the ABI layer and the argument registers RDI, RSI, RDX, R10, R8, R9; returns what goes to RAX.</summary>
        internal delegate long Handler(LinuxAbi abi, ulong a0, ulong a1, ulong a2, ulong a3, ulong a4, ulong a5);

        /// <summary>How many numbers virt_sandbox.h reserves, from <see cref="HostCallNumber"/> on.</summary>
        private const int ReservedNumbers = 2;

        /// <summary>The x86-64 table ends below 512 (512 to 547 belong to x32), so a number indexes an array.</summary>
        private const int LinuxNumbers = 512;

        /// <summary>Every row. Declared before the arrays built from it: static fields initialise in text order.</summary>
        private static readonly Row[] Rows =
        [
            // Data through descriptors: LinuxAbi.ReadWrite.cs
            Map(Sys.Read, static (abi, fd, buffer, count, _, _, _) => abi.Read((int)fd, buffer, count, -1)),
            Map(Sys.Write, static (abi, fd, buffer, count, _, _, _) => abi.Write((int)fd, buffer, count)),
            Map(Sys.Pread64, static (abi, fd, buffer, count, offset, _, _) => abi.Pread((int)fd, buffer, count, (long)offset)),
            Map(Sys.Pwrite64, static (abi, fd, buffer, count, offset, _, _) => abi.Pwrite((int)fd, buffer, count, (long)offset)),
            Map(Sys.Readv, static (abi, fd, iov, count, _, _, _) => abi.Vectored((int)fd, iov, count, write: false)),
            Map(Sys.Writev, static (abi, fd, iov, count, _, _, _) => abi.Vectored((int)fd, iov, count, write: true)),
            Map(Sys.Preadv, static (abi, fd, iov, count, offset, _, _) => (long)offset < 0 ? -Errno.EINVAL : abi.Vectored((int)fd, iov, count, write: false, (long)offset)),
            Map(Sys.Pwritev, static (abi, fd, iov, count, offset, _, _) => (long)offset < 0 ? -Errno.EINVAL : abi.Vectored((int)fd, iov, count, write: true, (long)offset)),
            Map(Sys.Sendfile, static (abi, outFd, inFd, offset, count, _, _) => abi.Sendfile((int)outFd, (int)inFd, offset, count)),

            // Pipes, eventfds, readiness: LinuxAbi.Poll.cs
            Map(Sys.Pipe, static (abi, fds, _, _, _, _, _) => abi.Pipe2(fds, 0)),
            Map(Sys.Pipe2, static (abi, fds, flags, _, _, _, _) => abi.Pipe2(fds, (int)flags)),
            Map(Sys.Eventfd, static (abi, initial, _, _, _, _, _) => abi.Eventfd(initial, 0)),
            Map(Sys.Eventfd2, static (abi, initial, flags, _, _, _, _) => abi.Eventfd(initial, (int)flags)),
            Map(Sys.Poll, static (abi, fds, count, timeout, _, _, _) => abi.PollMilliseconds(fds, count, (int)timeout)),
            Map(Sys.Ppoll, static (abi, fds, count, timeout, _, _, _) => abi.Ppoll(fds, count, timeout)),
            Map(Sys.Select, static (abi, count, r, w, e, timeout, _) => abi.SelectTimeval((int)count, r, w, e, timeout)),
            Map(Sys.Pselect6, static (abi, count, r, w, e, timeout, _) => abi.Pselect6((int)count, r, w, e, timeout)),
            Map(Sys.EpollCreate, static (abi, size, _, _, _, _, _) => (int)size <= 0 ? -Errno.EINVAL : abi.EpollCreate(0)),
            Map(Sys.EpollCreate1, static (abi, flags, _, _, _, _, _) => abi.EpollCreate((int)flags)),
            Map(Sys.EpollCtl, static (abi, epfd, op, fd, ev, _, _) => abi.EpollCtl((int)epfd, (int)op, (int)fd, ev)),
            Map(Sys.EpollWait, static (abi, epfd, events, max, timeout, _, _) => abi.EpollWaitMilliseconds((int)epfd, events, (int)max, (int)timeout)),
            Map(Sys.EpollPwait, static (abi, epfd, events, max, timeout, _, _) => abi.EpollWaitMilliseconds((int)epfd, events, (int)max, (int)timeout)),
            Map(Sys.EpollPwait2, static (abi, epfd, events, max, timeout, _, _) => abi.EpollPwait2((int)epfd, events, (int)max, timeout)),

            // Descriptors and the file system: LinuxAbi.Files.cs
            Map(Sys.Open, static (abi, path, flags, mode, _, _, _) => abi.OpenAt(AtFdCwd, path, (int)flags, (uint)mode)),
            Map(Sys.Creat, static (abi, path, mode, _, _, _, _) => abi.OpenAt(AtFdCwd, path, 0x241, (uint)mode)),
            Map(Sys.Close, static (abi, fd, _, _, _, _, _) => abi.Close((int)fd)),
            Map(Sys.CloseRange, static (abi, first, last, flags, _, _, _) => abi.CloseRange((uint)first, (uint)last, (uint)flags)),
            Map(Sys.Stat, static (abi, path, stat, _, _, _, _) => abi.StatPath(AtFdCwd, path, stat, 0)),
            Map(Sys.Fstat, static (abi, fd, stat, _, _, _, _) => abi.Fstat((int)fd, stat)),
            Map(Sys.Lstat, static (abi, path, stat, _, _, _, _) => abi.StatPath(AtFdCwd, path, stat, AtSymlinkNoFollow)),
            Map(Sys.Lseek, static (abi, fd, offset, whence, _, _, _) => abi.Lseek((int)fd, (long)offset, (int)whence)),
            Map(Sys.Ioctl, static (abi, fd, request, arg, _, _, _) => abi.Ioctl((int)fd, request & 0xFFFFFFFF, arg)),
            Map(Sys.Access, static (abi, path, mode, _, _, _, _) => abi.Access(AtFdCwd, path, (int)mode, 0)),
            Map(Sys.Dup, static (abi, fd, _, _, _, _, _) => abi.Dup((int)fd, -1, 0)),
            Map(Sys.Dup2, static (abi, fd, target, _, _, _, _) => abi.Dup2(fd, target)),
            Map(Sys.Fcntl, static (abi, fd, cmd, arg, _, _, _) => abi.Fcntl((int)fd, (int)cmd, arg)),
            Map(Sys.Flock, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)), // one process: every lock is granted
            Map(Sys.Fsync, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)),
            Map(Sys.Fdatasync, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)),
            Map(Sys.Fadvise64, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)),
            Map(Sys.Readahead, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)),
            Map(Sys.Syncfs, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)),
            Constant(Sys.Sync, 0),
            Map(Sys.Getcwd, static (abi, buffer, size, _, _, _, _) => abi.Getcwd(buffer, size)),
            Map(Sys.Chdir, static (abi, path, _, _, _, _, _) => abi.Chdir(path)),
            Map(Sys.Fchdir, static (abi, fd, _, _, _, _, _) => abi.Fchdir((int)fd)),
            Map(Sys.Readlink, static (abi, path, buffer, size, _, _, _) => abi.ReadLink(AtFdCwd, path, buffer, size)),
            Map(Sys.Getdents64, static (abi, fd, buffer, count, _, _, _) => abi.Getdents((int)fd, buffer, count)),
            Map(Sys.Openat, static (abi, dirfd, path, flags, mode, _, _) => abi.OpenAt((int)dirfd, path, (int)flags, (uint)mode)),
            Map(Sys.Newfstatat, static (abi, dirfd, path, stat, flags, _, _) => abi.StatPath((int)dirfd, path, stat, (int)flags)),
            Map(Sys.Readlinkat, static (abi, dirfd, path, buffer, size, _, _) => abi.ReadLink((int)dirfd, path, buffer, size)),
            Map(Sys.Faccessat, static (abi, dirfd, path, mode, _, _, _) => abi.Access((int)dirfd, path, (int)mode, 0)),
            Map(Sys.Dup3, static (abi, fd, target, flags, _, _, _) => abi.Dup3(fd, target, flags)),
            Map(Sys.Faccessat2, static (abi, dirfd, path, mode, flags, _, _) => abi.Access((int)dirfd, path, (int)mode, (int)flags)),
            Map(Sys.Statfs, static (abi, path, buffer, _, _, _, _) => abi.StatfsPath(path, buffer)),
            Map(Sys.Fstatfs, static (abi, fd, buffer, _, _, _, _) => abi.Fstatfs((int)fd, buffer)),

            // Changes to the tree: LinuxAbi.Tree.cs
            Map(Sys.Mkdir, static (abi, path, mode, _, _, _, _) => abi.Mkdir(AtFdCwd, path, (uint)mode)),
            Map(Sys.Mkdirat, static (abi, dirfd, path, mode, _, _, _) => abi.Mkdir((int)dirfd, path, (uint)mode)),
            Map(Sys.Rmdir, static (abi, path, _, _, _, _, _) => abi.Unlink(AtFdCwd, path, AtRemoveDir)),
            Map(Sys.Unlink, static (abi, path, _, _, _, _, _) => abi.Unlink(AtFdCwd, path, 0)),
            Map(Sys.Unlinkat, static (abi, dirfd, path, flags, _, _, _) => abi.Unlink((int)dirfd, path, (int)flags)),
            Map(Sys.Rename, static (abi, from, to, _, _, _, _) => abi.Rename(AtFdCwd, from, AtFdCwd, to, 0)),
            Map(Sys.Renameat, static (abi, fromDir, from, toDir, to, _, _) => abi.Rename((int)fromDir, from, (int)toDir, to, 0)),
            Map(Sys.Renameat2, static (abi, fromDir, from, toDir, to, flags, _) => abi.Rename((int)fromDir, from, (int)toDir, to, (int)flags)),
            Map(Sys.Symlink, static (abi, target, path, _, _, _, _) => abi.Symlink(target, AtFdCwd, path)),
            Map(Sys.Symlinkat, static (abi, target, dirfd, path, _, _, _) => abi.Symlink(target, (int)dirfd, path)),
            Map(Sys.Link, static (abi, from, to, _, _, _, _) => abi.Link(AtFdCwd, from, AtFdCwd, to, 0)),
            Map(Sys.Linkat, static (abi, fromDir, from, toDir, to, flags, _) => abi.Link((int)fromDir, from, (int)toDir, to, (int)flags)),
            Map(Sys.Truncate, static (abi, path, length, _, _, _, _) => abi.Truncate(path, (long)length)),
            Map(Sys.Ftruncate, static (abi, fd, length, _, _, _, _) => abi.Ftruncate((int)fd, (long)length)),
            Map(Sys.Fallocate, static (abi, fd, mode, offset, length, _, _) => mode != 0 ? -Errno.EOPNOTSUPP : abi.Fallocate((int)fd, (long)offset, (long)length)),
            Map(Sys.Chmod, static (abi, path, mode, _, _, _, _) => abi.Chmod(AtFdCwd, path, (uint)mode)),
            Map(Sys.Fchmod, static (abi, fd, mode, _, _, _, _) => abi.Fchmod((int)fd, (uint)mode)),
            Map(Sys.Fchmodat, static (abi, dirfd, path, mode, _, _, _) => abi.Chmod((int)dirfd, path, (uint)mode)),
            Map(Sys.Chown, static (abi, path, uid, gid, _, _, _) => abi.Chown(AtFdCwd, path, uid, gid, 0)),
            Map(Sys.Lchown, static (abi, path, uid, gid, _, _, _) => abi.Chown(AtFdCwd, path, uid, gid, AtSymlinkNoFollow)),
            Map(Sys.Fchown, static (abi, fd, uid, gid, _, _, _) => abi.Chown((int)fd, 0, uid, gid, AtEmptyPath)),
            Map(Sys.Fchownat, static (abi, dirfd, path, uid, gid, flags, _) => abi.Chown((int)dirfd, path, uid, gid, (int)flags)),
            Map(Sys.Utimensat, static (abi, dirfd, path, times, flags, _, _) => abi.Utimensat((int)dirfd, path, times, (int)flags)),

            // The address space: LinuxAbi.Memory.cs
            Map(Sys.Mmap, static (abi, address, length, prot, flags, fd, offset) => abi.Mmap(address, length, (int)prot, (int)flags, (int)fd, offset)),
            Map(Sys.Mprotect, static (abi, address, length, prot, _, _, _) => abi.Mprotect(address, length, (int)prot)),
            Map(Sys.Munmap, static (abi, address, length, _, _, _, _) => abi.Munmap(address, length)),
            Map(Sys.Brk, static (abi, address, _, _, _, _, _) => abi.Brk(address)),
            Map(Sys.Mremap, static (abi, address, oldLength, newLength, flags, _, _) => abi.Mremap(address, oldLength, newLength, (int)flags)),
            Constant(Sys.Madvise, 0), // advice only; pages keep their contents (Linux would zero anonymous ones on MADV_DONTNEED)
            Constant(Sys.Mlock, 0),
            Constant(Sys.Munlock, 0),

            // Clocks: LinuxAbi.Time.cs
            Map(Sys.Nanosleep, static (abi, request, _, _, _, _, _) => abi.Nanosleep(request)),
            Map(Sys.Gettimeofday, static (abi, timeval, _, _, _, _, _) => abi.Gettimeofday(timeval)),
            Map(Sys.Time, static (abi, seconds, _, _, _, _, _) => abi.Time(seconds)),
            Map(Sys.ClockGettime, static (abi, clock, timespec, _, _, _, _) => abi.ClockGettime((int)clock, timespec)),
            Map(Sys.ClockGetres, static (abi, _, timespec, _, _, _, _) => abi.ClockGetres(timespec)),
            Map(Sys.ClockNanosleep, static (abi, clock, flags, request, _, _, _) => abi.ClockNanosleep((int)clock, (int)flags, request)),
            Map(Sys.Getcpu, static (abi, cpu, node, _, _, _, _) => abi.Getcpu(cpu, node)),

            // Signals: LinuxAbi.Signals.cs
            Map(Sys.RtSigaction, static (abi, signal, action, oldAction, size, _, _) => abi.RtSigaction((int)signal, action, oldAction, size)),
            Map(Sys.RtSigprocmask, static (abi, how, set, oldSet, size, _, _) => abi.RtSigprocmask((int)how, set, oldSet, size)),
            Map(Sys.Kill, static (abi, pid, signal, _, _, _, _) => abi.Kill(pid, (int)signal)),
            Map(Sys.Sigaltstack, static (abi, stack, oldStack, _, _, _, _) => abi.Sigaltstack(stack, oldStack)),
            Map(Sys.Tkill, static (abi, tid, signal, _, _, _, _) => abi.Tkill(tid, (int)signal)),
            Map(Sys.Tgkill, static (abi, tgid, tid, signal, _, _, _) => abi.Tgkill(tgid, tid, (int)signal)),
            Map(Sys.RtSigreturn, static (abi, _, _, _, _, _, _) => abi.RtSigreturn()),
            Map(Sys.RtSigpending, static (abi, set, size, _, _, _, _) => abi.RtSigpending(set, size)),
            Map(Sys.RtSigsuspend, static (abi, set, size, _, _, _, _) => abi.RtSigsuspend(set, size)),
            Map(Sys.Pause, static (abi, _, _, _, _, _, _) => abi.Pause()),
            Map(Sys.RtSigqueueinfo, static (abi, tgid, signal, info, _, _, _) => abi.RtSigqueueinfo(tgid, 0, (int)signal, info, toThread: false)),
            Map(Sys.RtTgsigqueueinfo, static (abi, tgid, tid, signal, info, _, _) => abi.RtSigqueueinfo(tgid, tid, (int)signal, info, toThread: true)),
            Map(Sys.RtSigtimedwait, static (abi, set, info, timeout, size, _, _) => abi.RtSigtimedwait(set, info, timeout, size)),
            Map(Sys.Signalfd, static (abi, fd, mask, size, _, _, _) => abi.Signalfd((int)fd, mask, size, 0)),
            Map(Sys.Signalfd4, static (abi, fd, mask, size, flags, _, _) => abi.Signalfd((int)fd, mask, size, (int)flags)),

            // Interval timers: LinuxAbi.Timers.cs
            Map(Sys.Alarm, static (abi, seconds, _, _, _, _, _) => abi.Alarm(seconds)),
            Map(Sys.Getitimer, static (abi, which, current, _, _, _, _) => abi.Getitimer((int)which, current)),
            Map(Sys.Setitimer, static (abi, which, value, old, _, _, _) => abi.Setitimer((int)which, value, old)),

            // The process: LinuxAbi.Process.cs, LinuxAbi.System.cs
            Map(Sys.Getpid, static (abi, _, _, _, _, _, _) => abi.CurrentProcess.Pid),
            Map(Sys.Exit, static (abi, status, _, _, _, _, _) => abi.ExitThread(status)),
            Map(Sys.Uname, static (abi, utsname, _, _, _, _, _) => abi.Uname(utsname)),
            Map(Sys.Umask, static (abi, mask, _, _, _, _, _) => abi.Umask(mask)),
            Map(Sys.Getrlimit, static (abi, resource, oldLimit, _, _, _, _) => abi.Prlimit((int)resource, oldLimit)),
            Constant(Sys.Getuid, HostUid),
            Constant(Sys.Getgid, HostUid),
            Constant(Sys.Geteuid, HostUid),
            Constant(Sys.Getegid, HostUid),
            Map(Sys.Getresuid, static (abi, r, e, s, _, _, _) => abi.Getresid(r, e, s)),
            Map(Sys.Getresgid, static (abi, r, e, s, _, _, _) => abi.Getresid(r, e, s)),
            Map(Sys.Setuid, static (_, id, _, _, _, _, _) => SetId(id)),
            Map(Sys.Setgid, static (_, id, _, _, _, _, _) => SetId(id)),
            Map(Sys.Setresuid, static (_, r, e, s, _, _, _) => SetId(r, e, s)),
            Map(Sys.Setresgid, static (_, r, e, s, _, _, _) => SetId(r, e, s)),
            Map(Sys.Getgroups, static (abi, size, list, _, _, _, _) => abi.Getgroups((int)size, list)),
            Map(Sys.Getppid, static (abi, _, _, _, _, _, _) => abi.CurrentProcess.Parent?.Pid ?? 0), // the first process has no parent it could see
            Constant(Sys.Getpgrp, ProcessId),
            Constant(Sys.Getpgid, ProcessId),
            Constant(Sys.Getsid, ProcessId),
            Map(Sys.Setpgid, static (_, pid, pgid, _, _, _, _) => (long)pid is 0 or ProcessId && (long)pgid is 0 or ProcessId ? 0 : -Errno.EPERM),
            Constant(Sys.Setsid, -Errno.EPERM), // it leads its session already
            Constant(Sys.Getpriority, 20), // nice 0, as the kernel encodes it
            Constant(Sys.Setpriority, 0),
            Map(Sys.ExitGroup, static (abi, status, _, _, _, _, _) => abi.Exit(status)),
            Map(Sys.Prlimit64, static (abi, pid, resource, _, oldLimit, _, _) => abi.Prlimit64(pid, resource, oldLimit)),
            Map(Sys.Getrandom, static (abi, buffer, length, _, _, _, _) => abi.Getrandom(buffer, length)),
            Map(Sys.Sysinfo, static (abi, info, _, _, _, _, _) => abi.Sysinfo(info)),
            Map(Sys.Getrusage, static (abi, who, usage, _, _, _, _) => abi.Getrusage((int)who, usage)),
            Map(Sys.Times, static (abi, buffer, _, _, _, _, _) => abi.Times(buffer)),
            Map(Sys.Prctl, static (abi, option, a1, _, _, _, _) => abi.Prctl((int)option, a1)),
            Map(Sys.Wait4, static (abi, pid, status, options, rusage, _, _) => abi.Wait4((int)pid, status, (int)options, rusage)),
            Map(Sys.Waitid, static (abi, type, id, info, options, _, _) => abi.Waitid((int)type, (int)id, info, (int)options)),

            // Threads and processes: LinuxAbi.Threads.cs, LinuxAbi.Processes.cs (processes run the sandbox's own executable only).
            Map(Sys.Clone, static (abi, flags, stack, parentTid, childTid, tls, _) => abi.Clone(flags, stack, parentTid, childTid, tls)),
            Map(Sys.Clone3, static (abi, args, size, _, _, _, _) => abi.Clone3(args, size)),
            Map(Sys.Fork, static (abi, _, _, _, _, _, _) => abi.Fork(0)),
            Map(Sys.Vfork, static (abi, _, _, _, _, _, _) => abi.Fork(0)),
            Map(Sys.Execve, static (abi, path, argv, envp, _, _, _) => abi.Execve(AtFdCwd, path, argv, envp, 0)),
            Map(Sys.Execveat, static (abi, dirfd, path, argv, envp, flags, _) => abi.Execve((int)dirfd, path, argv, envp, (int)flags)),

            // Threads and the scheduler: LinuxAbi.Threads.cs
            Map(Sys.SchedYield, static (abi, _, _, _, _, _, _) => abi.Yield()),
            Map(Sys.ArchPrctl, static (abi, code, address, _, _, _, _) => abi.ArchPrctl((int)code, address)),
            Map(Sys.Gettid, static (abi, _, _, _, _, _, _) => abi.CurrentThread.Tid),
            Map(Sys.Futex, static (abi, address, op, value, timeout, address2, value3) => abi.Futex(address, (int)op, (uint)value, timeout, address2, (uint)value3)),
            Map(Sys.SchedGetaffinity, static (abi, _, size, mask, _, _, _) => abi.SchedGetaffinity(size, mask)),
            Constant(Sys.SchedSetaffinity, 0),
            Map(Sys.SetTidAddress, static (abi, address, _, _, _, _, _) => abi.SetTidAddress(address)),
            Constant(Sys.SetRobustList, 0), // threads that die holding a robust mutex are not tracked
            NoSys(Sys.Rseq), // listed to say it is refused on purpose: glibc carries on without it

            // The reserved calls of virt_sandbox.h: LinuxAbi.HostCalls.cs
            Map(HostCallNumber, static (abi, name, nameLength, input, inputLength, output, capacity) => abi.HostCall(name, nameLength, input, inputLength, output, capacity)),
            Constant(ReadyNumber, 0), // the machine takes its snapshot before serving the call (IsReadyPoint); the call does nothing
        ];

        private static readonly Handler?[] ByNumber = Index(0, LinuxNumbers);

        private static readonly Handler?[] ByReservedNumber = Index(HostCallNumber, ReservedNumbers);

        /// <summary>Every number the table lists, in table order.</summary>
        public static IEnumerable<long> Numbers
        {
            get
            {
                foreach (var row in Rows)
                {
                    yield return row.Number;
                }
            }
        }

        /// <summary>The handler for system call <paramref name="number"/>, or null when the table has no row for it.</summary>
        public static Handler? Find(long number)
        {
            if ((ulong)number < LinuxNumbers)
            {
                return ByNumber[(int)number];
            }

            ulong reserved = unchecked((ulong)(number - HostCallNumber));
            return reserved < ReservedNumbers ? ByReservedNumber[(int)reserved] : null;
        }

        private static Row Map(long number, Handler handler) => new(number, handler);

        /// <summary>A call whose answer never changes.</summary>
        private static Row Constant(long number, long result) => new(number, (_, _, _, _, _, _, _) => result);

        /// <summary>A call the policy refuses: <c>EPERM</c>, counted by name.</summary>
        private static Row Deny(long number) => new(number, (abi, _, _, _, _, _, _) => abi.Denied(number));

        /// <summary>A call left unimplemented on purpose: <c>ENOSYS</c>, counted by name, as for a number without a row.</summary>
        private static Row NoSys(long number) => new(number, (abi, _, _, _, _, _, _) => abi.NotImplemented(number));

        /// <summary>The handlers for numbers <paramref name="first"/> to <paramref name="first"/> + <paramref name="count"/> - 1, by number.</summary>
        private static Handler?[] Index(long first, int count)
        {
            var handlers = new Handler?[count];
            foreach (var row in Rows)
            {
                long i = row.Number - first;
                if (i >= 0 && i < count)
                {
                    handlers[i] = handlers[i] is null ? row.Handler : throw new InvalidOperationException($"System call {row.Number} has two rows.");
                }
            }

            return handlers;
        }

        private readonly record struct Row(long Number, Handler Handler);
    }
}
