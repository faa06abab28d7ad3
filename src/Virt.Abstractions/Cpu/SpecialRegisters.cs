namespace Virt.Cpu;

/// <summary>A segment register with its hidden descriptor cache, as the processor holds it.</summary>
public struct SegmentRegister
{
    /// <summary>Segment base address.</summary>
    public ulong Base;
    /// <summary>Segment limit in bytes (already scaled by granularity), e.g. 0xFFFFFFFF for a flat 4 GiB segment.</summary>
    public uint Limit;
    /// <summary>The visible selector.</summary>
    public ushort Selector;
    /// <summary>Descriptor type field (4 bits): for code/data, bit 3 = code, bit 1 = writable/readable, bit 0 = accessed.</summary>
    public byte Type;
    /// <summary>Present bit.</summary>
    public bool Present;
    /// <summary>Descriptor privilege level (0-3).</summary>
    public byte Dpl;
    /// <summary>D/B bit: 32-bit default operand size (code) or big stack (data).</summary>
    public bool DefaultBig;
    /// <summary>S bit: <see langword="true"/> for code/data, <see langword="false"/> for system descriptors (TSS, LDT, gates).</summary>
    public bool IsCodeOrData;
    /// <summary>L bit: 64-bit code segment.</summary>
    public bool Long;
    /// <summary>G bit: limit is in 4 KiB units in the descriptor.</summary>
    public bool Granularity;
    /// <summary>AVL bit.</summary>
    public bool Available;
    /// <summary>Whether the register holds no usable segment (a null selector loaded in protected mode).</summary>
    public bool Unusable;

    /// <summary>A real-mode segment: base = selector * 16, 64 KiB limit, read/write data (or execute/read code).</summary>
    public static SegmentRegister RealMode(ushort selector, bool code = false) => new()
    {
        Base = (ulong)selector << 4, Limit = 0xFFFF, Selector = selector, Type = code ? (byte)0xB : (byte)0x3,
        Present = true, IsCodeOrData = true,
    };

    /// <summary>A flat 4 GiB code or data segment for protected or long mode.</summary>
    /// <param name="selector">The selector (its RPL should equal <paramref name="dpl"/>).</param>
    /// <param name="code">Code (execute/read) instead of data (read/write).</param>
    /// <param name="longMode">For code: a 64-bit segment (L=1, D=0); otherwise 32-bit (D=1).</param>
    /// <param name="dpl">Privilege level.</param>
    public static SegmentRegister Flat(ushort selector, bool code, bool longMode, byte dpl = 0) => new()
    {
        Base = 0, Limit = 0xFFFFFFFF, Selector = selector, Type = code ? (byte)0xB : (byte)0x3, Present = true,
        Dpl = dpl, DefaultBig = !(code && longMode), IsCodeOrData = true, Long = code && longMode, Granularity = true,
    };
}

/// <summary>A descriptor-table register (GDTR or IDTR).</summary>
public struct DescriptorTable
{
    /// <summary>Linear base address of the table.</summary>
    public ulong Base;
    /// <summary>Limit: size in bytes minus one.</summary>
    public ushort Limit;
}

/// <summary>Segment, descriptor-table and control registers of a vCPU.</summary>
public struct SpecialRegisters
{
    /// <summary>Code segment.</summary>
    public SegmentRegister Cs;
    /// <summary>Data segment.</summary>
    public SegmentRegister Ds;
    /// <summary>Extra segment.</summary>
    public SegmentRegister Es;
    /// <summary>FS.</summary>
    public SegmentRegister Fs;
    /// <summary>GS.</summary>
    public SegmentRegister Gs;
    /// <summary>Stack segment.</summary>
    public SegmentRegister Ss;
    /// <summary>Task register.</summary>
    public SegmentRegister Tr;
    /// <summary>Local descriptor table register.</summary>
    public SegmentRegister Ldt;
    /// <summary>Global descriptor table register.</summary>
    public DescriptorTable Gdt;
    /// <summary>Interrupt descriptor table register.</summary>
    public DescriptorTable Idt;
    /// <summary>CR0 (PE = bit 0, PG = bit 31).</summary>
    public ulong Cr0;
    /// <summary>CR2: the linear address of the last page fault.</summary>
    public ulong Cr2;
    /// <summary>CR3: page-table root.</summary>
    public ulong Cr3;
    /// <summary>CR4 (PAE = bit 5, OSFXSR = bit 9, OSXMMEXCPT = bit 10).</summary>
    public ulong Cr4;
    /// <summary>CR8: task priority.</summary>
    public ulong Cr8;
    /// <summary>IA32_EFER (LME = bit 8, LMA = bit 10, NXE = bit 11, SCE = bit 0).</summary>
    public ulong Efer;
    /// <summary>IA32_APIC_BASE.</summary>
    public ulong ApicBase;
}
