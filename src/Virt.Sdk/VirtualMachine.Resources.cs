namespace Virt;

public sealed partial class VirtualMachine
{
    private MachineShare _share = MachineShare.None;

    /// <summary>The VM's memory balloon (see <see cref="VirtualMachineBuilder.WithBalloon"/>), or null if it has none.</summary>
    public MemoryBalloon? Balloon => _share.Balloon;

    /// <summary>
    /// How much of the VM's guest memory the host holds in RAM now, in bytes: pages the guest touched and did not give
    /// back. Null where the host cannot tell (only Linux reports it).
    /// </summary>
    public ulong? ResidentMemoryBytes => _machine.Memory.IsDisposed ? null : _machine.Memory.ResidentBytes;
}
