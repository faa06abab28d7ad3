namespace Virt.Boot;

/// <summary>What to pass to a Linux kernel and where to put the boot structures.</summary>
/// <remarks>
/// The default layout of low memory: GDT 0x500 and TSS 0x580 (<see cref="ProcessorSetupOptions"/>),
/// zero page (or PVH start info, or Multiboot info) 0x7000, boot stack below 0x9000, page tables
/// 0x9000-0xEFFF, command line 0x20000, MP table 0x9FC00 (see <see cref="MpTable"/>).
/// </remarks>
public sealed record LinuxBootOptions
{
    /// <summary>The kernel command line (ASCII; no NUL).</summary>
    public string CommandLine { get; init; } = string.Empty;

    /// <summary>The initial RAM disk (e.g. a gzip-compressed cpio archive), or empty for none.</summary>
    public ReadOnlyMemory<byte> Initrd { get; init; }

    /// <summary>Where the boot parameters go: the zero page (bzImage), <c>hvm_start_info</c> (PVH) or <c>multiboot_info</c>; 4 KiB are reserved.</summary>
    public GuestAddress BootParamsAddress { get; init; } = new(0x7000);

    /// <summary>Where the command line goes.</summary>
    public GuestAddress CommandLineAddress { get; init; } = new(0x20000);

    /// <summary>The initial stack pointer (the kernel switches to its own stack early).</summary>
    public GuestAddress StackPointer { get; init; } = new(0x8FF0);

    /// <summary>The ACPI RSDP (from <see cref="AcpiTables.Write"/>), passed in the zero page's <c>acpi_rsdp_addr</c> or the PVH start info; null for none.</summary>
    public GuestAddress? AcpiRsdpAddress { get; init; }

    /// <summary>
    /// Whether <see cref="KernelImage.Load"/> decompresses a bzImage's kernel on the host (default
    /// <see langword="true"/>): a gzip or LZ4 payload holding a <c>vmlinux</c> with a PVH entry note is decompressed
    /// once per process and loaded at its link address, which saves the guest its decompression (a large share of a
    /// boot on an interpreted CPU). The kernel then runs without KASLR, as with <c>nokaslr</c>. Other bzImages, and
    /// every image when this is <see langword="false"/>, are loaded as they are and decompress themselves.
    /// </summary>
    public bool DecompressKernelOnHost { get; init; } = true;

    /// <summary>Where the GDT, TSS and page tables go.</summary>
    public ProcessorSetupOptions Processor { get; init; } = new();
}
