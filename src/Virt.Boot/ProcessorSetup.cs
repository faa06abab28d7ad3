using System.Buffers.Binary;
using Virt.Cpu;
using Virt.Memory;
using Virt.X86;

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

    /// <summary>CR0.PE: protected mode (<see cref="Cr0.ProtectionEnable"/>).</summary>
    public const ulong Cr0ProtectionEnable = Cr0.ProtectionEnable;
    /// <summary>CR0.MP: monitor coprocessor (<see cref="Cr0.MonitorCoprocessor"/>).</summary>
    public const ulong Cr0MonitorCoprocessor = Cr0.MonitorCoprocessor;
    /// <summary>CR0.ET: extension type, always 1 (<see cref="Cr0.ExtensionType"/>).</summary>
    public const ulong Cr0ExtensionType = Cr0.ExtensionType;
    /// <summary>CR0.NE: native x87 error reporting (<see cref="Cr0.NumericError"/>).</summary>
    public const ulong Cr0NumericError = Cr0.NumericError;
    /// <summary>CR0.WP: supervisor writes honour read-only pages (<see cref="Cr0.WriteProtect"/>).</summary>
    public const ulong Cr0WriteProtect = Cr0.WriteProtect;
    /// <summary>CR0.PG: paging (<see cref="Cr0.Paging"/>).</summary>
    public const ulong Cr0Paging = Cr0.Paging;
    /// <summary>CR4.PAE (<see cref="Cr4.Pae"/>).</summary>
    public const ulong Cr4Pae = Cr4.Pae;
    /// <summary>CR4.OSFXSR: SSE and FXSAVE enabled (<see cref="Cr4.OsFxsr"/>).</summary>
    public const ulong Cr4OsFxsr = Cr4.OsFxsr;
    /// <summary>CR4.OSXMMEXCPT: SSE exceptions as #XM (<see cref="Cr4.OsXmmExcpt"/>).</summary>
    public const ulong Cr4OsXmmExcpt = Cr4.OsXmmExcpt;
    /// <summary>EFER.SCE: SYSCALL enabled (<see cref="Efer.SyscallEnable"/>).</summary>
    public const ulong EferSyscall = Efer.SyscallEnable;
    /// <summary>EFER.LME: long mode enabled (<see cref="Efer.LongModeEnable"/>).</summary>
    public const ulong EferLongModeEnable = Efer.LongModeEnable;
    /// <summary>EFER.LMA: long mode active (<see cref="Efer.LongModeActive"/>).</summary>
    public const ulong EferLongModeActive = Efer.LongModeActive;
    /// <summary>EFER.NXE: no-execute enabled (<see cref="Efer.NoExecuteEnable"/>).</summary>
    public const ulong EferNoExecute = Efer.NoExecuteEnable;

    /// <summary>Bytes of the GDT: the null descriptor, six code/data descriptors and the 16-byte TSS descriptor.</summary>
    private const int GdtSize = (7 * SegmentDescriptor.Size) + SegmentDescriptor.SystemSize;

    private const PageFlags IdentityMapFlags = PageFlags.Present | PageFlags.Writable;

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
            s.Tr = new SegmentRegister { Type = SegmentType.Tss16Busy, Present = true, Limit = 0xFFFF };
            s.Ldt = new SegmentRegister { Type = SegmentType.Ldt, Present = true, Limit = 0xFFFF };
            s.Gdt = new DescriptorTable { Limit = 0xFFFF };
            s.Idt = new DescriptorTable { Limit = 0x3FF };
            s.Cr0 = Cr0ExtensionType;
            s.Cr3 = 0;
            s.Cr4 = 0;
            s.Efer = 0;
            return s;
        }

        s.Tr = new SegmentRegister
        {
            Base = options.TssAddress.Value, Limit = TaskStateSegment.Limit, Selector = TssSelector, Type = SegmentType.TssBusy, Present = true,
        };
        WriteGdtAndTss(memory, options, s.Tr);
        s.Gdt = new DescriptorTable { Base = options.GdtAddress.Value, Limit = GdtSize - 1 };
        s.Idt = new DescriptorTable { Base = 0, Limit = 0 };
        s.Ldt = new SegmentRegister { Unusable = true, Type = SegmentType.Ldt, Present = false };
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

    private static void WriteGdtAndTss(IGuestMemory memory, ProcessorSetupOptions o, in SegmentRegister tr)
    {
        Require(memory, o.GdtAddress, GdtSize, "GDT");
        Require(memory, o.TssAddress, TaskStateSegment.Size, "TSS");
        Span<ulong> gdt =
        [
            0,
            SegmentDescriptor.Encode(SegmentRegister.Flat(KernelCode64, code: true, longMode: true)),
            SegmentDescriptor.Encode(SegmentRegister.Flat(KernelData, code: false, longMode: false)),
            SegmentDescriptor.Encode(SegmentRegister.Flat(KernelCode32, code: true, longMode: false)),
            SegmentDescriptor.Encode(UserSegment(code: true, longMode: false)),
            SegmentDescriptor.Encode(UserSegment(code: false)),
            SegmentDescriptor.Encode(UserSegment(code: true)),
        ];
        for (int i = 0; i < gdt.Length; i++)
        {
            memory.Write(o.GdtAddress + (ulong)(i * SegmentDescriptor.Size), gdt[i]);
        }

        // The TSS descriptor takes two slots; it is marked busy, as LTR would leave it.
        memory.Write(o.GdtAddress + TssSelector, SegmentDescriptor.EncodeSystem(tr));

        Span<byte> tssBytes = stackalloc byte[TaskStateSegment.Size];
        tssBytes.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(tssBytes[TaskStateSegment.Rsp0Offset..], o.KernelStack);
        BinaryPrimitives.WriteUInt16LittleEndian(tssBytes[TaskStateSegment.IoMapBaseOffset..], TaskStateSegment.NoIoBitmap);
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
        ulong flags = (ulong)(IdentityMapFlags | (o.UserAccessible ? PageFlags.User : PageFlags.None));
        var pml4 = o.PageTableAddress;
        var pdpt = pml4 + 0x1000;
        memory.Write(pml4, pdpt.Value | flags);
        for (ulong i = 1; i < 512; i++)
        {
            memory.Write(pml4 + (i * 8), 0UL);
        }

        ulong pages = (o.IdentityMapSize + PageTable.LargePageSize - 1) / PageTable.LargePageSize;
        for (ulong d = 0; d < 4; d++)
        {
            var pd = pml4 + (0x2000 + (d * 0x1000));
            memory.Write(pdpt + (d * 8), d * 512 < pages ? pd.Value | flags : 0UL);
            for (ulong e = 0; e < 512; e++)
            {
                ulong page = (d * 512) + e;
                memory.Write(pd + (e * 8), page < pages ? (page * PageTable.LargePageSize) | flags | (ulong)PageFlags.PageSize : 0UL);
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
