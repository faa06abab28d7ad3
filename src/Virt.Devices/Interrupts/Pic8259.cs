namespace Virt.Devices.Interrupts;

/// <summary>One 8259A programmable interrupt controller (Intel 8259A data sheet). Not thread-safe: <see cref="PicPair"/> locks.</summary>
internal sealed partial class Pic8259
{
    // Command-port bits.
    private const byte Icw1Select = 0x10;  // D4 = 1: ICW1
    private const byte Icw1NeedIcw4 = 0x01;
    private const byte Icw1Single = 0x02;  // no ICW3
    private const byte Icw1Level = 0x08;   // LTIM: all inputs level-triggered
    private const byte Ocw3Select = 0x08;  // D4 = 0, D3 = 1: OCW3
    private const byte Ocw3ReadRegister = 0x02; // RR: the next read returns IRR or ISR
    private const byte Ocw3ReadIsr = 0x01;      // RIS: ISR instead of IRR
    private const byte Ocw3Poll = 0x04;
    private const byte Ocw3SetSpecialMask = 0x40; // ESMM
    private const byte Ocw3SpecialMask = 0x20;    // SMM
    private const byte Icw4AutoEoi = 0x02;
    private const byte Icw4SpecialFullyNested = 0x10;

    private readonly bool _isMaster;
    private int _initStep; // 0: operational; 2, 3, 4: waiting for that ICW
    private bool _single;
    private bool _needIcw4;

    public Pic8259(bool isMaster)
    {
        _isMaster = isMaster;
        Reset();
    }

    /// <summary>Whether an ICW sequence has completed since power-on; until then the vector base is undefined and the chip does not interrupt.</summary>
    public bool Initialised { get; private set; }

    public byte Irr { get; private set; }
    public byte Isr { get; private set; }
    public byte Imr { get; set; }
    public byte VectorBase { get; private set; }
    public byte Elcr { get; set; }
    public byte ElcrMask => _isMaster ? (byte)0xF8 : (byte)0xDE;
    public bool AutoEoi { get; private set; }
    public bool LevelAll { get; private set; }
    public bool SpecialFullyNested { get; private set; }
    public bool SpecialMask { get; private set; }
    public bool ReadIsr { get; private set; }
    public bool Poll { get; private set; }
    public bool RotateOnAutoEoi { get; private set; }
    public int LowestPriority { get; private set; } = 7;

    /// <summary>The level of each input line, for edge detection.</summary>
    public byte Lines { get; private set; }

    public void Reset()
    {
        Irr = Isr = Imr = 0;
        _initStep = 0;
        AutoEoi = LevelAll = SpecialFullyNested = SpecialMask = ReadIsr = Poll = RotateOnAutoEoi = false;
        LowestPriority = 7;
    }

    private bool IsLevel(int irq) => LevelAll || (Elcr & (1 << irq)) != 0;

    public void SetLine(int irq, bool level)
    {
        byte mask = (byte)(1 << irq);
        if (IsLevel(irq))
        {
            Irr = level ? (byte)(Irr | mask) : (byte)(Irr & ~mask);
        }
        else if (level && (Lines & mask) == 0)
        {
            Irr |= mask;
        }

        Lines = level ? (byte)(Lines | mask) : (byte)(Lines & ~mask);
    }

    /// <summary>
    /// The slave's INT output on master IR2. It follows the slave's level so a slave request that goes
    /// away before the acknowledge does not leave a stale cascade request behind.
    /// </summary>
    public void SetCascade(int irq, bool level)
    {
        byte mask = (byte)(1 << irq);
        Irr = level ? (byte)(Irr | mask) : (byte)(Irr & ~mask);
        Lines = level ? (byte)(Lines | mask) : (byte)(Lines & ~mask);
    }

    /// <summary>Priority of <paramref name="irq"/>: 0 is the highest.</summary>
    private int Priority(int irq) => (irq - LowestPriority - 1) & 7;

    /// <summary>The highest-priority bit of <paramref name="bits"/>, or -1.</summary>
    private int Highest(byte bits)
    {
        for (int p = 0; p < 8; p++)
        {
            int irq = (LowestPriority + 1 + p) & 7;
            if ((bits & (1 << irq)) != 0)
            {
                return irq;
            }
        }

        return -1;
    }

    /// <summary>The IRQ that would be delivered now (INT output), or -1.</summary>
    public int PendingIrq()
    {
        if (!Initialised || _initStep != 0)
        {
            return -1;
        }

        int irq = Highest((byte)(Irr & ~Imr));
        if (irq < 0)
        {
            return -1;
        }

        byte inService = SpecialMask ? (byte)(Isr & ~Imr) : Isr;
        if (_isMaster && SpecialFullyNested)
        {
            // The slave's cascade input may interrupt its own in-service level.
            inService &= unchecked((byte)~(1 << 2));
        }

        int current = Highest(inService);
        return current < 0 || Priority(irq) < Priority(current) ? irq : -1;
    }

    /// <summary>The INTA cycle for <paramref name="irq"/> (from <see cref="PendingIrq"/>): ISR set, IRR cleared for edge inputs.</summary>
    public void Acknowledge(int irq)
    {
        byte mask = (byte)(1 << irq);
        if (!IsLevel(irq))
        {
            Irr &= (byte)~mask;
        }

        if (AutoEoi)
        {
            if (RotateOnAutoEoi)
            {
                LowestPriority = irq;
            }
        }
        else
        {
            Isr |= mask;
        }
    }

    public byte Vector(int irq) => (byte)(VectorBase + irq);

    public void WriteCommand(byte value)
    {
        if ((value & Icw1Select) != 0)
        {
            Reset();
            LevelAll = (value & Icw1Level) != 0;
            _single = (value & Icw1Single) != 0;
            _needIcw4 = (value & Icw1NeedIcw4) != 0;
            _initStep = 2;
            return;
        }

        if ((value & Ocw3Select) != 0)
        {
            if ((value & Ocw3ReadRegister) != 0)
            {
                ReadIsr = (value & Ocw3ReadIsr) != 0;
            }

            Poll = (value & Ocw3Poll) != 0;
            if ((value & Ocw3SetSpecialMask) != 0)
            {
                SpecialMask = (value & Ocw3SpecialMask) != 0;
            }

            return;
        }

        // OCW2: R, SL, EOI in bits 7-5, level in bits 2-0.
        int level = value & 7;
        switch (value >> 5)
        {
            case 0b000: RotateOnAutoEoi = false; break;
            case 0b100: RotateOnAutoEoi = true; break;
            case 0b001: // non-specific EOI
            case 0b101: // rotate on non-specific EOI
                int irq = Highest(Isr);
                if (irq >= 0)
                {
                    Isr &= (byte)~(1 << irq);
                    if (value >> 5 == 0b101)
                    {
                        LowestPriority = irq;
                    }
                }

                break;
            case 0b011: Isr &= (byte)~(1 << level); break;
            case 0b111:
                Isr &= (byte)~(1 << level);
                LowestPriority = level;
                break;
            case 0b110: LowestPriority = level; break;
            default: break; // 0b010: no operation
        }
    }

    public void WriteData(byte value)
    {
        int step = _initStep;
        WriteDataCore(value);
        if (step != 0 && _initStep == 0)
        {
            Initialised = true;
        }
    }

    private void WriteDataCore(byte value)
    {
        switch (_initStep)
        {
            case 2:
                VectorBase = (byte)(value & 0xF8);
                _initStep = _single ? (_needIcw4 ? 4 : 0) : 3;
                break;
            case 3:
                _initStep = _needIcw4 ? 4 : 0; // cascade wiring is fixed: slave on master IRQ2
                break;
            case 4:
                AutoEoi = (value & Icw4AutoEoi) != 0;
                SpecialFullyNested = (value & Icw4SpecialFullyNested) != 0;
                _initStep = 0;
                break;
            default:
                Imr = value;
                break;
        }
    }

    public byte ReadCommand(Func<byte> poll)
    {
        if (Poll)
        {
            Poll = false;
            return poll();
        }

        return ReadIsr ? Isr : Irr;
    }

    public byte ReadData() => Imr;
}
