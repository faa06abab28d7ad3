namespace Virt.Devices.Tests.Support;

/// <summary>An interrupt line that records its level and every transition.</summary>
internal sealed class RecordingInterruptLine : IInterruptLine
{
    private readonly List<bool> _transitions = [];

    public bool IsHigh { get; private set; }

    public int RaiseCount { get; private set; }

    public IReadOnlyList<bool> Transitions => _transitions;

    public void Raise()
    {
        IsHigh = true;
        RaiseCount++;
        _transitions.Add(true);
    }

    public void Lower()
    {
        IsHigh = false;
        _transitions.Add(false);
    }
}
