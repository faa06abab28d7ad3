namespace Virt.Devices;

/// <summary>
/// An immutable-snapshot map from address ranges to devices. Lookups read one volatile array
/// reference and binary-search it, so the vCPU hot path takes no lock; registration copies the
/// array under a lock and publishes the new one.
/// </summary>
/// <remarks>
/// Devices are stored as <see cref="object"/> so the dispatch loop is not generic over a reference
/// type: shared generic code would look types up at run time on every access. Each bus only ever
/// adds devices of its own interface type.
/// </remarks>
internal sealed class DeviceRangeMap
{
    internal readonly struct Entry(ulong start, ulong end, ulong offsetBias, object device, string name)
    {
        /// <summary>First address of the range.</summary>
        public readonly ulong Start = start;

        /// <summary>One past the last address of the range; registration guarantees it does not wrap.</summary>
        public readonly ulong End = end;

        /// <summary>Added to the offset the device sees, so one device can sit at several ranges and tell them apart.</summary>
        public readonly ulong OffsetBias = offsetBias;

        public readonly object Device = device;

        public readonly string Name = name;
    }

    private readonly Lock _writeLock = new();
    private Entry[] _entries = [];

    /// <summary>The current snapshot, sorted by start address.</summary>
    public Entry[] Snapshot => Volatile.Read(ref _entries);

    /// <summary>Adds a range; throws <see cref="ArgumentException"/> naming both devices when it overlaps another.</summary>
    public void Add(ulong start, ulong end, ulong offsetBias, object device, string name, Func<ulong, ulong, string> formatRange)
    {
        lock (_writeLock)
        {
            Entry[] current = _entries;
            int insertAt = 0;
            while (insertAt < current.Length && current[insertAt].Start < start)
            {
                insertAt++;
            }

            // Only the neighbours can overlap in a sorted, non-overlapping array.
            if (insertAt > 0 && current[insertAt - 1].End > start)
            {
                throw Overlap(current[insertAt - 1], start, end, name, formatRange);
            }

            if (insertAt < current.Length && current[insertAt].Start < end)
            {
                throw Overlap(current[insertAt], start, end, name, formatRange);
            }

            var next = new Entry[current.Length + 1];
            Array.Copy(current, 0, next, 0, insertAt);
            next[insertAt] = new Entry(start, end, offsetBias, device, name);
            Array.Copy(current, insertAt, next, insertAt + 1, current.Length - insertAt);
            Volatile.Write(ref _entries, next);
        }
    }

    /// <summary>Removes the entries that match; returns how many were removed.</summary>
    public int RemoveWhere(Func<Entry, bool> match)
    {
        lock (_writeLock)
        {
            Entry[] current = _entries;
            Entry[] next = current.Where(e => !match(e)).ToArray();
            if (next.Length == current.Length)
            {
                return 0;
            }

            Volatile.Write(ref _entries, next);
            return current.Length - next.Length;
        }
    }

    /// <summary>Index of the entry containing <paramref name="address"/> in <paramref name="entries"/>, or -1.</summary>
    public static int Find(Entry[] entries, ulong address)
    {
        int lo = 0;
        int hi = entries.Length - 1;
        while (lo <= hi)
        {
            int mid = (int)((uint)(lo + hi) >> 1);
            ref readonly Entry e = ref entries[mid];
            if (address < e.Start)
            {
                hi = mid - 1;
            }
            else if (address >= e.End)
            {
                lo = mid + 1;
            }
            else
            {
                return mid;
            }
        }

        return -1;
    }

    /// <summary>Start of the first range above <paramref name="address"/>, or <see cref="ulong.MaxValue"/> when there is none.</summary>
    public static ulong NextStartAbove(Entry[] entries, ulong address)
    {
        int lo = 0;
        int hi = entries.Length;
        while (lo < hi)
        {
            int mid = (int)((uint)(lo + hi) >> 1);
            if (entries[mid].Start > address)
            {
                hi = mid;
            }
            else
            {
                lo = mid + 1;
            }
        }

        return lo < entries.Length ? entries[lo].Start : ulong.MaxValue;
    }

    private static ArgumentException Overlap(in Entry existing, ulong start, ulong end, string name, Func<ulong, ulong, string> formatRange) =>
        new($"Device '{name}' at {formatRange(start, end)} overlaps device '{existing.Name}' at {formatRange(existing.Start, existing.End)}.", nameof(start));
}
