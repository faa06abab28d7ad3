using System.Buffers.Binary;
using Virt.Snapshots;

namespace Virt.Devices;

/// <summary>
/// The ACPI power-management timer (ACPI 6.x, 4.8.2.1): a free-running, read-only counter at
/// <see cref="Frequency"/> (3.579545 MHz) in a 32-bit I/O register, 24 or 32 bits wide. The FADT gives its
/// port in <c>PM_TMR_BLK</c> / <c>X_PM_TMR_BLK</c> and its width in the <c>TMR_VAL_EXT</c> flag.
/// </summary>
/// <remarks>
/// <para>The count comes from a <see cref="TimeProvider"/>'s timestamps: give it the VM's clock (the clock its TSC
/// follows), so the timer and the TSC agree on every backend. Bits above the width read as 0; the counter wraps.
/// The timer's overflow event (TMR_STS in PM1 status) does not exist: there is no PM1 event block on a
/// hardware-reduced platform.</para>
/// <para>Any access size reads the little-endian bytes of the register at the offset; writes are ignored.</para>
/// <para>The count is saved in snapshots so that it continues from where it was on the restored machine.</para>
/// </remarks>
public sealed class AcpiPmTimer : IPortIoDevice, IPersistentState
{
    /// <summary>The timer's frequency in Hz (ACPI 6.x, 4.8.2.1).</summary>
    public const long Frequency = 3_579_545;

    /// <summary>Number of ports to register the device with: one 32-bit register.</summary>
    public const ushort PortCount = 4;

    /// <summary>The default port: QEMU's PIIX4 power-management block at 0x600, timer at offset 8.</summary>
    public const ushort DefaultPort = 0x608;

    private readonly TimeProvider _time;
    private readonly uint _mask;
    private readonly Lock _lock = new();

    /// <summary>The provider timestamp at which the count was <see cref="_baseCount"/>.</summary>
    private long _baseTimestamp;
    private ulong _baseCount;

    /// <summary>Creates the timer.</summary>
    /// <param name="time">Where time comes from (its <see cref="TimeProvider.GetTimestamp"/> and <see cref="TimeProvider.TimestampFrequency"/>).</param>
    /// <param name="is32Bit">32-bit counter (<c>TMR_VAL_EXT</c> set in the FADT) or 24-bit.</param>
    public AcpiPmTimer(TimeProvider time, bool is32Bit = true)
    {
        ArgumentNullException.ThrowIfNull(time);
        _time = time;
        Is32Bit = is32Bit;
        _mask = is32Bit ? uint.MaxValue : 0xFF_FFFF;
        _baseTimestamp = time.GetTimestamp();
    }

    /// <summary>Whether the counter is 32 bits wide (else 24).</summary>
    public bool Is32Bit { get; }

    /// <summary>The section name in snapshots.</summary>
    public string StateName { get; init; } = "acpi-pm-timer";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <summary>The counter's value now (masked to its width).</summary>
    public uint Value => (uint)(Count() & _mask);

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data)
    {
        Span<byte> register = stackalloc byte[8];
        register.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(register, Value);
        for (int i = 0; i < data.Length; i++)
        {
            int at = offset + i;
            data[i] = at < PortCount ? register[at] : BusDispatch.FloatingBusByte;
        }
    }

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        // Read-only register.
    }

    /// <inheritdoc />
    public void SaveState(StateWriter writer) => writer.WriteUInt64(Count());

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        if (version != StateVersion)
        {
            throw reader.UnsupportedVersion(version, StateVersion);
        }

        ulong count = reader.ReadUInt64("count");
        reader.EnsureEnd();
        lock (_lock)
        {
            _baseTimestamp = _time.GetTimestamp();
            _baseCount = count;
        }
    }

    /// <summary>Ticks of the timer since it was created (or restored to <see cref="_baseCount"/>), unmasked.</summary>
    private ulong Count()
    {
        long now = _time.GetTimestamp();
        long frequency = _time.TimestampFrequency;
        lock (_lock)
        {
            // A provider that went backwards (it should not) holds the count instead of running it back.
            ulong elapsed = now > _baseTimestamp ? (ulong)(now - _baseTimestamp) : 0;
            return _baseCount + (ulong)((UInt128)elapsed * Frequency / (ulong)frequency);
        }
    }
}
