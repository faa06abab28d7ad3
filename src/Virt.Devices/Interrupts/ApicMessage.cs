namespace Virt.Devices.Interrupts;

/// <summary>How an APIC interrupt message is delivered (IOAPIC redirection entry and ICR bits 10:8).</summary>
public enum ApicDeliveryMode
{
    /// <summary>To the destination's vector.</summary>
    Fixed = 0,
    /// <summary>To the lowest-priority processor of the destination (one processor here: fixed).</summary>
    LowestPriority = 1,
    /// <summary>System management interrupt (ignored).</summary>
    Smi = 2,
    /// <summary>Non-maskable interrupt.</summary>
    Nmi = 4,
    /// <summary>INIT (ignored by this model).</summary>
    Init = 5,
    /// <summary>Start-up IPI (ignored by this model).</summary>
    StartUp = 6,
    /// <summary>The vector comes from the 8259 PIC (virtual wire).</summary>
    ExtInt = 7,
}

/// <summary>An interrupt message on the APIC bus, from an IOAPIC or an IPI.</summary>
/// <param name="Vector">The vector (16-255 for fixed delivery).</param>
/// <param name="Mode">The delivery mode.</param>
/// <param name="LevelTriggered">Level-triggered: the target sets the vector's TMR bit and broadcasts its EOI.</param>
/// <param name="Destination">The APIC ID (physical) or logical mask; 0xFF is broadcast.</param>
/// <param name="LogicalDestination">Whether <paramref name="Destination"/> is logical.</param>
public readonly record struct ApicMessage(int Vector, ApicDeliveryMode Mode, bool LevelTriggered, byte Destination, bool LogicalDestination);

/// <summary>Something that accepts APIC interrupt messages: the local APICs.</summary>
public interface IApicMessageSink
{
    /// <summary>Delivers <paramref name="message"/>. Thread-safe; never throws.</summary>
    void Deliver(in ApicMessage message);
}
