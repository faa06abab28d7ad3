using System.Runtime.InteropServices;

namespace Virt.Benchmarks;

/// <summary>
/// Transparent huge pages for the QEMU processes the peer benchmarks start. QEMU asks for them for guest RAM
/// (<c>MADV_HUGEPAGE</c>); where the host compacts memory for such regions at fault time
/// (<c>/sys/kernel/mm/transparent_hugepage/defrag</c> set to <c>madvise</c>, the default), a QEMU that finds no free
/// huge pages spends time compacting, which made its Linux boot 3.0-3.2 s instead of 2.0 s on the test machine. The
/// benchmarks therefore disable them by default: QEMU's steadiest and fastest figures.
/// </summary>
internal static partial class QemuHugePages
{
    private const int PrSetThpDisable = 41;

    /// <summary>
    /// Disables transparent huge pages for this process and the processes it starts from now on (the setting is
    /// inherited), unless <paramref name="keep"/>; returns the line the benchmark prints about it.
    /// </summary>
    public static string Configure(bool keep)
    {
        if (keep)
        {
            return "QEMU with transparent huge pages as it asks for them";
        }

        if (Prctl(PrSetThpDisable, 1, 0, 0, 0) != 0)
        {
            throw new InvalidOperationException($"prctl(PR_SET_THP_DISABLE) failed (errno {Marshal.GetLastPInvokeError()}); pass 'on' to keep the huge pages.");
        }

        return "QEMU with transparent huge pages disabled (pass 'on' to keep them)";
    }

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    private static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);
}
