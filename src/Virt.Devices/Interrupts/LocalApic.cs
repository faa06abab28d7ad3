using System.Buffers.Binary;
using System.Numerics;

namespace Virt.Devices.Interrupts;

/// <summary>
/// A local APIC (Intel SDM vol. 3, chapter 11) for one vCPU: xAPIC registers at MMIO
/// <see cref="DefaultAddress"/>, x2APIC registers through <see cref="ReadMsr"/>/<see cref="WriteMsr"/>
/// (MSRs 0x800-0x8FF), the timer in one-shot, periodic and TSC-deadline modes on a
/// <see cref="VirtualClock"/>, and the 8259 PIC as the ExtINT source on LINT0 (virtual wire).
/// </summary>
/// <remarks>
/// This is the CPU's <see cref="IInterruptController"/>: when the APIC is hardware-disabled or LINT0
/// is an unmasked ExtINT entry, the PIC's interrupts come through it. NMIs (LINT1, IPIs) are counted
/// in <see cref="HasPendingNmi"/>. Thread-safe.
/// </remarks>
public sealed partial class LocalApic : IMmioDevice, IInterruptController, IApicMessageSink, Virt.Platform.ILocalInterruptController
{
    /// <summary>The conventional base address (IA32_APIC_BASE bits 51:12 after reset).</summary>
    public const ulong DefaultAddress = 0xFEE00000;
    /// <summary>Size of the MMIO window.</summary>
    public const ulong Size = 0x1000;
    /// <summary>IA32_APIC_BASE: this is the bootstrap processor.</summary>
    public const ulong ApicBaseBsp = 1UL << 8;
    /// <summary>IA32_APIC_BASE: x2APIC mode enabled.</summary>
    public const ulong ApicBaseX2Apic = 1UL << 10;
    /// <summary>IA32_APIC_BASE: APIC globally enabled.</summary>
    public const ulong ApicBaseEnable = 1UL << 11;
    /// <summary>The first x2APIC MSR.</summary>
    public const uint X2ApicMsrBase = 0x800;
    /// <summary>The last x2APIC MSR.</summary>
    public const uint X2ApicMsrLast = 0x8FF;
    /// <summary>IA32_TSC_DEADLINE.</summary>
    public const uint TscDeadlineMsr = 0x6E0;
    /// <summary>Version register value: integrated APIC (0x14) with six LVT entries (max LVT index 5).</summary>
    public const uint VersionValue = 0x00050014;
    /// <summary>Default APIC timer input clock: 1 GHz (the bus clock KVM also reports).</summary>
    public const long DefaultTimerFrequency = 1_000_000_000;

    // Register offsets (xAPIC; the x2APIC MSR is 0x800 + offset / 16).
    internal const int RegId = 0x20, RegVersion = 0x30, RegTpr = 0x80, RegApr = 0x90, RegPpr = 0xA0, RegEoi = 0xB0,
        RegRrd = 0xC0, RegLdr = 0xD0, RegDfr = 0xE0, RegSvr = 0xF0, RegIsr = 0x100, RegTmr = 0x180, RegIrr = 0x200,
        RegEsr = 0x280, RegLvtCmci = 0x2F0, RegIcrLow = 0x300, RegIcrHigh = 0x310, RegLvtTimer = 0x320,
        RegLvtThermal = 0x330, RegLvtPerf = 0x340, RegLvtLint0 = 0x350, RegLvtLint1 = 0x360, RegLvtError = 0x370,
        RegTimerInitial = 0x380, RegTimerCurrent = 0x390, RegTimerDivide = 0x3E0, RegSelfIpi = 0x3F0;

    private const uint LvtMasked = 1u << 16;
    private const uint LvtLevel = 1u << 15;
    private const int LvtDeliveryShift = 8;
    private const uint LvtTimerModeMask = 3u << 17;
    private const uint LvtTimerPeriodic = 1u << 17;
    private const uint LvtTimerTscDeadline = 2u << 17;
    private const uint SvrEnable = 1u << 8;
    private const uint EsrIllegalVector = 1u << 6;  // received illegal vector
    private const uint EsrSendIllegal = 1u << 5;    // send illegal vector
    private const int IcrShorthandShift = 18;

    private readonly Lock _lock = new();
    private readonly VirtualClock _clock;
    private readonly ClockTimer _timer;
    private readonly long _timerFrequency;
    private readonly byte _stateId; // the ID at creation, which names the snapshot record (the guest may change _id)
    private readonly uint[] _isr = new uint[8];
    private readonly uint[] _irr = new uint[8];
    private readonly uint[] _tmr = new uint[8];
    private IInterruptController? _extInt;
    private ulong _apicBase;
    private uint _id, _tpr, _ldr, _dfr, _svr, _esr, _icrLow, _icrHigh, _lvtTimer, _lvtThermal, _lvtPerf, _lvtLint0,
        _lvtLint1, _lvtError, _lvtCmci, _timerInitial, _timerDivide;
    private long _timerStart;   // clock tick at which the current count started
    private long _tscDeadline;  // 0: disarmed
    private uint _esrPending;   // errors since the last ESR write; a write moves them into ESR
    private int _pendingNmi;
    private int _pendingInit;   // an INIT arrived and the processor has not taken it yet
    private int _startupVector = -1; // the vector of a start-up IPI the processor has not taken yet

    /// <summary>Creates the local APIC with ID <paramref name="id"/> (ID 0 is the bootstrap processor's), in its reset state.</summary>
    /// <param name="clock">Virtual time; its ticks are the TSC for the TSC-deadline mode.</param>
    /// <param name="id">The APIC ID.</param>
    /// <param name="timerFrequency">The timer's input clock in Hz before the divide configuration.</param>
    public LocalApic(VirtualClock clock, byte id = 0, long timerFrequency = DefaultTimerFrequency)
    {
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(timerFrequency);
        _clock = clock;
        _timerFrequency = timerFrequency;
        _timer = clock.CreateTimer(OnTimer);
        _id = id;
        _stateId = id;
        Reset();
    }

    /// <summary>The PIC whose interrupts arrive through ExtINT (LINT0 or a hardware-disabled APIC), or null.</summary>
    public IInterruptController? ExtIntSource
    {
        get => _extInt;
        set
        {
            if (_extInt is not null)
            {
                _extInt.InterruptRequested = null;
            }

            _extInt = value;
            if (value is not null)
            {
                value.InterruptRequested = () => InterruptRequested?.Invoke();
            }
        }
    }

    /// <summary>
    /// Where interprocessor interrupts go: the APIC bus of a machine with several processors. Without one, an IPI
    /// reaches this APIC only (a machine with one processor).
    /// </summary>
    public IApicBus? Bus { get; set; }

    /// <summary>The APIC ID as the guest last set it.</summary>
    public uint Id
    {
        get { lock (_lock) { return _id; } }
    }

    /// <summary>Whether an INIT arrived that the processor has not taken yet.</summary>
    public bool HasPendingInit => Volatile.Read(ref _pendingInit) != 0;

    /// <summary>Takes a pending INIT; returns whether there was one (the processor then waits for a start-up IPI).</summary>
    public bool AcknowledgeInit() => Volatile.Read(ref _pendingInit) != 0 && Interlocked.Exchange(ref _pendingInit, 0) != 0;

    /// <summary>Takes the vector of a pending start-up IPI, or -1.</summary>
    public int AcknowledgeStartup() => Volatile.Read(ref _startupVector) < 0 ? -1 : Interlocked.Exchange(ref _startupVector, -1);

    /// <summary>Called with the vector when a level-triggered interrupt is EOId: wire it to <see cref="IoApic.EndOfInterrupt"/>.</summary>
    public Action<int>? EndOfInterruptBroadcast { get; set; }

    /// <inheritdoc />
    public Action? InterruptRequested { get; set; }

    /// <summary>The timer's input clock in Hz (what the guest would calibrate; report it in CPUID leaf 0x15/0x16 if wanted).</summary>
    public long TimerFrequency => _timerFrequency;

    /// <summary>Puts the APIC in its power-on state: enabled at 0xFEE00000, software-disabled, LVTs masked except LINT0 (ExtINT, so the PIC works before the OS sets the APIC up).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _apicBase = DefaultAddress | (_stateId == 0 ? ApicBaseBsp : 0) | ApicBaseEnable;
            Array.Clear(_isr);
            Array.Clear(_irr);
            Array.Clear(_tmr);
            _tpr = _ldr = _esr = _esrPending = _icrLow = _icrHigh = _timerInitial = _timerDivide = 0;
            _dfr = 0xFFFFFFFF;
            _svr = 0xFF;
            _lvtTimer = _lvtThermal = _lvtPerf = _lvtLint1 = _lvtError = _lvtCmci = LvtMasked;
            _lvtLint0 = (uint)ApicDeliveryMode.ExtInt << LvtDeliveryShift;
            _tscDeadline = 0;
            _pendingNmi = 0;
            _pendingInit = 0;
            _startupVector = -1;
            _timer.Cancel();
        }
    }

    /// <summary>IA32_APIC_BASE as the guest reads it; writes change the enable and x2APIC bits (the base stays where the MMIO device is registered).</summary>
    public ulong ApicBase
    {
        get { lock (_lock) { return _apicBase; } }
        set
        {
            lock (_lock)
            {
                bool wasEnabled = (_apicBase & ApicBaseEnable) != 0;
                _apicBase = (value & (ApicBaseEnable | ApicBaseX2Apic)) | (_apicBase & ~(ApicBaseEnable | ApicBaseX2Apic));
                if (wasEnabled && (_apicBase & ApicBaseEnable) == 0)
                {
                    _apicBase &= ~ApicBaseX2Apic;
                }
            }
        }
    }

    /// <summary>IA32_APIC_BASE with the page address, as <c>RDMSR</c> returns it.</summary>
    ulong Virt.Platform.ILocalInterruptController.ApicBase => ApicBase | DefaultAddress;

    /// <summary>
    /// Writes IA32_APIC_BASE from the guest: only the enable, BSP and x2APIC bits may change, and the base must stay
    /// at <see cref="DefaultAddress"/>, where the MMIO page is decoded.
    /// </summary>
    bool Virt.Platform.ILocalInterruptController.TrySetApicBase(ulong value)
    {
        bool valid = (value & ~(ApicBaseEnable | ApicBaseBsp | ApicBaseX2Apic | 0xFFFF_F000UL)) == 0 && (value & 0xFFFF_F000UL) == DefaultAddress;
        if (valid)
        {
            ApicBase = value;
        }

        return valid;
    }

    bool Virt.Platform.ILocalInterruptController.OwnsMsr(uint index) => index is >= X2ApicMsrBase and <= X2ApicMsrLast;

    bool Virt.Platform.ILocalInterruptController.TryReadMsr(uint index, out ulong value) => ReadMsr(index, out value);

    bool Virt.Platform.ILocalInterruptController.TryWriteMsr(uint index, ulong value) => WriteMsr(index, value);

    /// <summary>Whether the APIC is in x2APIC mode (MSR access; MMIO reads return 0).</summary>
    public bool IsX2ApicMode => (ApicBase & ApicBaseX2Apic) != 0;

    /// <summary>The task priority (bits 7:4 are CR8).</summary>
    public uint TaskPriority
    {
        get { lock (_lock) { return _tpr; } }
        set
        {
            lock (_lock)
            {
                _tpr = value & 0xFF;
            }

            InterruptRequested?.Invoke(); // lowering the priority may unblock an interrupt
        }
    }

    /// <summary>IA32_TSC_DEADLINE: the tick at which the timer fires in TSC-deadline mode; 0 disarms.</summary>
    public ulong TscDeadline
    {
        get { lock (_lock) { return (ulong)_tscDeadline; } }
        set
        {
            lock (_lock)
            {
                if ((_lvtTimer & LvtTimerModeMask) != LvtTimerTscDeadline)
                {
                    return; // ignored outside TSC-deadline mode
                }

                _tscDeadline = (long)Math.Min(value, long.MaxValue);
                if (_tscDeadline == 0)
                {
                    _timer.Cancel();
                }
                else
                {
                    _timer.Schedule(_tscDeadline);
                }
            }
        }
    }

    /// <summary>Whether an NMI is waiting.</summary>
    public bool HasPendingNmi => Volatile.Read(ref _pendingNmi) > 0;

    /// <summary>Takes one pending NMI; returns whether there was one.</summary>
    public bool AcknowledgeNmi()
    {
        lock (_lock)
        {
            if (_pendingNmi == 0)
            {
                return false;
            }

            _pendingNmi--;
            return true;
        }
    }

    private bool HardwareEnabled => (_apicBase & ApicBaseEnable) != 0;

    private bool SoftwareEnabled => (_svr & SvrEnable) != 0;

    private bool ExtIntRouted =>
        !HardwareEnabled || ((_lvtLint0 & LvtMasked) == 0 && (ApicDeliveryMode)((_lvtLint0 >> LvtDeliveryShift) & 7) == ApicDeliveryMode.ExtInt);

    /// <inheritdoc />
    public bool HasPendingInterrupt
    {
        get
        {
            bool extInt;
            lock (_lock)
            {
                if (HardwareEnabled && HighestDeliverableLocked() >= 0)
                {
                    return true;
                }

                extInt = ExtIntRouted;
            }

            return extInt && _extInt?.HasPendingInterrupt == true;
        }
    }

    /// <inheritdoc />
    public int AcknowledgeInterrupt()
    {
        bool extInt;
        lock (_lock)
        {
            extInt = ExtIntRouted;
        }

        // ExtINT first, as the PIC's INTR takes precedence over the APIC's own requests on real parts.
        if (extInt && _extInt is { HasPendingInterrupt: true } pic)
        {
            return pic.AcknowledgeInterrupt();
        }

        lock (_lock)
        {
            if (!HardwareEnabled)
            {
                return -1;
            }

            int vector = HighestDeliverableLocked();
            if (vector < 0)
            {
                return -1;
            }

            Clear(_irr, vector);
            Set(_isr, vector);
            return vector;
        }
    }

    /// <inheritdoc />
    public void Deliver(in ApicMessage message)
    {
        if (!AcceptsDestination(message))
        {
            return;
        }

        Receive(message);
    }

    /// <summary>Takes <paramref name="message"/>, already addressed to this APIC.</summary>
    internal void Receive(in ApicMessage message)
    {
        switch (message.Mode)
        {
            case ApicDeliveryMode.Fixed:
            case ApicDeliveryMode.LowestPriority:
                Accept(message.Vector, message.LevelTriggered);
                break;
            case ApicDeliveryMode.Nmi:
                Interlocked.Increment(ref _pendingNmi);
                InterruptRequested?.Invoke();
                break;
            case ApicDeliveryMode.ExtInt:
                InterruptRequested?.Invoke(); // the vector comes from the PIC when acknowledged
                break;
            case ApicDeliveryMode.Init:
                Volatile.Write(ref _startupVector, -1);
                Interlocked.Exchange(ref _pendingInit, 1);
                InterruptRequested?.Invoke();
                break;
            case ApicDeliveryMode.StartUp:
                Interlocked.Exchange(ref _startupVector, message.Vector & 0xFF);
                InterruptRequested?.Invoke();
                break;
            default:
                break; // SMI is not modelled
        }
    }

    /// <summary>Whether this APIC is a destination of <paramref name="m"/> (physical ID, flat logical mask or broadcast).</summary>
    internal bool AcceptsDestination(in ApicMessage m)
    {
        lock (_lock)
        {
            if (m.Destination == 0xFF)
            {
                return true;
            }

            if (!m.LogicalDestination)
            {
                return m.Destination == (byte)_id;
            }

            // Flat model: the logical ID is LDR bits 31:24, matched against the mask. In x2APIC mode the LDR is the
            // cluster (ID bits 31:4) and one bit for ID bits 3:0; a message's 8 bits are cluster 0's IDs 0-7.
            uint logical = IsX2ApicMode ? (_id < 8 ? 1u << (int)_id : 0) : _ldr >> 24;
            return (logical & m.Destination) != 0;
        }
    }

    /// <summary>Sets <paramref name="vector"/> in IRR (and TMR for level), as an accepted fixed interrupt.</summary>
    private void Accept(int vector, bool level)
    {
        lock (_lock)
        {
            if (vector < 16 || vector > 255)
            {
                _esrPending |= EsrIllegalVector;
                return;
            }

            if (!HardwareEnabled)
            {
                return;
            }

            Set(_irr, vector);
            if (level)
            {
                Set(_tmr, vector);
            }
            else
            {
                Clear(_tmr, vector);
            }
        }

        InterruptRequested?.Invoke();
    }

    private static void Set(uint[] bits, int vector) => bits[vector >> 5] |= 1u << (vector & 31);

    private static void Clear(uint[] bits, int vector) => bits[vector >> 5] &= ~(1u << (vector & 31));

    private static bool Test(uint[] bits, int vector) => (bits[vector >> 5] & (1u << (vector & 31))) != 0;

    private static int Highest(uint[] bits)
    {
        for (int i = 7; i >= 0; i--)
        {
            if (bits[i] != 0)
            {
                return (i << 5) + 31 - BitOperations.LeadingZeroCount(bits[i]);
            }
        }

        return -1;
    }

    private uint ProcessorPriorityLocked()
    {
        int isrv = Math.Max(Highest(_isr), 0);
        return (_tpr & 0xF0) >= ((uint)isrv & 0xF0) ? _tpr & 0xFF : (uint)isrv & 0xF0;
    }

    private int HighestDeliverableLocked()
    {
        int vector = Highest(_irr);
        return vector >= 0 && ((uint)vector & 0xF0) > (ProcessorPriorityLocked() & 0xF0) ? vector : -1;
    }

    private void EndOfInterrupt()
    {
        int level = -1;
        lock (_lock)
        {
            int vector = Highest(_isr);
            if (vector < 0)
            {
                return;
            }

            Clear(_isr, vector);
            if (Test(_tmr, vector))
            {
                Clear(_tmr, vector);
                level = vector;
            }
        }

        if (level >= 0)
        {
            EndOfInterruptBroadcast?.Invoke(level);
        }

        InterruptRequested?.Invoke();
    }

    // ---- Timer -------------------------------------------------------------------------------

    private int DivisorLocked()
    {
        uint v = (_timerDivide & 3) | ((_timerDivide & 8) >> 1);
        return v == 7 ? 1 : 2 << (int)v;
    }

    private long PeriodTicksLocked() =>
        Math.Max(1, _clock.FromCycles((long)_timerInitial * DivisorLocked(), _timerFrequency));

    private void StartTimerLocked(long now)
    {
        _timerStart = now;
        if (_timerInitial == 0 || (_lvtTimer & LvtTimerModeMask) == LvtTimerTscDeadline)
        {
            _timer.Cancel();
            return;
        }

        _timer.Schedule(now + PeriodTicksLocked());
    }

    private uint CurrentCountLocked()
    {
        if (_timerInitial == 0 || (_lvtTimer & LvtTimerModeMask) == LvtTimerTscDeadline)
        {
            return 0;
        }

        long elapsedCounts = _clock.ToCycles(_clock.Now - _timerStart, _timerFrequency) / DivisorLocked();
        if ((_lvtTimer & LvtTimerModeMask) == LvtTimerPeriodic)
        {
            return (uint)(_timerInitial - (elapsedCounts % _timerInitial));
        }

        return elapsedCounts >= _timerInitial ? 0 : (uint)(_timerInitial - elapsedCounts);
    }

    private void OnTimer(long deadline)
    {
        int vector = -1;
        lock (_lock)
        {
            uint mode = _lvtTimer & LvtTimerModeMask;
            if (mode == LvtTimerTscDeadline)
            {
                if (_tscDeadline == 0)
                {
                    return;
                }

                _tscDeadline = 0;
            }
            else if (mode == LvtTimerPeriodic && _timerInitial != 0)
            {
                long period = PeriodTicksLocked();
                _timerStart = deadline;
                long next = deadline + period;
                long now = _clock.AdvanceTarget;
                if (next <= now)
                {
                    // Skipped ahead (a halted CPU jumped): keep the phase, drop the missed ticks.
                    long missed = (now - deadline) / period;
                    _timerStart = deadline + (missed * period);
                    next = _timerStart + period;
                }

                _timer.Schedule(next);
            }

            if ((_lvtTimer & LvtMasked) == 0 && SoftwareEnabled)
            {
                vector = (int)(_lvtTimer & 0xFF);
            }
        }

        if (vector >= 0)
        {
            Accept(vector, level: false);
        }
    }

    // ---- Register access ---------------------------------------------------------------------

    /// <inheritdoc />
    public void Read(ulong offset, Span<byte> data)
    {
        data.Clear();
        if (IsX2ApicMode || offset >= Size)
        {
            return;
        }

        uint value = ReadRegister((int)(offset & ~0xFUL));
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, value);
        int start = (int)(offset & 3);
        bytes[start..Math.Min(4, start + data.Length)].CopyTo(data);
    }

    /// <inheritdoc />
    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        if (IsX2ApicMode || offset >= Size || data.Length < 4 || (offset & 0xF) != 0)
        {
            return; // xAPIC registers take aligned 32-bit writes
        }

        WriteRegister((int)offset, BinaryPrimitives.ReadUInt32LittleEndian(data));
    }

    /// <summary>Reads x2APIC MSR <paramref name="msr"/> (0x800-0x8FF); false (the CPU raises #GP) when not in x2APIC mode or the register does not exist or is write-only.</summary>
    public bool ReadMsr(uint msr, out ulong value)
    {
        value = 0;
        if (!IsX2ApicMode || msr < X2ApicMsrBase || msr > X2ApicMsrLast)
        {
            return false;
        }

        int offset = (int)(msr - X2ApicMsrBase) << 4;
        switch (offset)
        {
            case RegEoi:
            case RegSelfIpi:
            case RegIcrHigh:
            case RegDfr:
            case RegApr:
            case RegRrd:
                return false;
            case RegIcrLow:
                lock (_lock)
                {
                    value = ((ulong)_icrHigh << 32) | _icrLow;
                }

                return true;
            default:
                if (!IsKnownRegister(offset))
                {
                    return false;
                }

                value = ReadRegister(offset);
                return true;
        }
    }

    /// <summary>Writes x2APIC MSR <paramref name="msr"/>; false (the CPU raises #GP) when not in x2APIC mode or the register is read-only or missing.</summary>
    public bool WriteMsr(uint msr, ulong value)
    {
        if (!IsX2ApicMode || msr < X2ApicMsrBase || msr > X2ApicMsrLast)
        {
            return false;
        }

        int offset = (int)(msr - X2ApicMsrBase) << 4;
        switch (offset)
        {
            case RegTpr:
            case RegEoi:
            case RegSvr:
            case RegEsr:
            case RegLvtCmci:
            case RegLvtTimer:
            case RegLvtThermal:
            case RegLvtPerf:
            case RegLvtLint0:
            case RegLvtLint1:
            case RegLvtError:
            case RegTimerInitial:
            case RegTimerDivide:
                WriteRegister(offset, (uint)value);
                return true;
            case RegIcrLow:
                lock (_lock)
                {
                    _icrHigh = (uint)(value >> 32);
                }

                WriteRegister(RegIcrLow, (uint)value);
                return true;
            case RegSelfIpi:
                Accept((int)(value & 0xFF), level: false);
                return true;
            case RegId:
                return false;
            default:
                return false;
        }
    }

    private static bool IsKnownRegister(int offset) => offset switch
    {
        RegId or RegVersion or RegTpr or RegPpr or RegLdr or RegSvr or RegEsr or RegLvtCmci or RegLvtTimer or RegLvtThermal
            or RegLvtPerf or RegLvtLint0 or RegLvtLint1 or RegLvtError or RegTimerInitial or RegTimerCurrent or RegTimerDivide => true,
        >= RegIsr and < RegEsr => true,
        _ => false,
    };

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per APIC register (SDM Vol. 3, table 11-1): splitting the register map would hide it.")]
    private uint ReadRegister(int offset)
    {
        lock (_lock)
        {
            bool x2 = IsX2ApicMode;
            switch (offset)
            {
                case RegId: return x2 ? _id : _id << 24;
                case RegVersion: return VersionValue;
                case RegTpr: return _tpr;
                case RegApr: return 0;
                case RegPpr: return ProcessorPriorityLocked();
                case RegLdr: return x2 ? ((_id >> 4) << 16) | (1u << (int)(_id & 0xF)) : _ldr;
                case RegDfr: return _dfr;
                case RegSvr: return _svr;
                case RegEsr: return _esr;
                case RegIcrLow: return _icrLow;
                case RegIcrHigh: return _icrHigh;
                case RegLvtCmci: return _lvtCmci;
                case RegLvtTimer: return _lvtTimer;
                case RegLvtThermal: return _lvtThermal;
                case RegLvtPerf: return _lvtPerf;
                case RegLvtLint0: return _lvtLint0;
                case RegLvtLint1: return _lvtLint1;
                case RegLvtError: return _lvtError;
                case RegTimerInitial: return _timerInitial;
                case RegTimerCurrent: return CurrentCountLocked();
                case RegTimerDivide: return _timerDivide;
                case >= RegIsr and < RegTmr: return _isr[(offset - RegIsr) >> 4];
                case >= RegTmr and < RegIrr: return _tmr[(offset - RegTmr) >> 4];
                case >= RegIrr and < RegEsr: return _irr[(offset - RegIrr) >> 4];
                default: return 0;
            }
        }
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "One case per APIC register (SDM Vol. 3, table 11-1): splitting the register map would hide it.")]
    private void WriteRegister(int offset, uint value)
    {
        switch (offset)
        {
            case RegEoi:
                EndOfInterrupt();
                return;
            case RegTpr:
                TaskPriority = value & 0xFF;
                return;
            case RegIcrLow:
                SendIpi(value);
                return;
            default:
                break;
        }

        bool notify = false;
        lock (_lock)
        {
            // Software-disabled: LVT writes keep the mask bit set (SDM 11.4.7.2).
            uint lvtForce = SoftwareEnabled ? 0 : LvtMasked;
            switch (offset)
            {
                case RegId:
                    if (!IsX2ApicMode)
                    {
                        _id = value >> 24;
                    }

                    break;
                case RegLdr: _ldr = value & 0xFF000000; break;
                case RegDfr: _dfr = value | 0x0FFFFFFF; break;
                case RegSvr:
                    _svr = value & 0x3FF;
                    if (!SoftwareEnabled)
                    {
                        _lvtTimer |= LvtMasked;
                        _lvtThermal |= LvtMasked;
                        _lvtPerf |= LvtMasked;
                        _lvtLint0 |= LvtMasked;
                        _lvtLint1 |= LvtMasked;
                        _lvtError |= LvtMasked;
                        _lvtCmci |= LvtMasked;
                    }

                    break;
                case RegEsr:
                    _esr = _esrPending;
                    _esrPending = 0;
                    break;
                case RegIcrHigh: _icrHigh = value & 0xFF000000; break;
                case RegLvtCmci: _lvtCmci = (value & 0x107FF) | lvtForce; break;
                case RegLvtTimer:
                    uint oldMode = _lvtTimer & LvtTimerModeMask;
                    _lvtTimer = (value & (0x300FF | LvtTimerModeMask)) | lvtForce;
                    if ((_lvtTimer & LvtTimerModeMask) == (3u << 17))
                    {
                        _lvtTimer &= ~LvtTimerModeMask; // reserved mode: treat as one-shot
                    }

                    if ((_lvtTimer & LvtTimerModeMask) != oldMode)
                    {
                        _timerInitial = 0;
                        _tscDeadline = 0;
                        _timer.Cancel();
                    }

                    break;
                case RegLvtThermal: _lvtThermal = (value & 0x107FF) | lvtForce; break;
                case RegLvtPerf: _lvtPerf = (value & 0x107FF) | lvtForce; break;
                case RegLvtLint0: _lvtLint0 = (value & 0x1A7FF) | lvtForce; notify = true; break;
                case RegLvtLint1: _lvtLint1 = (value & 0x1A7FF) | lvtForce; break;
                case RegLvtError: _lvtError = (value & 0x100FF) | lvtForce; break;
                case RegTimerInitial:
                    if ((_lvtTimer & LvtTimerModeMask) != LvtTimerTscDeadline)
                    {
                        _timerInitial = value;
                        StartTimerLocked(_clock.Now);
                    }

                    break;
                case RegTimerDivide:
                    _timerDivide = value & 0xB;
                    break;
                default:
                    break; // read-only or reserved
            }
        }

        if (notify)
        {
            InterruptRequested?.Invoke();
        }
    }

    private void SendIpi(uint low)
    {
        uint high;
        lock (_lock)
        {
            _icrLow = low & ~(1u << 12); // delivery status: always idle
            high = _icrHigh;
        }

        var mode = (ApicDeliveryMode)((low >> 8) & 7);
        int vector = (int)(low & 0xFF);
        int shorthand = (int)(low >> IcrShorthandShift) & 3;
        if (mode == ApicDeliveryMode.Init && (low & (1u << 14)) == 0)
        {
            return; // INIT level de-assert: no effect on current processors
        }

        if (mode == ApicDeliveryMode.Fixed && vector < 16)
        {
            lock (_lock)
            {
                _esrPending |= EsrSendIllegal;
            }

            return;
        }

        bool logical = (low & (1u << 11)) != 0;
        var target = (IpiDestination)shorthand;
        byte destination = (byte)(high >> 24);
        if (IsX2ApicMode)
        {
            // 32-bit destinations: all ones is the broadcast. Messages carry 8 bits, which reach physical IDs 0-254 and,
            // logically, IDs 0-7 of cluster 0 (bits 7:0 of its mask). Another physical ID or cluster reaches nobody.
            if (high == uint.MaxValue)
            {
                destination = 0xFF;
            }
            else if (target == IpiDestination.Field && (logical ? (high >> 16) != 0 : high >= 0xFF))
            {
                return;
            }
            else
            {
                destination = (byte)high;
            }
        }

        var message = new ApicMessage(vector, mode, false, destination, logical);
        if (Bus is { } bus)
        {
            bus.SendIpi(this, message, target);
            return;
        }

        bool toSelf = target switch
        {
            IpiDestination.Self or IpiDestination.AllIncludingSelf => true,
            IpiDestination.AllExcludingSelf => false,
            _ => AcceptsDestination(message),
        };
        if (toSelf && mode is ApicDeliveryMode.Fixed or ApicDeliveryMode.LowestPriority or ApicDeliveryMode.Nmi)
        {
            Receive(message);
        }
    }

    /// <summary>Drives LINT1 (wired to NMI on a PC): an unmasked NMI entry queues an NMI.</summary>
    public void TriggerLint1()
    {
        lock (_lock)
        {
            if ((_lvtLint1 & LvtMasked) != 0 || (ApicDeliveryMode)((_lvtLint1 >> LvtDeliveryShift) & 7) != ApicDeliveryMode.Nmi)
            {
                return;
            }

            _pendingNmi++;
        }

        InterruptRequested?.Invoke();
    }
}
