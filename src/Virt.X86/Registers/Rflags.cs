namespace Virt.X86;

/// <summary>RFLAGS bits (Intel SDM vol. 1, 3.4.3; vol. 3, 2.3).</summary>
public static class Rflags
{
    /// <summary>CF (bit 0): carry out of (or borrow into) the most significant bit.</summary>
    public const ulong Carry = 1UL << 0;

    /// <summary>Bit 1: reserved, always reads as 1; RFLAGS is never 0 on a real processor.</summary>
    public const ulong Fixed = 1UL << 1;

    /// <summary>PF (bit 2): the low byte of the result has an even number of set bits.</summary>
    public const ulong Parity = 1UL << 2;

    /// <summary>AF (bit 4): carry out of bit 3 (BCD arithmetic).</summary>
    public const ulong AuxiliaryCarry = 1UL << 4;

    /// <summary>ZF (bit 6): the result is zero.</summary>
    public const ulong Zero = 1UL << 6;

    /// <summary>SF (bit 7): the result's most significant bit.</summary>
    public const ulong Sign = 1UL << 7;

    /// <summary>TF (bit 8): single-step; #DB after the next instruction.</summary>
    public const ulong Trap = 1UL << 8;

    /// <summary>IF (bit 9): maskable interrupts are delivered.</summary>
    public const ulong InterruptEnable = 1UL << 9;

    /// <summary>DF (bit 10): string instructions count down.</summary>
    public const ulong Direction = 1UL << 10;

    /// <summary>OF (bit 11): signed overflow.</summary>
    public const ulong Overflow = 1UL << 11;

    /// <summary>IOPL (bits 12-13): the highest CPL that may use IN, OUT, CLI and STI without the TSS I/O bitmap.</summary>
    public const ulong IoPrivilegeLevel = 3UL << 12;

    /// <summary>NT (bit 14): nested task; IRET performs a task return.</summary>
    public const ulong NestedTask = 1UL << 14;

    /// <summary>RF (bit 16): resume; instruction breakpoints are suppressed for the next instruction.</summary>
    public const ulong Resume = 1UL << 16;

    /// <summary>VM (bit 17): virtual-8086 mode.</summary>
    public const ulong Virtual8086 = 1UL << 17;

    /// <summary>AC (bit 18): alignment check at CPL 3 (with CR0.AM); lets supervisor code reach user pages under SMAP.</summary>
    public const ulong AlignmentCheck = 1UL << 18;

    /// <summary>VIF (bit 19): virtual interrupt flag (VME/PVI).</summary>
    public const ulong VirtualInterrupt = 1UL << 19;

    /// <summary>VIP (bit 20): virtual interrupt pending (VME/PVI).</summary>
    public const ulong VirtualInterruptPending = 1UL << 20;

    /// <summary>ID (bit 21): a program that can toggle it has CPUID.</summary>
    public const ulong Id = 1UL << 21;

    /// <summary>The six arithmetic status flags: CF, PF, AF, ZF, SF and OF.</summary>
    public const ulong Status = Carry | Parity | AuxiliaryCarry | Zero | Sign | Overflow;
}
