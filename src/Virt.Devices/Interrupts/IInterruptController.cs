namespace Virt.Devices.Interrupts;

/// <summary>
/// What a CPU asks its interrupt controller between instructions: is a maskable interrupt waiting,
/// and which vector is it (the INTA cycle).
/// </summary>
public interface IInterruptController
{
    /// <summary>Whether an interrupt is waiting for the CPU (the CPU still honours RFLAGS.IF and interrupt shadows).</summary>
    bool HasPendingInterrupt { get; }

    /// <summary>
    /// Accepts the highest-priority waiting interrupt (marks it in service) and returns its vector,
    /// or -1 when nothing is waiting any more.
    /// </summary>
    int AcknowledgeInterrupt();

    /// <summary>
    /// Called, on any thread and outside the controller's locks, when an interrupt may have become
    /// pending; a CPU halted in <c>HLT</c> uses it to wake up. May be <see langword="null"/>.
    /// </summary>
    Action? InterruptRequested { get; set; }
}
