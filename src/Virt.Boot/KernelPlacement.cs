namespace Virt.Boot;

/// <summary>
/// Where a kernel that asks for fixed physical addresses may load: in RAM the memory map reports usable, and clear of
/// what the loader and the platform put in low memory. Below 1 MiB that is the real-mode interrupt vector table and
/// BIOS data area (0-0x4FF), the GDT and TSS, the boot information, the boot stack and the command line; the ISA hole
/// (0x9FC00-0xFFFFF: extended BIOS data area with the MP table, ACPI tables, the BIOS and reset vector) is not RAM in
/// the map, so it is refused as well.
/// </summary>
internal static class KernelPlacement
{
    /// <summary>Bytes of the real-mode interrupt vector table (0-0x3FF) and the BIOS data area (0x400-0x4FF).</summary>
    public const ulong RealModeAreaEnd = 0x500;

    /// <summary>Bytes of the boot stack kept below <see cref="LinuxBootOptions.StackPointer"/>.</summary>
    public const ulong BootStackSize = 0x1000;

    private const ulong GdtSize = 0x48, TssSize = 0x68, InfoSize = 0x1000;

    /// <summary>What the loader and platform place in guest memory for a protected-mode entry with <paramref name="options"/>.</summary>
    /// <param name="options">The boot layout.</param>
    /// <param name="commandLineBytes">Bytes written at <see cref="LinuxBootOptions.CommandLineAddress"/> (the command line, its NUL and whatever follows it).</param>
    public static IReadOnlyList<BootPlacement> ProtectedModeStructures(LinuxBootOptions options, ulong commandLineBytes)
    {
        ulong stackTop = options.StackPointer.Value;
        ulong stackBottom = stackTop > BootStackSize ? stackTop - BootStackSize : 0;
        return
        [
            new BootPlacement("the real-mode interrupt vector table and BIOS data area", new GuestAddress(0), RealModeAreaEnd),
            new BootPlacement("the GDT", options.Processor.GdtAddress, GdtSize),
            new BootPlacement("the TSS", options.Processor.TssAddress, TssSize),
            new BootPlacement("the boot information", options.BootParamsAddress, InfoSize),
            new BootPlacement("the boot stack", new GuestAddress(stackBottom), stackTop - stackBottom),
            new BootPlacement("the command line", options.CommandLineAddress, commandLineBytes),
        ];
    }

    /// <summary>Refuses [<paramref name="start"/>, + <paramref name="length"/>) unless it is RAM and clear of <paramref name="reserved"/>.</summary>
    /// <exception cref="BootImageException">The range is not RAM or overlaps one of <paramref name="reserved"/>; the message says which.</exception>
    public static void Check(string field, string what, ulong start, ulong length, IReadOnlyList<E820Entry> map, IReadOnlyList<BootPlacement> reserved)
    {
        if (length == 0)
        {
            return;
        }

        ulong end = start + length;
        if (end < start)
        {
            throw new BootImageException(field, $"{what} at 0x{start:x} (0x{length:x} bytes) wraps around the address space; the image is corrupt.");
        }

        foreach (var r in reserved)
        {
            if (r.Length != 0 && start < r.Address.Value + r.Length && r.Address.Value < end)
            {
                throw new BootImageException(field,
                    $"{what} at 0x{start:x}-0x{end - 1:x} overlaps {r.Name} at 0x{r.Address.Value:x}-0x{r.Address.Value + r.Length - 1:x}; link the kernel clear of it (with the default boot layout 0x10000-0x1FFFF and 0x30000-0x9FBFF are free below 1 MiB).");
            }
        }

        if (!E820Map.IsRam(map, start, length))
        {
            throw start < E820Map.ExtendedMemoryStart && end > E820Map.BaseMemoryEnd
                ? new BootImageException(field, $"{what} at 0x{start:x}-0x{end - 1:x} reaches into 0x{E820Map.BaseMemoryEnd:x}-0xfffff (the extended BIOS data area, MP and ACPI tables, the BIOS), which is not RAM; link the kernel below 0x{E820Map.BaseMemoryEnd:x} or at 1 MiB and above.")
                : new BootImageException(field, $"{what} at 0x{start:x}-0x{end - 1:x} is not in guest RAM; give the VM more memory.");
        }
    }
}
