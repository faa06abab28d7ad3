using System.Runtime.CompilerServices;
using System.Globalization;

namespace Virt.Devices;

/// <summary>
/// The x86 I/O port space (ports 0 to 0xFFFF): dispatches guest port accesses to
/// <see cref="IPortIoDevice"/>s by range. Thread-safe; lookups take no lock.
/// </summary>
/// <remarks>
/// <para>A device sees offsets relative to the start of the range it was registered at.</para>
/// <para>Ports no device claims behave like an empty ISA bus: reads return 0xFF in every byte,
/// writes are dropped, and <see cref="UnhandledAccess"/> is raised.</para>
/// <para>An access that straddles the end of a range is split there: the bytes inside the range
/// go to the device (as a shorter access), the bytes beyond go to whatever claims them, or are
/// unclaimed. An access larger than <see cref="MaxAccessSize"/> bytes is not dispatched at all.</para>
/// <para>A device that throws is contained: reads return 0xFF, <see cref="DeviceFaulted"/> is raised,
/// and the access counts as claimed.</para>
/// </remarks>
public sealed class PortIoBus
{
    /// <summary>The largest single port access x86 has (<c>in eax, dx</c>).</summary>
    public const int MaxAccessSize = 4;

    /// <summary>One past the last port number.</summary>
    private const ulong PortSpaceEnd = 0x1_0000;

    private readonly DeviceRangeMap _map = new();
    private readonly Observer _observer;
    private long _unhandledAccessCount;
    private long _deviceFaultCount;

    /// <summary>Creates an empty bus.</summary>
    public PortIoBus() => _observer = new Observer(this);

    /// <summary>Raised (on the vCPU thread) for every access or piece of an access that no device claims. Handlers must not throw or block.</summary>
    public event EventHandler<UnhandledPortAccessEventArgs>? UnhandledAccess;

    /// <summary>Raised (on the vCPU thread) when a device throws while handling an access. Handlers must not throw or block.</summary>
    public event EventHandler<DeviceFaultedEventArgs>? DeviceFaulted;

    /// <summary>How many accesses (or pieces of accesses) no device claimed.</summary>
    public long UnhandledAccessCount => Interlocked.Read(ref _unhandledAccessCount);

    /// <summary>How many device exceptions the bus has contained.</summary>
    public long DeviceFaultCount => Interlocked.Read(ref _deviceFaultCount);

    /// <summary>The registered ranges in port order.</summary>
    public IReadOnlyList<BusRegistration> Registrations =>
        Array.ConvertAll(_map.Snapshot, e => new BusRegistration(e.Start, e.End - e.Start, e.Name));

    /// <summary>Registers <paramref name="device"/> on ports [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>).</summary>
    /// <param name="start">First port.</param>
    /// <param name="length">Number of ports, at least 1.</param>
    /// <param name="device">The device; it sees offset 0 at <paramref name="start"/>.</param>
    /// <param name="name">A name for messages and events, e.g. <c>"com1"</c>.</param>
    /// <exception cref="ArgumentException">The range is empty, runs past port 0xFFFF, or overlaps a registered range (the message names both devices and ranges).</exception>
    public void Register(ushort start, ushort length, IPortIoDevice device, string name) =>
        Register(start, length, device, name, deviceOffset: 0);

    /// <summary>
    /// Registers <paramref name="device"/> on ports [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>)
    /// where the device sees <paramref name="deviceOffset"/> at <paramref name="start"/>. This lets one device own
    /// scattered ports (the i8042 at 0x60 and 0x64 sees offsets 0 and 4) without claiming the ports between.
    /// </summary>
    /// <exception cref="ArgumentException">The range is empty, runs past port 0xFFFF, or overlaps a registered range.</exception>
    public void Register(ushort start, ushort length, IPortIoDevice device, string name, ushort deviceOffset)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (length == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), $"Device '{name}' must cover at least one port.");
        }

        ulong end = (ulong)start + length;
        if (end > PortSpaceEnd)
        {
            throw new ArgumentException($"Device '{name}' at {FormatRange(start, end)} runs past port 0xffff.", nameof(length));
        }

        _map.Add(start, end, deviceOffset, device, name, FormatRange);
    }

    /// <summary>Removes the range that starts at <paramref name="start"/>.</summary>
    /// <returns>Whether a range was removed.</returns>
    public bool Unregister(ushort start) => _map.RemoveWhere(e => e.Start == start) > 0;

    /// <summary>Removes every range <paramref name="device"/> is registered at.</summary>
    /// <returns>How many ranges were removed.</returns>
    public int Unregister(IPortIoDevice device) => _map.RemoveWhere(e => ReferenceEquals(e.Device, device));

    /// <summary>Dispatches a guest read of <c>data.Length</c> (1 to 4) bytes at <paramref name="port"/>.</summary>
    /// <returns>Whether any device claimed (part of) the access; unclaimed bytes read as 0xFF.</returns>
    public bool Read(ushort port, Span<byte> data)
    {
        if ((uint)(data.Length - 1) >= MaxAccessSize)
        {
            data.Fill(BusDispatch.FloatingBusByte);
            _observer.OnUnhandled(port, data.Length, isWrite: false);
            return false;
        }

        return BusDispatch.Read<Invoker>(_map.Snapshot, port, PortSpaceEnd, data, _observer);
    }

    /// <summary>Dispatches a guest write of <c>data.Length</c> (1 to 4) bytes at <paramref name="port"/>.</summary>
    /// <returns>Whether any device claimed (part of) the access; unclaimed bytes are dropped.</returns>
    public bool Write(ushort port, ReadOnlySpan<byte> data)
    {
        if ((uint)(data.Length - 1) >= MaxAccessSize)
        {
            _observer.OnUnhandled(port, data.Length, isWrite: true);
            return false;
        }

        return BusDispatch.Write<Invoker>(_map.Snapshot, port, PortSpaceEnd, data, _observer);
    }

    private static string FormatRange(ulong start, ulong end) =>
        string.Create(CultureInfo.InvariantCulture, $"ports 0x{start:x}-0x{end - 1:x}");

    private readonly struct Invoker : IDeviceInvoker
    {
        // Unsafe.As skips the type check: Register only ever adds IPortIoDevices to this bus's map.
        public static void Read(object device, ulong offset, Span<byte> data) => Unsafe.As<IPortIoDevice>(device).Read((ushort)offset, data);

        public static void Write(object device, ulong offset, ReadOnlySpan<byte> data) => Unsafe.As<IPortIoDevice>(device).Write((ushort)offset, data);
    }

    private sealed class Observer(PortIoBus bus) : IBusObserver
    {
        public void OnUnhandled(ulong address, int size, bool isWrite)
        {
            Interlocked.Increment(ref bus._unhandledAccessCount);
            bus.UnhandledAccess?.Invoke(bus, new UnhandledPortAccessEventArgs((ushort)address, size, isWrite));
        }

        public void OnFault(string deviceName, Exception exception)
        {
            Interlocked.Increment(ref bus._deviceFaultCount);
            bus.DeviceFaulted?.Invoke(bus, new DeviceFaultedEventArgs(deviceName, exception));
        }
    }
}
