using System.Buffers.Binary;
using Virt.Sandbox.Machine;

namespace Virt.Sandbox.Linux;

// The one thread: arch_prctl (its FS base), futex, sched_getaffinity (set_tid_address, set_robust_list, sched_yield, rseq are answered by the table).
internal sealed partial class LinuxAbi
{
    private long ArchPrctl(int code, ulong address)
    {
        const int ArchSetGs = 0x1001, ArchSetFs = 0x1002, ArchGetFs = 0x1003, ArchGetGs = 0x1004;
        switch (code)
        {
            case ArchSetFs:
                if (!GuestLayout.IsUserCanonical(address))
                {
                    return -Errno.EPERM;
                }

                _state.FsBase = address;
                _setFsBase(address);
                return 0;
            case ArchGetFs:
                return WriteU64(address, _state.FsBase) ? 0 : -Errno.EFAULT;
            case ArchSetGs:
            case ArchGetGs:
                return Count(Sys.ArchPrctl, -Errno.EINVAL);
            default:
                return -Errno.EINVAL;
        }
    }

    private long Futex(ulong address, int op, uint value)
    {
        const int FutexWait = 0, FutexWake = 1, FutexWaitBitset = 9, FutexWakeBitset = 10;
        int cmd = op & 0x7F;
        if (cmd is FutexWake or FutexWakeBitset)
        {
            return 0;
        }

        if (cmd is FutexWait or FutexWaitBitset)
        {
            Span<byte> b = stackalloc byte[4];
            if (!ReadUser(address, b))
            {
                return -Errno.EFAULT;
            }

            // One thread: nobody could ever wake a matching wait, so it fails instead of hanging.
            return BinaryPrimitives.ReadUInt32LittleEndian(b) != value ? -Errno.EAGAIN : -Errno.EDEADLK;
        }

        return NotImplemented(Sys.Futex);
    }

    private long SchedGetaffinity(ulong size, ulong mask)
    {
        if (size < 8 || (size & 7) != 0)
        {
            return -Errno.EINVAL;
        }

        return WriteU64(mask, 1) ? 8 : -Errno.EFAULT;
    }
}
