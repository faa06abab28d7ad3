using Virt.Devices.Virtio;
using Virt.Memory;

namespace Virt;

public sealed partial class VirtualMachineBuilder
{
    /// <summary>
    /// Puts the VM in <paramref name="pool"/>: <see cref="Build"/> admits it against the pool's capacity (memory, vCPUs,
    /// reservations) or throws a <see cref="ResourceExhaustedException"/> naming what is short; while it runs its vCPUs
    /// share the pool's CPUs by <see cref="ResourceRequest.CpuShares"/> and within <see cref="ResourceRequest.CpuLimit"/>;
    /// disposing the VM gives its share back. Give each VM in a pool its own name (<see cref="WithName"/>).
    /// </summary>
    /// <param name="pool">The pool.</param>
    /// <param name="request">Shares, limits and reservations; null for the defaults (1024 shares, no cap, no reservations).</param>
    public VirtualMachineBuilder WithResourcePool(ResourcePool pool, ResourceRequest? request = null)
    {
        ArgumentNullException.ThrowIfNull(pool);
        return new(_config with { Pool = pool, PoolRequest = request });
    }

    /// <summary>
    /// Adds a virtio memory balloon (a Linux guest loads <c>virtio_balloon</c>): the host asks the guest to give memory
    /// back through <see cref="VirtualMachine.Balloon"/>, and the guest's free-page reports return free memory on their
    /// own. Pages given back leave the host's resident memory at once.
    /// </summary>
    /// <param name="deflateOnOom">Let the guest take pages back from the balloon when it runs out of memory.</param>
    public VirtualMachineBuilder WithBalloon(bool deflateOnOom = false)
    {
        if (_config.Devices.Any(d => d.Name == "virtio-balloon"))
        {
            throw new InvalidOperationException("The VM already has a balloon; a VM has at most one.");
        }

        return AddVirtio("virtio-balloon", context =>
        {
            var release = context.Memory is GuestMemory memory ? (Action<GuestAddress, ulong>)memory.DiscardPages : null;
            return new VirtioBalloonDevice(context.Memory.TotalSize, release, deflateOnOom);
        });
    }
}
