using Virt.Cpu;

namespace Virt.X86;

/// <summary>
/// The registers that steer a page walk (CR0, CR3, CR4 and EFER) and the processor's physical-address width,
/// with the <see cref="PagingMode"/> they select.
/// </summary>
public readonly record struct PagingState
{
    /// <summary>Physical-address bits when nothing else is known: the architectural maximum, so no address bit is reserved.</summary>
    public const int MaxPhysicalAddressBits = 52;

    /// <summary>Creates the state from register values.</summary>
    /// <param name="cr0">CR0 (PG, WP).</param>
    /// <param name="cr3">CR3 (the root table).</param>
    /// <param name="cr4">CR4 (PSE, PAE, LA57, SMEP, SMAP).</param>
    /// <param name="efer">IA32_EFER (LMA, NXE).</param>
    /// <param name="physicalAddressBits">MAXPHYADDR (CPUID 0x8000_0008 EAX[7:0]), 32-52: address bits at or above it are reserved in entries.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="physicalAddressBits"/> is not 32-52.</exception>
    public PagingState(ulong cr0, ulong cr3, ulong cr4, ulong efer, int physicalAddressBits = MaxPhysicalAddressBits)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(physicalAddressBits, 32);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(physicalAddressBits, MaxPhysicalAddressBits);
        Cr0 = cr0;
        Cr3 = cr3;
        Cr4 = cr4;
        Efer = efer;
        PhysicalAddressBits = physicalAddressBits;
        Mode = (cr0 & X86.Cr0.Paging) == 0 ? PagingMode.Disabled
            : (cr4 & X86.Cr4.Pae) == 0 ? PagingMode.Legacy32
            : (efer & X86.Efer.LongModeActive) == 0 ? PagingMode.Pae
            : (cr4 & X86.Cr4.La57) != 0 ? PagingMode.FiveLevel
            : PagingMode.FourLevel;
    }

    /// <summary>CR0.</summary>
    public ulong Cr0 { get; }

    /// <summary>CR3.</summary>
    public ulong Cr3 { get; }

    /// <summary>CR4.</summary>
    public ulong Cr4 { get; }

    /// <summary>IA32_EFER.</summary>
    public ulong Efer { get; }

    /// <summary>MAXPHYADDR: physical-address bits the processor implements.</summary>
    public int PhysicalAddressBits { get; }

    /// <summary>The paging mode the registers select.</summary>
    public PagingMode Mode { get; }

    /// <summary>The state of a vCPU's special registers.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="physicalAddressBits"/> is not 32-52.</exception>
    public static PagingState FromRegisters(in SpecialRegisters registers, int physicalAddressBits = MaxPhysicalAddressBits) =>
        new(registers.Cr0, registers.Cr3, registers.Cr4, registers.Efer, physicalAddressBits);

    internal bool WriteProtect => (Cr0 & X86.Cr0.WriteProtect) != 0;

    internal bool NoExecuteEnabled => (Efer & X86.Efer.NoExecuteEnable) != 0 && Mode >= PagingMode.Pae;

    internal bool Smep => (Cr4 & X86.Cr4.Smep) != 0;

    internal bool Smap => (Cr4 & X86.Cr4.Smap) != 0;

    /// <summary>Address bits MAXPHYADDR-51 of a 64-bit entry, which must be zero.</summary>
    internal ulong ReservedAddressBits => PageTable.AddressMask & ~((1UL << PhysicalAddressBits) - 1);
}
