using System.Runtime.InteropServices;
using Virt.Cpu;

namespace Virt.Snapshots;

/// <summary>
/// Writes and reads a <see cref="VcpuState"/> as a snapshot section (version 2; version 1 is still read). The layout
/// is the backend-neutral state itself, so a section saved on one backend restores on another where the state fits
/// (the backend's <c>SetState</c> refuses what it cannot take and says what).
/// </summary>
/// <remarks>
/// Version 2 adds one byte after the local APIC page: what the processor waits for before it starts
/// (<see cref="StartupWait"/>), which machines with several vCPUs need. A version 1 section reads as a processor that
/// does not wait.
/// </remarks>
public static class VcpuStateCodec
{
    /// <summary>The section layout version this build writes.</summary>
    public const int Version = 2;

    /// <summary>The oldest section layout version this build reads.</summary>
    public const int OldestReadableVersion = 1;

    /// <summary>The section name of vCPU <paramref name="index"/>.</summary>
    public static string SectionName(int index) => $"vcpu{index}";

    private const int MaxMsrs = 4096;
    private const int LocalApicBytes = 1024;

    /// <summary>Writes <paramref name="state"/>.</summary>
    public static void Write(StateWriter writer, VcpuState state)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(state);
        var general = state.General;
        foreach (ulong v in MemoryMarshal.Cast<GeneralRegisters, ulong>(MemoryMarshal.CreateReadOnlySpan(ref general, 1)))
        {
            writer.WriteUInt64(v);
        }

        var s = state.Special;
        foreach (var seg in new[] { s.Cs, s.Ds, s.Es, s.Fs, s.Gs, s.Ss, s.Tr, s.Ldt })
        {
            WriteSegment(writer, seg);
        }

        writer.WriteUInt64(s.Gdt.Base);
        writer.WriteUInt16(s.Gdt.Limit);
        writer.WriteUInt64(s.Idt.Base);
        writer.WriteUInt16(s.Idt.Limit);
        foreach (ulong v in new[] { s.Cr0, s.Cr2, s.Cr3, s.Cr4, s.Cr8, s.Efer, s.ApicBase })
        {
            writer.WriteUInt64(v);
        }

        writer.WriteUInt64(state.Xsave.Xcr0);
        writer.WriteBytes(state.Xsave.Area);
        var d = state.Debug;
        foreach (ulong v in new[] { d.Dr0, d.Dr1, d.Dr2, d.Dr3, d.Dr6, d.Dr7 })
        {
            writer.WriteUInt64(v);
        }

        writer.WriteInt32(state.Msrs.Count);
        foreach (var m in state.Msrs)
        {
            writer.WriteUInt32(m.Index);
            writer.WriteUInt64(m.Value);
        }

        var e = state.Events;
        foreach (bool b in new[] { e.ExceptionInjected, e.ExceptionPending, e.ExceptionHasErrorCode, e.InterruptInjected, e.InterruptPending, e.InterruptSoft, e.NmiInjected, e.NmiPending, e.NmiMasked })
        {
            writer.WriteBoolean(b);
        }

        writer.WriteByte(e.ExceptionVector);
        writer.WriteUInt32(e.ExceptionErrorCode);
        writer.WriteByte(e.InterruptVector);
        writer.WriteByte(e.InterruptShadow);
        writer.WriteBoolean(state.Halted);
        writer.WriteBoolean(state.LocalApic is not null);
        if (state.LocalApic is { } apic)
        {
            writer.WriteBytes(apic.Span);
        }

        writer.WriteByte((byte)state.StartupWait);
    }

    /// <summary>Reads a state <see cref="Write"/> wrote at <paramref name="version"/>.</summary>
    /// <exception cref="SnapshotFormatException">The section is truncated, has another version, or holds an invalid value.</exception>
    public static VcpuState Read(ref StateReader reader, int version)
    {
        if (version is < OldestReadableVersion or > Version)
        {
            throw reader.UnsupportedVersion(version, Version);
        }

        var general = default(GeneralRegisters);
        var gprs = MemoryMarshal.Cast<GeneralRegisters, ulong>(MemoryMarshal.CreateSpan(ref general, 1));
        for (int i = 0; i < gprs.Length; i++)
        {
            gprs[i] = reader.ReadUInt64($"general register {i}");
        }

        var s = new SpecialRegisters
        {
            Cs = ReadSegment(ref reader, "CS"), Ds = ReadSegment(ref reader, "DS"), Es = ReadSegment(ref reader, "ES"),
            Fs = ReadSegment(ref reader, "FS"), Gs = ReadSegment(ref reader, "GS"), Ss = ReadSegment(ref reader, "SS"),
            Tr = ReadSegment(ref reader, "TR"), Ldt = ReadSegment(ref reader, "LDTR"),
            Gdt = new DescriptorTable { Base = reader.ReadUInt64("GDT base"), Limit = reader.ReadUInt16("GDT limit") },
            Idt = new DescriptorTable { Base = reader.ReadUInt64("IDT base"), Limit = reader.ReadUInt16("IDT limit") },
            Cr0 = reader.ReadUInt64InRange("CR0", 0, uint.MaxValue),
            Cr2 = reader.ReadUInt64("CR2"),
            Cr3 = reader.ReadUInt64("CR3"),
            Cr4 = reader.ReadUInt64InRange("CR4", 0, uint.MaxValue),
            Cr8 = reader.ReadUInt64InRange("CR8", 0, 15),
            Efer = reader.ReadUInt64InRange("EFER", 0, 0xFFFF),
            ApicBase = reader.ReadUInt64("APIC base"),
        };

        ulong xcr0 = reader.ReadUInt64("XCR0");
        var area = reader.ReadBytes("XSAVE area", XsaveState.MaximumSize);
        XsaveState xsave;
        try
        {
            xsave = new XsaveState(xcr0, area);
        }
        catch (ArgumentException ex)
        {
            throw new SnapshotFormatException(reader.Section, "XSAVE area", ex.Message);
        }

        var debug = new DebugRegisters
        {
            Dr0 = reader.ReadUInt64("DR0"), Dr1 = reader.ReadUInt64("DR1"), Dr2 = reader.ReadUInt64("DR2"),
            Dr3 = reader.ReadUInt64("DR3"), Dr6 = reader.ReadUInt64("DR6"), Dr7 = reader.ReadUInt64("DR7"),
        };

        int msrCount = reader.ReadInt32InRange("MSR count", 0, MaxMsrs);
        var msrs = new MsrEntry[msrCount];
        for (int i = 0; i < msrCount; i++)
        {
            msrs[i] = new MsrEntry(reader.ReadUInt32($"MSR {i} index"), reader.ReadUInt64($"MSR {i} value"));
        }

        var events = new VcpuEvents
        {
            ExceptionInjected = reader.ReadBoolean("exception injected"),
            ExceptionPending = reader.ReadBoolean("exception pending"),
            ExceptionHasErrorCode = reader.ReadBoolean("exception has error code"),
            InterruptInjected = reader.ReadBoolean("interrupt injected"),
            InterruptPending = reader.ReadBoolean("interrupt pending"),
            InterruptSoft = reader.ReadBoolean("interrupt soft"),
            NmiInjected = reader.ReadBoolean("NMI injected"),
            NmiPending = reader.ReadBoolean("NMI pending"),
            NmiMasked = reader.ReadBoolean("NMI masked"),
            ExceptionVector = reader.ReadByte("exception vector"),
            ExceptionErrorCode = reader.ReadUInt32("exception error code"),
            InterruptVector = reader.ReadByte("interrupt vector"),
            InterruptShadow = reader.ReadByte("interrupt shadow"),
        };
        if (events.ExceptionVector > 31 || events.InterruptShadow > 3)
        {
            throw new SnapshotFormatException(reader.Section, "events", $"exception vector {events.ExceptionVector} or interrupt shadow {events.InterruptShadow} is out of range.");
        }

        bool halted = reader.ReadBoolean("halted");
        ReadOnlyMemory<byte>? apic = null;
        if (reader.ReadBoolean("has local APIC"))
        {
            var page = reader.ReadBytes("local APIC", LocalApicBytes);
            if (page.Length != LocalApicBytes)
            {
                throw new SnapshotFormatException(reader.Section, "local APIC", $"has {page.Length} bytes, not {LocalApicBytes}.");
            }

            apic = page.ToArray();
        }

        var startupWait = StartupWait.None;
        if (version >= 2)
        {
            startupWait = (StartupWait)reader.ReadByte("startup wait");
            if (startupWait is not (StartupWait.None or StartupWait.Init or StartupWait.StartupIpi) || (halted && startupWait != StartupWait.None))
            {
                throw new SnapshotFormatException(reader.Section, "startup wait", $"is {(int)startupWait}{(halted ? " for a halted processor" : "")}; it is 0 (runs), 1 (waits for INIT) or 2 (waits for a start-up IPI), and 0 when halted.");
            }
        }

        reader.EnsureEnd();
        return new VcpuState { General = general, Special = s, Xsave = xsave, Debug = debug, Msrs = msrs, Events = events, Halted = halted, LocalApic = apic, StartupWait = startupWait };
    }

    private static void WriteSegment(StateWriter w, in SegmentRegister s)
    {
        w.WriteUInt64(s.Base);
        w.WriteUInt32(s.Limit);
        w.WriteUInt16(s.Selector);
        w.WriteByte(s.Type);
        w.WriteByte(s.Dpl);
        byte flags = (byte)((s.Present ? 1 : 0) | (s.DefaultBig ? 2 : 0) | (s.IsCodeOrData ? 4 : 0) | (s.Long ? 8 : 0)
            | (s.Granularity ? 16 : 0) | (s.Available ? 32 : 0) | (s.Unusable ? 64 : 0));
        w.WriteByte(flags);
    }

    private static SegmentRegister ReadSegment(ref StateReader r, string name)
    {
        var s = new SegmentRegister
        {
            Base = r.ReadUInt64($"{name} base"),
            Limit = r.ReadUInt32($"{name} limit"),
            Selector = r.ReadUInt16($"{name} selector"),
            Type = r.ReadByte($"{name} type"),
            Dpl = r.ReadByte($"{name} DPL"),
        };
        byte flags = r.ReadByte($"{name} flags");
        if (s.Type > 15 || s.Dpl > 3 || flags > 127)
        {
            throw new SnapshotFormatException(r.Section, name, $"type {s.Type}, DPL {s.Dpl} or flags 0x{flags:x} are out of range.");
        }

        s.Present = (flags & 1) != 0;
        s.DefaultBig = (flags & 2) != 0;
        s.IsCodeOrData = (flags & 4) != 0;
        s.Long = (flags & 8) != 0;
        s.Granularity = (flags & 16) != 0;
        s.Available = (flags & 32) != 0;
        s.Unusable = (flags & 64) != 0;
        return s;
    }
}
