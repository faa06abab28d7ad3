namespace Virt.Devices.Interrupts;

/// <summary>
/// The 8254 programmable interval timer at ports 0x40-0x43 (channels 0-2 and the control word), with
/// system control port B (0x61: channel 2 gate, speaker enable, channel 2 output) as
/// <see cref="ControlPortB"/>. Channel 0's output drives the timer interrupt line (ISA IRQ 0).
/// </summary>
/// <remarks>
/// Counts at 1.193182 MHz in the virtual time of a <see cref="VirtualClock"/>. Modes 0-5 are modelled
/// (0, 2 and 3 as Linux uses them: one-shot for calibration, rate generator and square wave for the
/// tick); BCD counting is accepted but counts in binary. Thread-safe.
/// </remarks>
public sealed partial class Pit8254 : IPortIoDevice
{
    /// <summary>First port (channel 0 data); channel n is +n, the control word +3.</summary>
    public const ushort BasePort = 0x40;
    /// <summary>System control port B.</summary>
    public const ushort ControlPortBPort = 0x61;
    /// <summary>The PIT's input clock in Hz.</summary>
    public const long Frequency = 1_193_182;

    // Control word fields.
    private const int ControlRegister = 3;
    private const byte ReadBackSelect = 0xC0;   // SC = 11: read-back command
    private const byte ReadBackNoCount = 0x20;  // read-back: do not latch the count
    private const byte ReadBackNoStatus = 0x10; // read-back: do not latch the status
    private const byte StatusOutput = 0x80;     // status byte: OUT pin
    private const byte StatusNullCount = 0x40;  // status byte: count not yet loaded into the counter
    // Port B bits.
    private const byte PortBGate2 = 0x01;       // timer 2 gate
    private const byte PortBSpeaker = 0x02;     // speaker data enable
    private const byte PortBRefresh = 0x10;     // toggles with DRAM refresh (every 15.085 us)
    private const byte PortBOut2 = 0x20;        // timer 2 output
    private const long RefreshPeriodNs = 15_085;

    private readonly Lock _lock = new();
    private readonly VirtualClock _clock;
    private readonly IInterruptLine _irq0;
    private readonly Channel[] _channels = [new(), new(), new()];
    private readonly ClockTimer _timer;
    private byte _portB;

    /// <summary>Creates the PIT on <paramref name="clock"/>, raising <paramref name="irq0"/> on channel 0's output edges.</summary>
    public Pit8254(VirtualClock clock, IInterruptLine irq0)
    {
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentNullException.ThrowIfNull(irq0);
        _clock = clock;
        _irq0 = irq0;
        _timer = clock.CreateTimer(OnTimer);
        _channels[0].Gate = _channels[1].Gate = true;
        ControlPortB = new PortB(this);
    }

    /// <summary>System control port B (one port, at <see cref="ControlPortBPort"/>).</summary>
    public IPortIoDevice ControlPortB { get; }

    private sealed class Channel
    {
        public int Count = 0x10000;   // reload value; 0 written means 65536
        public int Mode;
        public int Access = 3;        // RW: 1 LSB, 2 MSB, 3 LSB then MSB
        public bool Bcd;
        public long Start;            // PIT cycle at which counting (re)started
        public bool Gate;
        public bool Counting;         // a count has been loaded and the gate allows counting
        public long FrozenElapsed;    // cycles counted before the gate went low
        public bool NullCount = true;
        public bool WriteHigh;        // next write is the MSB of an LSB-then-MSB pair
        public byte WriteLow;
        public bool ReadHigh;
        public int? Latched;          // latched count
        public bool LatchedHigh;      // next latched read is the MSB
        public byte? Status;          // latched status
        public bool IrqLevel;
    }

    private long PitNow() => _clock.ToCycles(_clock.Now, Frequency);

    private static long Elapsed(Channel c, long now) => !c.Counting ? 0 : c.Gate || c.Mode is 1 or 5 ? now - c.Start : c.FrozenElapsed;

    private static int CounterAt(Channel c, long d) => c.Mode switch
    {
        2 => (int)(c.Count - (d % c.Count)),
        3 => (int)(c.Count - ((2 * d) % c.Count)),
        _ => (int)((c.Count - d) & 0xFFFF),
    };

    private static bool OutputAt(Channel c, long d, bool counting)
    {
        if (!counting)
        {
            return c.Mode != 0;
        }

        return c.Mode switch
        {
            0 => d >= c.Count,
            1 => d >= c.Count,
            2 => d == 0 || (d % c.Count) != c.Count - 1,
            3 => (d % c.Count) < ((c.Count + 1) >> 1),
            _ => d != c.Count, // modes 4 and 5: a one-cycle low strobe
        };
    }

    /// <summary>The PIT cycle of the next interrupt edge on channel 0 after <paramref name="now"/>, or null.</summary>
    private static long? NextIrqEdge(Channel c, long now)
    {
        if (!c.Counting || !c.Gate)
        {
            return null;
        }

        long d = now - c.Start;
        switch (c.Mode)
        {
            case 0:
            case 1:
            case 4:
            case 5:
                return d < c.Count ? c.Start + c.Count : null;
            default: // 2 and 3: a rising edge at the start of every period
                long periods = (d / c.Count) + 1;
                return c.Start + (periods * c.Count);
        }
    }

    private void Reschedule(long now)
    {
        var edge = NextIrqEdge(_channels[0], now);
        if (edge is long e)
        {
            _timer.Schedule(_clock.FromCycles(e, Frequency));
        }
        else
        {
            _timer.Cancel();
        }
    }

    private void OnTimer(long tick)
    {
        bool pulse, stayHigh;
        lock (_lock)
        {
            var c = _channels[0];
            // Re-arm past the end of the current advance: periods a long jump skipped are coalesced.
            long now = Math.Max(_clock.ToCycles(tick, Frequency), _clock.ToCycles(_clock.AdvanceTarget, Frequency));
            pulse = c.Counting && c.Gate;
            if (pulse && c.Mode is 0 or 1)
            {
                c.IrqLevel = true; // stays high until reprogrammed
            }

            stayHigh = c.IrqLevel;
            Reschedule(now);
        }

        if (pulse)
        {
            _irq0.Raise();
            if (!stayHigh)
            {
                _irq0.Lower();
            }
        }
    }

    /// <inheritdoc />
    public void Read(ushort offset, Span<byte> data)
    {
        data.Clear();
        if (data.Length == 0 || offset >= ControlRegister)
        {
            return; // the control word is write-only
        }

        lock (_lock)
        {
            data[0] = ReadCounter(_channels[offset]);
        }
    }

    private byte ReadCounter(Channel c)
    {
        if (c.Status is byte status)
        {
            c.Status = null;
            return status;
        }

        if (c.Latched is int latched)
        {
            byte b;
            if (c.Access == 3)
            {
                b = c.LatchedHigh ? (byte)(latched >> 8) : (byte)latched;
                c.LatchedHigh = !c.LatchedHigh;
                if (!c.LatchedHigh)
                {
                    c.Latched = null;
                }
            }
            else
            {
                b = c.Access == 2 ? (byte)(latched >> 8) : (byte)latched;
                c.Latched = null;
            }

            return b;
        }

        int value = CounterAt(c, Elapsed(c, PitNow()));
        switch (c.Access)
        {
            case 1: return (byte)value;
            case 2: return (byte)(value >> 8);
            default:
                byte r = c.ReadHigh ? (byte)(value >> 8) : (byte)value;
                c.ReadHigh = !c.ReadHigh;
                return r;
        }
    }

    /// <inheritdoc />
    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        if (data.Length == 0 || offset > ControlRegister)
        {
            return;
        }

        bool lower;
        lock (_lock)
        {
            long now = PitNow();
            lower = offset == ControlRegister ? WriteControl(data[0], now) : WriteCounter(_channels[offset], offset, data[0], now);
            Reschedule(now);
        }

        if (lower)
        {
            _irq0.Lower();
        }
    }

    /// <returns>Whether the IRQ 0 line must be lowered.</returns>
    private bool WriteControl(byte value, long now)
    {
        if ((value & ReadBackSelect) == ReadBackSelect)
        {
            for (int i = 0; i < 3; i++)
            {
                if ((value & (2 << i)) == 0)
                {
                    continue;
                }

                var c = _channels[i];
                long d = Elapsed(c, now);
                if ((value & ReadBackNoCount) == 0 && c.Latched is null)
                {
                    c.Latched = CounterAt(c, d);
                    c.LatchedHigh = false;
                }

                if ((value & ReadBackNoStatus) == 0 && c.Status is null)
                {
                    c.Status = (byte)((OutputAt(c, d, c.Counting) ? StatusOutput : 0) | (c.NullCount ? StatusNullCount : 0)
                        | (c.Access << 4) | (c.Mode << 1) | (c.Bcd ? 1 : 0));
                }
            }

            return false;
        }

        int channel = value >> 6;
        var ch = _channels[channel];
        int access = (value >> 4) & 3;
        if (access == 0)
        {
            // Counter latch command: the first latch holds until read.
            ch.Latched ??= CounterAt(ch, Elapsed(ch, now));
            ch.LatchedHigh = false;
            return false;
        }

        int mode = (value >> 1) & 7;
        ch.Mode = mode > 5 ? mode - 4 : mode; // 6 and 7 are aliases of 2 and 3
        ch.Access = access;
        ch.Bcd = (value & 1) != 0;
        ch.Counting = false;
        ch.NullCount = true;
        ch.WriteHigh = ch.ReadHigh = false;
        ch.Latched = null;
        ch.Status = null;
        if (channel == 0 && ch.IrqLevel)
        {
            ch.IrqLevel = false;
            return true;
        }

        return false;
    }

    private static bool WriteCounter(Channel c, int channel, byte value, long now)
    {
        int count;
        switch (c.Access)
        {
            case 1: count = value; break;
            case 2: count = value << 8; break;
            default:
                if (!c.WriteHigh)
                {
                    c.WriteLow = value;
                    c.WriteHigh = true;
                    return false;
                }

                c.WriteHigh = false;
                count = c.WriteLow | (value << 8);
                break;
        }

        c.Count = count == 0 ? 0x10000 : count;
        c.NullCount = false;
        c.Start = now;
        c.FrozenElapsed = 0;
        c.Counting = true;
        if (channel == 0 && c.IrqLevel)
        {
            c.IrqLevel = false;
            return true;
        }

        return false;
    }

    private void SetGate2(bool gate, long now)
    {
        var c = _channels[2];
        if (gate == c.Gate)
        {
            return;
        }

        if (!gate)
        {
            c.FrozenElapsed = now - c.Start;
        }
        else if (c.Mode is 1 or 2 or 3 or 5)
        {
            c.Start = now; // a rising gate restarts these modes
        }
        else
        {
            c.Start = now - c.FrozenElapsed; // modes 0 and 4 resume
        }

        c.Gate = gate;
    }

    private sealed class PortB(Pit8254 pit) : IPortIoDevice
    {
        public void Read(ushort offset, Span<byte> data)
        {
            data.Clear();
            if (data.Length == 0 || offset != 0)
            {
                return;
            }

            lock (pit._lock)
            {
                var c = pit._channels[2];
                long now = pit.PitNow();
                bool out2 = OutputAt(c, Elapsed(c, now), c.Counting);
                long ns = pit._clock.ToCycles(pit._clock.Now, 1_000_000_000);
                bool refresh = (ns / RefreshPeriodNs & 1) != 0;
                data[0] = (byte)((pit._portB & (PortBGate2 | PortBSpeaker)) | (out2 ? PortBOut2 : 0) | (refresh ? PortBRefresh : 0));
            }
        }

        public void Write(ushort offset, ReadOnlySpan<byte> data)
        {
            if (data.Length == 0 || offset != 0)
            {
                return;
            }

            lock (pit._lock)
            {
                pit._portB = (byte)(data[0] & (PortBGate2 | PortBSpeaker));
                pit.SetGate2((data[0] & PortBGate2) != 0, pit.PitNow());
            }
        }
    }
}
