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
            Map(Sys.Readv, static (abi, fd, iov, count, _, _, _) => abi.Vectored((int)fd, iov, count, write: false)),
            Map(Sys.Writev, static (abi, fd, iov, count, _, _, _) => abi.Vectored((int)fd, iov, count, write: true)),

            // Descriptors and the file system: LinuxAbi.Files.cs
            Map(Sys.Open, static (abi, path, flags, _, _, _, _) => abi.OpenAt(AtFdCwd, path, (int)flags)),
            Map(Sys.Close, static (abi, fd, _, _, _, _, _) => abi.Close((int)fd)),
            Map(Sys.Stat, static (abi, path, stat, _, _, _, _) => abi.StatPath(AtFdCwd, path, stat, 0)),
            Map(Sys.Fstat, static (abi, fd, stat, _, _, _, _) => abi.Fstat((int)fd, stat)),
            Map(Sys.Lstat, static (abi, path, stat, _, _, _, _) => abi.StatPath(AtFdCwd, path, stat, 0)), // no symbolic links
            Map(Sys.Lseek, static (abi, fd, offset, whence, _, _, _) => abi.Lseek((int)fd, (long)offset, (int)whence)),
            Map(Sys.Ioctl, static (abi, fd, _, _, _, _, _) => abi.Ioctl((int)fd)),
            Map(Sys.Access, static (abi, path, _, _, _, _, _) => abi.Access(AtFdCwd, path)),
            Map(Sys.Dup, static (abi, fd, _, _, _, _, _) => abi.Dup((int)fd, -1, 0)),
            Map(Sys.Dup2, static (abi, fd, target, _, _, _, _) => abi.Dup2(fd, target)),
            Map(Sys.Fcntl, static (abi, fd, cmd, arg, _, _, _) => abi.Fcntl((int)fd, (int)cmd, arg)),
            Map(Sys.Fsync, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)),
            Map(Sys.Fdatasync, static (abi, fd, _, _, _, _, _) => abi.Fsync((int)fd)),
            Map(Sys.Getcwd, static (abi, buffer, size, _, _, _, _) => abi.Getcwd(buffer, size)),
            Map(Sys.Readlink, static (abi, path, buffer, size, _, _, _) => abi.ReadLink(AtFdCwd, path, buffer, size)),
            Map(Sys.Getdents64, static (abi, fd, buffer, count, _, _, _) => abi.Getdents((int)fd, buffer, count)),
            Map(Sys.Openat, static (abi, dirfd, path, flags, _, _, _) => abi.OpenAt((int)dirfd, path, (int)flags)),
            Map(Sys.Newfstatat, static (abi, dirfd, path, stat, flags, _, _) => abi.StatPath((int)dirfd, path, stat, (int)flags)),
            Map(Sys.Readlinkat, static (abi, dirfd, path, buffer, size, _, _) => abi.ReadLink((int)dirfd, path, buffer, size)),
            Map(Sys.Faccessat, static (abi, dirfd, path, _, _, _, _) => abi.Access((int)dirfd, path)),
            Map(Sys.Dup3, static (abi, fd, target, flags, _, _, _) => abi.Dup3(fd, target, flags)),
            Map(Sys.Faccessat2, static (abi, dirfd, path, _, _, _, _) => abi.Access((int)dirfd, path)),

            // The address space: LinuxAbi.Memory.cs
            Map(Sys.Mmap, static (abi, address, length, prot, flags, fd, offset) => abi.Mmap(address, length, (int)prot, (int)flags, (int)fd, offset)),
            Map(Sys.Mprotect, static (abi, address, length, prot, _, _, _) => abi.Mprotect(address, length, (int)prot)),
            Map(Sys.Munmap, static (abi, address, length, _, _, _, _) => abi.Munmap(address, length)),
            Map(Sys.Brk, static (abi, address, _, _, _, _, _) => abi.Brk(address)),
            Map(Sys.Mremap, static (abi, address, oldLength, newLength, flags, _, _) => abi.Mremap(address, oldLength, newLength, (int)flags)),
            Constant(Sys.Madvise, 0), // advice only; pages keep their contents (Linux would zero anonymous ones on MADV_DONTNEED)

            // Clocks: LinuxAbi.Time.cs
            Map(Sys.Nanosleep, static (abi, request, _, _, _, _, _) => abi.Nanosleep(request)),
            Map(Sys.Gettimeofday, static (abi, timeval, _, _, _, _, _) => abi.Gettimeofday(timeval)),
            Map(Sys.Time, static (abi, seconds, _, _, _, _, _) => abi.Time(seconds)),
            Map(Sys.ClockGettime, static (abi, clock, timespec, _, _, _, _) => abi.ClockGettime((int)clock, timespec)),
            Map(Sys.ClockGetres, static (abi, _, timespec, _, _, _, _) => abi.ClockGetres(timespec)),
            Map(Sys.ClockNanosleep, static (abi, _, _, request, _, _, _) => abi.Nanosleep(request)),

            // Signals: LinuxAbi.Signals.cs
            Map(Sys.RtSigaction, static (abi, signal, _, oldAction, size, _, _) => abi.RtSigaction((int)signal, oldAction, size)),
            Map(Sys.RtSigprocmask, static (abi, _, _, oldSet, size, _, _) => abi.RtSigprocmask(oldSet, size)),
            Map(Sys.Kill, static (abi, pid, signal, _, _, _, _) => abi.Kill(pid, (int)signal)),
            Map(Sys.Sigaltstack, static (abi, _, oldStack, _, _, _, _) => abi.Sigaltstack(oldStack)),
            Map(Sys.Tkill, static (abi, tid, signal, _, _, _, _) => abi.Kill(tid, (int)signal)),
            Map(Sys.Tgkill, static (abi, tgid, tid, signal, _, _, _) => abi.Tgkill(tgid, tid, (int)signal)),

            // The process: LinuxAbi.Process.cs
            Constant(Sys.Getpid, ProcessId),
            Map(Sys.Exit, static (abi, status, _, _, _, _, _) => abi.Exit(status)),
            Map(Sys.Uname, static (abi, utsname, _, _, _, _, _) => abi.Uname(utsname)),
            Map(Sys.Umask, static (abi, mask, _, _, _, _, _) => abi.Umask(mask)),
            Map(Sys.Getrlimit, static (abi, resource, oldLimit, _, _, _, _) => abi.Prlimit((int)resource, oldLimit)),
            Constant(Sys.Getuid, HostUid),
            Constant(Sys.Getgid, HostUid),
            Constant(Sys.Geteuid, HostUid),
            Constant(Sys.Getegid, HostUid),
            Constant(Sys.Getppid, 0), // no parent the program could see
            Constant(Sys.Getpgrp, ProcessId),
            Constant(Sys.Getpgid, ProcessId),
            Constant(Sys.Getsid, ProcessId),
            Map(Sys.ExitGroup, static (abi, status, _, _, _, _, _) => abi.Exit(status)),
            Map(Sys.Prlimit64, static (abi, pid, resource, _, oldLimit, _, _) => abi.Prlimit64(pid, resource, oldLimit)),
            Map(Sys.Getrandom, static (abi, buffer, length, _, _, _, _) => abi.Getrandom(buffer, length)),

            // No second process or thread and no other program: the sandbox runs one image on one thread.
            Deny(Sys.Clone),
            Deny(Sys.Fork),
            Deny(Sys.Vfork),
            Deny(Sys.Execve),
            Deny(Sys.Execveat),
            Deny(Sys.Clone3),

            // The one thread: LinuxAbi.Threads.cs
            Constant(Sys.SchedYield, 0), // nothing else to run
            Map(Sys.ArchPrctl, static (abi, code, address, _, _, _, _) => abi.ArchPrctl((int)code, address)),
            Constant(Sys.Gettid, ProcessId),
            Map(Sys.Futex, static (abi, address, op, value, _, _, _) => abi.Futex(address, (int)op, (uint)value)),
            Map(Sys.SchedGetaffinity, static (abi, _, size, mask, _, _, _) => abi.SchedGetaffinity(size, mask)),
            Constant(Sys.SetTidAddress, ProcessId), // the thread never exits alone, so the address is never written
            Constant(Sys.SetRobustList, 0), // one thread: no other waiter to wake when it dies
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
