using Virt.Snapshots;

namespace Virt.Devices.Interrupts;

/// <summary>One 8259A's registers as a snapshot record (inside <see cref="PicPair"/>'s).</summary>
internal sealed partial class Pic8259
{
    /// <summary>Everything the chip remembers.</summary>
    internal readonly record struct Saved(
        byte Irr, byte Isr, byte Imr, byte VectorBase, byte Elcr, byte Lines, int InitStep, bool Initialised, bool Single, bool NeedIcw4,
        bool AutoEoi, bool LevelAll, bool SpecialFullyNested, bool SpecialMask, bool ReadIsr, bool Poll, bool RotateOnAutoEoi, int LowestPriority);

    public Saved Capture() => new(Irr, Isr, Imr, VectorBase, Elcr, Lines, _initStep, Initialised, _single, _needIcw4,
        AutoEoi, LevelAll, SpecialFullyNested, SpecialMask, ReadIsr, Poll, RotateOnAutoEoi, LowestPriority);

    public static void Write(StateWriter w, in Saved s)
    {
        w.WriteByte(s.Irr);
        w.WriteByte(s.Isr);
        w.WriteByte(s.Imr);
        w.WriteByte(s.VectorBase);
        w.WriteByte(s.Elcr);
        w.WriteByte(s.Lines);
        w.WriteByte((byte)s.InitStep);
        w.WriteBoolean(s.Initialised);
        w.WriteBoolean(s.Single);
        w.WriteBoolean(s.NeedIcw4);
        w.WriteBoolean(s.AutoEoi);
        w.WriteBoolean(s.LevelAll);
        w.WriteBoolean(s.SpecialFullyNested);
        w.WriteBoolean(s.SpecialMask);
        w.WriteBoolean(s.ReadIsr);
        w.WriteBoolean(s.Poll);
        w.WriteBoolean(s.RotateOnAutoEoi);
        w.WriteByte((byte)s.LowestPriority);
    }

    /// <summary>Reads one chip's record; <paramref name="name"/> (<c>master</c> or <c>slave</c>) prefixes the field names.</summary>
    public static Saved Read(ref StateReader r, string name, bool isMaster)
    {
        byte irr = r.ReadByte(name + ".irr");
        byte isr = r.ReadByte(name + ".isr");
        byte imr = r.ReadByte(name + ".imr");
        byte vectorBase = r.ReadByte(name + ".vector-base");
        StateFields.Require(ref r, (vectorBase & 7) == 0, name + ".vector-base", $"is 0x{vectorBase:x2}; ICW2 keeps bits 7:3 only.");
        byte elcr = StateFields.ReadMaskedByte(ref r, name + ".elcr", isMaster ? (byte)0xF8 : (byte)0xDE);
        byte lines = r.ReadByte(name + ".lines");
        byte step = r.ReadByte(name + ".init-step");
        StateFields.Require(ref r, step is 0 or 2 or 3 or 4, name + ".init-step", $"is {step}; the ICW sequence is at step 0 (done), 2, 3 or 4.");
        bool initialised = r.ReadBoolean(name + ".initialised");
        bool single = r.ReadBoolean(name + ".single");
        bool needIcw4 = r.ReadBoolean(name + ".need-icw4");
        StateFields.Require(ref r, !(step == 3 && single) && !(step == 4 && !needIcw4), name + ".init-step", $"is {step}, which the ICW1 flags saved with it never reach.");
        var s = new Saved(irr, isr, imr, vectorBase, elcr, lines, step, initialised, single, needIcw4,
            AutoEoi: r.ReadBoolean(name + ".auto-eoi"),
            LevelAll: r.ReadBoolean(name + ".level-all"),
            SpecialFullyNested: r.ReadBoolean(name + ".special-fully-nested"),
            SpecialMask: r.ReadBoolean(name + ".special-mask"),
            ReadIsr: r.ReadBoolean(name + ".read-isr"),
            Poll: r.ReadBoolean(name + ".poll"),
            RotateOnAutoEoi: r.ReadBoolean(name + ".rotate-on-auto-eoi"),
            LowestPriority: StateFields.ReadByteInRange(ref r, name + ".lowest-priority", 0, 7));
        return s;
    }

    public void Load(in Saved s)
    {
        Irr = s.Irr;
        Isr = s.Isr;
        Imr = s.Imr;
        VectorBase = s.VectorBase;
        Elcr = s.Elcr;
        Lines = s.Lines;
        _initStep = s.InitStep;
        Initialised = s.Initialised;
        _single = s.Single;
        _needIcw4 = s.NeedIcw4;
        AutoEoi = s.AutoEoi;
        LevelAll = s.LevelAll;
        SpecialFullyNested = s.SpecialFullyNested;
        SpecialMask = s.SpecialMask;
        ReadIsr = s.ReadIsr;
        Poll = s.Poll;
        RotateOnAutoEoi = s.RotateOnAutoEoi;
        LowestPriority = s.LowestPriority;
    }
}
