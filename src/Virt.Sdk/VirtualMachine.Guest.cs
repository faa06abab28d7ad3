namespace Virt;

public sealed partial class VirtualMachine
{
    /// <summary>
    /// The assembled machine, for <see cref="VirtualMachineGuestExtensions"/> (the vsock device, the guest agent and
    /// the console's lines live in its <see cref="AssembledMachine.Guest"/>, away from this class's coupling budget).
    /// </summary>
    internal AssembledMachine Machine => _machine;
}
