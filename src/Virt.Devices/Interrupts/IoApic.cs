using System.Buffers.Binary;

namespace Virt.Devices.Interrupts;

/// <summary>
/// An I/O APIC (82093AA register model) with 24 input pins, at MMIO <see cref="DefaultAddress"/>:
/// IOREGSEL at +0x00 and IOWIN at +0x10 select and access the ID, version, arbitration and
/// redirection-table registers. Level-triggered pins hold their remote IRR until the local APIC
/// broadcasts the vector's EOI (<see cref="EndOfInterrupt"/>).
/// </summary>
/// <remarks>
/// Thread-safe; messages are delivered outside the lock. Device lines are logical (asserted or
/// not); the polarity bit is kept for the guest to read but does not invert them, as in other VMMs.
/// </remarks>
public sealed partial class IoApic : IMmioDevice
{
    /// <summary>The conventional base address.</summary>
    public const ulong DefaultAddress = 0xFEC00000;
    /// <summary>Size of the MMIO window.</summary>
    public const ulong Size = 0x1000;
    /// <summary>Number of input pins (redirection entries).</summary>
    public const int PinCount = 24;
    /// <summary>Register version reported in IOAPICVER (0x11: the 82093AA, no EOI register).</summary>
    public const int Version = 0x11;

    private const ulong RegisterSelect = 0x00; // IOREGSEL
    private const ulong RegisterWindow = 0x10; // IOWIN
    private const int IdRegister = 0x00, VersionRegister = 0x01, ArbitrationRegister = 0x02, RedirectionBase = 0x10;

    // Redirection entry bits.
    private const ulong VectorMask = 0xFF;
    private const int DeliveryModeShift = 8;
    private const ulong LogicalDestination = 1UL << 11;
    private const ulong DeliveryStatus = 1UL << 12; // read-only
    private const ulong RemoteIrr = 1UL << 14;      // read-only
    private const ulong LevelTrigger = 1UL << 15;
    private const ulong Masked = 1UL << 16;
    private const int DestinationShift = 56;
    private const ulong ReadOnlyBits = DeliveryStatus | RemoteIrr;

    private readonly Lock _lock = new();
    private readonly ulong[] _redirection = new ulong[PinCount];
    private readonly bool[] _lineLevel = new bool[PinCount];
    private readonly bool[] _edgePending = new bool[PinCount];
    private readonly IInterruptLine[] _lines;
    private uint _select;
    private uint _id;

    /// <summary>Creates the IOAPIC with every pin masked, delivering to <paramref name="target"/>.</summary>
    public IoApic(IApicMessageSink target)
    {
        ArgumentNullException.ThrowIfNull(target);
        Target = target;
        for (int i = 0; i < PinCount; i++)
        {
            _redirection[i] = Masked;
        }

        _lines = [.. Enumerable.Range(0, PinCount).Select(i => (IInterruptLine)new Line(this, i))];
    }

    /// <summary>Where messages go (the local APIC).</summary>
    public IApicMessageSink Target { get; }

    /// <summary>The IOAPIC's ID (bits 27:24 of the ID register), as the MP table announces it.</summary>
    public byte Id
    {
        get { lock (_lock) { return (byte)(_id >> 24 & 0xF); } }
        set { lock (_lock) { _id = (uint)(value & 0xF) << 24; } }
    }

    /// <summary>The line for input pin <paramref name="pin"/> (0-23).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="pin"/> is out of range.</exception>
    public IInterruptLine GetLine(int pin)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(pin);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(pin, PinCount);
        return _lines[pin];
    }

    /// <summary>Drives input <paramref name="pin"/> to <paramref name="level"/>; out-of-range pins are ignored.</summary>
    public void SetIrq(int pin, bool level)
    {
        if ((uint)pin >= PinCount)
        {
            return;
        }

        ApicMessage? message;
        lock (_lock)
        {
            bool rising = level && !_lineLevel[pin];
            _lineLevel[pin] = level;
            if ((_redirection[pin] & LevelTrigger) == 0 && rising)
            {
                _edgePending[pin] = true;
            }

            message = ServiceLocked(pin);
        }

        Send(message);
    }

    /// <summary>The local APIC's EOI for a level-triggered <paramref name="vector"/>: clears remote IRR and re-delivers still-asserted pins.</summary>
    public void EndOfInterrupt(int vector)
    {
        var messages = new List<ApicMessage>();
        lock (_lock)
        {
            for (int pin = 0; pin < PinCount; pin++)
            {
                ulong e = _redirection[pin];
                if ((int)(e & VectorMask) == vector && (e & RemoteIrr) != 0)
                {
                    _redirection[pin] = e & ~RemoteIrr;
                    if (ServiceLocked(pin) is ApicMessage m)
                    {
                        messages.Add(m);
                    }
                }
            }
        }

        foreach (var m in messages)
        {
            Target.Deliver(m);
        }
    }

    /// <summary>The message pin <paramref name="pin"/> sends now, updating its state, or null.</summary>
    private ApicMessage? ServiceLocked(int pin)
    {
        ulong e = _redirection[pin];
        if ((e & Masked) != 0)
        {
            return null;
        }

        bool level = (e & LevelTrigger) != 0;
        if (level)
        {
            if (!_lineLevel[pin] || (e & RemoteIrr) != 0)
            {
                return null;
            }

            _redirection[pin] = e | RemoteIrr;
        }
        else
        {
            if (!_edgePending[pin])
            {
                return null;
            }

            _edgePending[pin] = false;
        }

        return new ApicMessage(
            (int)(e & VectorMask),
            (ApicDeliveryMode)((int)(e >> DeliveryModeShift) & 7),
            level,
            (byte)(e >> DestinationShift),
            (e & LogicalDestination) != 0);
    }

    private void Send(ApicMessage? message)
    {
        if (message is ApicMessage m)
        {
            Target.Deliver(m);
        }
    }

    /// <inheritdoc />
    public void Read(ulong offset, Span<byte> data)
    {
        data.Clear();
        uint value;
        lock (_lock)
        {
            value = offset switch
            {
                RegisterSelect => _select,
                RegisterWindow => ReadRegisterLocked(_select),
                _ => 0,
            };
        }

        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, value);
        bytes[..Math.Min(4, data.Length)].CopyTo(data);
    }

    private uint ReadRegisterLocked(uint register)
    {
        switch (register)
        {
            case IdRegister: return _id;
            case VersionRegister: return ((PinCount - 1) << 16) | Version;
            case ArbitrationRegister: return _id;
            default:
                int index = (int)register - RedirectionBase;
                if (index < 0 || index >= PinCount * 2)
                {
                    return 0;
                }

                ulong e = _redirection[index / 2];
                return index % 2 == 0 ? (uint)e : (uint)(e >> 32);
        }
    }

    /// <inheritdoc />
    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        if (data.Length < 4)
        {
            return; // the registers take 32-bit accesses only
        }

        uint value = BinaryPrimitives.ReadUInt32LittleEndian(data);
        ApicMessage? message = null;
        lock (_lock)
        {
            if (offset == RegisterSelect)
            {
                _select = value & 0xFF;
            }
            else if (offset == RegisterWindow)
            {
                message = WriteRegisterLocked(_select, value);
            }
        }

        Send(message);
    }

    private ApicMessage? WriteRegisterLocked(uint register, uint value)
    {
        if (register == IdRegister)
        {
            _id = value & 0x0F000000;
            return null;
        }

        int index = (int)register - RedirectionBase;
        if (index < 0 || index >= PinCount * 2)
        {
            return null;
        }

        int pin = index / 2;
        ulong e = _redirection[pin];
        ulong updated = index % 2 == 0
            ? (e & 0xFFFFFFFF00000000UL) | value
            : (e & 0xFFFFFFFFUL) | ((ulong)value << 32);
        updated = (updated & ~ReadOnlyBits) | (e & ReadOnlyBits);
        if ((updated & LevelTrigger) == 0)
        {
            updated &= ~RemoteIrr;
        }

        _redirection[pin] = updated;
        return ServiceLocked(pin); // unmasking an asserted pin delivers it
    }

    /// <summary>The redirection entry of <paramref name="pin"/>, for tests and diagnostics.</summary>
    internal ulong RedirectionEntry(int pin)
    {
        lock (_lock)
        {
            return _redirection[pin];
        }
    }

    private sealed class Line(IoApic owner, int pin) : IInterruptLine
    {
        public void Raise() => owner.SetIrq(pin, true);

        public void Lower() => owner.SetIrq(pin, false);
    }
}
