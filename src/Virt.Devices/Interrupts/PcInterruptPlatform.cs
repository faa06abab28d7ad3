using Virt.Platform;

namespace Virt.Devices.Interrupts;

/// <summary>
/// The PC interrupt controllers and timers (<see cref="PcInterruptControllers"/> on a <see cref="VirtualClock"/>) as
/// the <see cref="IInterruptPlatform"/> a backend without its own composes: the interpreter handles their ports, MMIO
/// pages and MSRs on the vCPU thread, without exits to the host.
/// </summary>
public sealed partial class PcInterruptPlatform : IInterruptPlatform
{
    /// <summary>Highest global system interrupt: 16 ISA IRQs plus IOAPIC pins 16-23.</summary>
    public const uint HighestGsi = 23;

    private readonly (ushort Port, ushort Count, IPortIoDevice Device)[] _ports;

    /// <summary>Creates the controllers for <paramref name="parameters"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not 1 to 255 vCPUs (one local APIC each), or a frequency that is not positive.</exception>
    public PcInterruptPlatform(InterruptPlatformParameters parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentOutOfRangeException.ThrowIfLessThan(parameters.VcpuCount, 1, nameof(parameters));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(parameters.VcpuCount, 255, nameof(parameters));
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(parameters.ClockFrequency, 0, nameof(parameters));
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(parameters.LocalTimerFrequency, 0, nameof(parameters));
        VirtualClock = new VirtualClock(parameters.ClockFrequency);
        Controllers = new PcInterruptControllers(VirtualClock, parameters.LocalTimerFrequency, parameters.VcpuCount);
        _ports = [.. Controllers.PortDevices];
    }

    /// <summary>Builds a <see cref="PcInterruptPlatform"/> for a partition (<see cref="Cpu.PartitionOptions.InterruptPlatform"/>).</summary>
    public static IInterruptPlatformFactory Factory { get; } = new PcFactory();

    /// <summary>The wired controllers.</summary>
    public PcInterruptControllers Controllers { get; }

    /// <summary>The virtual clock the timers run on.</summary>
    public VirtualClock VirtualClock { get; }

    /// <inheritdoc />
    public IPlatformClock Clock => VirtualClock;

    /// <inheritdoc />
    public uint MaxGsi => HighestGsi;

    /// <inheritdoc />
    public void SetInterruptLine(uint gsi, bool level)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(gsi, HighestGsi);
        var line = Controllers.GetGsiLine((int)gsi);
        if (level)
        {
            line.Raise();
        }
        else
        {
            line.Lower();
        }
    }

    /// <inheritdoc />
    public ILocalInterruptController GetLocalController(int vcpuIndex)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(vcpuIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(vcpuIndex, Controllers.LocalApics.Count);
        return Controllers.LocalApics[vcpuIndex];
    }

    /// <inheritdoc />
    public bool TryAccessPort(ushort port, Span<byte> data, bool isWrite)
    {
        foreach (var (start, count, device) in _ports)
        {
            if (port < start || port >= start + count)
            {
                continue;
            }

            if (isWrite)
            {
                device.Write((ushort)(port - start), data);
            }
            else
            {
                data.Clear();
                device.Read((ushort)(port - start), data);
            }

            return true;
        }

        return false;
    }

    /// <inheritdoc />
    public bool OwnsMmio(ulong address) =>
        address - IoApic.DefaultAddress < IoApic.Size || address - LocalApic.DefaultAddress < LocalApic.Size;

    /// <inheritdoc />
    public bool TryAccessMmio(ulong address, Span<byte> data, bool isWrite) => TryAccessMmio(0, address, data, isWrite);

    /// <inheritdoc />
    public bool TryAccessMmio(int vcpuIndex, ulong address, Span<byte> data, bool isWrite)
    {
        IMmioDevice device;
        ulong offset;
        if (address - IoApic.DefaultAddress < IoApic.Size)
        {
            device = Controllers.IoApic;
            offset = address - IoApic.DefaultAddress;
        }
        else if (address - LocalApic.DefaultAddress < LocalApic.Size)
        {
            device = Controllers.LocalApics[Math.Clamp(vcpuIndex, 0, Controllers.LocalApics.Count - 1)];
            offset = address - LocalApic.DefaultAddress;
        }
        else
        {
            return false;
        }

        if (isWrite)
        {
            device.Write(offset, data);
        }
        else
        {
            data.Clear();
            device.Read(offset, data);
        }

        return true;
    }

    /// <summary>Detaches the wake-up callback.</summary>
    public void Dispose()
    {
        foreach (var apic in Controllers.LocalApics)
        {
            apic.InterruptRequested = null;
        }
    }

    private sealed class PcFactory : IInterruptPlatformFactory
    {
        public IInterruptPlatform Create(InterruptPlatformParameters parameters) => new PcInterruptPlatform(parameters);
    }
}
