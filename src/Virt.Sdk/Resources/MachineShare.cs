using Virt.Devices.Virtio;

namespace Virt;

/// <summary>A VM's link to its resource pool and its balloon; <see cref="None"/> for a VM in no pool and without a balloon.</summary>
internal sealed class MachineShare
{
    public static readonly MachineShare None = new(null, null);

    private MachineShare(PoolMember? member, MemoryBalloon? balloon)
    {
        Member = member;
        Balloon = balloon;
    }

    public PoolMember? Member { get; }

    public MemoryBalloon? Balloon { get; }

    /// <summary>Admits a VM about to be assembled to its pool (<see cref="None"/> when it has none); throws when it does not fit.</summary>
    public static MachineShare Admit(VirtualMachineConfiguration config) =>
        config.Pool?.Admit(config.Name, config.VcpuCount, config.MemorySize, config.PoolRequest ?? new ResourceRequest()) is { } member
            ? new MachineShare(member, null)
            : None;

    /// <summary>Links the assembled machine's vCPUs and balloon to the pool member.</summary>
    public MachineShare Join(AssembledMachine machine)
    {
        var member = Member;
        MemoryBalloon? balloon = null;
        foreach (var transport in machine.Transports)
        {
            switch (transport.Device)
            {
                case VirtioBalloonDevice device when balloon is null:
                    balloon = new MemoryBalloon(device);
                    break;
                case Virt.Storage.VirtioBlockDevice disk when member is { DiskBytes: not null } or { DiskOperations: not null }:
                    disk.ShareLimits(member.DiskBytes, member.DiskOperations);
                    break;
                case Virt.Network.VirtioNetDevice nic when member is { NetworkTransmit: not null }:
                    nic.ShareLimits(member.NetworkTransmit, member.NetworkReceive);
                    break;
            }
        }

        if (member is null)
        {
            return balloon is null ? None : new MachineShare(null, balloon);
        }

        var memory = machine.Memory;
        member.Balloon = balloon;
        member.ResidentBytes = () => memory.IsDisposed ? null : memory.ResidentBytes;
        member.Attach(machine.Vcpus);
        return new MachineShare(member, balloon);
    }

    /// <summary>Called by vCPU <paramref name="index"/>'s thread before it enters the guest; false when it should look at stop or pause first.</summary>
    public bool Enter(int index, VirtualMachine vm) => Member is null || Member.Enter(index, vm.ShouldLeaveGuest);

    public void Leave(int index) => Member?.Leave(index);

    public void WakeAll() => Member?.WakeAll();

    public void Dispose() => Member?.Dispose();
}
