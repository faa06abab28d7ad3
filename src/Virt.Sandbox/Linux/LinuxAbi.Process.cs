using System.Security.Cryptography;
using System.Text;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

// The process: its end, mask and limits (exit, umask, getrlimit, prlimit64) and what it learns of the machine (uname, getrandom); the table answers the id calls and denies clone, fork and execve.
internal sealed partial class LinuxAbi
{
    /// <summary>The program's process id, which is also its thread id, process group and session: it runs alone.</summary>
    private const long ProcessId = 1;

    /// <summary><c>exit_group</c> (and <c>exit</c> of the last thread): the process ends.</summary>
    private long Exit(ulong status) =>
        ExitProcess((int)(status & 0xFF) << 8, new StopRequest(SandboxStatus.Exited, (int)(status & 0xFF), null, null));

    private long Umask(ulong mask)
    {
        long old = _state.Umask;
        _state.Umask = (int)(mask & 0x1FF);
        return old;
    }

    private long Uname(ulong pointer)
    {
        var u = new byte[65 * 6];
        void Put(int field, string s) => Encoding.ASCII.GetBytes(s).CopyTo(u, field * 65);
        Put(0, "Linux");
        Put(1, "sandbox");
        Put(2, "6.1.0-virt-sandbox");
        Put(3, "#1 SMP");
        Put(4, "x86_64");
        Put(5, "(none)");
        return WriteUser(pointer, u) ? 0 : -Errno.EFAULT;
    }

    private long Getrandom(ulong buffer, ulong length)
    {
        int n = (int)Math.Min(length, 256UL * 1024);
        var bytes = n <= 256 ? stackalloc byte[n] : new byte[n];
        FillRandom(bytes);
        return WriteUser(buffer, bytes) ? n : -Errno.EFAULT;
    }

    /// <summary>Random bytes: the host's generator, or the seeded one for reproducible runs.</summary>
    private void FillRandom(Span<byte> bytes)
    {
        if (_config.RandomSeed is null)
        {
            RandomNumberGenerator.Fill(bytes);
        }
        else
        {
            _state.Random.NextBytes(bytes);
        }
    }

    /// <summary><c>prlimit64</c> reads the limits of this process only; a new limit is ignored.</summary>
    private long Prlimit64(ulong pid, ulong resource, ulong oldLimit) => (pid == 0 || pid == (ulong)CurrentProcess.Pid) ? Prlimit((int)resource, oldLimit) : -Errno.ESRCH;

    private long Prlimit(int resource, ulong oldLimit)
    {
        const int RlimitStack = 3, RlimitData = 2, RlimitAs = 9, RlimitNofile = 7;
        if (resource is < 0 or > 15)
        {
            return -Errno.EINVAL;
        }

        ulong value = resource switch
        {
            RlimitStack => (ulong)_config.StackBytes,
            RlimitData or RlimitAs => _arena.Pages * GuestLayout.PageSize,
            RlimitNofile => MaxFds,
            _ => ulong.MaxValue,
        };
        if (oldLimit == 0)
        {
            return 0;
        }

        return WriteU64(oldLimit, value) && WriteU64(oldLimit + 8, value) ? 0 : -Errno.EFAULT;
    }
}
