namespace Virt.Devices;

/// <summary>A device threw while handling a guest access; the bus contained it.</summary>
public sealed class DeviceFaultedEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    public DeviceFaultedEventArgs(string deviceName, Exception exception)
    {
        DeviceName = deviceName;
        Exception = exception;
    }

    /// <summary>The name the device was registered with.</summary>
    public string DeviceName { get; }

    /// <summary>What the device threw.</summary>
    public Exception Exception { get; }
}

/// <summary>The guest accessed a port no device claims.</summary>
public sealed class UnhandledPortAccessEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    public UnhandledPortAccessEventArgs(ushort port, int size, bool isWrite)
    {
        Port = port;
        Size = size;
        IsWrite = isWrite;
    }

    /// <summary>The first unclaimed port of the access (or of the unclaimed piece of a straddling access).</summary>
    public ushort Port { get; }

    /// <summary>Number of unclaimed bytes.</summary>
    public int Size { get; }

    /// <summary>Whether the guest wrote (<see langword="true"/>) or read.</summary>
    public bool IsWrite { get; }
}

/// <summary>The guest accessed an MMIO address no device claims.</summary>
public sealed class UnhandledMmioAccessEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    public UnhandledMmioAccessEventArgs(GuestAddress address, int size, bool isWrite)
    {
        Address = address;
        Size = size;
        IsWrite = isWrite;
    }

    /// <summary>The first unclaimed address of the access (or of the unclaimed piece of a straddling access).</summary>
    public GuestAddress Address { get; }

    /// <summary>Number of unclaimed bytes.</summary>
    public int Size { get; }

    /// <summary>Whether the guest wrote (<see langword="true"/>) or read.</summary>
    public bool IsWrite { get; }
}

/// <summary>One device range on a bus, as listed by <see cref="PortIoBus.Registrations"/> or <see cref="MmioBus.Registrations"/>.</summary>
/// <param name="Start">First address (port number or guest physical address).</param>
/// <param name="Length">Number of addresses.</param>
/// <param name="Name">The name given at registration.</param>
public readonly record struct BusRegistration(ulong Start, ulong Length, string Name);
