using Virt.Cpu;
using Virt.Memory;
using Virt.X86;

namespace Virt.Boot;

/// <summary>The end that the PVH and Multiboot loaders share: the boot-information block, then a 32-bit protected-mode entry.</summary>
internal static class Protected32Entry
{
    /// <summary>
    /// Writes <paramref name="block"/> (the boot information) at <see cref="LinuxBootOptions.BootParamsAddress"/>,
    /// after checking it lies in RAM (else a <see cref="BootImageException"/> naming <paramref name="field"/>), and
    /// records it as <paramref name="placementName"/>.
    /// </summary>
    public static void WriteInfoBlock(IGuestMemory memory, IReadOnlyList<E820Entry> map, LinuxBootOptions options, byte[] block, ulong length,
        string field, string what, string placementName, List<BootPlacement> placements)
    {
        LinuxLoader.RequireRam(map, options.BootParamsAddress, length, field, what);
        memory.Write(options.BootParamsAddress, block);
        placements.Add(new BootPlacement(placementName, options.BootParamsAddress, length));
    }

    /// <summary>The entry state: flat 32-bit protected mode with paging off, EIP at <paramref name="entry"/>, EAX and EBX as given.</summary>
    public static BootResult Enter(IGuestMemory memory, SpecialRegisters initial, LinuxBootOptions options, ulong entry, ulong rax, ulong rbx,
        List<BootPlacement> placements, IReadOnlyList<E820Entry> map) => new()
    {
        EntryPoint = new GuestAddress(entry),
        Mode = StartMode.Protected32,
        Registers = new GeneralRegisters
        {
            Rip = entry,
            Rax = rax,
            Rbx = rbx,
            Rsp = options.StackPointer.Value,
            Rflags = Rflags.Fixed,
        },
        SpecialRegisters = ProcessorSetup.Prepare(memory, initial, StartMode.Protected32, options.Processor),
        Placements = placements,
        MemoryMap = map,
    };
}
