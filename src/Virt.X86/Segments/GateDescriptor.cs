namespace Virt.X86;

/// <summary>
/// A long-mode IDT gate (interrupt or trap gate; Intel SDM vol. 3, 6.14.1): where the handler is, which code
/// segment it runs in, which interrupt stack it switches to and who may invoke it with <c>INT n</c>.
/// </summary>
/// <param name="Offset">Linear address of the handler.</param>
/// <param name="Selector">Code-segment selector the handler runs in.</param>
/// <param name="InterruptStackTable">IST slot (1-7) whose stack the processor switches to, or 0 for the usual RSP0 rule.</param>
/// <param name="Type"><see cref="SegmentType.InterruptGate"/> or <see cref="SegmentType.TrapGate"/>.</param>
/// <param name="Dpl">The highest CPL that may reach the gate with <c>INT n</c>, <c>INT3</c> or <c>INTO</c> (exceptions ignore it).</param>
/// <param name="Present">Whether the gate is present (a not-present gate raises #NP).</param>
public readonly record struct GateDescriptor(ulong Offset, ushort Selector, byte InterruptStackTable, byte Type, byte Dpl, bool Present = true)
{
    /// <summary>Bytes in a long-mode gate (one IDT entry).</summary>
    public const int Size = 16;

    /// <summary>A present interrupt gate to <paramref name="handler"/>.</summary>
    public static GateDescriptor Interrupt(ulong handler, ushort selector, byte interruptStackTable = 0, byte dpl = 0) =>
        new(handler, selector, interruptStackTable, SegmentType.InterruptGate, dpl);

    /// <summary>The 16 bytes of the gate; the low quadword comes first in memory.</summary>
    /// <exception cref="ArgumentException">The IST slot, type or DPL is out of range.</exception>
    public UInt128 Encode()
    {
        if (InterruptStackTable > 7 || Type > 0xF || Dpl > 3)
        {
            throw new ArgumentException($"The IST slot {InterruptStackTable} (0-7), type 0x{Type:x} (0-0xF) or DPL {Dpl} (0-3) is out of range.");
        }

        ulong low = (Offset & 0xFFFF)
            | ((ulong)Selector << 16)
            | ((ulong)InterruptStackTable << 32)
            | ((ulong)Type << 40)
            | ((ulong)Dpl << 45)
            | (Present ? 1UL << 47 : 0)
            | (((Offset >> 16) & 0xFFFF) << 48);
        return new UInt128(Offset >> 32, low);
    }

    /// <summary>The gate that <paramref name="descriptor"/> (16 bytes, low quadword first) encodes.</summary>
    public static GateDescriptor Decode(UInt128 descriptor)
    {
        ulong low = (ulong)descriptor;
        ulong high = (ulong)(descriptor >> 64);
        ulong offset = (low & 0xFFFF) | (((low >> 48) & 0xFFFF) << 16) | ((high & 0xFFFF_FFFF) << 32);
        return new GateDescriptor(offset, (ushort)(low >> 16), (byte)((low >> 32) & 7), (byte)((low >> 40) & 0xF), (byte)((low >> 45) & 3), (low & (1UL << 47)) != 0);
    }
}
