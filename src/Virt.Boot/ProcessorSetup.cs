using Virt.Cpu;
using Virt.Memory;

namespace Virt.Boot;

/// <summary>The processor mode a vCPU starts in.</summary>
public enum StartMode
{
    /// <summary>16-bit real mode, segments at selector * 16.</summary>
    Real,
    /// <summary>32-bit protected mode with flat segments, paging off.</summary>
    Protected32,
    /// <summary>64-bit long mode with flat segments and identity-mapped paging.</summary>
    Long64,
}

/// <summary>Where <see cref="ProcessorSetup"/> puts its tables in guest memory, and what it maps.</summary>
public sealed record ProcessorSetupOptions
{
    /// <summary>Guest address of the GDT (needs 0x48 bytes).</summary>
    public GuestAddress GdtAddress { get; init; } = new(0x500);

    /// <summary>Guest address of the 64-bit TSS (needs 0x68 bytes).</summary>
    public GuestAddress TssAddress { get; init; } = new(0x580);

    /// <summary>Guest address of the page tables for <see cref="StartMode.Long64"/>: PML4, PDPT and four page directories (0x6000 bytes, 4 KiB aligned).</summary>
    public GuestAddress PageTableAddress { get; init; } = new(0x9000);

    /// <summary>Whether the identity map is accessible from CPL 3 (U/S set on every entry).</summary>
    public bool UserAccessible { get; init; } = true;

    /// <summary>Bytes of the identity map for long mode, in 2 MiB pages; at most 4 GiB.</summary>
    public ulong IdentityMapSize { get; init; } = 4UL << 30;

    /// <summary>Stack pointer in the TSS for interrupts from CPL 3 (RSP0), 0 for none.</summary>
    public ulong KernelStack { get; init; }
}

/// <summary>
/// Builds the state a vCPU needs to start directly in real, 32-bit protected or 64-bit long mode: a
/// GDT, a TSS and (for long mode) identity page tables in guest memory, and the matching special
/// registers.
/// </summary>
/// <remarks>
/// GDT layout (selectors): 0x08 kernel 64-bit code, 0x10 kernel data, 0x18 kernel 32-bit code,
/// 0x20 user 32-bit code, 0x28 user data, 0x30 user 64-bit code (the order <c>SYSRET</c> expects with
/// <c>STAR[63:48] = 0x20</c>), 0x38 the 64-bit TSS.
/// </remarks>
public static class ProcessorSetup
{
    /// <summary>Kernel 64-bit code selector.</summary>
    public const ushort KernelCode64 = 0x08;
    /// <summary>Kernel data selector.</summary>
    public const ushort KernelData = 0x10;
    /// <summary>Kernel 32-bit code selector.</summary>
    public const ushort KernelCode32 = 0x18;
    /// <summary>User 32-bit code selector (RPL 3).</summary>
    public const ushort UserCode32 = 0x20 | 3;
    /// <summary>User data selector (RPL 3).</summary>
    public const ushort UserData = 0x28 | 3;
    /// <summary>User 64-bit code selector (RPL 3).</summary>
    public const ushort UserCode64 = 0x30 | 3;
    /// <summary>TSS selector.</summary>
    public const ushort TssSelector = 0x38;

    /// <summary>CR0.PE: protected mode.</summary>
    public const ulong Cr0ProtectionEnable = 1UL << 0;
    /// <summary>CR0.MP: monitor coprocessor.</summary>
    public const ulong Cr0MonitorCoprocessor = 1UL << 1;
    /// <summary>CR0.ET: extension type (always 1).</summary>
    public const ulong Cr0ExtensionType = 1UL << 4;
    /// <summary>CR0.NE: native x87 error reporting.</summary>
    public const ulong Cr0NumericError = 1UL << 5;
    /// <summary>CR0.WP: supervisor writes honour read-only pages.</summary>
    public const ulong Cr0WriteProtect = 1UL << 16;
    /// <summary>CR0.PG: paging.</summary>
    public const ulong Cr0Paging = 1UL << 31;
    /// <summary>CR4.PAE.</summary>
    public const ulong Cr4Pae = 1UL << 5;
    /// <summary>CR4.OSFXSR: SSE and FXSAVE enabled.</summary>
    public const ulong Cr4OsFxsr = 1UL << 9;
    /// <summary>CR4.OSXMMEXCPT: SSE exceptions as #XM.</summary>
    public const ulong Cr4OsXmmExcpt = 1UL << 10;
    /// <summary>EFER.SCE: SYSCALL enabled.</summary>
    public const ulong EferSyscall = 1UL << 0;
    /// <summary>EFER.LME: long mode enabled.</summary>
    public const ulong EferLongModeEnable = 1UL << 8;
    /// <summary>EFER.LMA: long mode active.</summary>
    public const ulong EferLongModeActive = 1UL << 10;
    /// <summary>EFER.NXE: no-execute enabled.</summary>
    public const ulong EferNoExecute = 1UL << 11;

    // Page-table entry bits.
    private const ulong Present = 1, Writable = 2, User = 4, PageSize2M = 0x80;

    /// <summary>
    /// Writes the tables for <paramref name="mode"/> into <paramref name="memory"/> and returns
    /// <paramref name="current"/> with segment, descriptor-table and control registers set for it.
    /// </summary>
    /// <exception cref="ArgumentException">The tables do not fit in guest RAM at the addresses in <paramref name="options"/>.</exception>
    public static SpecialRegisters Prepare(IGuestMemory memory, SpecialRegisters current, StartMode mode, ProcessorSetupOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(memory);
        options ??= new ProcessorSetupOptions();
        var s = current;
        if (mode == StartMode.Real)
        {
            s.Cs = SegmentRegister.RealMode(0, code: true);
            s.Ds = s.Es = s.Fs = s.Gs = s.Ss = SegmentRegister.RealMode(0);
            s.Tr = new SegmentRegister { Type = 3, Present = true, Limit = 0xFFFF };
            s.Ldt = new SegmentRegister { Type = 2, Present = true, Limit = 0xFFFF };
            s.Gdt = new DescriptorTable { Limit = 0xFFFF };
            s.Idt = new DescriptorTable { Limit = 0x3FF };
            s.Cr0 = Cr0ExtensionType;
            s.Cr3 = 0;
            s.Cr4 = 0;
            s.Efer = 0;
            return s;
        }

        WriteGdtAndTss(memory, options);
        s.Gdt = new DescriptorTable { Base = options.GdtAddress.Value, Limit = 0x47 };
        s.Idt = new DescriptorTable { Base = 0, Limit = 0 };
        s.Tr = new SegmentRegister
        {
            Base = options.TssAddress.Value, Limit = 0x67, Selector = TssSelector, Type = 0xB, Present = true,
        };
        s.Ldt = new SegmentRegister { Unusable = true, Type = 2, Present = false };
        s.Cr0 = Cr0ProtectionEnable | Cr0MonitorCoprocessor | Cr0ExtensionType | Cr0NumericError;
        s.Cr4 = Cr4OsFxsr | Cr4OsXmmExcpt;
        if (mode == StartMode.Protected32)
        {
            s.Cs = SegmentRegister.Flat(KernelCode32, code: true, longMode: false);
            s.Ds = s.Es = s.Fs = s.Gs = s.Ss = SegmentRegister.Flat(KernelData, code: false, longMode: false);
            s.Efer = 0;
            s.Cr3 = 0;
            return s;
        }

        WritePageTables(memory, options);
        s.Cs = SegmentRegister.Flat(KernelCode64, code: true, longMode: true);
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = SegmentRegister.Flat(KernelData, code: false, longMode: false);
        s.Cr0 |= Cr0Paging | Cr0WriteProtect;
        s.Cr4 |= Cr4Pae;
        s.Cr3 = options.PageTableAddress.Value;
        s.Efer = EferLongModeEnable | EferLongModeActive | EferNoExecute | EferSyscall;
        return s;
    }

    /// <summary>A flat user (CPL 3) code or data segment register for the selectors of this GDT.</summary>
    public static SegmentRegister UserSegment(bool code, bool longMode = true) => code
        ? SegmentRegister.Flat(longMode ? UserCode64 : UserCode32, code: true, longMode: longMode, dpl: 3)
        : SegmentRegister.Flat(UserData, code: false, longMode: false, dpl: 3);

    private static void WriteGdtAndTss(IGuestMemory memory, ProcessorSetupOptions o)
    {
        Require(memory, o.GdtAddress, 0x48, "GDT");
        Require(memory, o.TssAddress, 0x68, "TSS");
        ulong tss = o.TssAddress.Value;
        Span<ulong> gdt =
        [
            0,
            0x00AF9B000000FFFF, // kernel code 64
            0x00CF93000000FFFF, // kernel data
            0x00CF9B000000FFFF, // kernel code 32
            0x00CFFB000000FFFF, // user code 32
            0x00CFF3000000FFFF, // user data
            0x00AFFB000000FFFF, // user code 64
            // 64-bit TSS descriptor (two slots): limit 0x67, type 0xB (busy), present.
            0x67 | ((tss & 0xFFFFFF) << 16) | (0x8BUL << 40) | (((tss >> 24) & 0xFF) << 56),
            tss >> 32,
        ];
        for (int i = 0; i < gdt.Length; i++)
        {
            memory.Write(o.GdtAddress + (ulong)(i * 8), gdt[i]);
        }

        Span<byte> tssBytes = stackalloc byte[0x68];
        tssBytes.Clear();
        BitConverter.TryWriteBytes(tssBytes[4..], o.KernelStack); // RSP0
        BitConverter.TryWriteBytes(tssBytes[0x66..], (ushort)0x68); // I/O map base past the limit: no I/O bitmap
        memory.Write(o.TssAddress, tssBytes);
    }

    private static void WritePageTables(IGuestMemory memory, ProcessorSetupOptions o)
    {
        if (!o.PageTableAddress.IsAligned(4096))
        {
            throw new ArgumentException($"The page-table address {o.PageTableAddress} must be 4 KiB aligned.", nameof(o));
        }

        if (o.IdentityMapSize == 0 || o.IdentityMapSize > 4UL << 30)
        {
            throw new ArgumentException("The identity map must be between 2 MiB and 4 GiB.", nameof(o));
        }

        Require(memory, o.PageTableAddress, 0x6000, "page tables");
        ulong flags = Present | Writable | (o.UserAccessible ? User : 0);
        var pml4 = o.PageTableAddress;
        var pdpt = pml4 + 0x1000;
        memory.Write(pml4, pdpt.Value | flags);
        for (ulong i = 1; i < 512; i++)
        {
            memory.Write(pml4 + (i * 8), 0UL);
        }

        ulong pages = (o.IdentityMapSize + (2UL << 20) - 1) >> 21;
        for (ulong d = 0; d < 4; d++)
        {
            var pd = pml4 + (0x2000 + (d * 0x1000));
            memory.Write(pdpt + (d * 8), d * 512 < pages ? pd.Value | flags : 0UL);
            for (ulong e = 0; e < 512; e++)
            {
                ulong page = (d * 512) + e;
                memory.Write(pd + (e * 8), page < pages ? (page << 21) | flags | PageSize2M : 0UL);
            }
        }

        for (ulong i = 4; i < 512; i++)
        {
            memory.Write(pdpt + (i * 8), 0UL);
        }
    }

    private static void Require(IGuestMemory memory, GuestAddress address, ulong length, string what)
    {
        if (!memory.Contains(address, length))
        {
            throw new ArgumentException($"The {what} at {address} (0x{length:x} bytes) is not inside guest RAM; give the VM more memory or move the {what}.");
        }
    }
}
