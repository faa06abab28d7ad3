namespace Virt.Devices;

/// <summary>How a <see cref="DebugExitDevice"/> turns the value the guest writes into an exit code.</summary>
public enum DebugExitConvention
{
    /// <summary>The exit code is the value written.</summary>
    Raw,

    /// <summary>
    /// QEMU's <c>isa-debug-exit</c>: the exit code is <c>(value &lt;&lt; 1) | 1</c>, so a guest written for QEMU
    /// (which writes 0 for success to get exit status 1, for instance) ends with the code it gets there.
    /// </summary>
    QemuIsaDebugExit,
}

/// <summary>
/// A device through which a guest ends its VM with an exit code: the guest writes a value to its port and the
/// device reports the exit code. Useful for test guests and sandboxes that have no power-off path.
/// </summary>
/// <remarks>
/// <para>The device decodes <see cref="Width"/> ports (1, 2 or 4) and takes the value of a write as it arrives,
/// little-endian, whatever its offset in the range (as QEMU's <c>isa-debug-exit</c> does); bytes of an access that
/// fall beyond the range are not the device's. With width 1 the value is the low byte of the access.</para>
/// <para>The exit code follows <see cref="Convention"/>, computed in 32 bits and read as a signed integer, the way
/// a C program's <c>exit(int)</c> sees it: with <see cref="DebugExitConvention.Raw"/> and width 1 it is 0-255;
/// with <see cref="DebugExitConvention.QemuIsaDebugExit"/> it is <c>(value &lt;&lt; 1) | 1</c>, always odd.</para>
/// <para>Reads return 0xFF. The device only reports; stopping the VM is the caller's business.</para>
/// </remarks>
public sealed class DebugExitDevice : IPortIoDevice
{
    /// <summary>The conventional port (<c>0x501</c>, as QEMU's <c>isa-debug-exit</c> defaults to).</summary>
    public const ushort DefaultPort = 0x501;

    /// <summary>Number of ports a device of the default width (1) registers.</summary>
    public const ushort PortCount = 1;

    private readonly Action<int>? _onExit;
    private long _lastExitCode = -1L << 40;

    /// <summary>Creates the device.</summary>
    /// <param name="onExit">Called on the vCPU thread with the exit code each time the guest writes; must not block.</param>
    /// <param name="width">Ports the device decodes, and so the widest value it takes: 1, 2 or 4.</param>
    /// <param name="convention">How the value written becomes the exit code.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="width"/> is not 1, 2 or 4, or <paramref name="convention"/> is unknown.</exception>
    public DebugExitDevice(Action<int>? onExit = null, int width = 1, DebugExitConvention convention = DebugExitConvention.Raw)
    {
        if (!IsValidWidth(width))
        {
            throw new ArgumentOutOfRangeException(nameof(width), width, "The debug-exit port is 1, 2 or 4 bytes wide.");
        }

        if (!Enum.IsDefined(convention))
        {
            throw new ArgumentOutOfRangeException(nameof(convention), convention, "Unknown debug-exit convention.");
        }

        _onExit = onExit;
        Width = width;
        Convention = convention;
    }

    /// <summary>Raised on the vCPU thread each time the guest writes an exit code; handlers must not block.</summary>
    public event EventHandler<DebugExitEventArgs>? ExitRequested;

    /// <summary>Ports the device decodes (register it on this many): 1, 2 or 4.</summary>
    public int Width { get; }

    /// <summary>How the value written becomes the exit code.</summary>
    public DebugExitConvention Convention { get; }

    /// <summary>The last exit code, or <see langword="null"/> if the guest has not written one.</summary>
    public int? LastExitCode
    {
        get
        {
            long code = Interlocked.Read(ref _lastExitCode);
            return code < int.MinValue ? null : (int)code;
        }
    }

    /// <summary>Whether <paramref name="width"/> is a port width the device offers (1, 2 or 4).</summary>
    public static bool IsValidWidth(int width) => width is 1 or 2 or 4;

    /// <summary>The exit code <paramref name="value"/> gives under <paramref name="convention"/>.</summary>
    public static int ExitCodeOf(uint value, DebugExitConvention convention) => convention == DebugExitConvention.QemuIsaDebugExit
        ? unchecked((int)((value << 1) | 1))
        : unchecked((int)value);

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data) => data.Fill(BusDispatch.FloatingBusByte);

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return;
        }

        // The bus hands over only the bytes inside the registered range; a device registered wider than its
        // width (a caller's mistake) still takes no more than Width bytes.
        int length = Math.Min(Math.Min(data.Length, Width), 4);
        uint value = 0;
        for (int i = 0; i < length; i++)
        {
            value |= (uint)data[i] << (8 * i);
        }

        int code = ExitCodeOf(value, Convention);
        Interlocked.Exchange(ref _lastExitCode, code);
        _onExit?.Invoke(code);
        ExitRequested?.Invoke(this, new DebugExitEventArgs(code, value));
    }
}

/// <summary>The guest asked to exit through a <see cref="DebugExitDevice"/>.</summary>
public sealed class DebugExitEventArgs : EventArgs
{
    /// <summary>Creates the event data.</summary>
    /// <param name="exitCode">The exit code.</param>
    /// <param name="value">The value the guest wrote.</param>
    public DebugExitEventArgs(int exitCode, uint value)
    {
        ExitCode = exitCode;
        Value = value;
    }

    /// <summary>The exit code (after the device's <see cref="DebugExitConvention"/>).</summary>
    public int ExitCode { get; }

    /// <summary>The value the guest wrote.</summary>
    public uint Value { get; }
}
