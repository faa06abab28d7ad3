using Virt.Devices;
using Virt.Devices.Interrupts;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The PC interrupt controllers and timers a partition emulates itself (the way an in-kernel irqchip
/// does): the vCPU handles their ports and MMIO pages before it would exit to the host, and time is
/// a <see cref="VirtualClock"/> that the vCPU moves with retired instructions and HLT.
/// </summary>
internal sealed class InterpreterPlatform : IDisposable
{
    /// <summary>Highest global system interrupt: 16 ISA IRQs plus IOAPIC pins 16-23.</summary>
    public const uint MaxGsi = 23;

    private readonly ManualResetEventSlim _wake = new(false);
    private readonly (ushort Port, ushort Count, IPortIoDevice Device)[] _ports;
    private volatile bool _attention = true;

    public InterpreterPlatform(long tscFrequency, long crystalFrequency)
    {
        Clock = new VirtualClock(tscFrequency);
        Controllers = new PcInterruptControllers(Clock, crystalFrequency);
        Controllers.LocalApic.InterruptRequested = Signal;
        _ports = [.. Controllers.PortDevices];
        CrystalFrequency = crystalFrequency;
    }

    public VirtualClock Clock { get; }

    public PcInterruptControllers Controllers { get; }

    public LocalApic LocalApic => Controllers.LocalApic;

    /// <summary>The core crystal (and APIC timer) frequency CPUID leaf 0x15 reports.</summary>
    public long CrystalFrequency { get; }

    /// <summary>Set when an interrupt may have become pending; the vCPU reads it once per block.</summary>
    public bool Attention
    {
        get => _attention;
        set => _attention = value;
    }

    /// <summary>Marks an interrupt as possibly pending and wakes a halted vCPU.</summary>
    public void Signal()
    {
        _attention = true;
        _wake.Set();
    }

    /// <summary>Arms the wake event before the halted vCPU checks for interrupts.</summary>
    public void PrepareWait() => _wake.Reset();

    /// <summary>Sleeps until <see cref="Signal"/> or the timeout.</summary>
    public void Wait(int milliseconds) => _wake.Wait(milliseconds);

    public void SetLine(uint gsi, bool level)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(gsi, MaxGsi);
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

    /// <summary>Whether <paramref name="port"/> belongs to a controller (then the vCPU handles it without an exit).</summary>
    public bool TryPort(ushort port, int size, bool isWrite, ref ulong value)
    {
        foreach (var (start, count, device) in _ports)
        {
            if (port < start || port >= start + count)
            {
                continue;
            }

            Span<byte> data = stackalloc byte[8];
            data = data[..size];
            if (isWrite)
            {
                for (int b = 0; b < size; b++)
                {
                    data[b] = (byte)(value >> (b * 8));
                }

                device.Write((ushort)(port - start), data);
            }
            else
            {
                data.Clear();
                device.Read((ushort)(port - start), data);
                value = 0;
                for (int b = 0; b < size; b++)
                {
                    value |= (ulong)data[b] << (b * 8);
                }
            }

            return true;
        }

        return false;
    }

    /// <summary>Whether <paramref name="phys"/> is in the IOAPIC or local APIC page (then the vCPU handles it without an exit).</summary>
    public bool TryMmio(ulong phys, int size, bool isWrite, ref ulong value)
    {
        IMmioDevice device;
        ulong offset;
        if (phys - IoApic.DefaultAddress < IoApic.Size)
        {
            device = Controllers.IoApic;
            offset = phys - IoApic.DefaultAddress;
        }
        else if (phys - LocalApic.DefaultAddress < LocalApic.Size)
        {
            device = Controllers.LocalApic;
            offset = phys - LocalApic.DefaultAddress;
        }
        else
        {
            return false;
        }

        Span<byte> data = stackalloc byte[8];
        data = data[..Math.Clamp(size, 1, 8)];
        if (isWrite)
        {
            for (int b = 0; b < data.Length; b++)
            {
                data[b] = (byte)(value >> (b * 8));
            }

            device.Write(offset, data);
        }
        else
        {
            data.Clear();
            device.Read(offset, data);
            value = 0;
            for (int b = 0; b < data.Length; b++)
            {
                value |= (ulong)data[b] << (b * 8);
            }
        }

        return true;
    }

    public void Dispose()
    {
        Controllers.LocalApic.InterruptRequested = null;
        _wake.Dispose();
    }
}
