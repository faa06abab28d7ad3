using Microsoft.Win32.SafeHandles;
using Virt.Memory;

namespace Virt;

/// <summary>
/// Where a VM's RAM sits in the guest physical address space, as on a PC: from address 0 up to the 32-bit device window
/// (<see cref="LowRamLimit"/>: virtio-mmio windows, IOAPIC, local APIC and firmware live above it), and the rest from
/// 4 GiB up. A VM of at most <see cref="LowRamLimit"/> bytes has one region; a larger one two.
/// </summary>
/// <remarks>
/// Snapshots and migrations address RAM by its offset in this layout (low RAM first, then high RAM), so a saved machine
/// does not depend on where the device window is.
/// </remarks>
internal static class RamLayout
{
    /// <summary>The end of low RAM: the start of the 32-bit device window (the virtio-mmio windows start here).</summary>
    public const ulong LowRamLimit = VirtualMachineBuilder.VirtioMmioBase;

    /// <summary>Where RAM above the device window starts: 4 GiB.</summary>
    public const ulong HighRamStart = 1UL << 32;

    /// <summary>Bytes of RAM below the device window for a VM of <paramref name="size"/> bytes.</summary>
    public static ulong LowSize(ulong size) => Math.Min(size, LowRamLimit);

    /// <summary>The RAM regions of a VM of <paramref name="size"/> bytes.</summary>
    public static GuestMemoryRegionSpec[] Regions(ulong size) => size <= LowRamLimit
        ? [GuestMemoryRegionSpec.Ram(GuestAddress.Zero, size)]
        : [GuestMemoryRegionSpec.Ram(GuestAddress.Zero, LowRamLimit), GuestMemoryRegionSpec.Ram(new GuestAddress(HighRamStart), size - LowRamLimit)];

    /// <summary>The RAM regions of a VM of <paramref name="size"/> bytes, mapped from <paramref name="file"/> (RAM offset 0 at <paramref name="offset"/>).</summary>
    public static GuestMemoryRegionSpec[] Regions(ulong size, SafeFileHandle file, long offset) => size <= LowRamLimit
        ? [GuestMemoryRegionSpec.FromFile(GuestAddress.Zero, size, file, offset)]
        :
        [
            GuestMemoryRegionSpec.FromFile(GuestAddress.Zero, LowRamLimit, file, offset),
            GuestMemoryRegionSpec.FromFile(new GuestAddress(HighRamStart), size - LowRamLimit, file, offset + (long)LowRamLimit),
        ];

    /// <summary>The guest physical address of RAM offset <paramref name="ramOffset"/>.</summary>
    public static GuestAddress ToGuestAddress(ulong ramOffset) =>
        new(ramOffset < LowRamLimit ? ramOffset : HighRamStart + (ramOffset - LowRamLimit));

    /// <summary>Whether <paramref name="length"/> bytes from <paramref name="address"/> lie in the RAM of a VM of <paramref name="size"/> bytes.</summary>
    public static bool Contains(ulong size, ulong address, ulong length)
    {
        ulong low = LowSize(size);
        if (address < low)
        {
            return length <= low - address;
        }

        ulong high = size - low;
        return high > 0 && address >= HighRamStart && address - HighRamStart <= high && length <= high - (address - HighRamStart);
    }

    /// <summary>The RAM ranges as text for messages, e.g. "0x0-0xcfffffff and 0x100000000-0x17fffffff".</summary>
    public static string Describe(ulong size)
    {
        ulong low = LowSize(size);
        return size <= low ? $"0x0-0x{low - 1:x}" : $"0x0-0x{low - 1:x} and 0x{HighRamStart:x}-0x{HighRamStart + (size - low) - 1:x}";
    }
}
