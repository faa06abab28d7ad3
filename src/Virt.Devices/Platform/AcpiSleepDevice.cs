namespace Virt.Devices;

/// <summary>
/// Power-off and reset for guests booted with ACPI in hardware-reduced mode: the FADT (revision 5
/// or later, flag <c>HW_REDUCED_ACPI</c>) points its <c>SLEEP_CONTROL_REG</c>,
/// <c>SLEEP_STATUS_REG</c> and, optionally, <c>RESET_REG</c> at this device's ports, and the DSDT
/// defines <c>\_S5</c> with SLP_TYPa = <see cref="S5SleepType"/>.
/// </summary>
/// <remarks>
/// <para>Linux's ACPI driver powers off by writing <c>(SLP_TYPa &lt;&lt; 2) | SLP_EN</c> to the sleep
/// control register (ACPI 6.x, 4.8.3.7); this device then reports <see cref="PowerOffRequested"/>.
/// Sleep types other than <see cref="S5SleepType"/> are ignored (the DSDT declares no other state).</para>
/// <para>Layout from the base port (default <see cref="DefaultPort"/> = 0x600, 3 ports, 8-bit
/// registers in system I/O space): +0 sleep control, +1 sleep status, +2 reset register
/// (writing <see cref="ResetValue"/> reports <see cref="ResetRequested"/>).</para>
/// <para>The sleep status register reads 0 (WAK_STS never set: the guest does not wake from S5);
/// writes to it are accepted and ignored.</para>
/// </remarks>
public sealed class AcpiSleepDevice : IPortIoDevice
{
    /// <summary>Default base port: above the legacy ISA devices and clear of PCI configuration (0xCF8-0xCFF).</summary>
    public const ushort DefaultPort = 0x600;

    /// <summary>Number of ports to register the device with.</summary>
    public const ushort PortCount = 3;

    /// <summary>Offset of the sleep control register (FADT <c>SLEEP_CONTROL_REG</c>).</summary>
    public const int SleepControlOffset = 0;

    /// <summary>Offset of the sleep status register (FADT <c>SLEEP_STATUS_REG</c>).</summary>
    public const int SleepStatusOffset = 1;

    /// <summary>Offset of the reset register (FADT <c>RESET_REG</c>).</summary>
    public const int ResetOffset = 2;

    /// <summary>The value to put in the FADT's <c>RESET_VALUE</c>.</summary>
    public const byte ResetValue = 0x01;

    /// <summary>Sleep control: SLP_EN, enter the sleep state in SLP_TYP.</summary>
    public const byte SleepEnable = 0x20;

    /// <summary>Sleep control bits 4:2: SLP_TYP, the sleep type from the DSDT's <c>\_Sx</c> package.</summary>
    public const byte SleepTypeMask = 0x1C;

    /// <summary>Position of SLP_TYP in the sleep control register.</summary>
    public const int SleepTypeShift = 2;

    /// <summary>Sleep status: WAK_STS, set when the system has woken.</summary>
    public const byte WakeStatus = 0x80;

    /// <summary>The SLP_TYPa value the DSDT's <c>\_S5</c> (soft off) package must give.</summary>
    public const byte S5SleepType = 5;

    private readonly Action? _onPowerOff;
    private readonly Action? _onReset;
    private long _powerOffCount;
    private long _resetCount;

    /// <summary>Creates the device.</summary>
    /// <param name="onPowerOff">Called on the vCPU thread when the guest enters S5; must not block.</param>
    /// <param name="onReset">Called on the vCPU thread when the guest writes the reset register; must not block.</param>
    public AcpiSleepDevice(Action? onPowerOff = null, Action? onReset = null)
    {
        _onPowerOff = onPowerOff;
        _onReset = onReset;
    }

    /// <summary>Raised on the vCPU thread when the guest enters S5 (soft off).</summary>
    public event EventHandler? PowerOffRequested;

    /// <summary>Raised on the vCPU thread when the guest writes <see cref="ResetValue"/> to the reset register.</summary>
    public event EventHandler? ResetRequested;

    /// <summary>How many times the guest has asked to power off.</summary>
    public long PowerOffCount => Interlocked.Read(ref _powerOffCount);

    /// <summary>How many times the guest has asked to reset.</summary>
    public long ResetCount => Interlocked.Read(ref _resetCount);

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = offset + i is SleepControlOffset or SleepStatusOffset or ResetOffset ? (byte)0 : BusDispatch.FloatingBusByte;
        }
    }

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            byte value = data[i];
            switch (offset + i)
            {
                case SleepControlOffset when (value & SleepEnable) != 0 && ((value & SleepTypeMask) >> SleepTypeShift) == S5SleepType:
                    Interlocked.Increment(ref _powerOffCount);
                    _onPowerOff?.Invoke();
                    PowerOffRequested?.Invoke(this, EventArgs.Empty);
                    break;
                case ResetOffset when value == ResetValue:
                    Interlocked.Increment(ref _resetCount);
                    _onReset?.Invoke();
                    ResetRequested?.Invoke(this, EventArgs.Empty);
                    break;
                default:
                    break;
            }
        }
    }
}
