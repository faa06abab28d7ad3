namespace Virt.Platform;

/// <summary>
/// The interrupt controllers and timers of a machine (a PC's PIC pair, IOAPIC, local APICs and PIT on one virtual
/// clock), as a backend composes them when its hypervisor does not keep them itself: KVM has them in the kernel; the
/// interpreter (and a Windows Hypervisor Platform partition without its own APIC emulation) needs them from here.
/// </summary>
/// <remarks>
/// The backend calls the platform on vCPU threads, between guest instructions; devices on other threads drive
/// <see cref="SetInterruptLine"/>. Virt.Devices' <c>PcInterruptPlatform</c> is the implementation the SDK uses.
/// </remarks>
public interface IInterruptPlatform : IDisposable
{
    /// <summary>Virtual time, in ticks of <see cref="IPlatformClock.Frequency"/>: the timers fire when it is moved.</summary>
    IPlatformClock Clock { get; }

    /// <summary>Highest global system interrupt <see cref="SetInterruptLine"/> accepts.</summary>
    uint MaxGsi { get; }

    /// <summary>Drives global system interrupt <paramref name="gsi"/> to <paramref name="level"/>. Thread-safe.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gsi"/> is above <see cref="MaxGsi"/>.</exception>
    void SetInterruptLine(uint gsi, bool level);

    /// <summary>The local interrupt controller of vCPU <paramref name="vcpuIndex"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The platform has no controller for that vCPU.</exception>
    ILocalInterruptController GetLocalController(int vcpuIndex);

    /// <summary>
    /// Reads or writes port <paramref name="port"/> when it belongs to the platform; <paramref name="data"/> is the
    /// access (1, 2 or 4 bytes; filled for a read).
    /// </summary>
    /// <returns><see langword="false"/> when the port is not the platform's (the access goes to the host's devices).</returns>
    bool TryAccessPort(ushort port, Span<byte> data, bool isWrite);

    /// <summary>Whether guest physical <paramref name="address"/> lies in one of the platform's MMIO pages (IOAPIC, local APIC).</summary>
    bool OwnsMmio(ulong address);

    /// <summary>Reads or writes the platform's MMIO page at <paramref name="address"/> (1 to 8 bytes; filled for a read).</summary>
    /// <returns><see langword="false"/> when the address is not the platform's.</returns>
    bool TryAccessMmio(ulong address, Span<byte> data, bool isWrite);

    /// <summary>
    /// Reads or writes the platform's MMIO page at <paramref name="address"/> as vCPU <paramref name="vcpuIndex"/> sees
    /// it: the local APIC page is that processor's own APIC.
    /// </summary>
    /// <returns><see langword="false"/> when the address is not the platform's.</returns>
    bool TryAccessMmio(int vcpuIndex, ulong address, Span<byte> data, bool isWrite);
}

/// <summary>The virtual clock of an <see cref="IInterruptPlatform"/>.</summary>
public interface IPlatformClock
{
    /// <summary>Ticks per second.</summary>
    long Frequency { get; }

    /// <summary>The current tick.</summary>
    long Now { get; }

    /// <summary>The tick at which the next armed timer fires, or <see langword="null"/> when none is armed.</summary>
    long? NextDeadline { get; }

    /// <summary>Moves the clock forward to <paramref name="tick"/> (never back), firing the timers that fall due on the way.</summary>
    void AdvanceTo(long tick);
}

/// <summary>A vCPU's local interrupt controller (a local APIC) as the processor sees it.</summary>
public interface ILocalInterruptController
{
    /// <summary>Whether a maskable interrupt waits for the processor (which still honours RFLAGS.IF and interrupt shadows).</summary>
    bool HasPendingInterrupt { get; }

    /// <summary>Accepts the highest-priority waiting interrupt (the INTA cycle) and returns its vector, or -1 when none waits any more.</summary>
    int AcknowledgeInterrupt();

    /// <summary>Whether a non-maskable interrupt waits.</summary>
    bool HasPendingNmi { get; }

    /// <summary>Accepts a waiting NMI; <see langword="false"/> when none waits any more.</summary>
    bool AcknowledgeNmi();

    /// <summary>The task-priority register (bits 7:4 are what CR8 shows).</summary>
    uint TaskPriority { get; set; }

    /// <summary>IA32_APIC_BASE as the guest reads it.</summary>
    ulong ApicBase { get; }

    /// <summary>Writes IA32_APIC_BASE; <see langword="false"/> (the guest gets #GP) for a value the controller cannot take.</summary>
    bool TrySetApicBase(ulong value);

    /// <summary>The TSC-deadline timer's deadline in clock ticks (0: disarmed).</summary>
    ulong TscDeadline { get; set; }

    /// <summary>Reads one of the controller's own MSRs (the x2APIC range); <see langword="false"/> when <paramref name="index"/> is not one.</summary>
    bool TryReadMsr(uint index, out ulong value);

    /// <summary>Writes one of the controller's own MSRs; <see langword="false"/> when <paramref name="index"/> is not one or the value is refused.</summary>
    bool TryWriteMsr(uint index, ulong value);

    /// <summary>Whether <paramref name="index"/> is one of the controller's own MSRs (the x2APIC range).</summary>
    bool OwnsMsr(uint index);

    /// <summary>Whether an INIT waits for the processor (like an NMI, it does not wait for RFLAGS.IF).</summary>
    bool HasPendingInit { get; }

    /// <summary>Takes a pending INIT; <see langword="true"/> when there was one (the processor then waits for a start-up IPI).</summary>
    bool AcknowledgeInit();

    /// <summary>Takes the vector of a pending start-up IPI (the processor starts in real mode at vector * 4096), or -1.</summary>
    int AcknowledgeStartup();

    /// <summary>
    /// Called, on any thread and outside the controller's locks, when an interrupt may have become pending; a
    /// processor halted in HLT uses it to wake up.
    /// </summary>
    Action? InterruptRequested { get; set; }
}

/// <summary>What a backend asks of the platform it composes.</summary>
/// <param name="VcpuCount">Number of vCPUs (one local controller each).</param>
/// <param name="ClockFrequency">Ticks per second of the virtual clock (the backend's TSC frequency).</param>
/// <param name="LocalTimerFrequency">The local timers' input clock in Hz (the core crystal CPUID leaf 0x15 reports).</param>
public sealed record InterruptPlatformParameters(int VcpuCount, long ClockFrequency, long LocalTimerFrequency);

/// <summary>Builds the interrupt platform of a partition (<see cref="Cpu.PartitionOptions.InterruptPlatform"/>).</summary>
public interface IInterruptPlatformFactory
{
    /// <summary>Creates a platform for <paramref name="parameters"/>.</summary>
    IInterruptPlatform Create(InterruptPlatformParameters parameters);
}
