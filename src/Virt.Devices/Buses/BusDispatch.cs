namespace Virt.Devices;

/// <summary>Calls a device of one kind; a struct type argument lets the JIT specialise the dispatch loop per bus.</summary>
internal interface IDeviceInvoker
{
    /// <summary>Reads from <paramref name="device"/>, which the caller guarantees is of the bus's device type.</summary>
    static abstract void Read(object device, ulong offset, Span<byte> data);

    /// <summary>Writes to <paramref name="device"/>, which the caller guarantees is of the bus's device type.</summary>
    static abstract void Write(object device, ulong offset, ReadOnlySpan<byte> data);
}

/// <summary>Receives the bus's bookkeeping callbacks (unclaimed pieces, device faults).</summary>
internal interface IBusObserver
{
    void OnUnhandled(ulong address, int size, bool isWrite);

    void OnFault(string deviceName, Exception exception);
}

/// <summary>The dispatch loop shared by <see cref="PortIoBus"/> and <see cref="MmioBus"/>.</summary>
/// <remarks>
/// An access is split at range boundaries: each piece goes to the device whose range holds it
/// (with the offset relative to that range) and pieces no device holds read as 0xFF and drop
/// writes. In the common case the whole access falls in one range and the loop runs once.
/// </remarks>
internal static class BusDispatch
{
    /// <summary>The value an unclaimed or faulted read returns in every byte, as an open ISA/PCI bus does.</summary>
    public const byte FloatingBusByte = 0xFF;

    public static bool Read<TInvoker>(DeviceRangeMap.Entry[] entries, ulong address, ulong limit, Span<byte> data, IBusObserver observer)
        where TInvoker : struct, IDeviceInvoker
    {
        bool claimed = false;
        int done = 0;
        ulong current = address;
        while (done < data.Length)
        {
            int remaining = data.Length - done;
            if (current >= limit)
            {
                data[done..].Fill(FloatingBusByte);
                observer.OnUnhandled(current, remaining, isWrite: false);
                break;
            }

            int index = DeviceRangeMap.Find(entries, current);
            int size;
            if (index >= 0)
            {
                ref readonly DeviceRangeMap.Entry entry = ref entries[index];
                size = (int)Math.Min((ulong)remaining, entry.End - current);
                Span<byte> piece = data.Slice(done, size);
                try
                {
                    TInvoker.Read(entry.Device, current - entry.Start + entry.OffsetBias, piece);
                }
#pragma warning disable CA1031 // A device bug must not unwind the vCPU thread; the fault is reported instead.
                catch (Exception ex)
#pragma warning restore CA1031
                {
                    piece.Fill(FloatingBusByte);
                    observer.OnFault(entry.Name, ex);
                }

                claimed = true;
            }
            else
            {
                ulong next = Math.Min(DeviceRangeMap.NextStartAbove(entries, current), limit);
                size = (int)Math.Min((ulong)remaining, next - current);
                data.Slice(done, size).Fill(FloatingBusByte);
                observer.OnUnhandled(current, size, isWrite: false);
            }

            done += size;
            current += (ulong)size;
        }

        return claimed;
    }

    public static bool Write<TInvoker>(DeviceRangeMap.Entry[] entries, ulong address, ulong limit, ReadOnlySpan<byte> data, IBusObserver observer)
        where TInvoker : struct, IDeviceInvoker
    {
        bool claimed = false;
        int done = 0;
        ulong current = address;
        while (done < data.Length)
        {
            int remaining = data.Length - done;
            if (current >= limit)
            {
                observer.OnUnhandled(current, remaining, isWrite: true);
                break;
            }

            int index = DeviceRangeMap.Find(entries, current);
            int size;
            if (index >= 0)
            {
                ref readonly DeviceRangeMap.Entry entry = ref entries[index];
                size = (int)Math.Min((ulong)remaining, entry.End - current);
                try
                {
                    TInvoker.Write(entry.Device, current - entry.Start + entry.OffsetBias, data.Slice(done, size));
                }
#pragma warning disable CA1031 // A device bug must not unwind the vCPU thread; the fault is reported instead.
                catch (Exception ex)
#pragma warning restore CA1031
                {
                    observer.OnFault(entry.Name, ex);
                }

                claimed = true;
            }
            else
            {
                ulong next = Math.Min(DeviceRangeMap.NextStartAbove(entries, current), limit);
                size = (int)Math.Min((ulong)remaining, next - current);
                observer.OnUnhandled(current, size, isWrite: true);
            }

            done += size;
            current += (ulong)size;
        }

        return claimed;
    }
}
