using System.Buffers.Binary;

namespace Virt.Sandbox.Linux;

// Signals: rt_sigaction, rt_sigprocmask, sigaltstack are recorded by libc only and never delivered; kill, tkill, tgkill to itself end the run.
internal sealed partial class LinuxAbi
{
    private long RtSigaction(int signal, ulong oldAction, ulong size)
    {
        if (signal < 1 || signal > 64 || size != 8 || signal is 9 or 19)
        {
            return -Errno.EINVAL;
        }

        // Handlers are recorded by the program's libc only; nothing is ever delivered, so the old action is "default".
        if (oldAction != 0 && !WriteUser(oldAction, new byte[32]))
        {
            return -Errno.EFAULT;
        }

        return 0;
    }

    private long RtSigprocmask(ulong oldSet, ulong size)
    {
        if (size != 8)
        {
            return -Errno.EINVAL;
        }

        return oldSet == 0 || WriteU64(oldSet, 0) ? 0 : -Errno.EFAULT;
    }

    private long Sigaltstack(ulong oldStack)
    {
        if (oldStack == 0)
        {
            return 0;
        }

        Span<byte> ss = stackalloc byte[24];
        ss.Clear();
        BinaryPrimitives.WriteInt32LittleEndian(ss[8..], 2); // SS_DISABLE
        return WriteUser(oldStack, ss) ? 0 : -Errno.EFAULT;
    }

    private long Kill(ulong pid, int signal) => SelfSignal(pid is 0 or 1, signal);

    private long Tgkill(ulong tgid, ulong tid, int signal) => SelfSignal(tgid is 0 or 1 && tid == 1, signal);

    private long SelfSignal(bool self, int signal)
    {
        if (!self)
        {
            return -Errno.EPERM;
        }

        if (signal is < 0 or > 64)
        {
            return -Errno.EINVAL;
        }

        if (signal == 0)
        {
            return 0;
        }

        Stop = new StopRequest(SandboxStatus.Signaled, -1, signal, $"The program sent itself signal {signal}.");
        return 0;
    }
}
