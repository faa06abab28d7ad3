using Virt.Devices.Virtio;

namespace Virt;

public sealed partial class VirtualMachineBuilder
{
    /// <summary>
    /// Adds a virtio-vsock device (stream sockets between host and guest, <c>vm.Vsock</c>) giving
    /// the guest context id <paramref name="guestCid"/>. Calling it again replaces the CID.
    /// </summary>
    /// <param name="guestCid">The guest's CID: 3 or more, below 0xFFFFFFFF.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="guestCid"/> is reserved.</exception>
    public VirtualMachineBuilder WithVsock(uint guestCid = VirtioVsockDevice.DefaultGuestCid)
    {
        if (guestCid < 3 || guestCid == uint.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(guestCid), guestCid, "CIDs 0, 1 and 2 are reserved (hypervisor, loopback, host) and 0xFFFFFFFF means any; give the guest 3 or more.");
        }

        var without = new VirtualMachineBuilder(_config with { Devices = _config.Devices.RemoveAll(d => d.Name == VsockDeviceName) });
        return without.AddVirtio(VsockDeviceName, _ => new VirtioVsockDevice(guestCid));
    }

    /// <summary>
    /// Starts the guest kit's agent (<c>virt.agent=PORT</c> on the kernel command line) and its host side
    /// (<c>vm.Agent</c>, <c>vm.ExecAsync</c>); adds a vsock device with the
    /// default CID unless <see cref="WithVsock"/> added one.
    /// </summary>
    /// <param name="port">The agent's vsock port.</param>
    public VirtualMachineBuilder WithGuestAgent(uint port = GuestAgent.DefaultPort)
    {
        var withVsock = _config.Devices.Any(d => d.Name == VsockDeviceName) ? this : WithVsock();
        return new(withVsock._config with { GuestAgentPort = port });
    }

    private const string VsockDeviceName = "virtio-vsock";
}
