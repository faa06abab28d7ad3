using Virt.Cpu;

namespace Virt.Boot;

/// <summary>One thing a loader put into guest memory.</summary>
/// <param name="Name">What it is, e.g. <c>kernel</c>, <c>zero page</c>, <c>initrd</c>, <c>command line</c>.</param>
/// <param name="Address">Where it starts.</param>
/// <param name="Length">How many bytes it occupies (for the kernel, the bytes it needs to run in, which may exceed the file).</param>
public readonly record struct BootPlacement(string Name, GuestAddress Address, ulong Length);

/// <summary>The state a vCPU starts in after a kernel was loaded, and what was placed where.</summary>
public sealed record BootResult
{
    /// <summary>The address the vCPU starts executing at (also in <see cref="Registers"/>).</summary>
    public required GuestAddress EntryPoint { get; init; }

    /// <summary>The processor mode the entry point expects.</summary>
    public required StartMode Mode { get; init; }

    /// <summary>General registers for the boot CPU, including RIP, RSP and the protocol's argument registers.</summary>
    public required GeneralRegisters Registers { get; init; }

    /// <summary>Segment, descriptor-table and control registers for <see cref="Mode"/>.</summary>
    public required SpecialRegisters SpecialRegisters { get; init; }

    /// <summary>Everything the loader wrote into guest memory, in the order it was placed.</summary>
    public required IReadOnlyList<BootPlacement> Placements { get; init; }

    /// <summary>The memory map given to the kernel.</summary>
    public required IReadOnlyList<E820Entry> MemoryMap { get; init; }

    /// <summary>
    /// Whether a bzImage's compressed kernel was decompressed on the host and its <c>vmlinux</c> loaded and entered
    /// directly (see <see cref="LinuxBootOptions.DecompressKernelOnHost"/>), rather than left to the kernel's own
    /// decompressor.
    /// </summary>
    public bool KernelDecompressedOnHost { get; init; }

    /// <summary>The placement called <paramref name="name"/>, or <see langword="null"/>.</summary>
    public BootPlacement? Find(string name)
    {
        foreach (var p in Placements)
        {
            if (p.Name == name)
            {
                return p;
            }
        }

        return null;
    }
}
