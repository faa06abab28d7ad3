namespace Virt.Devices;

/// <summary>
/// A one-port device through which a guest ends its VM with an exit code: the guest writes a byte
/// and the device reports it. Useful for test guests and sandboxes that have no power-off path.
/// </summary>
/// <remarks>
/// <para>The exit code is the low byte of the write, unchanged (QEMU's <c>isa-debug-exit</c> reports
/// <c>(value &lt;&lt; 1) | 1</c>; this device does not transform it). Any access size is accepted;
/// the first byte of the access (the low byte, x86 being little-endian) counts.</para>
/// <para>Reads return 0xFF. The device only reports; stopping the VM is the caller's business.</para>
/// </remarks>
public sealed class DebugExitDevice : IPortIoDevice
{
    /// <summary>The conventional port (<c>0x501</c>, as QEMU's <c>isa-debug-exit</c> defaults to).</summary>
    public const ushort DefaultPort = 0x501;

    /// <summary>Number of ports to register the device with.</summary>
    public const ushort PortCount = 1;

    private readonly Action<byte>? _onExit;
    private int _lastExitCode = -1;

    /// <summary>Creates the device.</summary>
    /// <param name="onExit">Called on the vCPU thread with the exit code each time the guest writes; must not block.</param>
    public DebugExitDevice(Action<byte>? onExit = null) => _onExit = onExit;

    /// <summary>Raised on the vCPU thread each time the guest writes an exit code; handlers must not block.</summary>
    public event EventHandler<DebugExitEventArgs>? ExitRequested;

    /// <summary>The last exit code the guest wrote, or <see langword="null"/> if it has not written one.</summary>
    public byte? LastExitCode
    {
        get
        {
            int code = Volatile.Read(ref _lastExitCode);
            return code < 0 ? null : (byte)code;
        }
    }

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data) => data.Fill(BusDispatch.FloatingBusByte);

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return;
        }

        byte code = data[0];
        Volatile.Write(ref _lastExitCode, code);
        _onExit?.Invoke(code);
        ExitRequested?.Invoke(this, new DebugExitEventArgs(code));
    }
}

/// <summary>The guest asked to exit through a <see cref="DebugExitDevice"/>.</summary>
public sealed class DebugExitEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    public DebugExitEventArgs(byte exitCode) => ExitCode = exitCode;

    /// <summary>The byte the guest wrote.</summary>
    public byte ExitCode { get; }
}
