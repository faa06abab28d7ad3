using Virt.Snapshots;

namespace Virt.Devices.Interrupts;

/// <summary>The local APIC's snapshot record, <c>lapic@ID</c>.</summary>
/// <remarks>
/// <para>Layout 1: IA32_APIC_BASE; the ID, TPR, LDR, DFR, SVR, ESR and the errors not yet moved into it, ICR (low and
/// high), the seven LVT entries (CMCI, timer, thermal, performance, LINT0, LINT1, error), the timer's initial count
/// and divide configuration; ISR, TMR and IRR (8 words each); the NMIs waiting; then the timer's time, relative to
/// the virtual clock: how many ticks ago the current count started, whether the timer is armed and in how many ticks
/// it fires, and whether IA32_TSC_DEADLINE is set and in how many ticks it falls.</para>
/// <para>Times are kept relative to the clock's tick at the save and re-anchored on its tick at the restore: restored
/// together with its <see cref="VirtualClock"/> (as <see cref="PcInterruptPlatform"/> does) a timer in progress fires
/// at the same guest time; the current-count register reads on from where it was.</para>
/// </remarks>
public sealed partial class LocalApic : IPersistentState
{
    private const uint EsrBits = EsrIllegalVector | EsrSendIllegal;

    /// <inheritdoc />
    public string StateName => $"lapic@{_stateId}";

    /// <inheritdoc />
    public int StateVersion => 1;

    /// <summary>Everything the local APIC remembers; times relative to the clock.</summary>
    internal sealed class Saved
    {
        public ulong ApicBase;
        public uint Id, Tpr, Ldr, Dfr, Svr, Esr, EsrPending, IcrLow, IcrHigh, LvtCmci, LvtTimer, LvtThermal, LvtPerf, LvtLint0, LvtLint1, LvtError, TimerInitial, TimerDivide;
        public uint[] Isr = new uint[8], Tmr = new uint[8], Irr = new uint[8];
        public int PendingNmi;
        public long TimerStartAgo;
        public long? TimerDueIn;
        public long? TscDeadlineIn;
    }

    /// <inheritdoc />
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        lock (_lock)
        {
            long now = _clock.Now;
            writer.WriteUInt64(_apicBase);
            foreach (uint r in (ReadOnlySpan<uint>)[_id, _tpr, _ldr, _dfr, _svr, _esr, _esrPending, _icrLow, _icrHigh,
                _lvtCmci, _lvtTimer, _lvtThermal, _lvtPerf, _lvtLint0, _lvtLint1, _lvtError, _timerInitial, _timerDivide])
            {
                writer.WriteUInt32(r);
            }

            foreach (uint[] bits in (ReadOnlySpan<uint[]>)[_isr, _tmr, _irr])
            {
                foreach (uint word in bits)
                {
                    writer.WriteUInt32(word);
                }
            }

            writer.WriteInt32(_pendingNmi);
            writer.WriteInt64(now - _timerStart);
            long? due = _timer.ScheduledAt;
            writer.WriteBoolean(due.HasValue);
            writer.WriteInt64(due is long d ? d - now : 0);
            writer.WriteBoolean(_tscDeadline != 0);
            writer.WriteInt64(_tscDeadline != 0 ? _tscDeadline - now : 0);
        }
    }

    /// <inheritdoc />
    public void RestoreState(ref StateReader reader, int version)
    {
        var staged = ReadStaged(ref reader, version);
        reader.EnsureEnd();
        Apply(staged);
    }

    internal Saved ReadStaged(ref StateReader reader, int version)
    {
        StateFields.CheckVersion(ref reader, version, StateVersion);
        var s = new Saved();
        ReadRegisters(ref reader, s);
        ReadVectors(ref reader, "isr", s.Isr);
        ReadVectors(ref reader, "tmr", s.Tmr);
        ReadVectors(ref reader, "irr", s.Irr);
        s.PendingNmi = reader.ReadInt32InRange("pending-nmi", 0, int.MaxValue);
        s.TimerStartAgo = StateFields.ReadDuration(ref reader, "timer.start-ago");
        bool armed = reader.ReadBoolean("timer.armed");
        long dueIn = StateFields.ReadRelativeTicks(ref reader, "timer.due-in");
        s.TimerDueIn = armed ? dueIn : null;
        bool tscSet = reader.ReadBoolean("tsc-deadline.set");
        long tscIn = StateFields.ReadRelativeTicks(ref reader, "tsc-deadline.due-in");
        s.TscDeadlineIn = tscSet ? tscIn : null;

        bool tscMode = (s.LvtTimer & LvtTimerModeMask) == LvtTimerTscDeadline;
        StateFields.Require(ref reader, !tscMode || s.TimerInitial == 0, "timer-initial", "is set in TSC-deadline mode, where the count registers are not used.");
        StateFields.Require(ref reader, tscMode || !tscSet, "tsc-deadline.set", "is set outside TSC-deadline mode, where IA32_TSC_DEADLINE is ignored.");
        return s;
    }

    private static void ReadRegisters(ref StateReader r, Saved s)
    {
        s.ApicBase = r.ReadUInt64("apic-base");
        StateFields.Require(ref r, (s.ApicBase & ~(ApicBaseBsp | ApicBaseEnable | ApicBaseX2Apic)) == DefaultAddress, "apic-base",
            $"is 0x{s.ApicBase:x}; the APIC's page stays at 0x{DefaultAddress:x} and only the BSP, enable and x2APIC bits vary.");
        s.Id = StateFields.ReadMaskedUInt32(ref r, "id", 0xFF);
        s.Tpr = StateFields.ReadMaskedUInt32(ref r, "tpr", 0xFF);
        s.Ldr = StateFields.ReadMaskedUInt32(ref r, "ldr", 0xFF000000);
        s.Dfr = r.ReadUInt32("dfr");
        StateFields.Require(ref r, (s.Dfr & 0x0FFFFFFF) == 0x0FFFFFFF, "dfr", $"is 0x{s.Dfr:x8}; bits 27:0 read as ones.");
        s.Svr = StateFields.ReadMaskedUInt32(ref r, "svr", 0x3FF);
        s.Esr = StateFields.ReadMaskedUInt32(ref r, "esr", EsrBits);
        s.EsrPending = StateFields.ReadMaskedUInt32(ref r, "esr-pending", EsrBits);
        s.IcrLow = StateFields.ReadMaskedUInt32(ref r, "icr-low", ~(1u << 12));
        s.IcrHigh = r.ReadUInt32("icr-high");
        s.LvtCmci = StateFields.ReadMaskedUInt32(ref r, "lvt-cmci", 0x107FF);
        s.LvtTimer = StateFields.ReadMaskedUInt32(ref r, "lvt-timer", 0x300FF | LvtTimerModeMask);
        StateFields.Require(ref r, (s.LvtTimer & LvtTimerModeMask) != LvtTimerModeMask, "lvt-timer", "has the reserved timer mode 3.");
        s.LvtThermal = StateFields.ReadMaskedUInt32(ref r, "lvt-thermal", 0x107FF);
        s.LvtPerf = StateFields.ReadMaskedUInt32(ref r, "lvt-perf", 0x107FF);
        s.LvtLint0 = StateFields.ReadMaskedUInt32(ref r, "lvt-lint0", 0x1A7FF);
        s.LvtLint1 = StateFields.ReadMaskedUInt32(ref r, "lvt-lint1", 0x1A7FF);
        s.LvtError = StateFields.ReadMaskedUInt32(ref r, "lvt-error", 0x100FF);
        s.TimerInitial = r.ReadUInt32("timer-initial");
        s.TimerDivide = StateFields.ReadMaskedUInt32(ref r, "timer-divide", 0xB);
    }

    /// <summary>Reads a 256-bit vector register; vectors 0-15 are never accepted, so their bits must be clear.</summary>
    private static void ReadVectors(ref StateReader r, string field, uint[] bits)
    {
        bits[0] = StateFields.ReadMaskedUInt32(ref r, field, 0xFFFF0000);
        for (int i = 1; i < bits.Length; i++)
        {
            bits[i] = r.ReadUInt32(field);
        }
    }

    internal void Apply(Saved s)
    {
        lock (_lock)
        {
            long now = _clock.Now;
            _apicBase = s.ApicBase;
            (_id, _tpr, _ldr, _dfr, _svr, _esr, _esrPending, _icrLow, _icrHigh) = (s.Id, s.Tpr, s.Ldr, s.Dfr, s.Svr, s.Esr, s.EsrPending, s.IcrLow, s.IcrHigh);
            (_lvtCmci, _lvtTimer, _lvtThermal, _lvtPerf, _lvtLint0, _lvtLint1, _lvtError) = (s.LvtCmci, s.LvtTimer, s.LvtThermal, s.LvtPerf, s.LvtLint0, s.LvtLint1, s.LvtError);
            (_timerInitial, _timerDivide) = (s.TimerInitial, s.TimerDivide);
            s.Isr.CopyTo(_isr, 0);
            s.Tmr.CopyTo(_tmr, 0);
            s.Irr.CopyTo(_irr, 0);
            _pendingNmi = s.PendingNmi;
            _timerStart = now - s.TimerStartAgo;
            _tscDeadline = s.TscDeadlineIn is long t ? Math.Max(1, now + t) : 0;
            if (s.TimerDueIn is long due)
            {
                _timer.Schedule(now + due);
            }
            else
            {
                _timer.Cancel();
            }
        }

        InterruptRequested?.Invoke();
    }
}
