using System.Numerics;
using Virt.Cpu;
using Virt.Memory;

namespace Virt;

/// <summary>
/// Which guest pages were written, for a migration: by vCPUs (the backend's log) and by the host (devices, through guest
/// memory's own log). Pages a device was given to write are also kept for the whole migration, because a device marks a
/// page when it takes it and may write it after a round has read it.
/// </summary>
internal sealed class DirtyPageTracker(GuestMemory memory, IDirtyPageLog? log)
{
    public ulong[][] NewBitmaps()
    {
        var maps = new ulong[memory.Regions.Count][];
        for (int i = 0; i < maps.Length; i++)
        {
            maps[i] = new ulong[memory.DirtyBitmapLength(i)];
        }

        return maps;
    }

    /// <summary>The pages written since the last call; the host's also go into <paramref name="deviceWritten"/>.</summary>
    public ulong[][] Collect(ulong[][]? deviceWritten)
    {
        var dirty = NewBitmaps();
        var scratch = NewBitmaps();
        for (int i = 0; i < dirty.Length; i++)
        {
            memory.CollectDirtyPages(i, dirty[i]);
            if (deviceWritten is not null)
            {
                Merge(deviceWritten[i], dirty[i]);
            }

            if (log is not null)
            {
                log.CollectDirtyPages(i, scratch[i]);
                Merge(dirty[i], scratch[i]);
            }
        }

        return dirty;
    }

    public static void Merge(ulong[][] into, ulong[][] from)
    {
        for (int i = 0; i < into.Length; i++)
        {
            Merge(into[i], from[i]);
        }
    }

    public static long CountPages(ulong[][] maps)
    {
        long n = 0;
        foreach (var m in maps)
        {
            foreach (ulong w in m)
            {
                n += BitOperations.PopCount(w);
            }
        }

        return n;
    }

    private static void Merge(ulong[] into, ulong[] from)
    {
        for (int w = 0; w < into.Length; w++)
        {
            into[w] |= from[w];
        }
    }
}
