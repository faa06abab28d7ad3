using Virt.Network;

namespace Virt;

public sealed partial class VirtualMachineBuilder
{
    /// <summary>
    /// Adds a virtio-net NIC on user-mode networking: the guest gets an address by DHCP, reaches the host's loopback
    /// at the gateway address and the outside world through ordinary host sockets, without root or host network
    /// setup (see docs/networking.md). Each VM built gets its own <see cref="UserModeNetwork"/> with these
    /// <paramref name="options"/> (forwards included), closed with the VM. A Linux guest from the guest kit asks for
    /// DHCP with the kernel parameter <c>virt.net=dhcp</c>.
    /// </summary>
    /// <exception cref="ArgumentException">An option is out of range (checked here, before any VM is built).</exception>
    public VirtualMachineBuilder WithUserNetwork(UserModeNetworkOptions? options = null, MacAddress? mac = null, VirtioNetOptions? nicOptions = null)
    {
        options ??= new UserModeNetworkOptions();
        options.Validate();
        var address = mac ?? MacAddress.CreateRandom();
        return AddVirtio("virtio-net", context =>
        {
            var network = new UserModeNetwork(options);
            context.DisposeWithMachine(network);
            return new VirtioNetDevice(network, address, nicOptions);
        });
    }

    /// <summary>
    /// Adds a virtio-net NIC on the user-mode network <paramref name="network"/>, which the caller keeps (for
    /// <see cref="UserModeNetwork.ForwardTcp"/>, its statistics and leases) and disposes.
    /// </summary>
    public VirtualMachineBuilder WithUserNetwork(UserModeNetwork network, MacAddress? mac = null, VirtioNetOptions? nicOptions = null)
    {
        ArgumentNullException.ThrowIfNull(network);
        return WithVirtioNet(network, mac, nicOptions);
    }
}
