namespace Virt.Devices;

/// <summary>A device on the port-I/O bus. Offsets are relative to the start of the device's port range.</summary>
/// <remarks>
/// Called on a vCPU thread with guest-chosen offsets and sizes; implementations must not throw for
/// any offset inside their range or any size from 1 to 4, and must not block.
/// </remarks>
public interface IPortIoDevice
{
    /// <summary>The guest reads <c>data.Length</c> bytes at <paramref name="offset"/>; fill <paramref name="data"/>.</summary>
    void Read(ushort offset, Span<byte> data);

    /// <summary>The guest writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    void Write(ushort offset, ReadOnlySpan<byte> data);
}

/// <summary>A device on the MMIO bus. Offsets are relative to the start of the device's address range.</summary>
/// <remarks>Same rules as <see cref="IPortIoDevice"/>: sizes 1 to 8, never throw, never block.</remarks>
public interface IMmioDevice
{
    /// <summary>The guest reads <c>data.Length</c> bytes at <paramref name="offset"/>; fill <paramref name="data"/>.</summary>
    void Read(ulong offset, Span<byte> data);

    /// <summary>The guest writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    void Write(ulong offset, ReadOnlySpan<byte> data);
}

/// <summary>An interrupt line from a device to the interrupt controller. Thread-safe.</summary>
public interface IInterruptLine
{
    /// <summary>Drives the line high (level-triggered devices keep it there until <see cref="Lower"/>).</summary>
    void Raise();

    /// <summary>Drives the line low.</summary>
    void Lower();

    /// <summary>An edge: raise, then lower.</summary>
    void Pulse()
    {
        Raise();
        Lower();
    }
}

/// <summary>An interrupt line that goes nowhere, for devices whose interrupts are not wired.</summary>
public sealed class NullInterruptLine : IInterruptLine
{
    /// <summary>The single instance.</summary>
    public static NullInterruptLine Instance { get; } = new();

    private NullInterruptLine() { }

    /// <inheritdoc />
    public void Raise() { }

    /// <inheritdoc />
    public void Lower() { }
}
