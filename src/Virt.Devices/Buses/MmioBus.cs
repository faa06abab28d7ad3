using System.Runtime.CompilerServices;
using System.Globalization;

namespace Virt.Devices;

/// <summary>
/// Guest physical addresses that are not RAM: dispatches guest MMIO accesses to
/// <see cref="IMmioDevice"/>s by range. Thread-safe; lookups take no lock.
/// </summary>
/// <remarks>
/// <para>A device sees offsets relative to the start of the range it was registered at.</para>
/// <para>Addresses no device claims read as 0xFF in every byte, writes are dropped, and
/// <see cref="UnhandledAccess"/> is raised.</para>
/// <para>An access that straddles the end of a range is split there: the bytes inside the range go
/// to the device (as a shorter access), the bytes beyond go to whatever claims them, or are
/// unclaimed. An access larger than <see cref="MaxAccessSize"/> bytes is not dispatched at all.</para>
/// <para>A device that throws is contained: reads return 0xFF, <see cref="DeviceFaulted"/> is raised,
/// and the access counts as claimed.</para>
/// </remarks>
public sealed class MmioBus
{
    /// <summary>The largest single MMIO access dispatched (a 64-bit <c>mov</c>; hypervisors split wider ones).</summary>
    public const int MaxAccessSize = 8;

    private readonly DeviceRangeMap _map = new();
    private readonly Observer _observer;
    private long _unhandledAccessCount;
    private long _deviceFaultCount;

    /// <summary>Creates an empty bus.</summary>
    public MmioBus() => _observer = new Observer(this);

    /// <summary>Raised (on the vCPU thread) for every access or piece of an access that no device claims. Handlers must not throw or block.</summary>
    public event EventHandler<UnhandledMmioAccessEventArgs>? UnhandledAccess;

    /// <summary>Raised (on the vCPU thread) when a device throws while handling an access. Handlers must not throw or block.</summary>
    public event EventHandler<DeviceFaultedEventArgs>? DeviceFaulted;

    /// <summary>How many accesses (or pieces of accesses) no device claimed.</summary>
    public long UnhandledAccessCount => Interlocked.Read(ref _unhandledAccessCount);

    /// <summary>How many device exceptions the bus has contained.</summary>
    public long DeviceFaultCount => Interlocked.Read(ref _deviceFaultCount);

    /// <summary>The registered ranges in address order.</summary>
    public IReadOnlyList<BusRegistration> Registrations =>
        Array.ConvertAll(_map.Snapshot, e => new BusRegistration(e.Start, e.End - e.Start, e.Name));

    /// <summary>Registers <paramref name="device"/> on [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>).</summary>
    /// <param name="start">First guest physical address.</param>
    /// <param name="length">Number of bytes, at least 1; the range must end at or below 2^64 - 1.</param>
    /// <param name="device">The device; it sees offset 0 at <paramref name="start"/>.</param>
    /// <param name="name">A name for messages and events, e.g. <c>"virtio-mmio@0xd0000000"</c>.</param>
    /// <exception cref="ArgumentException">The range is empty, wraps past the top of the address space, or overlaps a registered range (the message names both devices and ranges).</exception>
    public void Register(GuestAddress start, ulong length, IMmioDevice device, string name)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (length == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), $"Device '{name}' must cover at least one byte.");
        }

        if (!start.TryAdd(length, out GuestAddress end) || end.Value == 0)
        {
            throw new ArgumentException($"Device '{name}' at {start} with length 0x{length:x} runs past the top of the address space.", nameof(length));
        }

        _map.Add(start.Value, end.Value, 0, device, name, FormatRange);
    }

    /// <summary>Removes the range that starts at <paramref name="start"/>.</summary>
    /// <returns>Whether a range was removed.</returns>
    public bool Unregister(GuestAddress start) => _map.RemoveWhere(e => e.Start == start.Value) > 0;

    /// <summary>Removes every range <paramref name="device"/> is registered at.</summary>
    /// <returns>How many ranges were removed.</returns>
    public int Unregister(IMmioDevice device) => _map.RemoveWhere(e => ReferenceEquals(e.Device, device));

    /// <summary>Dispatches a guest read of <c>data.Length</c> (1 to 8) bytes at <paramref name="address"/>.</summary>
    /// <returns>Whether any device claimed (part of) the access; unclaimed bytes read as 0xFF.</returns>
    public bool Read(GuestAddress address, Span<byte> data)
    {
        if ((uint)(data.Length - 1) >= MaxAccessSize)
        {
            data.Fill(BusDispatch.FloatingBusByte);
            _observer.OnUnhandled(address.Value, data.Length, isWrite: false);
            return false;
        }

        return BusDispatch.Read<Invoker>(_map.Snapshot, address.Value, ulong.MaxValue, data, _observer);
    }

    /// <summary>Dispatches a guest write of <c>data.Length</c> (1 to 8) bytes at <paramref name="address"/>.</summary>
    /// <returns>Whether any device claimed (part of) the access; unclaimed bytes are dropped.</returns>
    public bool Write(GuestAddress address, ReadOnlySpan<byte> data)
    {
        if ((uint)(data.Length - 1) >= MaxAccessSize)
        {
            _observer.OnUnhandled(address.Value, data.Length, isWrite: true);
            return false;
        }

        return BusDispatch.Write<Invoker>(_map.Snapshot, address.Value, ulong.MaxValue, data, _observer);
    }

    private static string FormatRange(ulong start, ulong end) =>
        string.Create(CultureInfo.InvariantCulture, $"0x{start:x}-0x{end - 1:x}");

    private readonly struct Invoker : IDeviceInvoker
    {
        // Unsafe.As skips the type check: Register only ever adds IMmioDevices to this bus's map.
        public static void Read(object device, ulong offset, Span<byte> data) => Unsafe.As<IMmioDevice>(device).Read(offset, data);

        public static void Write(object device, ulong offset, ReadOnlySpan<byte> data) => Unsafe.As<IMmioDevice>(device).Write(offset, data);
    }

    private sealed class Observer(MmioBus bus) : IBusObserver
    {
        public void OnUnhandled(ulong address, int size, bool isWrite)
        {
            Interlocked.Increment(ref bus._unhandledAccessCount);
            bus.UnhandledAccess?.Invoke(bus, new UnhandledMmioAccessEventArgs(new GuestAddress(address), size, isWrite));
        }

        public void OnFault(string deviceName, Exception exception)
        {
            Interlocked.Increment(ref bus._deviceFaultCount);
            bus.DeviceFaulted?.Invoke(bus, new DeviceFaultedEventArgs(deviceName, exception));
        }
    }
}
