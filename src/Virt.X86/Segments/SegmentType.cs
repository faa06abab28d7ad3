namespace Virt.X86;

/// <summary>
/// Values of the 4-bit type field of a segment descriptor and of <see cref="Virt.Cpu.SegmentRegister.Type"/>
/// (Intel SDM vol. 3, 3.4.5.1 and 3.5). Code and data types (S = 1) are combinations of bits; system types
/// (S = 0) are whole values, listed here with their meaning in long mode.
/// </summary>
public static class SegmentType
{
    /// <summary>Code/data bit 0: the processor has loaded the descriptor (it sets the bit in memory unless it is preset).</summary>
    public const byte Accessed = 1;

    /// <summary>Data bit 1: the segment is writable.</summary>
    public const byte Writable = 2;

    /// <summary>Code bit 1: the segment is readable, not only executable.</summary>
    public const byte Readable = 2;

    /// <summary>Data bit 2: expand-down (the limit is the lowest invalid offset).</summary>
    public const byte ExpandDown = 4;

    /// <summary>Code bit 2: conforming (callable from a less privileged CPL without a gate).</summary>
    public const byte Conforming = 4;

    /// <summary>Bit 3: a code segment (else data).</summary>
    public const byte Code = 8;

    /// <summary>Read/write data, accessed (3): what flat data segments use.</summary>
    public const byte DataReadWrite = Writable | Accessed;

    /// <summary>Execute/read code, accessed (0xB): what flat code segments use.</summary>
    public const byte CodeExecuteRead = Code | Readable | Accessed;

    /// <summary>System type 1: available 16-bit TSS (legacy modes only).</summary>
    public const byte Tss16Available = 1;

    /// <summary>System type 2: LDT.</summary>
    public const byte Ldt = 2;

    /// <summary>System type 3: busy 16-bit TSS; what TR holds after reset.</summary>
    public const byte Tss16Busy = 3;

    /// <summary>System type 9: available 32-bit TSS, or a 64-bit TSS in long mode.</summary>
    public const byte TssAvailable = 9;

    /// <summary>System type 0xB: busy 32-bit or 64-bit TSS; LTR needs it available and marks it busy.</summary>
    public const byte TssBusy = 0xB;

    /// <summary>System type 0xC: call gate.</summary>
    public const byte CallGate = 0xC;

    /// <summary>System type 0xE: interrupt gate (clears RFLAGS.IF on entry).</summary>
    public const byte InterruptGate = 0xE;

    /// <summary>System type 0xF: trap gate (leaves RFLAGS.IF alone).</summary>
    public const byte TrapGate = 0xF;
}
