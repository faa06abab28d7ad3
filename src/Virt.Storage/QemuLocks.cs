using Microsoft.Win32.SafeHandles;

namespace Virt.Storage;

/// <summary>
/// The byte-range locks QEMU takes on image files (open file description locks on bytes 100 + permission for the
/// permissions a user holds, and 200 + permission for those it does not share), so a QEMU process and this library
/// see each other: neither writes an image the other has open, and neither reads one the other writes.
/// </summary>
/// <remarks>
/// A writer holds "consistent read" and "write" and shares neither "write" nor "resize"; a reader holds
/// "consistent read" and does not share "write" either. A conflict is a lock another open file holds on the byte
/// that answers ours. File systems without OFD locks skip the protection (flock still applies).
/// </remarks>
internal static class QemuLocks
{
    private const int PermBase = 100;
    private const int SharedBase = 200;
    private const int ConsistentRead = 0;
    private const int Write = 1;
    private const int Resize = 3;

    /// <summary>Takes the locks for a reader or writer; false when another open file conflicts.</summary>
    public static unsafe bool TryAcquire(SafeFileHandle handle, bool readOnly)
    {
        ReadOnlySpan<int> held = readOnly ? [ConsistentRead] : [ConsistentRead, Write];
        ReadOnlySpan<int> unshared = [Write, Resize];
        foreach (int p in held)
        {
            if (!Set(handle, PermBase + p))
            {
                return true;
            }
        }

        foreach (int p in unshared)
        {
            if (!Set(handle, SharedBase + p))
            {
                return true;
            }
        }

        foreach (int p in held)
        {
            if (Conflicts(handle, SharedBase + p))
            {
                return false;
            }
        }

        foreach (int p in unshared)
        {
            if (Conflicts(handle, PermBase + p))
            {
                return false;
            }
        }

        return true;
    }

    private static unsafe bool Set(SafeFileHandle handle, long offset)
    {
        var l = new Interop.Libc.FileLock { Type = Interop.Libc.F_RDLCK, Whence = 0, Start = offset, Length = 1 };
        return Interop.Libc.FcntlLock(handle, Interop.Libc.F_OFD_SETLK, &l) == 0;
    }

    private static unsafe bool Conflicts(SafeFileHandle handle, long offset)
    {
        var l = new Interop.Libc.FileLock { Type = Interop.Libc.F_WRLCK, Whence = 0, Start = offset, Length = 1 };
        return Interop.Libc.FcntlLock(handle, Interop.Libc.F_OFD_GETLK, &l) == 0 && l.Type != Interop.Libc.F_UNLCK;
    }
}
