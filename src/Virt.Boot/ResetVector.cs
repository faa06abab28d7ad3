using Virt.Memory;

namespace Virt.Boot;

/// <summary>
/// A stand-in for the firmware's reset vector at F000:FFF0 (physical 0xFFFF0) for VMs booted without
/// firmware. Operating systems that restart by jumping there (Linux's real-mode restart, the fallback
/// it takes on ACPI hardware-reduced machines without EFI, and many hobby kernels) find a stub that
/// pulses the reset line of the keyboard controller (command 0xFE to port 0x64) instead of zeros.
/// </summary>
/// <remarks>
/// The stub only works if an <c>I8042Controller</c> (or another device) answers port 0x64 and turns the
/// pulse into a reset. If nothing does, the vCPU halts with interrupts off: the guest stops, and never
/// runs off into memory that holds no code.
/// </remarks>
public static class ResetVector
{
    /// <summary>Physical address of the real-mode reset vector (segment 0xF000, offset 0xFFF0).</summary>
    public static readonly GuestAddress Address = new(0xFFFF0);

    /// <summary>The stub: <c>mov al, 0xFE; out 0x64, al; cli; hlt; jmp short -4</c>.</summary>
    public static ReadOnlySpan<byte> Code => [0xB0, 0xFE, 0xE6, 0x64, 0xFA, 0xF4, 0xEB, 0xFC];

    /// <summary>Writes the stub at <see cref="Address"/>.</summary>
    /// <param name="memory">Guest memory with RAM at 0xFFFF0-0xFFFF7.</param>
    /// <exception cref="ArgumentNullException"><paramref name="memory"/> is null.</exception>
    /// <exception cref="ArgumentException">The VM has no RAM at the reset vector.</exception>
    public static void Install(IGuestMemory memory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (!memory.TryWrite(Address, Code))
        {
            throw new ArgumentException($"The VM has no RAM at the reset vector 0x{Address.Value:X}; give it at least 1 MiB of memory.", nameof(memory));
        }
    }
}
