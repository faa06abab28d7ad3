namespace Virt;

/// <summary>How a Linux guest finds the VM's virtio-mmio devices.</summary>
public enum VirtioDiscovery
{
    /// <summary>ACPI DSDT entries (<c>LNRO0005</c>): works with kernels built without <c>CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES</c>, such as Debian's.</summary>
    Acpi,

    /// <summary><c>virtio_mmio.device=</c> parameters on the kernel command line (and no ACPI entries for them).</summary>
    CommandLine,
}

public sealed partial class VirtualMachineBuilder
{
    /// <summary>The smallest RAM accepted for a Linux guest.</summary>
    public const ulong MinimumLinuxMemory = 128UL << 20;

    /// <summary>
    /// Boots a Linux kernel (a bzImage, or an ELF <c>vmlinux</c> with a PVH note, or a Multiboot kernel).
    /// The VM then gets what the kernel expects: ACPI tables (processors, IOAPIC, power-off), the
    /// interrupt controllers, an i8042 (its reset line stops the VM with <see cref="StopReason.Reset"/>),
    /// a CMOS RTC with the host's time, and the ACPI sleep registers (power-off stops the VM with
    /// <see cref="StopReason.PowerOff"/>). With a serial console, <c>console=ttyS0</c> is added to the
    /// command line unless it names a console.
    /// </summary>
    public VirtualMachineBuilder WithLinuxKernel(ReadOnlyMemory<byte> kernel)
    {
        if (kernel.IsEmpty)
        {
            throw new ArgumentException("The kernel image is empty; pass the bytes of a bzImage (e.g. /boot/vmlinuz-*).", nameof(kernel));
        }

        return new(_config with { Kernel = kernel, InterruptController = true, LinuxPlatform = true });
    }

    /// <summary>Reads the kernel from <paramref name="path"/>; see <see cref="WithLinuxKernel(ReadOnlyMemory{byte})"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public VirtualMachineBuilder WithLinuxKernel(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"The kernel '{path}' does not exist. scripts/get-linux-guest.sh puts a Debian kernel at artifacts/linux/vmlinuz.", path);
        }

        return WithLinuxKernel(File.ReadAllBytes(path));
    }

    /// <summary>Gives the kernel an initial RAM disk (e.g. a gzip-compressed cpio archive).</summary>
    public VirtualMachineBuilder WithInitrd(ReadOnlyMemory<byte> initrd) => new(_config with { Initrd = initrd });

    /// <summary>Reads the initial RAM disk from <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public VirtualMachineBuilder WithInitrd(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"The initrd '{path}' does not exist. scripts/get-linux-guest.sh builds one at artifacts/linux/initramfs.cpio.", path);
        }

        return WithInitrd(File.ReadAllBytes(path));
    }

    /// <summary>Sets the kernel command line; the console and, with <see cref="VirtioDiscovery.CommandLine"/>, the virtio devices are appended.</summary>
    public VirtualMachineBuilder WithKernelCommandLine(string commandLine)
    {
        ArgumentNullException.ThrowIfNull(commandLine);
        return new(_config with { KernelCommandLine = commandLine });
    }

    /// <summary>
    /// Whether a bzImage kernel is decompressed on the host (the default) or by itself in the guest. On the host, a
    /// gzip or LZ4 payload that holds a <c>vmlinux</c> with a PVH entry note (Debian's and most distribution kernels
    /// built with <c>CONFIG_PVH</c>) is decompressed once per process and the <c>vmlinux</c> is loaded at its link
    /// address and entered through the PVH entry: the guest skips its decompressor, a sizeable part of a boot on the
    /// interpreter. The kernel then runs without KASLR, as with <c>nokaslr</c>. Any other bzImage decompresses itself
    /// as before; pass <see langword="false"/> for that always (for example to have KASLR).
    /// </summary>
    public VirtualMachineBuilder WithHostKernelDecompression(bool enabled = true) => new(_config with { DecompressKernelOnHost = enabled });

    /// <summary>Chooses how the guest kernel finds virtio devices (default <see cref="VirtioDiscovery.Acpi"/>).</summary>
    public VirtualMachineBuilder WithVirtioDiscovery(VirtioDiscovery discovery) => new(_config with { VirtioDiscovery = discovery });

    private static void ValidateLinux(VirtualMachineConfiguration c)
    {
        if (c.Kernel.IsEmpty)
        {
            if (!c.Initrd.IsEmpty || c.KernelCommandLine is not null)
            {
                throw new ArgumentException("An initrd or kernel command line is set but no kernel. Call WithLinuxKernel(path).");
            }

            return;
        }

        if (c.EntryPoint is not null || c.Images.Count > 0)
        {
            throw new ArgumentException("A Linux kernel and a flat binary with an entry point cannot be combined; use one or the other.");
        }

        if (c.MemorySize < MinimumLinuxMemory)
        {
            throw new ArgumentException($"A Linux guest needs at least {MinimumLinuxMemory >> 20} MiB of RAM (the VM has {c.MemorySize >> 20} MiB). Use WithMemoryMiB(256), for example.");
        }

        if (c.VcpuCount > AcpiProcessorLimit)
        {
            throw new ArgumentException($"A Linux guest boots with at most {AcpiProcessorLimit} vCPUs here (one ACPI local APIC entry each, APIC IDs below the IOAPIC's); the VM has {c.VcpuCount}. Use WithVcpus(n) with n <= {AcpiProcessorLimit}.");
        }
    }

    /// <summary>Most vCPUs of a Linux guest: the MADT announces APIC IDs 0 to n - 1 and gives the IOAPIC ID n, below 255.</summary>
    private const int AcpiProcessorLimit = 254;
}
