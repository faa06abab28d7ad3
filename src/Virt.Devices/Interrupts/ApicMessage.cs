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

/// <summary>The destination shorthand of an interprocessor interrupt (ICR bits 19:18).</summary>
public enum IpiDestination
{
    /// <summary>The ICR's destination field.</summary>
    Field = 0,
    /// <summary>The sending APIC only.</summary>
    Self = 1,
    /// <summary>Every APIC, the sender included.</summary>
    AllIncludingSelf = 2,
    /// <summary>Every APIC but the sender.</summary>
    AllExcludingSelf = 3,
}

/// <summary>The APIC bus of a machine with several local APICs: carries interprocessor interrupts between them.</summary>
public interface IApicBus
{
    /// <summary>Delivers <paramref name="message"/> from <paramref name="source"/> to the APICs <paramref name="destination"/> names. Thread-safe; never throws.</summary>
    void SendIpi(LocalApic source, in ApicMessage message, IpiDestination destination);
}

/// <summary>
/// The local APICs of a machine on one bus: messages from the IOAPIC and IPIs reach every APIC they address; a
/// lowest-priority message reaches one of them (the next in turn among those addressed).
/// </summary>
public sealed class ApicBus : IApicBus, IApicMessageSink
{
    private readonly LocalApic[] _apics;
    private int _nextLowest;

    /// <summary>Connects <paramref name="apics"/>: each one's IPIs go through this bus.</summary>
    public ApicBus(IReadOnlyList<LocalApic> apics)
    {
        ArgumentNullException.ThrowIfNull(apics);
        _apics = [.. apics];
        foreach (var a in _apics)
        {
            a.Bus = this;
        }
    }

    /// <inheritdoc />
    public void Deliver(in ApicMessage message) => Route(null, message, IpiDestination.Field);

    /// <inheritdoc />
    public void SendIpi(LocalApic source, in ApicMessage message, IpiDestination destination) => Route(source, message, destination);

    private void Route(LocalApic? source, in ApicMessage message, IpiDestination destination)
    {
        if (message.Mode == ApicDeliveryMode.LowestPriority && destination == IpiDestination.Field)
        {
            int start = Interlocked.Increment(ref _nextLowest);
            for (int k = 0; k < _apics.Length; k++)
            {
                var a = _apics[(int)((uint)(start + k) % (uint)_apics.Length)];
                if (a.AcceptsDestination(message))
                {
                    a.Receive(message);
                    return;
                }
            }

            return;
        }

        foreach (var a in _apics)
        {
            bool take = destination switch
            {
                IpiDestination.Self => a == source,
                IpiDestination.AllIncludingSelf => true,
                IpiDestination.AllExcludingSelf => a != source,
                _ => a.AcceptsDestination(message),
            };
            if (take)
            {
                a.Receive(message);
            }
        }
    }
}
