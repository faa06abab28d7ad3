namespace Virt.Devices.Interrupts;

/// <summary>
/// The PC's pair of 8259A interrupt controllers: the master at ports 0x20-0x21 with the slave cascaded
/// on its IRQ2, the slave at 0xA0-0xA1, and the edge/level control registers (ELCR) at 0x4D0-0x4D1.
/// ISA IRQs 0-7 go to the master, 8-15 to the slave.
/// </summary>
/// <remarks>
/// Thread-safe. Register the three port devices <see cref="MasterPorts"/>, <see cref="SlavePorts"/> and
/// <see cref="ElcrPorts"/> at <see cref="MasterBase"/>, <see cref="SlaveBase"/> and <see cref="ElcrBase"/>.
/// A spurious interrupt (the request went away before the acknowledge) yields IRQ 7 or IRQ 15's vector
/// without setting its in-service bit, as the hardware does. A chip that has not been through an ICW
/// sequence since power-on does not interrupt: its vector base is undefined, and a kernel that never
/// uses the PIC (ACPI hardware-reduced mode) must not receive vectors 0-15 through LINT0.
/// </remarks>
public sealed partial class PicPair : IInterruptController
{
    /// <summary>First port of the master (command; data is +1).</summary>
    public const ushort MasterBase = 0x20;
    /// <summary>First port of the slave (command; data is +1).</summary>
    public const ushort SlaveBase = 0xA0;
    /// <summary>First ELCR port (master IRQs 0-7; +1 is the slave's IRQs 8-15).</summary>
    public const ushort ElcrBase = 0x4D0;
    /// <summary>The master input the slave's output is wired to.</summary>
    public const int CascadeIrq = 2;

    private readonly Lock _lock = new();
    private readonly Pic8259 _master = new(isMaster: true);
    private readonly Pic8259 _slave = new(isMaster: false);
    private readonly IInterruptLine[] _lines;

    /// <summary>Creates the pair in its power-on state: silent until the guest initialises it.</summary>
    public PicPair()
    {
        MasterPorts = new Ports(this, master: true);
        SlavePorts = new Ports(this, master: false);
        ElcrPorts = new Elcr(this);
        _lines = [.. Enumerable.Range(0, 16).Select(i => (IInterruptLine)new Line(this, i))];
    }

    /// <summary>The master's command and data ports (2 ports).</summary>
    public IPortIoDevice MasterPorts { get; }

    /// <summary>The slave's command and data ports (2 ports).</summary>
    public IPortIoDevice SlavePorts { get; }

    /// <summary>The two ELCR ports.</summary>
    public IPortIoDevice ElcrPorts { get; }

    /// <inheritdoc />
    public Action? InterruptRequested { get; set; }

    /// <summary>The line for ISA IRQ <paramref name="irq"/> (0-15).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="irq"/> is not 0-15.</exception>
    public IInterruptLine GetLine(int irq)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(irq);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(irq, 15);
        return _lines[irq];
    }

    /// <summary>Drives ISA IRQ <paramref name="irq"/> (0-15) to <paramref name="level"/>.</summary>
    public void SetIrq(int irq, bool level)
    {
        if ((uint)irq > 15)
        {
            return;
        }

        bool raised;
        lock (_lock)
        {
            bool before = PendingLocked();
            if (irq < 8)
            {
                _master.SetLine(irq, level);
            }
            else
            {
                _slave.SetLine(irq - 8, level);
                UpdateCascadeLocked();
            }

            raised = !before && PendingLocked();
        }

        if (raised)
        {
            InterruptRequested?.Invoke();
        }
    }

    /// <inheritdoc />
    public bool HasPendingInterrupt
    {
        get
        {
            lock (_lock)
            {
                return PendingLocked();
            }
        }
    }

    /// <inheritdoc />
    public int AcknowledgeInterrupt()
    {
        lock (_lock)
        {
            int vector = AcknowledgeLocked();
            UpdateCascadeLocked();
            return vector;
        }
    }

    private bool PendingLocked() => _master.PendingIrq() >= 0;

    private void UpdateCascadeLocked() => _master.SetCascade(CascadeIrq, _slave.PendingIrq() >= 0);

    private int AcknowledgeLocked()
    {
        int irq = _master.PendingIrq();
        if (irq < 0)
        {
            // Spurious: the request vanished between INTR and INTA.
            return _master.Vector(7);
        }

        _master.Acknowledge(irq);
        if (irq != CascadeIrq)
        {
            return _master.Vector(irq);
        }

        int slaveIrq = _slave.PendingIrq();
        if (slaveIrq < 0)
        {
            return _slave.Vector(7);
        }

        _slave.Acknowledge(slaveIrq);
        return _slave.Vector(slaveIrq);
    }

    /// <summary>Poll mode (OCW3 P): acknowledge and return 0x80 | irq, or 0 when nothing is pending.</summary>
    private byte PollLocked(bool master)
    {
        var pic = master ? _master : _slave;
        int irq = pic.PendingIrq();
        if (irq < 0)
        {
            return 0;
        }

        pic.Acknowledge(irq);
        UpdateCascadeLocked();
        return (byte)(0x80 | irq);
    }

    private void WritePort(bool master, ushort offset, byte value)
    {
        bool raised;
        lock (_lock)
        {
            bool before = PendingLocked();
            var pic = master ? _master : _slave;
            if (offset == 0)
            {
                pic.WriteCommand(value);
            }
            else
            {
                pic.WriteData(value);
            }

            UpdateCascadeLocked();
            raised = !before && PendingLocked();
        }

        if (raised)
        {
            InterruptRequested?.Invoke();
        }
    }

    private byte ReadPort(bool master, ushort offset)
    {
        lock (_lock)
        {
            var pic = master ? _master : _slave;
            return offset == 0 ? pic.ReadCommand(() => PollLocked(master)) : pic.ReadData();
        }
    }

    /// <summary>A snapshot of the registers, for diagnostics and tests.</summary>
    internal (byte Irr, byte Isr, byte Imr, byte VectorBase) Registers(bool master)
    {
        lock (_lock)
        {
            var p = master ? _master : _slave;
            return (p.Irr, p.Isr, p.Imr, p.VectorBase);
        }
    }

    private sealed class Ports(PicPair owner, bool master) : IPortIoDevice
    {
        public void Read(ushort offset, Span<byte> data)
        {
            data.Clear();
            if (data.Length > 0 && offset < 2)
            {
                data[0] = owner.ReadPort(master, offset);
            }
        }

        public void Write(ushort offset, ReadOnlySpan<byte> data)
        {
            if (data.Length > 0 && offset < 2)
            {
                owner.WritePort(master, offset, data[0]);
            }
        }
    }

    private sealed class Elcr(PicPair owner) : IPortIoDevice
    {
        public void Read(ushort offset, Span<byte> data)
        {
            data.Clear();
            lock (owner._lock)
            {
                for (int i = 0; i < data.Length && offset + i < 2; i++)
                {
                    data[i] = offset + i == 0 ? owner._master.Elcr : owner._slave.Elcr;
                }
            }
        }

        public void Write(ushort offset, ReadOnlySpan<byte> data)
        {
            lock (owner._lock)
            {
                for (int i = 0; i < data.Length && offset + i < 2; i++)
                {
                    var pic = offset + i == 0 ? owner._master : owner._slave;
                    pic.Elcr = (byte)(data[i] & pic.ElcrMask);
                }
            }
        }
    }

    private sealed class Line(PicPair owner, int irq) : IInterruptLine
    {
        public void Raise() => owner.SetIrq(irq, true);

        public void Lower() => owner.SetIrq(irq, false);
    }
}
