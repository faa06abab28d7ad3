using Virt.Cpu;
using Virt.Devices;

namespace Virt;

/// <summary>An interrupt line wired to a GSI of the partition's interrupt controller; a no-op where the partition has none.</summary>
internal sealed class PartitionInterruptLine : IInterruptLine
{
    private readonly IPartition _partition;
    private readonly uint _gsi;

    public PartitionInterruptLine(IPartition partition, uint gsi)
    {
        _partition = partition;
        _gsi = gsi;
    }

    public void Raise()
    {
        if (_partition.HasInterruptController)
        {
            _partition.SetInterruptLine(_gsi, true);
        }
    }

    public void Lower()
    {
        if (_partition.HasInterruptController)
        {
            _partition.SetInterruptLine(_gsi, false);
        }
    }
}
